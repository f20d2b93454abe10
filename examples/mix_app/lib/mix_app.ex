defmodule MixApp do
  @moduledoc """
  The example's API: Python from this application's priv/python and from
  the standard library, through pyport (`:py`).
  """

  @doc "greeting.hello(name), from priv/python/greeting.py."
  @spec greet(String.t()) :: {:ok, String.t()} | {:error, term()}
  def greet(name), do: :py.call(:greeting, :hello, [name])

  @doc "statistics.mean(numbers), from Python's standard library."
  @spec mean([number()]) :: {:ok, float()} | {:error, term()}
  def mean(numbers), do: :py.call(:statistics, :mean, [numbers])

  @doc "What the tests expect of a running node: `:ok` or the first mismatch."
  @spec check() :: :ok | {:mismatch, term()}
  def check do
    case {greet("release"), mean([1, 2, 3, 4])} do
      {{:ok, "Hello, release, from Python"}, {:ok, 2.5}} -> :ok
      other -> {:mismatch, other}
    end
  end

  @doc "Start, call, stop; halts with status 0 when every step worked."
  @spec main() :: no_return()
  def main do
    {:ok, _} = Application.ensure_all_started(:mix_app)
    :ok = check()
    :ok = Application.stop(:mix_app)
    :ok = Application.stop(:pyport)
    IO.puts("mix_app: start, call, stop: ok")
    System.halt(0)
  end
end
