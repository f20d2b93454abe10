%% py:shared_dict_* and Python's erlang.SharedDict (docs/channels.md): one
%% dict seen by Erlang and every worker, bounded, freed with its owner.
-module(py_shared_dict_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [erlang_api, shared_across_workers, python_dict_api, entry_limit, byte_limit,
     destroy_and_badarg, owner_exit_frees].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2, python_path => [?config(data_dir, Config)]}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    Config.

erlang_api(_Config) ->
    {ok, D} = py:shared_dict_new(),
    ?assertEqual(undefined, py:shared_dict_get(D, <<"k">>)),
    ?assertEqual(dflt, py:shared_dict_get(D, <<"k">>, dflt)),
    ok = py:shared_dict_set(D, <<"k">>, #{a => [1, 2]}),
    ?assertEqual(#{a => [1, 2]}, py:shared_dict_get(D, <<"k">>)),
    ok = py:shared_dict_set(D, <<"j">>, 2),
    ?assertEqual([<<"j">>, <<"k">>], lists:sort(py:shared_dict_keys(D))),
    ok = py:shared_dict_del(D, <<"k">>),
    ok = py:shared_dict_del(D, <<"k">>),
    ?assertEqual([<<"j">>], py:shared_dict_keys(D)),
    ?assertMatch({error, {unsupported_term, _}}, py:shared_dict_set(D, <<"bad">>, [a | b])),
    ?assertError(badarg, py:shared_dict_get(D, not_a_binary)).

shared_across_workers(_Config) ->
    {ok, D} = py:shared_dict_new(),
    ?assertEqual({ok, <<"v1">>}, py:call(py:context(1), sd_mod, put, [D, <<"k">>, <<"v1">>])),
    ?assertEqual({ok, <<"v1">>}, py:call(py:context(2), sd_mod, get, [D, <<"k">>])),
    ?assertEqual(<<"v1">>, py:shared_dict_get(D, <<"k">>)),
    ok = py:shared_dict_set(D, <<"k">>, {tuple, 1}),
    ?assertEqual({ok, {tuple, 1}}, py:call(py:context(2), sd_mod, get, [D, <<"k">>])).

python_dict_api(_Config) ->
    {ok, D} = py:shared_dict_new(),
    ?assertEqual({ok, [true, false, [<<"a">>, <<"b">>], [1, 2, #{<<"x">> => none}], 2,
                       <<"keyerror">>, <<"del_keyerror">>, <<"typeerror">>]},
                 py:call(py:context(1), sd_mod, ops, [D])).

entry_limit(_Config) ->
    {ok, D} = pyport_shared_dict:new(#{max_entries => 10}),
    %% A worker filling it gets an error, the node keeps 10 entries.
    {ok, {10, Msg}} = py:call(py:context(1), sd_mod, fill, [D, 100]),
    ?assertMatch({_, _}, binary:match(Msg, <<"full">>)),
    ?assertEqual(10, length(py:shared_dict_keys(D))),
    ?assertEqual({error, {shared_dict_full, entries, 10}}, py:shared_dict_set(D, <<"new">>, 1)),
    %% Replacing an existing key is not a new entry.
    ok = py:shared_dict_set(D, <<"k1">>, replaced).

byte_limit(_Config) ->
    {ok, D} = pyport_shared_dict:new(#{max_bytes => 10000}),
    ?assertEqual({error, {shared_dict_full, bytes, 10000}},
                 py:shared_dict_set(D, <<"big">>, binary:copy(<<"x">>, 20000))),
    ok = py:shared_dict_set(D, <<"small">>, binary:copy(<<"x">>, 5000)),
    ?assertMatch({error, {shared_dict_full, bytes, 10000}},
                 py:shared_dict_set(D, <<"second">>, binary:copy(<<"x">>, 6000))),
    %% Overwriting the key frees its old size.
    ok = py:shared_dict_set(D, <<"small">>, binary:copy(<<"x">>, 9000)),
    #{bytes := B} = pyport_shared_dict:info(D),
    ?assert(B =< 10000),
    ?assertEqual({error, {invalid_option, max_bytes, 0}}, pyport_shared_dict:new(#{max_bytes => 0})).

destroy_and_badarg(_Config) ->
    {ok, D} = py:shared_dict_new(),
    ok = py:shared_dict_set(D, <<"k">>, 1),
    ok = py:shared_dict_destroy(D),
    ok = py:shared_dict_destroy(D),
    ?assertError(badarg, py:shared_dict_get(D, <<"k">>)),
    ?assertError(badarg, py:shared_dict_set(D, <<"k">>, 2)),
    ?assertError(badarg, py:shared_dict_keys(D)),
    ?assertMatch({ok, <<"the shared dict was destroyed">>},
                 py:call(py:context(1), sd_mod, after_destroy, [D])),
    %% Python may destroy it too.
    {ok, D2} = py:shared_dict_new(),
    {ok, none} = py:call(py:context(1), sd_mod, destroy, [D2]),
    ?assertError(badarg, py:shared_dict_get(D2, <<"k">>)).

owner_exit_frees(_Config) ->
    Ets0 = length(ets:all()),
    Procs0 = erlang:system_info(process_count),
    Self = self(),
    Owner = spawn(fun() ->
                          {ok, D} = py:shared_dict_new(),
                          ok = py:shared_dict_set(D, <<"k">>, 1),
                          Self ! {dict, D},
                          receive stop -> ok end
                  end),
    D = receive {dict, X} -> X end,
    ?assertEqual(Ets0 + 1, length(ets:all())),
    Owner ! stop,
    pyport_test_util:wait_until(fun() -> length(ets:all()) =:= Ets0 end),
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    ?assertMatch({ok, <<"the shared dict was destroyed">>},
                 py:call(py:context(1), sd_mod, after_destroy, [D])),
    pyport_test_util:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 end).
