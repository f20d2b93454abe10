%% A worker must not outlive its VM: a node running pyport is killed with
%% SIGKILL while its workers are busy (stuck in `while True: pass', or in a
%% sleep with SIGINT blocked, so they never read their input again), and
%% every worker OS process must be gone within a second.
-module(pyport_vm_kill_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 90}}].

all() ->
    [worker_dies_with_killed_vm, busy_workers_die_with_killed_vm].

-define(F, pyport_test_funcs).

worker_dies_with_killed_vm(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_SUITE_data"),
    Ebin = filename:dirname(code:which(pyport_worker)),
    {ok, Peer, _Node} = peer:start(#{name => peer:random_name(?MODULE),
                                     connection => standard_io,
                                     args => ["-pa", Ebin]}),
    Flag = list_to_binary(filename:join(?config(priv_dir, Config), "spinning")),
    ok = peer:call(Peer, application, load, [pyport]),
    ok = peer:call(Peer, application, set_env,
                   [pyport, pools, #{default => #{size => 1, python_path => [Data]}}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
    {ok, #{os_pid := WorkerPid}} = peer:call(Peer, pyport, worker_info, [{default, 1}]),
    ?assert(os_process_alive(WorkerPid)),
    %% The worker starts spinning; the call that made it spin waits forever.
    _ = peer:call(Peer, erlang, spawn,
                  [py, call, [pyport_test_funcs, spin_after_touch, [Flag], #{},
                              #{timeout => infinity}]]),
    wait_until(fun() -> filelib:is_file(Flag) end, worker_not_spinning),
    VmPid = peer:call(Peer, os, getpid, []),
    try
        _ = os:cmd("kill -KILL " ++ VmPid),
        wait_until(fun() -> not os_process_alive(list_to_integer(VmPid)) end, vm_still_alive),
        %% Bounded, not timed: the worker is gone well within the poll limit.
        wait_until(fun() -> not os_process_alive(WorkerPid) end, {worker_outlived_vm, WorkerPid})
    after
        %% On failure, do not leave an orphan spinning (it would also hold
        %% the test run's output open).
        _ = os:cmd("kill -KILL " ++ integer_to_list(WorkerPid) ++ " 2>/dev/null"),
        catch peer:stop(Peer)
    end.

busy_workers_die_with_killed_vm(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_SUITE_data"),
    Ebin = filename:dirname(code:which(pyport_worker)),
    {ok, Peer, _Node} = peer:start(#{name => peer:random_name(?MODULE),
                                     connection => standard_io,
                                     args => ["-pa", Ebin]}),
    ok = peer:call(Peer, application, load, [pyport]),
    ok = peer:call(Peer, application, set_env,
                   [pyport, pools, #{default => #{size => 3, python_path => [Data]},
                                     other => #{size => 2, python_path => [Data]}}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
    Slots = [{default, 1, <<"spin">>}, {default, 2, <<"masked">>}, {default, 3, <<"sleep">>},
             {other, 1, <<"spin">>}, {other, 2, <<"masked">>}],
    WorkerPids = [begin
                      {ok, #{os_pid := P}} = peer:call(Peer, pyport, worker_info, [{Pool, Slot}]),
                      P
                  end || {Pool, Slot, _} <- Slots],
    Flags = [begin
                 Flag = list_to_binary(filename:join(?config(priv_dir, Config),
                                                     io_lib:format("busy-~p-~b", [Pool, Slot]))),
                 Ctx = peer:call(Peer, py, context, [Pool, Slot]),
                 _ = peer:call(Peer, erlang, spawn,
                               [py, call, [Ctx, ?F, runaway_after_touch, [Flag, How], #{},
                                           #{timeout => infinity}]]),
                 Flag
             end || {Pool, Slot, How} <- Slots],
    [wait_until(fun() -> filelib:is_file(F) end, {not_busy, F}) || F <- Flags],
    VmPid = peer:call(Peer, os, getpid, []),
    try
        _ = os:cmd("kill -KILL " ++ VmPid),
        wait_until(fun() -> not os_process_alive(list_to_integer(VmPid)) end, vm_still_alive),
        %% Within a second of the VM's death: 100 polls 10 ms apart.
        wait_until(fun() -> not lists:any(fun os_process_alive/1, WorkerPids) end,
                   {workers_outlived_vm, [P || P <- WorkerPids, os_process_alive(P)]}, 100)
    after
        [os:cmd("kill -KILL " ++ integer_to_list(P) ++ " 2>/dev/null") || P <- WorkerPids],
        catch peer:stop(Peer)
    end.

%% A zombie (exited, not yet reaped by whoever inherited it) counts as gone.
os_process_alive(OsPid) ->
    pyport_os:alive(OsPid).

%% Polls Cond every 10 ms for up to 10 s.
wait_until(Cond, What) ->
    wait_until(Cond, What, 1000).

wait_until(_Cond, What, 0) ->
    ct:fail({timeout_waiting_for, What});
wait_until(Cond, What, N) ->
    case Cond() of
        true -> ok;
        false -> timer:sleep(10), wait_until(Cond, What, N - 1)
    end.
