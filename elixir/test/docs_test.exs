defmodule Pyport.DocsTest do
  # Runs every ```elixir block of docs/elixir.md that has `iex>` prompts, as
  # doctests run a module's examples: each prompt's expression is evaluated
  # (bindings carry on through the block) and compared with the expected
  # value that follows it, or with the `** (Module) message` it raises.
  use ExUnit.Case, async: false

  @doc_path Path.expand("../../docs/elixir.md", __DIR__)
  @external_resource @doc_path

  blocks =
    ~r/```elixir\n(.*?)```/s
    |> Regex.scan(File.read!(@doc_path), capture: :all_but_first)
    |> Enum.map(&hd/1)
    |> Enum.filter(&String.contains?(&1, "iex> "))

  test "the page has examples to run" do
    assert length(unquote(Macro.escape(blocks))) >= 7
  end

  for {block, i} <- Enum.with_index(blocks, 1) do
    test "docs/elixir.md example #{i}" do
      run_block(unquote(block))
    end
  end

  defp run_block(block) do
    Enum.reduce(steps(block), [], fn
      {code, "** (" <> _ = expected}, binding ->
        [_, module, message] = Regex.run(~r/^\*\* \((\S+)\) (.*)$/s, expected)

        error = assert_raise Module.concat([module]), fn -> Code.eval_string(code, binding) end

        assert Exception.message(error) == message
        binding

      {code, ""}, binding ->
        {_, binding} = Code.eval_string(code, binding)
        binding

      {code, expected}, binding ->
        {value, binding} = Code.eval_string(code, binding)
        {want, _} = Code.eval_string(expected, binding)
        assert value === want, "#{code}\n got: #{inspect(value)}\nwant: #{expected}"
        binding
    end)
  end

  # [{code, expected}]: `iex>` starts an expression, `...>` continues it,
  # other lines up to the next prompt are what it should give.
  defp steps(block) do
    block
    |> String.split("\n")
    |> Enum.reduce([], fn
      "iex> " <> code, acc -> [{code, []} | acc]
      "...> " <> code, [{prev, []} | acc] -> [{prev <> "\n" <> code, []} | acc]
      "", acc -> acc
      line, [{code, expected} | acc] -> [{code, expected ++ [line]} | acc]
    end)
    |> Enum.reverse()
    |> Enum.map(fn {code, expected} -> {code, Enum.join(expected, "\n")} end)
  end
end
