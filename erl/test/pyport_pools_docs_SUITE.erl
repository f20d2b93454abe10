%% The examples of docs/pools.md, run as written: the Python block (its
%% first line `# file: NAME.py') is put on the default pool's path, and
%% every Erlang block is evaluated in order; its `=' matches are the
%% assertions. A failing block fails the test with its line in the doc.
-module(pyport_pools_docs_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(DOC, "docs/pools.md").

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [pools_examples].

init_per_suite(Config) ->
    Blocks = fenced_blocks(find_doc(filename:dirname(code:which(?MODULE)))),
    Dir = filename:join(?config(priv_dir, Config), "python"),
    ok = filelib:ensure_path(Dir),
    [save_module(Dir, Text) || {python, _, Text} <- Blocks],
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Dir]}}),
    {ok, _} = application:ensure_all_started(pyport),
    [{blocks, Blocks} | Config].

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

pools_examples(Config) ->
    Erlang = [{Line, Text} || {erlang, Line, Text} <- ?config(blocks, Config)],
    ?assert(length(Erlang) >= 10),
    lists:foreach(fun evaluate/1, Erlang).

evaluate({Line, Text}) ->
    {ok, Tokens, _} = erl_scan:string(Text, Line),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    try
        erl_eval:exprs(Exprs, erl_eval:new_bindings())
    catch
        Class:Reason:Stack ->
            ct:pal("example at ~s:~b failed:~n~s", [?DOC, Line, Text]),
            erlang:raise(Class, {example_failed, ?DOC, Line, Reason}, Stack)
    end.

%% The doc, from this suite's directory upwards (rebar3 copies tests under
%% erl/_build).
find_doc(Dir) ->
    case file:read_file(filename:join(Dir, ?DOC)) of
        {ok, Bin} -> unicode:characters_to_list(Bin);
        {error, _} when Dir =:= "/" -> ct:fail({not_found, ?DOC});
        {error, _} -> find_doc(filename:dirname(Dir))
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

save_module(Dir, "# file: " ++ Rest = Text) ->
    [Name | _] = string:split(Rest, "\n"),
    ok = file:write_file(filename:join(Dir, Name), unicode:characters_to_binary(Text));
save_module(_Dir, Text) ->
    ct:fail({python_block_without_file_line, lists:sublist(Text, 60)}).
