%% Routing against real workers: least-loaded, bindings, process-bound
%% namespaces, shard keys, contexts and py:parallel.
-module(pyport_routing_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [least_loaded_avoids_a_busy_worker, bind_pins_every_call, bind_reuses_the_namespace_slot,
     process_namespaces_are_private, namespace_freed_when_process_exits,
     unbind_frees_the_namespace, namespace_survives_a_new_gen_server,
     context_shares_globals_between_processes, eval_locals_in_nested_scopes,
     shard_keys_pick_stable_slots, shard_spread_and_movement, shard_with_eval_and_cast,
     parallel_returns_results_in_order, parallel_spreads_over_workers, option_errors].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    _ = py:unbind(),
    ok.

%%%===================================================================
%%% Least-loaded
%%%===================================================================

least_loaded_avoids_a_busy_worker(Config) ->
    Flag = pyport_test_util:flag(Config),
    {ok, Busy} = os_pid_of(1),
    {ok, Free} = os_pid_of(2),
    Blocker = pyport_test_util:async(fun() -> py:call(py:context(1), ?F, wait_for_file, [Flag]) end),
    wait_until(fun() -> in_flight(1) =:= 1 end),
    %% Every call while slot 1 is busy goes to slot 2.
    Pids = [begin {ok, P} = py:call(os, getpid, []), P end || _ <- lists:seq(1, 20)],
    ?assertEqual([Free], lists:usort(Pids)),
    ok = file:write_file(Flag, <<>>),
    ?assertEqual({ok, true}, pyport_test_util:await(Blocker)),
    ?assertNotEqual(Busy, Free).

%%%===================================================================
%%% Bindings and namespaces
%%%===================================================================

bind_pins_every_call(_Config) ->
    ?assertNot(py:is_bound()),
    ok = py:bind(),
    ?assert(py:is_bound()),
    Pids = [begin {ok, P} = py:call(os, getpid, []), P end || _ <- lists:seq(1, 20)],
    ?assertMatch([_], lists:usort(Pids)),
    %% eval/exec go there too, and see each other's names.
    ok = py:exec(<<"counter = 0">>),
    ok = py:exec(<<"counter += 1">>),
    ?assertEqual({ok, 1}, py:eval(<<"counter">>)),
    ?assertEqual({ok, hd(Pids)}, py:eval(<<"__import__('os').getpid()">>)),
    %% Binding again keeps the worker.
    ok = py:bind(),
    ?assertEqual({ok, hd(Pids)}, py:call(os, getpid, [])),
    ok = py:unbind(),
    ?assertNot(py:is_bound()).

bind_reuses_the_namespace_slot(_Config) ->
    %% A process with a namespace binds to the worker that has it.
    ok = py:exec(<<"mine = 'here'">>),
    {ok, Pid} = py:eval(<<"__import__('os').getpid()">>),
    ok = py:bind(),
    ?assertEqual({ok, Pid}, py:call(os, getpid, [])),
    ?assertEqual({ok, <<"here">>}, py:eval(<<"mine">>)).

process_namespaces_are_private(_Config) ->
    Self = self(),
    Run = fun(N) ->
                  spawn_link(fun() ->
                                     ok = py:exec(<<"x = ", (integer_to_binary(N))/binary>>),
                                     timer:sleep(50),
                                     R = py:eval(<<"x">>),
                                     Self ! {N, R}
                             end)
          end,
    [Run(N) || N <- lists:seq(1, 10)],
    [?assertEqual({ok, N}, receive {N, R} -> R after 10000 -> timeout end) || N <- lists:seq(1, 10)],
    %% This process never defined x.
    ?assertMatch({error, {'NameError', _}}, py:eval(<<"x">>)).

namespace_freed_when_process_exits(_Config) ->
    Before = worker_namespaces(),
    BeforeMonitored = total_monitored_namespaces(),
    Self = self(),
    Pid = spawn(fun() ->
                        ok = py:exec(<<"import weakref\nclass Held: pass\nheld = Held()">>),
                        Self ! {ready, self()},
                        receive stop -> ok end
                end),
    receive {ready, Pid} -> ok end,
    ?assertEqual(Before + 1, worker_namespaces()),
    ?assertEqual(BeforeMonitored + 1, total_monitored_namespaces()),
    Pid ! stop,
    %% The gen_server frees it in the worker when the process is gone.
    wait_until(fun() -> worker_namespaces() =:= Before end),
    ?assertEqual(BeforeMonitored, total_monitored_namespaces()).

unbind_frees_the_namespace(_Config) ->
    Before = worker_namespaces(),
    ok = py:bind(),
    ok = py:exec(<<"y = 1">>),
    ?assertEqual(Before + 1, worker_namespaces()),
    ok = py:unbind(),
    wait_until(fun() -> worker_namespaces() =:= Before end),
    %% A fresh namespace afterwards.
    ?assertMatch({error, {'NameError', _}}, py:eval(<<"y">>)).

namespace_survives_a_new_gen_server(_Config) ->
    %% The namespace's worker gen_server is replaced: the process registers
    %% again with the new one, and still frees its namespace at exit.
    ok = py:bind(),
    ok = py:exec(<<"z = 1">>),
    {ok, Workers} = pyport:workers(default),
    {ok, OsPid} = py:call(os, getpid, []),
    [{Slot, Old}] = [{S, P} || {S, P} <- Workers, pyport_worker:os_pid(P) =:= OsPid],
    exit(Old, kill),
    wait_until(fun() ->
                       case pyport:workers(default) of
                           {ok, Ws} -> lists:keyfind(Slot, 1, Ws) =/= {Slot, Old}
                                           andalso length(Ws) =:= 2;
                           _ -> false
                       end
               end),
    %% The pool restarted (rest_for_one): the OS process is new, so is the
    %% namespace.
    ?assertMatch({error, {'NameError', _}}, py:eval(<<"z">>)),
    ok = py:exec(<<"z = 2">>),
    ?assertEqual({ok, 2}, py:eval(<<"z">>)),
    {ok, New} = pyport:workers(default),
    {Slot, NewPid} = lists:keyfind(Slot, 1, New),
    #{namespaces := N} = pyport_worker:info(NewPid),
    ?assertEqual(1, N).

context_shares_globals_between_processes(_Config) ->
    Ctx = py:context(2),
    %% This process's own globals on the context exist from here on.
    ok = py:exec(Ctx, <<"own_name = 1">>),
    %% The context's shared globals are reached on request; by default a
    %% process has its own globals on a context (erlang_python's meaning),
    %% which start as a copy of the shared ones.
    ok = py:exec(Ctx, <<"shared_in_ctx = 41">>, #{namespace => shared}),
    Self = self(),
    spawn_link(fun() ->
                       Self ! {other, py:eval(Ctx, <<"shared_in_ctx + 1">>, none,
                                              #{namespace => shared}),
                               py:eval(Ctx, <<"shared_in_ctx">>),
                               py:eval(Ctx, <<"own_name">>)}
               end),
    {other, Shared, Inherited, NotMine} = receive {other, _, _, _} = M -> M
                                          after 10000 -> timeout
                                          end,
    ?assertEqual({ok, 42}, Shared),
    ?assertEqual({ok, 41}, Inherited),
    ?assertMatch({error, {'NameError', _}}, NotMine),
    %% A namespace made before the shared name existed does not see it.
    ?assertMatch({error, {'NameError', _}}, py:eval(Ctx, <<"shared_in_ctx">>)),
    ?assertEqual({ok, 1}, py:eval(Ctx, <<"own_name">>)).

eval_locals_in_nested_scopes(_Config) ->
    ?assertEqual({ok, [0, 2, 4]}, py:eval(<<"[x*i for i in range(3)]">>, #{x => 2})),
    ?assertEqual({ok, [2, 4, 6]},
                 py:eval(<<"list(map(lambda v: v * m, items))">>, #{items => [1, 2, 3], m => 2})),
    ?assertEqual({ok, 6}, py:eval(<<"sum(x for _ in range(3))">>, #{x => 2})),
    %% Locals never become globals of the namespace.
    ?assertMatch({error, {'NameError', _}}, py:eval(<<"x">>)),
    Ctx = py:context(1),
    ?assertEqual({ok, [1, 1]}, py:eval(Ctx, <<"[k for _ in 'ab']">>, #{k => 1})),
    ?assertMatch({error, {'NameError', _}}, py:eval(Ctx, <<"k">>)).

%%%===================================================================
%%% Shard keys
%%%===================================================================

shard_keys_pick_stable_slots(_Config) ->
    Keys = [{user, N} || N <- lists:seq(1, 40)],
    Slots = [{K, shard_os_slot(K)} || K <- Keys],
    %% Same key, same slot, every time.
    [?assertEqual(S, shard_os_slot(K)) || {K, S} <- Slots],
    %% Both slots are used.
    ?assertEqual([1, 2], lists:usort([S || {_, S} <- Slots])),
    %% The worker behind slot 1 dies and is replaced: keys still go to slot 1.
    {ok, Old} = os_pid_of(1),
    pyport_os:kill(Old),
    wait_until(fun() -> case os_pid_of(1) of {ok, P} -> P =/= Old; _ -> false end end),
    [?assertEqual(S, shard_os_slot(K)) || {K, S} <- Slots].

shard_spread_and_movement(_Config) ->
    Keys = lists:seq(1, 20000),
    Counts = lists:foldl(fun(K, Acc) ->
                                 S = pyport_pool:shard_slot(K, 4),
                                 maps:update_with(S, fun(N) -> N + 1 end, 1, Acc)
                         end, #{}, Keys),
    ?assertEqual([1, 2, 3, 4], lists:sort(maps:keys(Counts))),
    %% Even: each slot within 5% of a quarter.
    [?assert(abs(N - 5000) < 250) || N <- maps:values(Counts)],
    %% Growing the pool by one moves only the keys the new slot takes.
    Moved = length([K || K <- Keys, pyport_pool:shard_slot(K, 4) =/= pyport_pool:shard_slot(K, 5)]),
    ?assert(Moved < 20000 * 0.25),
    ?assert(lists:all(fun(K) ->
                              Old = pyport_pool:shard_slot(K, 4),
                              New = pyport_pool:shard_slot(K, 5),
                              New =:= Old orelse New =:= 5
                      end, Keys)),
    %% Any term is a key.
    ?assert(lists:member(pyport_pool:shard_slot(<<"bin">>, 3), [1, 2, 3])),
    ?assertEqual(1, pyport_pool:shard_slot(anything, 1)).

shard_with_eval_and_cast(_Config) ->
    Key = <<"account-7">>,
    Slot = pyport_pool:shard_slot(Key, 2),
    ok = py:exec(<<"shard_state = 'kept'">>, #{shard => Key}),
    ?assertEqual({ok, <<"kept">>}, py:eval(<<"shard_state">>, none, #{shard => Key})),
    %% It is the slot's shared namespace: a context to that slot sees it.
    ?assertEqual({ok, <<"kept">>},
                 py:eval(py:context(Slot), <<"shard_state">>, none, #{namespace => shared})),
    Marker = make_ref(),
    ok = py:cast(?F, remember, [Marker], #{}, #{shard => Key}),
    {ok, Seen} = py:call(?F, remembered, [], #{}, #{shard => Key}),
    ?assert(lists:member(Marker, Seen)).

%%%===================================================================
%%% parallel
%%%===================================================================

parallel_returns_results_in_order(_Config) ->
    %% parallel/1 as erlang_python: the values, or the first error.
    ?assertEqual({ok, [4.0, 5.0, 6.0]},
                 py:parallel([{math, sqrt, [16]}, {math, sqrt, [25]}, {math, sqrt, [36]}])),
    ?assertMatch({error, {'ValueError', _}},
                 py:parallel([{?F, add, [1, 2]}, {math, sqrt, [-1]}, {42, f, []}])),
    %% parallel/2 gives every outcome.
    {ok, [{ok, 3}, {error, {'ValueError', _}}, {error, {invalid_name, 42}},
          {ok, [[1], #{<<"k">> := 2}]}]} =
        py:parallel([{?F, add, [1, 2]}, {math, sqrt, [-1]}, {42, f, []},
                     {?F, echo_call, [1], #{k => 2}}], #{}),
    ?assertEqual({ok, []}, py:parallel([])).

parallel_spreads_over_workers(_Config) ->
    {ok, Results} = py:parallel([{?F, getpid_after, [0.2]} || _ <- lists:seq(1, 4)],
                                #{timeout => 10000}),
    Pids = [P || {ok, P} <- Results],
    ?assertEqual(4, length(Pids)),
    {ok, P1} = os_pid_of(1),
    {ok, P2} = os_pid_of(2),
    ?assertEqual(lists:sort([P1, P2]), lists:usort(Pids)).

option_errors(_Config) ->
    ?assertEqual({error, {invalid_option, pool, {cluster, 42}}},
                 py:call(math, sqrt, [4], #{}, #{pool => {cluster, 42}})),
    ?assertEqual({error, {invalid_option, node, 42}}, py:call(math, sqrt, [4], #{}, #{node => 42})),
    ?assertEqual({error, {invalid_option, shard, k}},
                 py:call(math, sqrt, [4], #{}, #{pool => {cluster, default}, shard => k})),
    ?assertEqual({error, {no_pool, nope}}, py:bind(nope)),
    ?assertEqual({error, {no_pool, nope}}, py:eval(<<"1">>, none, #{pool => nope})).

%%%===================================================================
%%% Helpers
%%%===================================================================

os_pid_of(Slot) ->
    case pyport:worker_info({default, Slot}) of
        {ok, #{os_pid := P}} when is_integer(P) -> {ok, P};
        Other -> Other
    end.

in_flight(Slot) ->
    {ok, #{workers := Ws}} = pyport:pool_info(default),
    #{in_flight := N} = lists:nth(Slot, Ws),
    N.

%% The slot whose OS process answered a sharded call.
shard_os_slot(Key) ->
    {ok, P} = py:call(os, getpid, [], #{}, #{shard => Key}),
    {ok, P1} = os_pid_of(1),
    {ok, P2} = os_pid_of(2),
    case P of
        P1 -> 1;
        P2 -> 2
    end.

%% Namespaces that exist in the workers (CONTROL memory_stats).
worker_namespaces() ->
    {ok, Stats} = py:memory_stats(#{}),
    lists:sum([N || #{<<"namespaces">> := N} <- maps:values(Stats)]).

total_monitored_namespaces() ->
    {ok, Ws} = pyport:workers(default),
    lists:sum([maps:get(namespaces, pyport_worker:info(P)) || {_, P} <- Ws]).

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond).
