%% Migration scenario: an application written for Hornbeam's integration
%% API (hornbeam_migration_SUITE_data/hornbeam_app.py: hooks registered in
%% Python and used from another worker and from Erlang, state and its
%% patterns, pub/sub to an Erlang subscriber, registered functions,
%% hornbeam_ml's cache) runs unchanged, with the Erlang side written
%% against hornbeam, hornbeam_hooks, hornbeam_state and hornbeam_pubsub.
-module(hornbeam_migration_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(APP, hornbeam_app).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [hornbeam_application, ml_cache_is_bounded, hornbeam_dist_from_erlang].

init_per_suite(Config) ->
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2,
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

ctx(N) -> py:context(N).

app(N, F, Args) ->
    {ok, V} = py:call(ctx(N), ?APP, F, Args),
    V.

hornbeam_application(_Config) ->
    Self = self(),
    %% The Erlang side of the app, as Hornbeam's guides write it.
    ok = hornbeam:register_function(validate_token, fun([<<"good">>]) -> {ok, 7};
                                                       ([_]) -> {error, invalid_token} end),
    ok = hornbeam:register_function(feature_enabled, ?MODULE, feature_enabled),
    ok = hornbeam:register_function(log_event, fun([Event, Data]) -> Self ! {event, Event, Data} end),
    ok = hornbeam_hooks:reg(<<"auth">>, fun(<<"verify_token">>, [<<"t0k">>], _) -> {ok, 42};
                                           (<<"verify_token">>, [_], _) -> error(invalid_token)
                                        end),
    ok = hornbeam_pubsub:subscribe(<<"product:1">>),

    %% Worker 1 starts up and registers its hooks.
    Pid1 = app(1, lifespan_startup, []),
    ?assertEqual([<<"auth">>, <<"embeddings">>, <<"llm">>], hornbeam_hooks:all()),

    %% Hooks from another worker...
    ?assertEqual(#{<<"embedding">> => [2, 209], <<"model_in">> => Pid1},
                 app(2, embed_view, [<<"hi">>])),
    ?assertEqual(<<"a|b|c|">>, app(2, generate_view, [<<"a b c">>])),
    ?assertEqual(#{<<"temperature">> => 0.5}, app(2, options_view, [])),
    ?assertEqual([3, 294], app(2, background_view, [<<"abc">>])),
    ?assertEqual(#{<<"user">> => {ok, 42}}, app(2, auth_view, [<<"t0k">>])),
    ?assertEqual(#{<<"error">> => <<"Unauthorized">>}, app(2, auth_view, [<<"bad">>])),
    Failed = app(2, bad_action, []),
    ?assertMatch({0, _}, binary:match(Failed, <<"Execute failed: ">>)),
    %% ... from the registering worker, and from Erlang.
    ?assertEqual(#{<<"embedding">> => [2, 209], <<"model_in">> => Pid1},
                 app(1, embed_view, [<<"hi">>])),
    ?assertEqual({ok, [2, 209]},
                 hornbeam_hooks:execute(<<"embeddings">>, <<"encode">>, [<<"hi">>], #{})),
    {ok, Gen} = hornbeam_hooks:stream(<<"llm">>, <<"generate">>, [<<"x y">>], #{}),
    ?assertEqual([{value, <<"x">>}, {value, <<"y">>}, done], [Gen(), Gen(), Gen()]),
    {ok, Task} = hornbeam_hooks:execute_async(<<"embeddings">>, <<"loaded_by">>, [], #{}),
    ?assertEqual({ok, Pid1}, hornbeam_hooks:await_result(Task, 10000)),

    %% Shared state patterns.
    ?assertEqual([true, true, true, false], [app(N rem 2 + 1, check_rate_limit, [<<"u1">>])
                                             || N <- lists:seq(1, 4)]),
    ?assertEqual(4, hornbeam_state:get(<<"rate:u1">>)),
    app(1, track_request, [<<"/a">>, 200]),
    ?assertEqual([<<"metrics:requests:/a">>, <<"metrics:requests:/b">>, <<"metrics:status:200">>],
                 app(2, track_request, [<<"/b">>, 200])),
    ok = hornbeam_state:set(<<"quota">>, 10),
    ?assertEqual(7, app(1, spend_quota, [3])),
    First = app(1, get_product, [1]),
    ?assertEqual(First, app(2, get_product, [1])),
    ok = hornbeam_state:set_multi([{<<"user:1">>, #{name => <<"Alice">>}}]),
    ?assertEqual(#{<<"user:1">> => #{name => <<"Alice">>}, <<"user:2">> => none},
                 app(2, users, [[1, 2]])),

    %% Pub/sub to an Erlang subscriber.
    ?assertEqual(1, app(2, update_product, [1, #{<<"price">> => 10}])),
    receive
        {pubsub, <<"product:1">>, Msg} ->
            ?assertEqual(#{<<"type">> => <<"updated">>, <<"product_id">> => 1,
                           <<"data">> => #{<<"price">> => 10}}, Msg)
    after 5000 -> ct:fail(no_publish)
    end,
    ?assertEqual(#{<<"price">> => 10}, hornbeam_state:get(<<"product:1">>)),

    %% Registered functions: ('ok', V) unwrapped, ('error', R) raised.
    ?assertEqual(#{<<"user">> => 7}, app(1, login, [<<"good">>])),
    ?assertEqual(#{<<"error">> => <<"Invalid token">>}, app(1, login, [<<"bad">>])),
    ?assertEqual(true, app(2, feature, [<<"new_ui">>, 5])),
    ?assertEqual(false, app(2, feature, [<<"beta">>, 5])),
    true = app(2, log_login, [123]),
    receive {event, <<"user_login">>, #{<<"user_id">> := 123}} -> ok
    after 5000 -> ct:fail(no_cast)
    end,

    %% hornbeam_ml: computed once for all workers.
    ?assertEqual([5, <<"HELLO">>], app(1, embed_cached, [<<"hello">>])),
    ?assertEqual([5, <<"HELLO">>], app(1, embed_cached, [<<"hello">>])),
    ?assertEqual([5, <<"HELLO">>], app(2, embed_cached, [<<"hello">>])),
    ?assertEqual(1, hornbeam_state:get(<<"model_runs">>)),
    ?assertEqual(#{<<"hits">> => 2, <<"misses">> => 1, <<"hit_rate">> => 2 / 3},
                 app(2, ml_stats, [])),

    %% Shutdown removes the worker's hooks.
    true = app(1, lifespan_shutdown, []),
    ?assertEqual([<<"auth">>], hornbeam_hooks:all()),
    ok = hornbeam_pubsub:unsubscribe(<<"product:1">>),
    [ok = hornbeam:unregister_function(F) || F <- [validate_token, feature_enabled, log_event]],
    ok = hornbeam_hooks:unreg(<<"auth">>).

feature_enabled([<<"new_ui">>, _UserId]) -> true;
feature_enabled([_, _]) -> false.

ml_cache_is_bounded(_Config) ->
    Code = <<"import hornbeam_ml, hornbeam_app\n"
             "hornbeam_ml.set_max_entries(2)\n"
             "out = [hornbeam_app.embed_cached(t) for t in ['a', 'bb', 'ccc', 'ccc', 'a']]\n">>,
    ok = py:exec(ctx(1), Code),
    ?assertEqual({ok, [[1, <<"A">>], [2, <<"BB">>], [3, <<"CCC">>], [3, <<"CCC">>], [1, <<"A">>]]},
                 py:eval(ctx(1), <<"out">>)),
    %% Two stored; the third input was computed each time it came.
    ?assertEqual(2, length(hornbeam_state:keys(<<"ml:">>))),
    ?assertEqual(2, hornbeam_state:get(<<"ml_cache_entries">>)),
    ?assertEqual(4, hornbeam_state:get(<<"model_runs">>)),
    ?assertEqual({ok, 2}, py:eval(ctx(1), <<"hornbeam_ml.cache_clear()">>)),
    ?assertEqual([], hornbeam_state:keys(<<"ml:">>)),
    ?assertEqual(0, hornbeam_state:get(<<"ml_cache_entries">>)),
    ?assertEqual({ok, [3, <<"CCC">>]}, py:eval(ctx(1), <<"hornbeam_app.embed_cached('ccc')">>)),
    ?assertEqual(1, length(hornbeam_state:keys(<<"ml:">>))),
    ok = py:exec(ctx(1), <<"hornbeam_ml.set_max_entries(10000)">>),
    %% Arrays that differ only where str() elides them are two inputs.
    ok = py:exec(ctx(1), <<"import numpy\n"
                           "a = numpy.zeros(5000); b = a.copy(); b[2500] = 1\n"
                           "runs = []\n"
                           "f = lambda x: runs.append(1) or float(x.sum())\n"
                           "got = [hornbeam_ml.cached_inference(f, x) for x in (a, b, a, b)]\n">>),
    ?assertEqual({ok, [[0.0, 1.0, 0.0, 1.0], 2]}, py:eval(ctx(1), <<"[got, len(runs)]">>)),
    %% A full shared state is no error: the result is not stored.
    Key = {pyport_state, max_entries},
    Old = persistent_term:get(Key),
    persistent_term:put(Key, hornbeam_state:size()),
    try
        ?assertEqual({ok, [4, <<"DDDD">>]},
                     py:eval(ctx(1), <<"hornbeam_app.embed_cached('dddd')">>))
    after
        persistent_term:put(Key, Old)
    end.

hornbeam_dist_from_erlang(_Config) ->
    ?assertEqual({ok, 3}, hornbeam_dist:rpc_call(node(), erlang, abs, [-3], 5000)),
    ?assertEqual({ok, 3}, hornbeam_dist:rpc_call(atom_to_binary(node()), <<"erlang">>, "abs",
                                                 [-3], 5000)),
    ?assertMatch({error, {'EXIT', {undef, _}}},
                 hornbeam_dist:rpc_call(node(), hb_no_such_module, f, [], 5000)),
    Self = self(),
    ok = hornbeam_dist:rpc_cast(node(), erlang, send, [Self, cast_arrived]),
    receive cast_arrived -> ok after 5000 -> ct:fail(no_cast) end,
    ?assertEqual(node(), hornbeam_dist:node()),
    ?assertEqual(erlang:nodes(connected), hornbeam_dist:connected_nodes()),
    ?assertEqual(erlang:nodes(known), hornbeam_dist:nodes()),
    ?assertMatch({error, {invalid_name, _}}, hornbeam_dist:rpc_call(node(), {m}, f, [], 100)).
