defmodule Pyport.Error do
  @moduledoc """
  Why a Python call, eval, exec or job failed.

  Every `{:error, _}` of `Pyport` and `Pyport.Job` carries one of these, and
  the bang functions (`Pyport.call!/4`, ...) raise it. The fields:

    * `:type` - the Python exception's class name as a string
      (`"ZeroDivisionError"`, `"ModuleNotFoundError"`, ...), or `nil` when the
      failure is not a Python exception (a timeout, a worker that died, a bad
      option, a sandbox limit).
    * `:message` - the Python exception's message, or a sentence naming the
      problem.
    * `:traceback` - the Python traceback where pyport has one (jobs), else
      `nil`.
    * `:reason` - the raw reason pyport's Erlang API returned, e.g.
      `{:ZeroDivisionError, "division by zero"}`, `:timeout`,
      `{:worker_exited, {:signal, :sigkill}}`, `{:memory_limit, 1073741824}`.
      Match on it for the cases that are not Python exceptions; every reason
      is listed in the pyport docs (docs/elixir.md, docs/jobs.md).

  ## Examples

      iex> {:error, error} = Pyport.eval("1 / 0")
      iex> error.type
      "ZeroDivisionError"
      iex> Exception.message(error)
      "ZeroDivisionError: division by zero"

      iex> {:error, error} = Pyport.call(:time, :sleep, [5], timeout: 100)
      iex> {error.type, error.reason}
      {nil, :timeout}
  """

  defexception [:type, :message, :traceback, :reason]

  @type t :: %__MODULE__{
          type: String.t() | nil,
          message: String.t(),
          traceback: String.t() | nil,
          reason: term()
        }

  # pyport's own reasons shaped like a Python exception ({Name, Text}).
  @pyport_reasons [:frame_too_large, :no_runner, :bad_job, :forbidden, :worker_exited, :crashed]

  @doc """
  The error for a reason returned by pyport's Erlang API (`py`, `pyport`).

      iex> Pyport.Error.from_reason({:ValueError, "bad value"})
      %Pyport.Error{type: "ValueError", message: "bad value", reason: {:ValueError, "bad value"}}

      iex> Pyport.Error.from_reason(:timeout).message
      "the call did not finish within its timeout (the Python code was interrupted)"
  """
  @spec from_reason(term()) :: t()
  def from_reason({type, message} = reason)
      when ((is_atom(type) and type not in @pyport_reasons) or is_binary(type)) and
             is_binary(message) do
    %__MODULE__{type: to_string(type), message: message, reason: reason}
  end

  def from_reason({:exception, %{type: type, message: message} = info} = reason) do
    %__MODULE__{
      type: to_string(type),
      message: message,
      traceback: Map.get(info, :traceback),
      reason: reason
    }
  end

  def from_reason(reason) do
    %__MODULE__{message: describe(reason), reason: reason}
  end

  @impl true
  @spec message(t()) :: String.t()
  def message(%__MODULE__{type: nil, message: message}), do: message
  def message(%__MODULE__{type: type, message: message}), do: "#{type}: #{message}"

  # A sentence for the reasons a user meets most; the raw term otherwise.
  defp describe(:timeout),
    do: "the call did not finish within its timeout (the Python code was interrupted)"

  defp describe({:worker_exited, detail}),
    do: "the worker OS process exited while serving the request: #{inspect(detail)}"

  defp describe(:overloaded),
    do: "every worker of the pool has max_inflight requests in flight"

  defp describe({:atom_limit, name, limit}),
    do: "the result would create the atom #{inspect(name)} past the atom budget (#{limit})"

  defp describe({:result_too_large, key, limit}),
    do: "the result is larger than the pool's #{key} (#{limit})"

  defp describe({:frame_too_large, size, max}),
    do: "the request is #{size} bytes, more than the pool's max_frame_size (#{max})"

  defp describe({:no_pool, pool}), do: "no pool named #{inspect(pool)} is running"
  defp describe({:not_sandboxed, pool}), do: "pool #{inspect(pool)} is not sandboxed"
  defp describe({:bad_option, key}), do: "unknown option: #{inspect(key)}"

  defp describe({:invalid_option, key, value}),
    do: "invalid value for option #{inspect(key)}: #{inspect(value)}"

  defp describe({:invalid_kwargs, kwargs}),
    do: "kwargs must be a keyword list or a map: #{inspect(kwargs)}"

  defp describe({:unsupported_term, term}),
    do: "this value cannot be sent to Python: #{inspect(term)}"

  defp describe({name, text}) when is_atom(name) and is_binary(text), do: "#{name}: #{text}"
  defp describe(reason), do: inspect(reason)
end
