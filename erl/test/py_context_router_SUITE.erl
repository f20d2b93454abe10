%% erlang_python's py_context_router (reference section 1.7) over pyport
%% pools, and py:register_pool/2.
-module(py_context_router_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, end_per_testcase/2]).
-export([start_stop_and_started/1, routed_context_is_kept/1, bind_and_unbind/1,
         pools_of_contexts/1, registrations/1, start_failure_shape/1]).

all() ->
    [start_stop_and_started, routed_context_is_kept, bind_and_unbind, pools_of_contexts,
     registrations, start_failure_shape].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

end_per_testcase(_Case, _Config) ->
    %% Pool default as the suite started it: two contexts.
    case py_context_router:num_contexts() of
        2 -> ok;
        _ -> ok = py_context_router:stop(), {ok, _} = py_context_router:start(#{contexts => 2})
    end,
    pyport_test_util:stop_other_pools(),
    [py:unregister_pool(K) || {K, _} <- py_context_router:list_pool_registrations()],
    ok.

start_stop_and_started(_Config) ->
    ?assert(py_context_router:is_started()),
    {ok, Ctxs} = py_context_router:start(),
    ?assertEqual(Ctxs, py_context_router:contexts()),
    ?assertEqual(2, py_context_router:num_contexts()),
    ok = py_context_router:stop(),
    ?assertNot(py_context_router:is_started()),
    ?assertEqual(0, py_context_router:num_contexts()),
    ?assertEqual([], py_context_router:contexts()),
    {ok, New} = py_context_router:start(#{contexts => 3, mode => worker}),
    ?assertEqual(3, length(New)),
    ?assertEqual(3, py_context_router:num_contexts()).

routed_context_is_kept(_Config) ->
    Ctx = py_context_router:get_context(),
    ?assert(lists:member(Ctx, py_context_router:contexts())),
    [?assertEqual(Ctx, py_context_router:get_context()) || _ <- lists:seq(1, 10)],
    ?assertEqual(Ctx, py_context_router:get_context(default)),
    %% The process's context-less calls go there too.
    {ok, OsPid} = py:call(Ctx, os, getpid, []),
    [?assertEqual({ok, OsPid}, py:call(os, getpid, [])) || _ <- lists:seq(1, 10)],
    ?assertEqual(py:context(2), py_context_router:get_context(2)).

bind_and_unbind(_Config) ->
    [C1, C2] = py_context_router:contexts(),
    ok = py_context_router:bind_context(C2),
    ?assertEqual(C2, py_context_router:get_context()),
    {ok, P2} = py:call(C2, os, getpid, []),
    [?assertEqual({ok, P2}, py:call(os, getpid, [])) || _ <- lists:seq(1, 5)],
    ok = py_context_router:bind_context(default, C1),
    ?assertEqual(C1, py_context_router:get_context()),
    %% A process's namespace survives unbinding.
    ok = py:exec(C1, <<"kept = 1">>),
    ok = py_context_router:unbind_context(),
    ?assertEqual({ok, 1}, py:eval(C1, <<"kept">>)),
    ok = py_context_router:unbind_context(default),
    {ok, [Io]} = py_context_router:start_pool(io, 1),
    ?assertError({context_of_other_pool, io}, py_context_router:bind_context(default, Io)).

pools_of_contexts(_Config) ->
    ?assertNot(py_context_router:pool_started(io)),
    {ok, [A, B]} = py_context_router:start_pool(io, 2),
    %% An existing pool is returned as it is.
    ?assertEqual({ok, [A, B]}, py_context_router:start_pool(io, 5, owngil)),
    ?assert(py_context_router:pool_started(io)),
    ?assertEqual(2, py_context_router:num_contexts(io)),
    ?assertEqual([A, B], py_context_router:contexts(io)),
    Ctx = py_context_router:get_context(io),
    ?assert(lists:member(Ctx, [A, B])),
    ?assertEqual(Ctx, py_context_router:get_context(io)),
    ok = py_context_router:stop_pool(io),
    ?assertNot(py_context_router:pool_started(io)),
    ?assertEqual(0, py_context_router:num_contexts(io)).

registrations(_Config) ->
    {ok, [Io]} = py_context_router:start_pool(io, 1),
    {ok, IoPid} = py:call(Io, os, getpid, []),
    ok = py_context_router:register_pool(io, os),
    ?assertEqual(io, py_context_router:lookup_pool(os, getpid)),
    ?assertEqual({ok, IoPid}, py:call(os, getpid, [])),
    ok = py_context_router:register_pool(default, os, getpid),
    ?assertEqual(default, py_context_router:lookup_pool(os, getpid)),
    ?assertEqual(io, py_context_router:lookup_pool(os, getcwd)),
    ?assertEqual(lists:sort([{{os, '_'}, io}, {{os, getpid}, default}]),
                 lists:sort(py_context_router:list_pool_registrations())),
    ok = py_context_router:unregister_pool(os, getpid),
    ok = py_context_router:unregister_pool(os),
    ?assertEqual([], py_context_router:list_pool_registrations()),
    ?assertEqual(default, py_context_router:lookup_pool(os, getpid)),
    %% Atoms only, as erlang_python.
    ?assertError(function_clause, py_context_router:register_pool(io, <<"os">>)).

start_failure_shape(_Config) ->
    ?assertMatch({error, {context_start_failed, empty, 0, _}},
                 py_context_router:start_pool(empty, 0)),
    ?assertNot(py_context_router:pool_started(empty)).
