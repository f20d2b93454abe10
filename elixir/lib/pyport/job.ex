defmodule Pyport.Job do
  @moduledoc """
  Untrusted Python jobs on a sandboxed pool (over `:pyport_job`; see
  docs/jobs.md and docs/security.md for the sandbox itself).

  A job is Python source run like a notebook cell in a process of its own:
  `input` is bound to the job's `:input`, and its value is that of the
  last statement if it is an expression, else of a variable `result`, else
  `nil`. What it printed and what it cost come back in a
  `Pyport.Job.Result`.

      children = [{Pyport.Pool, name: :cells, size: 2, sandbox: true}]

      {:ok, %Pyport.Job.Result{value: 42, stdout: "computing\\n"}} =
        Pyport.Job.run(:cells, "print('computing')\\ninput * 2", input: 21)

  Failures are `{:error, %Pyport.Error{}}`: a Python exception has its
  `:type`, `:message` and `:traceback` (and `reason: {:exception, info}`,
  whose `info` also holds what the job printed); the sandbox's verdicts
  are in `:reason`: `:timeout`, `{:memory_limit, bytes}`,
  `{:cpu_limit, seconds}`, `{:file_size_limit, bytes}`,
  `{:output_limit, bytes}`, `{:process_limit, n}`, `{:forbidden, syscall}`,
  `{:crashed, detail}`, `{:bad_job, why}`, `{:no_runner, why}`,
  `{:not_sandboxed, pool}`, `{:no_pool, pool}`, `{:worker_exited, detail}`.
  """

  alias Pyport.{Convert, Error}

  defmodule Result do
    @moduledoc """
    A job's value, what it printed, and what it cost: CPU time (ms), the
    largest resident set of its process (bytes) and wall time (ms).
    """
    defstruct [:value, stdout: "", stderr: "", cpu_ms: 0, max_rss: 0, wall_ms: 0]

    @type t :: %__MODULE__{
            value: term(),
            stdout: String.t(),
            stderr: String.t(),
            cpu_ms: non_neg_integer(),
            max_rss: non_neg_integer(),
            wall_ms: non_neg_integer()
          }
  end

  @type option :: {:input, term()} | {:timeout, pos_integer() | :infinity}

  @doc """
  Runs `code` on the sandboxed pool `pool`.

  Options: `:input` (any value, converted as `Pyport.Convert` says; default
  `nil`) and `:timeout` (ms or `:infinity`; default: the pool's
  `call_timeout`). When the timeout passes the job's process is killed and
  the answer is `{:error, %Pyport.Error{reason: :timeout}}`.
  """
  @spec run(atom(), String.t() | iodata(), [option()]) ::
          {:ok, Result.t()} | {:error, Error.t()}
  def run(pool, code, opts \\ []) when is_list(opts) do
    job =
      opts
      |> Map.new()
      |> Map.update(:input, :none, &Convert.to_python/1)
      |> Map.put(:code, code)

    case :pyport_job.run(pool, job) do
      {:ok, value, stats} ->
        {:ok, struct(Result, Map.put(stats, :value, Convert.from_python(value)))}

      {:error, reason} ->
        {:error, Error.from_reason(reason)}
    end
  end

  @doc "`run/3`, returning the `Pyport.Job.Result` or raising `Pyport.Error`."
  @spec run!(atom(), String.t() | iodata(), [option()]) :: Result.t()
  def run!(pool, code, opts \\ []) do
    case run(pool, code, opts) do
      {:ok, result} -> result
      {:error, error} -> raise error
    end
  end
end
