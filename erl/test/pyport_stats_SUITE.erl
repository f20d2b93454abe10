%% pyport:stats/0,1 (calls, errors by kind, timeouts, interrupts, restarts
%% and recycles with their reasons, in flight, latency histogram; kept
%% across worker restarts, dropped with the pool) and the telemetry events
%% (with test/telemetry.erl, a test double of the hex library, loaded only
%% here; and without it: nothing emitted, nothing loaded).
-module(pyport_stats_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [counts_outcomes_and_latency, overloaded_is_counted, spawn_call_is_counted,
     survives_restarts, queued_while_restarting, recycles_by_reason, dropped_with_the_pool, stats_of_all_pools,
     no_telemetry_nothing_loaded, call_events, error_events, worker_events, job_events,
     failing_handler_does_not_fail_a_call].

init_per_suite(Config) ->
    unload_telemetry(),
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop(),
    unload_telemetry().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    [telemetry:detach(Id) || code:is_loaded(telemetry) =/= false,
                             #{id := Id} <- telemetry:list_handlers([pyport])],
    pyport_test_util:stop_other_pools().

unload_telemetry() ->
    persistent_term:erase({telemetry, handlers}),
    _ = code:purge(telemetry),
    _ = code:delete(telemetry),
    _ = code:purge(telemetry),
    ok.

start_pool(Name, Opts) ->
    {ok, _} = pyport:start_pool(Name, maps:merge(#{size => 1,
                                                   python_path => [pyport_test_util:python_dir()]},
                                                 Opts)),
    ok.

stats(Pool) ->
    {ok, S} = pyport:stats(Pool),
    S.

worker(Pool, Slot) ->
    #{workers := Workers} = stats(Pool),
    hd([W || #{slot := S} = W <- Workers, S =:= Slot]).

bucket_total(#{latency := #{buckets_us := Buckets}}) ->
    lists:sum([N || {_, N} <- Buckets]).

%%%===================================================================
%%% Stats
%%%===================================================================

counts_outcomes_and_latency(_Config) ->
    start_pool(counted, #{}),
    Opts = #{pool => counted},
    [{ok, 3} = py:call(?F, add, [1, 2], #{}, Opts) || _ <- lists:seq(1, 5)],
    {error, {'KnownToErlang', _}} = py:call(?F, raise_known, [<<"no">>], #{}, Opts),
    {ok, 2} = py:eval(<<"1 + 1">>, #{}, Opts),
    %% A call whose caller gives up: a timeout, and the worker interrupts it.
    {error, timeout} = py:call(?F, sleep, [30], #{}, Opts#{timeout => 200}),
    pyport_test_util:wait_until(fun() -> maps:get(in_flight, stats(counted)) =:= 0 end),
    S = stats(counted),
    ?assertMatch(#{pool := counted, size := 1, calls := 8, ok := 6, timeouts := 1,
                   interrupts := 1, restarts := 0, recycles := 0, in_flight := 0, queued := 0,
                   errors := #{python_error := 1, timeout := 1, worker_exited := 0,
                               overloaded := 0, other_error := 0}}, S),
    %% Every answered call is in one bucket; the timed-out one took 200 ms
    %% at least, which only buckets from 131072 µs up hold.
    ?assertEqual(8, bucket_total(S)),
    #{latency := #{buckets_us := Buckets, sum_us := Sum}} = S,
    ?assertEqual(pyport_stats:buckets(), [B || {B, _} <- Buckets]),
    ?assert(lists:sum([N || {B, N} <- Buckets, B =:= infinity orelse B > 131072]) >= 1),
    ?assert(Sum >= 200000),
    %% The pool's totals are the sum over its workers.
    ?assertMatch([#{slot := 1, calls := 8, ok := 6}], maps:get(workers, S)),
    %% CONTROL requests (py:gc and the like) are not calls.
    {ok, _} = py:gc(#{pool => counted}),
    ?assertEqual(8, maps:get(calls, stats(counted))).

overloaded_is_counted(Config) ->
    start_pool(busy, #{max_inflight => 1}),
    Flag = pyport_test_util:flag(Config),
    Ref = pyport_test_util:async(fun() -> py:call(?F, wait_for_file, [Flag], #{}, #{pool => busy}) end),
    pyport_test_util:wait_until(fun() -> maps:get(in_flight, stats(busy)) =:= 1 end),
    ?assertEqual({error, overloaded}, py:call(?F, add, [1, 2], #{}, #{pool => busy})),
    ok = file:write_file(Flag, <<>>),
    {ok, true} = pyport_test_util:await(Ref),
    S = stats(busy),
    ?assertMatch(#{calls := 2, ok := 1, errors := #{overloaded := 1}}, S),
    %% A refused call was never timed.
    ?assertEqual(1, bucket_total(S)).

spawn_call_is_counted(_Config) ->
    start_pool(spawned, #{}),
    Handles = [py:spawn_call(?F, add, [N, 1], #{}, #{pool => spawned}) || N <- lists:seq(1, 4)],
    ?assertEqual([{ok, N + 1} || N <- lists:seq(1, 4)], [py:await(H) || H <- Handles]),
    H = py:spawn_call(?F, sleep, [30], #{}, #{pool => spawned}),
    ?assertEqual({error, timeout}, py:await(H, 100)),
    ?assertMatch(#{calls := 5, ok := 4, timeouts := 1}, stats(spawned)).

survives_restarts(_Config) ->
    start_pool(restarted, #{}),
    {ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => restarted}),
    %% The OS process dies: counted with its kind of reason.
    OsPid = pyport_test_util:os_pid({restarted, 1}),
    pyport_os:kill(OsPid),
    pyport_test_util:wait_until(fun() -> maps:get(restarts, stats(restarted)) =:= 1 end),
    ?assertMatch(#{restart_reasons := #{signal := 1}}, worker(restarted, 1)),
    pyport_test_util:wait_until(fun() -> pyport_test_util:os_pid({restarted, 1}) =/= undefined end),
    %% The worker's gen_server itself dies: what it counted stays.
    {ok, [{1, Pid}]} = pyport:workers(restarted),
    exit(Pid, kill),
    pyport_test_util:wait_until(fun() ->
                                        case pyport:workers(restarted) of
                                            {ok, [{1, P}]} -> P =/= Pid;
                                            _ -> false
                                        end
                                end),
    {ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => restarted}),
    ?assertMatch(#{calls := 2, ok := 2, restarts := 1, owner_starts := 2},
                 worker(restarted, 1)).

queued_while_restarting(_Config) ->
    %% A slow init: calls made while the OS process restarts wait in the
    %% worker's queue.
    start_pool(slow, #{init_code => <<"import time\ntime.sleep(3)">>}),
    pyport_os:kill(pyport_test_util:os_pid({slow, 1})),
    pyport_test_util:wait_until(fun() -> maps:get(restarts, stats(slow)) =:= 1 end),
    Handles = [py:spawn_call(?F, add, [N, 1], #{}, #{pool => slow}) || N <- [1, 2]],
    #{queued := Queued, in_flight := InFlight} = stats(slow),
    ?assertEqual({2, 2}, {Queued, InFlight}),
    ?assertEqual([{ok, 2}, {ok, 3}], [py:await(H) || H <- Handles]),
    ?assertMatch(#{queued := 0, in_flight := 0, ok := 2}, stats(slow)).

recycles_by_reason(_Config) ->
    start_pool(recycled, #{max_requests => 2}),
    [{ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => recycled}) || _ <- lists:seq(1, 5)],
    pyport_test_util:wait_until(fun() -> maps:get(recycles, stats(recycled)) >= 2 end),
    #{recycles := N, recycle_reasons := Reasons, restarts := Restarts} = stats(recycled),
    ?assertEqual(#{max_requests => N}, Reasons),
    ?assertEqual(0, Restarts),
    %% One asked for.
    {ok, [{1, Pid}]} = pyport:workers(recycled),
    ok = pyport_worker:recycle(Pid, 10000),
    ?assertMatch(#{requested := 1}, maps:get(recycle_reasons, stats(recycled))).

dropped_with_the_pool(_Config) ->
    start_pool(dropped, #{}),
    {ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => dropped}),
    {_, Tab} = persistent_term:get({pyport_stats, dropped}),
    ?assertNotEqual(undefined, ets:info(Tab, size)),
    ok = pyport:stop_pool(dropped),
    ?assertEqual({error, {no_pool, dropped}}, pyport:stats(dropped)),
    ?assertEqual(undefined, ets:info(Tab, size)),
    ?assertEqual(undefined, persistent_term:get({pyport_stats, dropped}, undefined)),
    %% A pool started again under that name starts from zero.
    start_pool(dropped, #{}),
    ?assertMatch(#{calls := 0, restarts := 0}, stats(dropped)).

stats_of_all_pools(_Config) ->
    start_pool(second, #{}),
    All = pyport:stats(),
    ?assertEqual([default, second], lists:sort(maps:keys(All))),
    ?assertMatch(#{pool := second, workers := [_]}, maps:get(second, All)).

%%%===================================================================
%%% Telemetry
%%%===================================================================

no_telemetry_nothing_loaded(_Config) ->
    unload_telemetry(),
    false = code:is_loaded(telemetry),
    start_pool(quiet, #{}),
    {ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => quiet}),
    {error, {'KnownToErlang', _}} = py:call(?F, raise_known, [<<"no">>], #{}, #{pool => quiet}),
    {ok, [{1, Pid}]} = pyport:workers(quiet),
    ok = pyport_worker:recycle(Pid, 10000),
    %% Had pyport called telemetry:execute/3, the test double (on the code
    %% path) would have been loaded by that call.
    ?assertEqual(false, code:is_loaded(telemetry)),
    ?assertMatch(#{calls := 2}, stats(quiet)),
    %% Loaded once pyport runs: the next call is seen, with no refresh.
    {module, telemetry} = code:ensure_loaded(telemetry),
    attach([[pyport, call, start], [pyport, call, stop]]),
    {ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => quiet}),
    ?assertMatch([{[pyport, call, start], _, #{pool := quiet}},
                  {[pyport, call, stop], _, #{pool := quiet}}], events()).

call_events(_Config) ->
    {module, telemetry} = code:ensure_loaded(telemetry),
    start_pool(observed, #{size => 2}),
    attach([[pyport, call, start], [pyport, call, stop], [pyport, call, exception]]),
    Before = erlang:monotonic_time(),
    {ok, 3} = py:call(?F, add, [1, 2], #{}, #{pool => observed}),
    After = erlang:monotonic_time(),
    [{[pyport, call, start], Start, StartMeta}, {[pyport, call, stop], Stop, StopMeta}] = events(),
    ?assertMatch(#{pool := observed, module := <<"pyport_test_funcs">>, function := <<"add">>,
                   request := call}, StartMeta),
    ?assertEqual(StartMeta, StopMeta),
    #{slot := Slot} = StartMeta,
    ?assert(lists:member(Slot, [1, 2])),
    #{monotonic_time := T0, system_time := _} = Start,
    #{duration := D, monotonic_time := T1} = Stop,
    ?assert(T0 >= Before andalso T1 =< After),
    ?assertEqual(T1 - T0, D),
    ?assert(D > 0),
    %% spawn_call: start when sent, stop when the call ends (its helper
    %% process makes it, as erlang_python's spawn_call).
    H = py:spawn_call(?F, add, [2, 2], #{}, #{pool => observed}),
    ?assertMatch([{[pyport, call, start], _, #{function := <<"add">>}},
                  {[pyport, call, stop], #{duration := _}, #{function := <<"add">>}}], events()),
    {ok, 4} = py:await(H),
    ?assertEqual([], events()),
    %% eval and exec have no module or function.
    {ok, 2} = py:eval(<<"1 + 1">>, #{}, #{pool => observed}),
    ?assertMatch([{_, _, #{request := eval, module := undefined}}, {[pyport, call, stop], _, _}],
                 events()).

error_events(_Config) ->
    {module, telemetry} = code:ensure_loaded(telemetry),
    start_pool(failing, #{}),
    attach([[pyport, call, stop], [pyport, call, exception]]),
    {error, {'KnownToErlang', _} = Reason} = py:call(?F, raise_known, [<<"no">>], #{}, #{pool => failing}),
    ?assertMatch([{[pyport, call, exception], #{duration := _},
                   #{kind := python_error, reason := Reason, function := <<"raise_known">>}}],
                 events()),
    {error, timeout} = py:call(?F, sleep, [30], #{}, #{pool => failing, timeout => 100}),
    ?assertMatch([{[pyport, call, exception], _, #{kind := timeout, reason := timeout}}], events()).

worker_events(_Config) ->
    {module, telemetry} = code:ensure_loaded(telemetry),
    attach([[pyport, worker, start], [pyport, worker, exit], [pyport, worker, recycle]]),
    start_pool(lives, #{}),
    ?assertMatch([{[pyport, worker, start], #{duration_ms := _, system_time := _},
                   #{pool := lives, slot := 1, os_pid := _, python_version := _}}], events()),
    OsPid = pyport_test_util:os_pid({lives, 1}),
    pyport_os:kill(OsPid),
    pyport_test_util:wait_until(fun() -> pyport_test_util:os_pid({lives, 1}) =/= undefined end),
    [{[pyport, worker, exit], #{uptime_ms := _}, Exit}, {[pyport, worker, start], _, _}] = events(),
    ?assertMatch(#{pool := lives, slot := 1, os_pid := OsPid, kind := signal,
                   reason := {signal, _}}, Exit),
    {ok, [{1, Pid}]} = pyport:workers(lives),
    ok = pyport_worker:recycle(Pid, 10000),
    ?assertMatch([{[pyport, worker, recycle], _, #{reason := requested, kind := requested}},
                  {[pyport, worker, start], _, _}], events()).

job_events(_Config) ->
    {module, telemetry} = code:ensure_loaded(telemetry),
    {ok, _} = pyport:start_pool(cells, #{size => 1, sandbox => true}),
    attach([[pyport, job, start], [pyport, job, stop]]),
    {ok, 42, _} = pyport:run_job(cells, #{code => <<"input * 2">>, input => 21}),
    [{[pyport, job, start], #{monotonic_time := T0}, #{pool := cells, slot := 1}},
     {[pyport, job, stop], #{duration := D, monotonic_time := T1},
      #{pool := cells, slot := 1, result := ok}}] = events(),
    ?assertEqual(T1 - T0, D),
    {error, {exception, _}} = pyport:run_job(cells, #{code => <<"1/0">>}),
    ?assertMatch([{[pyport, job, start], _, _},
                  {[pyport, job, stop], _, #{result := error, reason := {exception, _}}}],
                 events()).

failing_handler_does_not_fail_a_call(_Config) ->
    {module, telemetry} = code:ensure_loaded(telemetry),
    ok = telemetry:attach(crashing, [pyport, call, stop], fun(_, _, _, _) -> error(boom) end, []),
    ?assertEqual({ok, 3}, py:call(?F, add, [1, 2])),
    ?assertEqual({ok, 3}, py:call(?F, add, [1, 2])).

%% Handlers send events to the test process (handlers run in the process
%% that emits: for worker events, the worker's gen_server).
attach(Events) ->
    Self = self(),
    [ok = telemetry:attach({?MODULE, E}, E, fun(Event, M, Meta, _) -> Self ! {event, Event, M, Meta} end,
                           [])
     || E <- Events],
    ok.

%% The events received so far (waiting briefly for stragglers).
events() ->
    receive
        {event, E, M, Meta} -> [{E, M, Meta} | events()]
    after 200 ->
            []
    end.
