%% Every example of docs/erlang-integration.md runs as written: each Python
%% block (first line `# file: NAME.py`) becomes a module on the pool's path,
%% each Erlang block is evaluated in order, its `=' matches being the
%% assertions. A block that fails fails the test, naming the block.
-module(pyport_docs_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(DOC, "docs/erlang-integration.md").

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [erlang_integration_examples].

init_per_suite(Config) ->
    Blocks = blocks(read_doc()),
    Dir = filename:join(?config(priv_dir, Config), "python"),
    ok = filelib:ensure_path(Dir),
    Modules = [write_module(Dir, Text) || {python, _Line, Text} <- Blocks],
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Dir]}}),
    {ok, _} = application:ensure_all_started(pyport),
    [{blocks, Blocks}, {modules, Modules} | Config].

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    persistent_term:erase({pyport_logging, level}),
    ok.

erlang_integration_examples(Config) ->
    Blocks = ?config(blocks, Config),
    Erlang = [{Line, Text} || {erlang, Line, Text} <- Blocks],
    ?assert(length(Erlang) >= 10),
    %% Every Python module is used by an Erlang example.
    AllErlang = lists:append([T || {_, T} <- Erlang]),
    [?assertNotEqual({module_unused, M}, case string:find(AllErlang, M) of
                                             nomatch -> {module_unused, M};
                                             _ -> used
                                         end) || M <- ?config(modules, Config)],
    lists:foreach(fun run_erlang/1, Erlang).

run_erlang({Line, Text}) ->
    {ok, Tokens, _} = erl_scan:string(Text, Line),
    Exprs = case erl_parse:parse_exprs(Tokens) of
                {ok, E} -> E;
                {error, Why} -> ct:fail({unparsable_example, ?DOC, Line, Why})
            end,
    try erl_eval:exprs(Exprs, erl_eval:new_bindings()) of
        {value, _, _} -> ok
    catch
        Class:Reason:Stack ->
            ct:pal("example at ~s:~b failed:~n~s", [?DOC, Line, Text]),
            erlang:raise(Class, {example_failed, ?DOC, Line, Reason}, Stack)
    end.

%% The doc, found from this suite's beam upwards (rebar3 runs tests from
%% erl/_build/...).
read_doc() ->
    read_doc(filename:dirname(code:which(?MODULE)), 8).

read_doc(_Dir, 0) ->
    ct:fail({not_found, ?DOC});
read_doc(Dir, N) ->
    Path = filename:join(Dir, ?DOC),
    case file:read_file(Path) of
        {ok, Bin} -> unicode:characters_to_list(Bin);
        {error, _} -> read_doc(filename:dirname(Dir), N - 1)
    end.

%% Fenced blocks: {python | erlang, FirstLineNumber, Text}.
blocks(Doc) ->
    blocks(string:split(Doc, "\n", all), 1, none, []).

blocks([], _N, none, Acc) ->
    lists:reverse(Acc);
blocks([], _N, {Lang, Start, _}, _Acc) ->
    ct:fail({unterminated_block, Lang, Start});
blocks([L | Rest], N, none, Acc) ->
    case string:trim(L) of
        "```python" -> blocks(Rest, N + 1, {python, N + 1, []}, Acc);
        "```erlang" -> blocks(Rest, N + 1, {erlang, N + 1, []}, Acc);
        "```" ++ _ = Other when Other =/= "```" -> ct:fail({unexpected_block, Other, N});
        _ -> blocks(Rest, N + 1, none, Acc)
    end;
blocks([L | Rest], N, {Lang, Start, Lines}, Acc) ->
    case string:trim(L) of
        "```" -> blocks(Rest, N + 1, none,
                        [{Lang, Start, lists:flatten(lists:join("\n", lists:reverse(Lines)))} | Acc]);
        _ -> blocks(Rest, N + 1, {Lang, Start, [L | Lines]}, Acc)
    end.

write_module(Dir, "# file: " ++ Rest = Text) ->
    [Name | _] = string:split(Rest, "\n"),
    ".py" = filename:extension(Name),
    ok = file:write_file(filename:join(Dir, Name), unicode:characters_to_binary(Text)),
    filename:basename(Name, ".py");
write_module(_Dir, Text) ->
    ct:fail({python_example_without_file_line, lists:sublist(Text, 80)}).
