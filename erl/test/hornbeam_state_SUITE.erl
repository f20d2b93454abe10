%% hornbeam_state (Hornbeam's Erlang state API, on pyport_state) and the
%% state functions of hornbeam_erlang, sharing one table.
-module(hornbeam_state_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(M, hb_state).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [get_set_delete, any_term_keys, incr_and_decr, get_multi_and_set_multi, keys_and_size,
     clear, full_table, shared_with_python, python_shortcuts, python_keys_of_every_type,
     python_errors_are_runtime_errors].

init_per_suite(Config) ->
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 1,
                                                      python_path => [?config(data_dir, Config)]}}),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

init_per_testcase(_Case, Config) ->
    ok = hornbeam_state:clear(),
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

get_set_delete(_Config) ->
    ?assertEqual(undefined, hornbeam_state:get(<<"k">>)),
    ?assertEqual(ok, hornbeam_state:set(<<"k">>, #{a => 1})),
    ?assertEqual(#{a => 1}, hornbeam_state:get(<<"k">>)),
    ?assertEqual(ok, hornbeam_state:set(<<"k">>, 2)),
    ?assertEqual(2, hornbeam_state:get(<<"k">>)),
    ?assertEqual(ok, hornbeam_state:delete(<<"k">>)),
    ?assertEqual(ok, hornbeam_state:delete(<<"k">>)),
    ?assertEqual(undefined, hornbeam_state:get(<<"k">>)).

any_term_keys(_Config) ->
    Keys = [{user, 1}, atom_key, 42, [1, 2], <<"bin">>, "string"],
    [ok = hornbeam_state:set(K, {v, K}) || K <- Keys],
    [?assertEqual({v, K}, hornbeam_state:get(K)) || K <- Keys],
    %% A string key is a list, not the binary.
    ?assertEqual({v, "string"}, hornbeam_state:get("string")),
    ?assertEqual(undefined, hornbeam_state:get(<<"string">>)).

incr_and_decr(_Config) ->
    ?assertEqual(5, hornbeam_state:incr(<<"c">>, 5)),
    ?assertEqual(7, hornbeam_state:incr(<<"c">>, 2)),
    ?assertEqual(4, hornbeam_state:decr(<<"c">>, 3)),
    ?assertEqual(-2, hornbeam_state:decr(<<"new">>, 2)),
    ok = hornbeam_state:set(<<"text">>, <<"abc">>),
    ?assertError(badarg, hornbeam_state:incr(<<"text">>, 1)),
    ?assertError(badarg, hornbeam_state:decr(<<"text">>, 1)),
    ?assertError(badarg, hornbeam_state:incr(<<"c">>, 1.5)),
    ?assertEqual(<<"abc">>, hornbeam_state:get(<<"text">>)),
    %% Exact under concurrency.
    Refs = [pyport_test_util:async(fun() -> [hornbeam_state:incr(<<"par">>, 1)
                                             || _ <- lists:seq(1, 500)] end)
            || _ <- lists:seq(1, 8)],
    [pyport_test_util:await(R) || R <- Refs],
    ?assertEqual(4000, hornbeam_state:get(<<"par">>)).

get_multi_and_set_multi(_Config) ->
    ?assertEqual(ok, hornbeam_state:set_multi([{<<"a">>, 1}, {<<"b">>, 2}, {c, 3}])),
    ?assertEqual(#{<<"a">> => 1, c => 3}, hornbeam_state:get_multi([<<"a">>, c, <<"missing">>])),
    %% A key holding `undefined' is found.
    ok = hornbeam_state:set(u, undefined),
    ?assertEqual(#{u => undefined}, hornbeam_state:get_multi([u])),
    ?assertEqual(#{}, hornbeam_state:get_multi([])),
    ?assertEqual(ok, hornbeam_state:set_multi([])).

keys_and_size(_Config) ->
    ok = hornbeam_state:set_multi([{<<"user:1">>, a}, {<<"user:2">>, b}, {<<"other">>, c},
                                   {{user, 3}, d}, {'user:4', e}]),
    ?assertEqual(5, hornbeam_state:size()),
    ?assertEqual(lists:sort([<<"user:1">>, <<"user:2">>, <<"other">>, {user, 3}, 'user:4']),
                 lists:sort(hornbeam_state:keys())),
    %% A prefix selects binary keys only.
    ?assertEqual([<<"user:1">>, <<"user:2">>], lists:sort(hornbeam_state:keys(<<"user:">>))),
    ?assertEqual([], hornbeam_state:keys(<<"nobody">>)).

clear(_Config) ->
    ok = hornbeam_state:set_multi([{N, N} || N <- lists:seq(1, 10)]),
    ?assertEqual(10, hornbeam_state:size()),
    ?assertEqual(ok, hornbeam_state:clear()),
    ?assertEqual(0, hornbeam_state:size()),
    ?assertEqual([], hornbeam_state:keys()).

full_table(_Config) ->
    %% pyport bounds the table (max_state_entries); Hornbeam's facade raises.
    Key = {pyport_state, max_entries},
    Old = persistent_term:get(Key),
    persistent_term:put(Key, 3),
    try
        ok = hornbeam_state:set_multi([{1, a}, {2, b}]),
        ?assertError({state_full, 3}, hornbeam_state:set_multi([{3, c}, {4, d}])),
        ?assertEqual(undefined, hornbeam_state:get(3)),
        ok = hornbeam_state:set(3, c),
        ?assertError({state_full, 3}, hornbeam_state:set(4, d)),
        ?assertError({state_full, 3}, hornbeam_state:incr(5, 1)),
        %% Existing keys still change.
        ok = hornbeam_state:set(1, z),
        ok = hornbeam_state:set_multi([{2, y}, {3, x}]),
        ?assertEqual(3, hornbeam_state:size()),
        {ok, [<<"StateFullError">>, true]} = py:call(?M, set_error, [<<"new">>, 1])
    after
        persistent_term:put(Key, Old)
    end.

shared_with_python(_Config) ->
    ok = hornbeam_state:set(<<"from_erlang">>, [1, 2]),
    ?assertEqual({ok, [1, 2]}, py:call(?M, get, [<<"from_erlang">>])),
    {ok, true} = py:call(?M, set, [<<"from_python">>, #{<<"x">> => 1}]),
    ?assertEqual(#{<<"x">> => 1}, hornbeam_state:get(<<"from_python">>)),
    ?assertEqual({ok, none}, py:call(?M, get, [<<"missing">>])),
    ?assertEqual({ok, #{<<"from_erlang">> => [1, 2], <<"missing">> => none}},
                 py:call(?M, get_multi, [[<<"from_erlang">>, <<"missing">>]])).

python_shortcuts(_Config) ->
    ?assertEqual({ok, [#{<<"n">> => 1}, 1, 5, 4, 2, none, 12, 7]}, py:call(?M, shortcuts, [])),
    ?assertEqual(7, hornbeam_state:get(<<"sc:n">>)).

python_keys_of_every_type(_Config) ->
    {ok, true} = py:call(?M, atom_key, []),
    ok = hornbeam_state:set({user, 1}, x),
    ok = hornbeam_state:set(<<"user:2">>, y),
    {ok, All} = py:call(?M, keys, []),
    ?assertEqual(lists:sort([hb_atom_key, {<<"tuple">>, 2}, {user, 1}, <<"user:2">>]),
                 lists:sort(All)),
    ?assertEqual({ok, [<<"user:2">>]}, py:call(?M, keys, [<<"user:">>])),
    ?assertEqual({ok, []}, py:call(?M, keys, [<<"zzz">>])).

python_errors_are_runtime_errors(_Config) ->
    ok = hornbeam_state:set(<<"text">>, <<"abc">>),
    %% Hornbeam raises RuntimeError; pyport's TypeError is kept as well.
    ?assertEqual({ok, [<<"TypeError">>, true]}, py:call(?M, incr_error, [<<"text">>])).
