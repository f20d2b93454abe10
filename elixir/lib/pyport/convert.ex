defmodule Pyport.Convert do
  @moduledoc """
  How Elixir values become the Erlang terms pyport sends to Python, and
  how results come back.

  pyport's own mapping (docs/type-mapping.md) applies to every term; this
  module adds what an Elixir user expects on top of it:

  | Elixir value | Python sees |
  | --- | --- |
  | `"text"` (a string is a UTF-8 binary) | `str` |
  | `<<255, 0>>` (not UTF-8) or `{:bytes, bin}` | `bytes` |
  | `'text'` (a charlist) | `list` of `int` - send a string for a `str` |
  | `nil` | `None` |
  | `true`, `false` | `True`, `False` |
  | other atoms (`:ok`, `MyApp`) | `erlang.Atom('ok')`, `erlang.Atom('Elixir.MyApp')`, `str` subclasses |
  | `%Date{}`, `%Time{}`, `%NaiveDateTime{}`, `%DateTime{}` | ISO 8601 `str` (`date.fromisoformat` reads it) |
  | `%MapSet{}` | `list` |
  | any other struct (`%User{name: "a"}`, `1..3`) | `dict` of its fields, without `__struct__` |
  | keyword list as an argument (`[a: 1]`) | `list` of 2-tuples - use the `:kwargs` option for keyword arguments |

  Results: Python's `None` (and the atom `:none`) comes back as `nil`,
  everywhere in the value; everything else as pyport's mapping says
  (`str` -> string, `dict` -> map with string keys, `tuple` -> tuple, ...).

  Both directions walk the whole value once (binaries are not copied).
  """

  # Calendar structs have one unambiguous text form Python parses.
  @iso8601 [Date, Time, NaiveDateTime, DateTime]

  @doc """
  The term to send for an Elixir value.

      iex> Pyport.Convert.to_python(%{when: ~D[2024-02-29], tags: MapSet.new([:a])})
      %{when: "2024-02-29", tags: [:a]}

      iex> Pyport.Convert.to_python(nil)
      nil
  """
  @spec to_python(term()) :: term()
  def to_python(%module{} = struct) when module in @iso8601, do: module.to_iso8601(struct)
  def to_python(%MapSet{} = set), do: set |> MapSet.to_list() |> to_python()
  def to_python(%_{} = struct), do: struct |> Map.from_struct() |> to_python()

  def to_python(map) when is_map(map),
    do: Map.new(map, fn {key, value} -> {to_python(key), to_python(value)} end)

  def to_python(list) when is_list(list), do: list(list, &to_python/1)

  def to_python(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> list(&to_python/1) |> List.to_tuple()

  def to_python(other), do: other

  @doc """
  The Elixir value for a result: `:none` (Python's `None`) becomes `nil`.

      iex> Pyport.Convert.from_python(%{"a" => :none, "b" => [1, :none]})
      %{"a" => nil, "b" => [1, nil]}
  """
  @spec from_python(term()) :: term()
  def from_python(:none), do: nil

  def from_python(map) when is_map(map),
    do: Map.new(map, fn {key, value} -> {from_python(key), from_python(value)} end)

  def from_python(list) when is_list(list), do: list(list, &from_python/1)

  def from_python(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> list(&from_python/1) |> List.to_tuple()

  def from_python(other), do: other

  @doc """
  Keyword arguments (a keyword list or a map) as the map pyport takes. A
  keyword list's first value for a key wins, as with `Keyword.get/2`; a
  struct gives its fields.
  Anything else is passed on for pyport to refuse (`{:invalid_kwargs, _}`).

      iex> Pyport.Convert.kwargs(indent: 2, sort_keys: true)
      %{indent: 2, sort_keys: true}
  """
  @spec kwargs(keyword() | map() | term()) :: map() | term()
  def kwargs(kwargs) when is_map(kwargs), do: to_python(kwargs)

  def kwargs(kwargs) when is_list(kwargs) do
    if Keyword.keyword?(kwargs) do
      kwargs |> Enum.reverse() |> Map.new() |> to_python()
    else
      kwargs
    end
  end

  def kwargs(other), do: other

  @doc """
  Options (a keyword list or a map) as the map `py` takes; what `py` does
  not know it refuses (`{:bad_option, key}`), and anything else too.
  """
  @spec options(keyword() | map() | term()) :: map() | term()
  def options(opts) when is_map(opts), do: opts

  def options(opts) when is_list(opts) do
    if Keyword.keyword?(opts), do: opts |> Enum.reverse() |> Map.new(), else: opts
  end

  def options(other), do: other

  # Maps over a list that may be improper (its tail is kept as it is, and
  # pyport refuses it with {unsupported_term, _}).
  defp list([head | tail], fun), do: [fun.(head) | list(tail, fun)]
  defp list([], _fun), do: []
  defp list(tail, _fun), do: tail
end
