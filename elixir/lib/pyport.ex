defmodule Pyport do
  @moduledoc """
  Run Python from Elixir: each Python interpreter in an OS process of its
  own, in pools the pyport application supervises.

  A thin Elixir facade over pyport's Erlang API (`:py`, `:pyport`): the
  same routing, timeouts and errors, with Elixir's conventions:

    * options are keyword lists (`pool: :ml, timeout: 5_000`);
    * results are `{:ok, value}` or `{:error, %Pyport.Error{}}`, and every
      function with a `!` returns the value or raises `Pyport.Error`;
    * keyword arguments go in `kwargs:` (a keyword list or a map);
    * values convert as `Pyport.Convert` describes (strings are `str`,
      `nil` is `None` both ways, structs become dicts).

  ## Examples

      iex> Pyport.call(:math, :sqrt, [16])
      {:ok, 4.0}

      iex> Pyport.call(:json, :dumps, [%{"b" => [1, 2]}], kwargs: [sort_keys: true])
      {:ok, ~s({"b": [1, 2]})}

      iex> Pyport.eval("x * y", locals: [x: 6, y: 7])
      {:ok, 42}

      iex> Pyport.call(:math, :sqrt, [-1])
      ...> |> elem(1)
      ...> |> Exception.message()
      "ValueError: math domain error"

  ## Options

  Every call takes these (unknown keys are refused with
  `%Pyport.Error{reason: {:bad_option, key}}`):

    * `:pool` - the pool's name (default `:default`), or `{:cluster, name}`
      for the least-loaded node serving that pool.
    * `:timeout` - milliseconds or `:infinity` (default: the pool's
      `call_timeout`, 30 s unless configured). When it passes the Python
      code is interrupted and the call returns
      `{:error, %Pyport.Error{reason: :timeout}}`.
    * `:shard` - any term: calls with the same key go to the same worker.
    * `:node` - run on that node's pool.
    * `:context` - a context from `context/0,1,2`: that worker, and its
      shared Python globals (not for `cast/4` and `spawn_call/4`).

  Routing without `:context` or `:shard`: the worker the process is bound
  to (`bind/1`), else the least-loaded one. `eval/2` and `exec/2` without
  them run in the calling process's own Python namespace, so names an
  `exec/2` defines are seen by the same process's later `eval/2` (in IEx:
  by the shell process), and freed when the process exits.
  """

  alias Pyport.{Convert, Error}
  require Record

  @typedoc "A Python module or function name: `:math`, `\"os.path\"`, `'json'`."
  @type name :: atom() | String.t() | charlist()

  @typedoc "Python source: a string, a charlist or iodata."
  @type code :: String.t() | charlist() | iodata()

  @typedoc "A worker and its shared Python globals, from `context/0,1,2`."
  @type context :: :py.context()

  @typedoc "A call started by `spawn_call/4`, collected by `await/2`."
  @type handle :: :py.handle()

  @type option ::
          {:pool, atom() | {:cluster, atom()}}
          | {:timeout, timeout()}
          | {:shard, term()}
          | {:node, node()}
          | {:context, context()}
  @type call_option :: option() | {:kwargs, keyword() | map()}
  @type eval_option :: option() | {:locals, keyword() | map()}

  @type result :: {:ok, term()} | {:error, Error.t()}

  @doc """
  Calls `module.function(*args, **kwargs)` in a worker.

  Options: `:kwargs` (a keyword list or a map) and those in the module doc.

      iex> Pyport.call(:operator, :add, [1, 2])
      {:ok, 3}

      iex> Pyport.call("os.path", :join, ["a", "b"])
      {:ok, "a/b"}

      iex> {:error, error} = Pyport.call(:no_such_module, :f, [])
      iex> error.type
      "ModuleNotFoundError"
  """
  @spec call(name(), name(), list(), [call_option()]) :: result()
  def call(module, function, args, opts \\ []) do
    {ours, py_opts} = split(opts, [:kwargs, :context])
    kwargs = Convert.kwargs(Map.get(ours, :kwargs, %{}))
    args = Convert.to_python(args)

    case ours do
      %{context: ctx} ->
        with_context(ctx, &:py.call(&1, module, function, args, kwargs, shared(py_opts)))

      _ ->
        :py.call(module, function, args, kwargs, py_opts)
    end
    |> result()
  end

  @doc """
  `call/4`, returning the value or raising `Pyport.Error`.

      iex> Pyport.call!(:math, :floor, [2.5])
      2

      iex> Pyport.call!(:math, :sqrt, [-1])
      ** (Pyport.Error) ValueError: math domain error
  """
  @spec call!(name(), name(), list(), [call_option()]) :: term()
  def call!(module, function, args, opts \\ []),
    do: module |> call(function, args, opts) |> bang()

  @doc """
  Evaluates one Python expression.

  Options: `:locals` (a keyword list or a map: local variables of the
  expression, never globals of the namespace) and those in the module doc.

      iex> Pyport.eval("[i * i for i in range(4)]")
      {:ok, [0, 1, 4, 9]}

      iex> Pyport.eval("n + 1", locals: %{n: 41})
      {:ok, 42}

      iex> Pyport.eval("None")
      {:ok, nil}
  """
  @spec eval(code(), [eval_option()]) :: result()
  def eval(code, opts \\ []) do
    {ours, py_opts} = split(opts, [:locals, :context])

    with {:ok, locals} <- locals(ours) do
      case ours do
        %{context: ctx} -> with_context(ctx, &:py.eval(&1, code, locals, shared(py_opts)))
        _ -> :py.eval(code, locals, py_opts)
      end
    end
    |> result()
  end

  @doc """
  `eval/2`, returning the value or raising `Pyport.Error`.

      iex> Pyport.eval!("2 ** 100")
      1267650600228229401496703205376
  """
  @spec eval!(code(), [eval_option()]) :: term()
  def eval!(code, opts \\ []), do: code |> eval(opts) |> bang()

  @doc """
  Runs Python statements; returns `:ok`. Without `:context` (or `:shard`)
  they run in the calling process's namespace, which its later `eval/2`
  sees.

      iex> :ok = Pyport.exec("import math\\nradius = 2")
      iex> Pyport.eval("round(math.pi * radius ** 2, 2)")
      {:ok, 12.57}
  """
  @spec exec(code(), [option()]) :: :ok | {:error, Error.t()}
  def exec(code, opts \\ []) do
    {ours, py_opts} = split(opts, [:context])

    case ours do
      %{context: ctx} -> with_context(ctx, &:py.exec(&1, code, shared(py_opts)))
      _ -> :py.exec(code, py_opts)
    end
    |> result()
  end

  @doc """
  `exec/2`, returning `:ok` or raising `Pyport.Error`.

      iex> Pyport.exec!("raise KeyError('k')")
      ** (Pyport.Error) KeyError: 'k'
  """
  @spec exec!(code(), [option()]) :: :ok
  def exec!(code, opts \\ []), do: code |> exec(opts) |> bang()

  @doc """
  Calls `module.function(*args, **kwargs)` without waiting for it: `:ok`
  once the request is sent to a worker. A Python exception is logged by
  the node's `logger`. Options: `:kwargs`, `:pool`, `:shard`, `:node`.

      iex> Pyport.cast(:time, :sleep, [0])
      :ok
  """
  @spec cast(name(), name(), list(), [call_option()]) :: :ok | {:error, Error.t()}
  def cast(module, function, args, opts \\ []) do
    {ours, py_opts} = split(opts, [:kwargs])
    kwargs = Convert.kwargs(Map.get(ours, :kwargs, %{}))

    module
    |> :py.cast(function, Convert.to_python(args), kwargs, py_opts)
    |> result()
  end

  @doc """
  Starts a call and returns a handle at once; `await/2`, in the same
  process, collects the result. `:timeout` is the request's deadline.
  Options: `:kwargs`, `:pool`, `:timeout`, `:shard`, `:node`.

      iex> handle = Pyport.spawn_call(:operator, :mul, [6, 7])
      iex> Pyport.await(handle)
      {:ok, 42}
  """
  @spec spawn_call(name(), name(), list(), [call_option()]) :: handle()
  def spawn_call(module, function, args, opts \\ []) do
    {ours, py_opts} = split(opts, [:kwargs])
    kwargs = Convert.kwargs(Map.get(ours, :kwargs, %{}))
    :py.spawn_call(module, function, Convert.to_python(args), kwargs, py_opts)
  end

  @doc """
  Waits for a `spawn_call/4`'s result: until its deadline, or at most
  `timeout` ms (after `{:error, %Pyport.Error{reason: :timeout}}` the call
  is abandoned and interrupted). A handle is awaited once.
  """
  @spec await(handle(), timeout() | :deadline) :: result()
  def await(handle, timeout \\ :deadline)
  def await(handle, :deadline), do: handle |> :py.await() |> result()
  def await(handle, timeout), do: handle |> :py.await(timeout) |> result()

  @doc "`await/2`, returning the value or raising `Pyport.Error`."
  @spec await!(handle(), timeout() | :deadline) :: term()
  def await!(handle, timeout \\ :deadline), do: handle |> await(timeout) |> bang()

  @doc """
  Raises `KeyboardInterrupt` in the Python code of a `spawn_call/4`; its
  `await/2` then returns the outcome (usually
  `%Pyport.Error{type: "KeyboardInterrupt"}`).
  """
  @spec interrupt(handle()) :: :ok | {:error, :not_local}
  def interrupt(handle), do: :py.interrupt(handle)

  @doc """
  A context: one worker, and so one set of shared Python globals, that
  every process using the context sees. `context()` is the worker the
  calling process's pid maps to in the default pool; `context(n)` worker
  `n` (1-based) of the default pool; `context(pool, n)` of `pool`.

      iex> ctx = Pyport.context(1)
      iex> :ok = Pyport.exec("shared_total = 10", context: ctx)
      iex> Pyport.eval("shared_total + n", context: ctx, locals: [n: 5])
      {:ok, 15}
  """
  @spec context() :: context()
  def context, do: :py.context()

  @doc "See `context/0`."
  @spec context(pos_integer()) :: context()
  def context(n), do: :py.context(n)

  @doc "See `context/0`."
  @spec context(atom(), pos_integer()) :: context()
  def context(pool, n), do: :py.context(pool, n)

  @doc """
  Binds the calling process to one worker of `pool`: its calls, evals and
  execs go there until `unbind/1` or until it exits.
  """
  @spec bind(atom()) :: :ok | {:error, Error.t()}
  def bind(pool \\ :default) do
    case :py.bind(pool) do
      :ok -> :ok
      {:error, _} = error -> result(error)
    end
  end

  @doc "Ends the binding to `pool` and frees the process's namespace there."
  @spec unbind(atom()) :: :ok
  def unbind(pool \\ :default), do: :py.unbind(pool)

  # ---- internals ------------------------------------------------------------

  # Our own options, and the rest for py (which refuses what it does not
  # know; options that are not a keyword list or map go to it as they are).
  defp split(opts, keys) do
    case Convert.options(opts) do
      %{} = map -> {Map.take(map, keys), Map.drop(map, keys)}
      other -> {%{}, other}
    end
  end

  defp locals(%{locals: locals}) do
    case Convert.kwargs(locals) do
      %{} = map -> {:ok, map}
      other -> {:error, {:invalid_option, :locals, other}}
    end
  end

  defp locals(_ours), do: {:ok, :none}

  # A context is a pid (older pyport: a record).
  defp with_context(ctx, fun) when is_pid(ctx) or Record.is_record(ctx, :pyport_ctx),
    do: fun.(ctx)

  defp with_context(ctx, _fun), do: {:error, {:invalid_option, :context, ctx}}

  # This API's contexts are one worker's shared globals, for every process,
  # with the pool's call_timeout (:py's own defaults through a context are
  # the calling process's namespace and no timeout).
  defp shared(py_opts) when is_map(py_opts),
    do: py_opts |> Map.put(:namespace, :shared) |> Map.put_new(:timeout, :default)
  defp shared(py_opts), do: py_opts

  defp result(:ok), do: :ok
  defp result({:ok, value}), do: {:ok, Convert.from_python(value)}
  defp result({:error, %Error{}} = error), do: error
  defp result({:error, reason}), do: {:error, Error.from_reason(reason)}

  defp bang(:ok), do: :ok
  defp bang({:ok, value}), do: value
  defp bang({:error, error}), do: raise(error)
end
