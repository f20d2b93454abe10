%% Running the examples of a doc page as tests (pyport_docs_SUITE,
%% pyport_pools_docs_SUITE). In the page, each ```python block starts with
%% `# file: NAME.py' and becomes that module on the pool's path; each
%% ```erlang block is evaluated as written, in order, so its `=' matches are
%% the assertions. Any other fenced block fails: an example nobody runs
%% cannot stay true.
-module(pyport_doc_examples).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([setup/2, run/2]).

-type block() :: {python | erlang, Line :: pos_integer(), Text :: string()}.

%% @doc Reads Doc (a path from the repository root), writes its Python
%% modules into the test's priv_dir; returns that directory (for the pool's
%% python_path) and the blocks.
-spec setup(string(), list()) -> {string(), [block()]}.
setup(Doc, Config) ->
    Blocks = fenced_blocks(find_doc(Doc, filename:dirname(code:which(?MODULE)))),
    Dir = filename:join(?config(priv_dir, Config), "python"),
    ok = filelib:ensure_path(Dir),
    [save_module(Dir, Text) || {python, _, Text} <- Blocks],
    {Dir, Blocks}.

%% @doc Evaluates the Erlang blocks in order (a failure names the block's
%% line in Doc) and checks that each Python module is used by one of them.
%% Returns how many Erlang blocks ran.
-spec run(string(), [block()]) -> non_neg_integer().
run(Doc, Blocks) ->
    Erlang = [{Line, Text} || {erlang, Line, Text} <- Blocks],
    AllErlang = lists:append([T || {_, T} <- Erlang]),
    [?assertNotEqual(nomatch, string:find(AllErlang, Module), {module_unused, Module})
     || {python, _, Text} <- Blocks, Module <- [module_name(Text)]],
    lists:foreach(fun(Block) -> evaluate(Doc, Block) end, Erlang),
    length(Erlang).

evaluate(Doc, {Line, Text}) ->
    {ok, Tokens, _} = erl_scan:string(Text, Line),
    Exprs = case erl_parse:parse_exprs(Tokens) of
                {ok, E} -> E;
                {error, Why} -> ct:fail({unparsable_example, Doc, Line, Why})
            end,
    try
        erl_eval:exprs(Exprs, erl_eval:new_bindings())
    catch
        Class:Reason:Stack ->
            ct:pal("example at ~s:~b failed:~n~s", [Doc, Line, Text]),
            erlang:raise(Class, {example_failed, Doc, Line, Reason}, Stack)
    end.

%% The doc, from this module's directory upwards (rebar3 copies tests under
%% erl/_build).
find_doc(Doc, Dir) ->
    case file:read_file(filename:join(Dir, Doc)) of
        {ok, Bin} -> unicode:characters_to_list(Bin);
        {error, _} when Dir =:= "/" -> ct:fail({not_found, Doc});
        {error, _} -> find_doc(Doc, filename:dirname(Dir))
    end.

%% [{python | erlang, FirstLine, Text}] in document order.
fenced_blocks(Doc) ->
    fenced_blocks(string:split(Doc, "\n", all), 1, none, []).

fenced_blocks([], _N, none, Acc) ->
    lists:reverse(Acc);
fenced_blocks([], _N, {Lang, Start, _}, _Acc) ->
    ct:fail({unterminated_block, Lang, Start});
fenced_blocks([L | Rest], N, none, Acc) ->
    case string:trim(L) of
        "```python" -> fenced_blocks(Rest, N + 1, {python, N + 1, []}, Acc);
        "```erlang" -> fenced_blocks(Rest, N + 1, {erlang, N + 1, []}, Acc);
        "```" ++ Lang when Lang =/= "" -> ct:fail({untested_block, Lang, N});
        _ -> fenced_blocks(Rest, N + 1, none, Acc)
    end;
fenced_blocks([L | Rest], N, {Lang, Start, Lines}, Acc) ->
    case string:trim(L) of
        "```" ->
            Text = lists:flatten(lists:join("\n", lists:reverse(Lines))),
            fenced_blocks(Rest, N + 1, none, [{Lang, Start, Text} | Acc]);
        _ ->
            fenced_blocks(Rest, N + 1, {Lang, Start, [L | Lines]}, Acc)
    end.

save_module(Dir, Text) ->
    Name = module_name(Text),
    ok = file:write_file(filename:join(Dir, Name ++ ".py"), unicode:characters_to_binary(Text)).

module_name("# file: " ++ Rest) ->
    [File | _] = string:split(Rest, "\n"),
    ".py" = filename:extension(File),
    filename:basename(File, ".py");
module_name(Text) ->
    ct:fail({python_block_without_file_line, lists:sublist(Text, 60)}).
