%% Limits per pool: max_inflight, the call timeout that interrupts and then
%% kills, py:interrupt/1, max_requests recycling, max_memory, max_rss,
%% cpu_seconds, and draining when a pool or the application stops.
-module(pyport_limits_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [max_inflight_overloads, timeout_interrupts_the_code, uninterruptible_code_is_killed,
     a_stuck_worker_gets_no_new_work, interrupt_a_spawned_call, max_requests_recycles_gracefully,
     max_memory_is_a_memory_error, max_rss_recycles_after_the_call, cpu_seconds_kill_the_worker,
     stop_pool_drains_then_kills, application_stop_drains_every_worker].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    [{python_dir, pyport_test_util:python_dir()} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools().

pool(Name, Opts, Config) ->
    {ok, _} = pyport:start_pool(Name, maps:merge(#{size => 1, python_path => [?config(python_dir, Config)]},
                                                 Opts)),
    #{pool => Name}.

%%%===================================================================
%%% max_inflight
%%%===================================================================

max_inflight_overloads(Config) ->
    Opts = pool(limited, #{max_inflight => 2}, Config),
    Flag = flag(Config),
    Waiters = [async(fun() -> py:call(?F, wait_for_file, [Flag], #{}, Opts) end) || _ <- [1, 2]],
    wait_until(fun() -> in_flight(limited, 1) =:= 2 end),
    ?assertEqual({error, overloaded}, py:call(math, sqrt, [4], #{}, Opts)),
    ?assertEqual({error, overloaded}, py:eval(<<"1">>, none, Opts)),
    ok = file:write_file(Flag, <<>>),
    [?assertEqual({ok, true}, await(W)) || W <- Waiters],
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4], #{}, Opts)),
    ?assertEqual(0, in_flight(limited, 1)).

%%%===================================================================
%%% Timeouts, interrupts, kill_after
%%%===================================================================

timeout_interrupts_the_code(Config) ->
    Opts = pool(interrupted, #{kill_after => 60000}, Config),
    OsPid = os_pid(interrupted),
    [begin
         Flag = flag(Config),
         ?assertEqual({error, timeout},
                      py:call(?F, runaway_after_touch, [Flag, How], #{}, Opts#{timeout => 300})),
         ?assert(filelib:is_file(Flag)),
         %% Interrupted, not killed: the same process answers at once.
         ?assertEqual({ok, OsPid}, py:call(os, getpid, [], #{}, Opts))
     end || How <- [<<"spin">>, <<"sleep">>]],
    %% Also for eval and exec, and nothing is left behind.
    ?assertEqual({error, timeout}, py:eval(<<"__import__('time').sleep(60)">>, none,
                                           Opts#{timeout => 200})),
    ?assertEqual({error, timeout}, py:exec(<<"while True: pass">>, Opts#{timeout => 200})),
    ?assertEqual({ok, OsPid}, py:call(os, getpid, [], #{}, Opts)),
    {ok, #{pending := 0, interrupted := 0}} = pyport:worker_info({interrupted, 1}),
    ?assertEqual(0, in_flight(interrupted, 1)),
    ?assertEqual({messages, []}, process_info(self(), messages)).

uninterruptible_code_is_killed(Config) ->
    Opts = pool(killed, #{kill_after => 500}, Config),
    OsPid = os_pid(killed),
    Flag = flag(Config),
    %% A second caller is queued behind the runaway call on the same worker.
    Runaway = async(fun() ->
                            py:call(?F, runaway_after_touch, [Flag, <<"masked">>], #{},
                                    Opts#{timeout => 300})
                    end),
    wait_until(fun() -> filelib:is_file(Flag) end),
    Behind = async(fun() -> py:call(?F, add, [1, 2], #{}, Opts#{timeout => 30000}) end),
    ?assertEqual({error, timeout}, await(Runaway)),
    %% kill_after later the worker is killed; the other caller learns why.
    ?assertEqual({error, {worker_exited, {interrupt_timeout, 500}}}, await(Behind)),
    {ok, NewPid} = py:call(os, getpid, [], #{}, Opts),
    ?assertNotEqual(OsPid, NewPid),
    ?assertNot(pyport_os:alive(OsPid)),
    {ok, #{workers := [#{restarts := 1, in_flight := 0}]}} = pyport:pool_info(killed).

a_stuck_worker_gets_no_new_work(Config) ->
    Opts = pool(stuck, #{size => 2, kill_after => infinity}, Config),
    Flag = flag(Config),
    Ctx = py:context(stuck, 1),
    ?assertEqual({error, timeout},
                 py:call(Ctx, ?F, runaway_after_touch, [Flag, <<"masked">>], #{}, #{timeout => 200})),
    Stuck = os_pid({stuck, 1}),
    Free = os_pid({stuck, 2}),
    %% Slot 1 still runs code its caller gave up on: least-loaded calls
    %% all go to slot 2, however many in a row.
    Pids = [begin {ok, P} = py:call(os, getpid, [], #{}, Opts), P end || _ <- lists:seq(1, 30)],
    ?assertEqual([Free], lists:usort(Pids)),
    {ok, #{interrupted := 1}} = pyport:worker_info({stuck, 1}),
    pyport_os:kill(Stuck),
    wait_until(fun() -> case catch os_pid({stuck, 1}) of P when is_integer(P) -> P =/= Stuck; _ -> false end end),
    %% Back in the rotation.
    wait_until(fun() ->
                       {ok, Ps} = py:parallel([{?F, getpid_after, [0.05]} || _ <- [1, 2, 3, 4]], Opts),
                       length(lists:usort(Ps)) =:= 2
               end).

interrupt_a_spawned_call(Config) ->
    Opts = pool(interrupt, #{}, Config),
    Flag = flag(Config),
    H = py:spawn_call(?F, runaway_after_touch, [Flag, <<"spin">>], #{}, Opts#{timeout => 60000}),
    wait_until(fun() -> filelib:is_file(Flag) end),
    ok = py:interrupt(H),
    ?assertMatch({error, {'KeyboardInterrupt', _}}, py:await(H)),
    %% A call waiting behind another one does not run at all.
    Gate = flag(Config),
    Busy = py:spawn_call(?F, wait_for_file, [Gate], #{}, Opts),
    Queued = py:spawn_call(?F, remember, [queued_ran], #{}, Opts),
    ok = py:interrupt(Queued),
    ok = file:write_file(Gate, <<>>),
    ?assertEqual({ok, true}, py:await(Busy)),
    {error, {'KeyboardInterrupt', Why}} = py:await(Queued),
    ?assertMatch({_, _}, binary:match(Why, <<"interrupted before it started">>)),
    {ok, Seen} = py:call(?F, remembered, [], #{}, Opts),
    ?assertNot(lists:member(queued_ran, Seen)),
    %% A finished call is not affected.
    H2 = py:spawn_call(?F, add, [1, 2], #{}, Opts),
    ?assertEqual({ok, 3}, py:await(H2)),
    ok = py:interrupt(H2),
    ?assertEqual({ok, 5}, py:call(?F, add, [2, 3], #{}, Opts)).

%%%===================================================================
%%% Recycling and memory
%%%===================================================================

max_requests_recycles_gracefully(Config) ->
    Opts = pool(recycled, #{max_requests => 5}, Config),
    Pids = [begin {ok, P} = py:call(os, getpid, [], #{}, Opts), P end || _ <- lists:seq(1, 12)],
    %% A new process every 5 requests.
    ?assertEqual(3, length(lists:usort(Pids))),
    ?assertEqual(lists:usort(lists:sublist(Pids, 5)), [hd(Pids)]),
    %% Many concurrent callers across recycles: every call answered, none
    %% by a worker_exited.
    Results = [await(W) || W <- [async(fun() -> py:call(?F, sleep, [0.01, N], #{}, Opts) end)
                                 || N <- lists:seq(1, 40)]],
    ?assertEqual([{ok, N} || N <- lists:seq(1, 40)], Results),
    %% 52 requests, 5 per process.
    {ok, #{workers := [#{recycles := R, restarts := R, served := 52}]}} = pyport:pool_info(recycled),
    ?assertEqual(10, R).

max_memory_is_a_memory_error(Config) ->
    Opts = pool(capped, #{max_memory => 400 * 1024 * 1024}, Config),
    OsPid = os_pid(capped),
    ?assertMatch({error, {'MemoryError', _}}, py:call(?F, memory_bomb, [], #{}, Opts)),
    ?assertMatch({error, {'MemoryError', _}}, py:eval(<<"bytearray(1 << 31)">>, none, Opts)),
    %% The worker is unharmed and its memory is back.
    ?assertEqual({ok, OsPid}, py:call(os, getpid, [], #{}, Opts)),
    ?assertEqual({ok, 100}, py:eval(<<"len(bytearray(100 << 20)) >> 20">>, none, Opts)).

max_rss_recycles_after_the_call(Config) ->
    Opts = pool(rss, #{max_rss => 150 * 1024 * 1024}, Config),
    OsPid = os_pid(rss),
    %% The call that grows the worker past the limit is answered...
    ?assertEqual({ok, 1}, py:call(?F, hoard, [200], #{}, Opts)),
    %% ...and then the worker is replaced.
    wait_until(fun() -> case catch os_pid(rss) of P when is_integer(P) -> P =/= OsPid; _ -> false end end),
    {ok, #{workers := [#{recycles := 1, rss_bytes := Rss}]}} = pyport:pool_info(rss),
    ?assert(Rss < 150 * 1024 * 1024),
    ?assertEqual({ok, 3}, py:call(?F, add, [1, 2], #{}, Opts)).

cpu_seconds_kill_the_worker(Config) ->
    Opts = pool(cpu, #{cpu_seconds => 1}, Config),
    OsPid = os_pid(cpu),
    ?assertEqual({error, {worker_exited, {signal, sigxcpu}}},
                 py:exec(<<"while True: pass">>, Opts#{timeout => 60000})),
    {ok, NewPid} = py:call(os, getpid, [], #{}, Opts),
    ?assertNotEqual(OsPid, NewPid).

%%%===================================================================
%%% Stopping
%%%===================================================================

stop_pool_drains_then_kills(Config) ->
    Opts = pool(draining, #{size => 2, shutdown_timeout => 3000}, Config),
    %% Calls in flight when the pool stops finish.
    Short = [async(fun() -> py:call(?F, sleep, [0.3, N], #{}, Opts) end) || N <- [1, 2, 3, 4]],
    wait_until(fun() -> in_flight(draining, 1) + in_flight(draining, 2) =:= 4 end),
    ok = pyport:stop_pool(draining),
    ?assertEqual([{ok, N} || N <- [1, 2, 3, 4]], [await(W) || W <- Short]),
    %% One that would outlive shutdown_timeout is cut short, and answered.
    Opts2 = pool(draining, #{size => 1, shutdown_timeout => 200}, Config),
    OsPid = os_pid(draining),
    Long = async(fun() -> py:call(?F, sleep, [30, late], #{}, Opts2) end),
    wait_until(fun() -> in_flight(draining, 1) =:= 1 end),
    ok = pyport:stop_pool(draining),
    ?assertEqual({error, {worker_exited, shutdown}}, await(Long)),
    ?assertNot(pyport_os:alive(OsPid)).

application_stop_drains_every_worker(Config) ->
    ok = application:stop(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [?config(python_dir, Config)]},
                                         other => #{size => 2, python_path => [?config(python_dir, Config)]}}),
    {ok, _} = application:ensure_all_started(pyport),
    try
        Calls = [async(fun() -> py:call(?F, sleep, [0.5, {P, N}], #{}, #{pool => P}) end)
                 || P <- [default, other], N <- [1, 2]],
        wait_until(fun() -> lists:sum([in_flight(P, S) || P <- [default, other], S <- [1, 2]]) =:= 4 end),
        OsPids = [os_pid({P, S}) || P <- [default, other], S <- [1, 2]],
        ok = application:stop(pyport),
        ?assertEqual([{ok, {P, N}} || P <- [default, other], N <- [1, 2]], [await(C) || C <- Calls]),
        [?assertNot(pyport_os:alive(P)) || P <- OsPids]
    after
        _ = application:stop(pyport),
        application:set_env(pyport, pools, #{default => #{size => 1, python_path => [?config(python_dir, Config)]}}),
        {ok, _} = application:ensure_all_started(pyport)
    end.

%%%===================================================================
%%% Helpers
%%%===================================================================

flag(Config) ->
    pyport_test_util:flag(Config).

os_pid(Pool) when is_atom(Pool) ->
    os_pid({Pool, 1});
os_pid({Pool, Slot}) ->
    {ok, #{os_pid := P, status := up}} = pyport:worker_info({Pool, Slot}),
    P.

in_flight(Pool, Slot) ->
    {ok, #{workers := Ws}} = pyport:pool_info(Pool),
    maps:get(in_flight, lists:nth(Slot, Ws)).

async(Fun) ->
    pyport_test_util:async(Fun).

await(Ref) ->
    pyport_test_util:await(Ref).

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond).
