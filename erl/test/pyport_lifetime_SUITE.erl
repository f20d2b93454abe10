%% How long a worker's OS processes live: never longer than their owner,
%% never held up by a child, and the slot's accounting true afterwards
%% (issue 10 items 4, 5, 7, 12; issue 11 item 10's tty).
%%
%% Every pool of this suite sets a tag in its workers' environment, which
%% their children inherit: /proc then shows every process of a pool's
%% trees, whoever their parent is now.
-module(pyport_lifetime_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([forked_child_outlives_worker/1, a_killed_owner_costs_only_its_slot/1, owner_killed_spinning/1, owner_killed_sleeping/1,
         owner_killed_without_the_reaper/1, reaper_helper_killed/1,
         stop_pool_with_calls_in_flight/1,
         huge_shutdown_timeout/1, kill_under_load_counters/1, kill_every_process_of_the_tree/1,
         introspection_in_every_state/1, introspection_while_starting/1,
         out_of_file_descriptors/1, workers_have_no_tty/1,
         vm_killed_with_a_daemon_running/1]).

-define(H, lifetime_helpers).
-define(TAG_VAR, "PYPORT_LIFETIME_TAG").

all() ->
    [forked_child_outlives_worker, owner_killed_spinning, owner_killed_sleeping,
     owner_killed_without_the_reaper, reaper_helper_killed, stop_pool_with_calls_in_flight,
     huge_shutdown_timeout,
     kill_under_load_counters, introspection_in_every_state, introspection_while_starting,
     kill_every_process_of_the_tree, a_killed_owner_costs_only_its_slot,
     out_of_file_descriptors, workers_have_no_tty, vm_killed_with_a_daemon_running].

init_per_suite(Config) ->
    Data = ?config(data_dir, Config),
    ok = pyport_test_util:start(#{default => #{size => 1, python_path => [Data]}}),
    [{python_dir, Data} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    _ = [catch pyport:stop_pool(P) || P <- pyport:pools() -- [default]],
    ok.

%%%===================================================================
%%% Item 5: a child that outlives the worker
%%%===================================================================

forked_child_outlives_worker(Config) ->
    Tag = start_pool(fork_child, #{size => 1}, Config),
    Ctx = py:context(fork_child, 1),
    Worker = wait_up({fork_child, 1}),
    Keeper = parent(Worker),
    {ok, Child} = py:call(Ctx, ?H, fork_sleeper, [path(Config)]),
    {ok, Daemon} = py:call(Ctx, ?H, fork_daemon, [path(Config)]),
    %% The daemon's parent exited: it came to the keeper, not to init.
    ?assertEqual(Keeper, parent(Daemon)),
    ?assertEqual(lists:sort([Keeper, Worker, Child, Daemon]), tagged(Tag)),
    T0 = now_ms(),
    %% Both children hold the port's descriptors: before the keeper, this
    %% answer waited for them (forever).
    ?assertEqual({error, {worker_exited, {exit_status, 3}}},
                 py:exec(Ctx, <<"import os\nos._exit(3)">>, #{timeout => 10000})),
    New = wait_new_worker({fork_child, 1}, Worker),
    Elapsed = now_ms() - T0,
    ct:comment("slot back in ~b ms", [Elapsed]),
    %% Before the keeper: never (the children hold the pipes for good).
    ?assert(Elapsed < 5000),
    [?assertNot(pyport_os:alive(P)) || P <- [Keeper, Worker, Child, Daemon]],
    ?assertEqual(lists:sort([parent(New), New]), tagged(Tag)),
    ?assertEqual({ok, 0.0}, py:call(Ctx, ?H, nap, [0.0])).

%%%===================================================================
%%% Item 7: the owner killed while its worker is busy
%%%===================================================================

owner_killed_spinning(Config) ->
    owner_killed(spin, Config).

owner_killed_sleeping(Config) ->
    owner_killed(sleep_forever, Config).

%% The reaper suspended: the worker, seeing end of input, interrupts its
%% request; one that ignores KeyboardInterrupt is killed by the worker's
%% own input thread after its grace period.
owner_killed_without_the_reaper(Config) ->
    Reaper = whereis(pyport_reaper),
    ok = sys:suspend(Reaper),
    try owner_killed(stubborn, Config)
    after sys:resume(Reaper)
    end.

%% The helper killed from outside: the reaper starts another, which
%% watches the workers already running (nothing else restarts).
reaper_helper_killed(Config) ->
    Reaper = whereis(pyport_reaper),
    Tag = start_pool(helper_killed, #{size => 1}, Config),
    Worker = wait_up({helper_killed, 1}),
    Helper = pyport_reaper:helper_os_pid(),
    %% Not right after the reaper started: it would give up on its helper.
    timer:sleep(1100),
    pyport_os:kill(Helper),
    wait_until(fun() -> not lists:member(pyport_reaper:helper_os_pid(), [Helper, undefined]) end),
    ?assertEqual(Reaper, whereis(pyport_reaper)),
    ?assertEqual(Worker, pyport_test_util:os_pid({helper_killed, 1})),
    Keeper = parent(Worker),
    exit(owner(helper_killed, 1), kill),
    wait_until(fun() -> not pyport_os:alive(Worker) andalso not pyport_os:alive(Keeper) end, 250),
    New = wait_new_worker({helper_killed, 1}, Worker),
    ?assertEqual(lists:sort([parent(New), New]), tagged(Tag)).

owner_killed(Fun, Config) ->
    Tag = start_pool(owner_killed, #{size => 1, kill_after => infinity}, Config),
    Ctx = py:context(owner_killed, 1),
    Worker = wait_up({owner_killed, 1}),
    Keeper = parent(Worker),
    {ok, Child} = py:call(Ctx, ?H, fork_sleeper, [path(Config)]),
    Busy = path(Config),
    Self = self(),
    Caller = spawn(fun() ->
                           R = py:call(Ctx, ?H, Fun, [Busy], #{}, #{timeout => 60000}),
                           Self ! {answer, self(), R}
                   end),
    wait_until(fun() -> filelib:is_regular(Busy) end),
    Owner = owner(owner_killed, 1),
    T0 = now_ms(),
    exit(Owner, kill),
    wait_until(fun() -> not lists:any(fun pyport_os:alive/1, [Keeper, Worker, Child]) end, 250),
    Gone = now_ms() - T0,
    ct:comment("~p: OS processes gone ~b ms after the kill", [Fun, Gone]),
    ?assert(Gone < 2500),
    ?assertMatch({error, {worker_exited, _}}, answer(Caller)),
    no_more_answers(),
    %% The slot's new owner and OS process are the only ones left.
    New = wait_new_worker({owner_killed, 1}, Worker),
    ?assertEqual(lists:sort([parent(New), New]), tagged(Tag)),
    ok = pyport:stop_pool(owner_killed),
    wait_until(fun() -> tagged(Tag) =:= [] end).

stop_pool_with_calls_in_flight(Config) ->
    Tag = start_pool(stopped, #{size => 2, shutdown_timeout => 1000}, Config),
    Busy = path(Config),
    Spinner = call_async(py:context(stopped, 1), spin, [Busy]),
    wait_until(fun() -> filelib:is_regular(Busy) end),
    %% Run one after the other: 0.4 s, within shutdown_timeout.
    Nappers = [call_async(py:context(stopped, 2), nap, [0.2]) || _ <- lists:seq(1, 2)],
    timer:sleep(50),
    ?assertEqual(ok, pyport:stop_pool(stopped)),
    %% What finishes within shutdown_timeout is answered; the rest is told.
    ?assertMatch({error, {worker_exited, _}}, answer(Spinner)),
    [?assertEqual({ok, 0.2}, answer(P)) || P <- Nappers],
    no_more_answers(),
    wait_until(fun() -> tagged(Tag) =:= [] end, 200).

%% A shutdown_timeout beyond what `receive ... after' and timers take
%% (2^32 - 1 ms) must not crash the worker's terminate/2 (which left the
%% OS process running while stop_pool said ok).
huge_shutdown_timeout(Config) ->
    Huge = 1 bsl 40,
    Tag = case pyport:start_pool(huge, pool_opts(huge, #{size => 1, shutdown_timeout => Huge},
                                                 Config)) of
              {ok, _} ->
                  tag(huge);
              {error, _} = Refused ->
                  %% Validation may bound it: the largest value it takes
                  %% must work then.
                  ct:comment("~b refused (~p); 2^32 - 1 used", [Huge, Refused]),
                  {ok, _} = pyport:start_pool(huge, pool_opts(huge, #{size => 1,
                                                                shutdown_timeout => 16#FFFFFFFF},
                                                              Config)),
                  tag(huge)
          end,
    Ctx = py:context(huge, 1),
    Worker = wait_up({huge, 1}),
    %% Recycling waits with the same grace period.
    ok = pyport_worker:recycle(owner(huge, 1), 10000),
    wait_new_worker({huge, 1}, Worker),
    Napper = call_async(Ctx, nap, [0.2]),
    timer:sleep(50),
    ?assertEqual(ok, pyport:stop_pool(huge)),
    ?assertEqual({ok, 0.2}, answer(Napper)),
    ?assertEqual({error, {no_pool, huge}}, pyport:pool_info(huge)),
    wait_until(fun() -> tagged(Tag) =:= [] end, 200).

%%%===================================================================
%%% Item 4: the in-flight counters after a kill under load
%%%===================================================================

kill_under_load_counters(Config) ->
    Tag = start_pool(loaded, #{size => 2, max_inflight => 1000}, Config),
    Callers = [spawn_caller(loaded, 5000) || _ <- lists:seq(1, 50)],
    timer:sleep(300),
    %% Killed three times, with calls in flight each time.
    lists:foreach(fun(_) ->
                          exit(owner(loaded, 1), kill),
                          timer:sleep(300)
                  end, lists:seq(1, 3)),
    Results = stop_callers(Callers),
    Ok = lists:sum([N || {N, _} <- Results]),
    Errors = lists:append([E || {_, E} <- Results]),
    ct:comment("~b answers, ~b errors", [Ok, length(Errors)]),
    [?assertMatch({error, {worker_exited, _}}, E) || E <- Errors],
    ?assert(Ok > 100),
    %% Idle now: every counter comes back to zero, and the slot serves.
    wait_counters_zero(loaded),
    ?assertEqual({ok, 0.0}, py:call(py:context(loaded, 1), ?H, nap, [0.0])),
    ?assertEqual({ok, 0.0}, py:call(py:context(loaded, 2), ?H, nap, [0.0])),
    %% Counts nobody will undo (a caller that counted in for a gen_server
    %% that died, or out after its successor reset the slot) are corrected
    %% once the slot is quiet.
    {ok, #{counters := C}} = pyport_pool:info(loaded),
    counters:add(C, 1, 7),
    counters:sub(C, 2, 3),
    wait_counters_zero(loaded),
    wait_until(fun() -> length(tagged(Tag)) =:= 4 end).

%%%===================================================================
%%% Introspection
%%%===================================================================

%% pool_info, worker_info and workers answer whatever the slot is doing:
%% starting, up, busy, backing off, with its gen_server gone.
introspection_in_every_state(Config) ->
    start_pool(seen, #{size => 2, start_timeout => 2000}, Config),
    Check = fun(Why) ->
                    {ok, #{workers := Ws}} = pyport:pool_info(seen),
                    ?assertEqual(2, length(Ws)),
                    {ok, _} = pyport:workers(seen),
                    %% An answer, whatever it says (a gen_server just
                    %% killed is seen as exited).
                    [case pyport:worker_info({seen, S}) of
                         {ok, #{status := _}} -> ok;
                         {error, {worker_exited, _}} -> ok;
                         %% Between two gen_servers of the slot.
                         {error, {no_worker, seen, S}} -> ok
                     end || S <- [1, 2]],
                    ct:log("~p: ~p", [Why, Ws])
            end,
    Check(up),
    Busy = path(Config),
    Spinner = call_async(py:context(seen, 1), spin, [Busy]),
    wait_until(fun() -> filelib:is_regular(Busy) end),
    Check(busy),
    %% The OS process gone, the gen_server restarting it.
    exit(owner(seen, 1), kill),
    Check(owner_killed),
    ?assertMatch({error, {worker_exited, _}}, answer(Spinner)),
    %% A slot with no gen_server at all.
    wait_up({seen, 1}),
    wait_up({seen, 2}),
    {ok, #{tab := Tab}} = pyport_pool:info(seen),
    Owner2 = owner(seen, 2),
    ok = supervisor:terminate_child(pool_sup(seen), {worker, 2}),
    ?assertEqual([], ets:lookup(Tab, 2)),
    ?assertMatch({ok, #{workers := [_, #{slot := 2, status := down}]}}, pyport:pool_info(seen)),
    ?assertMatch({error, {no_worker, seen, 2}}, pyport:worker_info({seen, 2})),
    %% A slot whose entry names a dead gen_server.
    true = ets:insert(Tab, {2, Owner2}),
    ?assertMatch({ok, #{workers := [_, #{slot := 2, status := {down, _}}]}},
                 pyport:pool_info(seen)),
    ?assertMatch({error, {worker_exited, _}}, pyport:worker_info({seen, 2})),
    {ok, _} = supervisor:restart_child(pool_sup(seen), {worker, 2}),
    Check(restarted).

%% A gen_server starting its first OS process (slow init code) answers no
%% call until it is up: introspection says so within a second instead.
introspection_while_starting(Config) ->
    start_pool(slow, #{size => 1, init_code => <<"import time\ntime.sleep(2.5)">>,
                       start_timeout => 10000}, Config),
    Old = owner(slow, 1),
    exit(Old, kill),
    wait_until(fun() -> Old =/= (catch owner(slow, 1)) end),
    T0 = now_ms(),
    ?assertMatch({ok, #{status := starting}}, pyport:worker_info({slow, 1})),
    ?assertMatch({ok, #{workers := [#{slot := 1, status := starting}]}}, pyport:pool_info(slow)),
    ?assert(now_ms() - T0 < 2400),
    wait_until(fun() -> pyport_test_util:os_pid({slow, 1}) =/= undefined end).

%%%===================================================================
%%% The supervision tree: every process killed in turn
%%%===================================================================

kill_every_process_of_the_tree(Config) ->
    Opts = pool_opts(tree, #{size => 2}, Config),
    %% In the application's environment, so that the pool comes back when
    %% the supervisors above it restart.
    Targets = [[pyport_reaper], [pyport_state], [pyport_registry], [pg],
               [pyport_pools_sup], [pyport_pools_sup, {pool, tree}],
               [pyport_pools_sup, {pool, tree}, pool],
               [pyport_pools_sup, {pool, tree}, workers],
               [pyport_pools_sup, {pool, tree}, workers, {worker, 1}]],
    try
        lists:foreach(fun(Path) -> kill_with_calls_in_flight(Path, Opts) end, Targets)
    after
        restart_app(#{default => pool_opts(default, #{size => 1}, Config)})
    end.

%% One worker's gen_server killed: the other slots' gen_servers, OS
%% processes and calls in flight carry on (its supervisor is one_for_one).
a_killed_owner_costs_only_its_slot(Config) ->
    start_pool(slots, #{size => 3}, Config),
    [wait_up({slots, S}) || S <- [1, 2, 3]],
    Owners = [owner(slots, S) || S <- [1, 2, 3]],
    OsPids = [pyport_test_util:os_pid({slots, S}) || S <- [2, 3]],
    Self = self(),
    Naps = [spawn_link(fun() -> Self ! {nap, S, py:call(py:context(slots, S), ?H, nap, [0.5])} end)
            || S <- [2, 3]],
    timer:sleep(100),
    exit(hd(Owners), kill),
    [receive {nap, S, R} -> ?assertEqual({S, {ok, 0.5}}, {S, R}) after 10000 -> ct:fail(no_answer) end
     || S <- [2, 3]],
    ?assertEqual(2, length(Naps)),
    ?assertEqual(tl(Owners), [owner(slots, S) || S <- [2, 3]]),
    ?assertEqual(OsPids, [pyport_test_util:os_pid({slots, S}) || S <- [2, 3]]),
    wait_until(fun() -> hd(Owners) =/= (catch owner(slots, 1)) end),
    wait_up({slots, 1}),
    ?assertEqual({ok, 0.0}, py:call(py:context(slots, 1), ?H, nap, [0.0])),
    ok = pyport:stop_pool(slots).

kill_with_calls_in_flight(Path, Opts) ->
    %% A fresh tree each time: pyport_sup allows 3 restarts in 10 s.
    restart_app(#{tree => Opts}),
    Tag = tag(tree),
    wait_until(fun() -> length(tagged(Tag)) =:= 4 end),
    Ets = length(ets:all()),
    Procs = erlang:system_info(process_count),
    Ports = length(erlang:ports()),
    Callers = [spawn_caller(tree, 3000) || _ <- lists:seq(1, 10)],
    timer:sleep(200),
    Victim = child_pid(pyport_sup, Path),
    exit(Victim, kill),
    timer:sleep(300),
    Results = stop_callers(Callers),
    Errors = lists:append([E || {_, E} <- Results]),
    ct:log("~p killed: ~b answers, errors ~p",
           [Path, lists:sum([N || {N, _} <- Results]), lists:usort(Errors)]),
    [?assertMatch({error, _}, E) || E <- Errors],
    %% The tree is whole again, idle, and leaks nothing.
    wait_until(fun() -> {ok, 0.0} =:= catch py:call(py:context(tree, 1), ?H, nap, [0.0]) end),
    wait_until(fun() -> {ok, 0.0} =:= catch py:call(py:context(tree, 2), ?H, nap, [0.0]) end),
    wait_counters_zero(tree),
    wait_until(fun() -> length(tagged(Tag)) =:= 4 end),
    wait_until(fun() -> length(ets:all()) =:= Ets end),
    wait_until(fun() -> erlang:system_info(process_count) =< Procs end),
    wait_until(fun() -> length(erlang:ports()) =:= Ports end),
    ok.

%%%===================================================================
%%% Item 12: the node out of file descriptors
%%%===================================================================

out_of_file_descriptors(Config) ->
    {Peer, _} = start_peer(["/bin/sh", "-c", "ulimit -n 160 && exec \"$0\" \"$@\""], Config),
    try
        ok = peer:call(Peer, application, set_env,
                       [pyport, pools, #{fd => pool_opts(fd, #{size => 1, kill_after => 200},
                                                          Config)}]),
        {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
        Tag = tag(fd),
        [Keeper, Worker] = tagged(Tag),
        Busy = path(Config),
        %% Stuck in code that ignores its KeyboardInterrupt.
        Caller = peer:call(Peer, erlang, spawn,
                           [py, call, [?H, stubborn, [Busy], #{}, #{pool => fd, timeout => 500}]]),
        wait_until(fun() -> filelib:is_regular(Busy) end),
        Holder = peer:call(Peer, erlang, spawn, [fun hold_every_descriptor/0]),
        %% The call gives up, the worker is interrupted, then killed: no
        %% descriptor needed for that.
        wait_until(fun() -> not pyport_os:alive(Worker) andalso not pyport_os:alive(Keeper) end,
                   300),
        false = peer:call(Peer, erlang, is_process_alive, [Caller]),
        %% Nothing can be started meanwhile, and introspection still answers.
        timer:sleep(300),
        {ok, #{workers := [W]}} = peer:call(Peer, pyport, pool_info, [fd]),
        ct:log("out of descriptors: ~p", [W]),
        ?assertMatch({ok, [{1, _}]}, peer:call(Peer, pyport, workers, [fd])),
        ?assertMatch({ok, #{status := _}}, peer:call(Peer, pyport, worker_info, [{fd, 1}])),
        ?assertMatch({error, _}, peer:call(Peer, py, call,
                                           [?H, nap, [0.0], #{}, #{pool => fd, timeout => 300}])),
        %% Descriptors back: the pool serves within the backoff's ceiling.
        T0 = now_ms(),
        exit_in_peer(Peer, Holder),
        wait_until(fun() ->
                           {ok, 0.0} =:= peer:call(Peer, py, call,
                                                   [?H, nap, [0.0], #{},
                                                    #{pool => fd, timeout => 1000}])
                   end, 500),
        Back = now_ms() - T0,
        ct:comment("serving again ~b ms after descriptors came back", [Back]),
        ?assert(Back < 4000),
        ?assertMatch({ok, #{workers := [#{status := up}]}}, peer:call(Peer, pyport, pool_info, [fd]))
    after
        peer:stop(Peer)
    end.

hold_every_descriptor() ->
    Fds = open_until_emfile([]),
    receive stop -> [file:close(F) || F <- Fds] end.

open_until_emfile(Acc) ->
    case file:open("/dev/null", [read, raw]) of
        {ok, F} -> open_until_emfile([F | Acc]);
        {error, emfile} -> Acc
    end.

exit_in_peer(Peer, Pid) ->
    peer:call(Peer, erlang, exit, [Pid, kill]).

%%%===================================================================
%%% Issue 11 item 10: no tty for workers
%%%===================================================================

%% A node whose stderr is a terminal: neither the worker nor its keeper
%% holds it, nor any terminal (so no ioctl can change its modes), and the
%% worker has no controlling terminal.
workers_have_no_tty(Config) ->
    Pty = "import os, pty, sys\n"
          "m, s = pty.openpty()\n"
          "os.set_inheritable(m, True)\n"
          "os.dup2(s, 2)\n"
          "os.execvp(sys.argv[1], sys.argv[1:])\n",
    {Peer, _} = start_peer(["/usr/bin/python3", "-c", Pty], Config),
    try
        ok = peer:call(Peer, application, set_env,
                       [pyport, pools, #{tty => pool_opts(tty, #{size => 1}, Config),
                                         tty_sandboxed => pool_opts(tty_sandboxed,
                                                                    #{size => 1, sandbox => true},
                                                                    Config)}]),
        {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
        NodeStderr = fd_target(list_to_integer(peer:call(Peer, os, getpid, [])), 2),
        ?assertMatch("/dev/pts/" ++ _, NodeStderr),
        [Keeper, Worker] = tagged(tag(tty)),
        ?assertEqual(Keeper, parent(Worker)),
        %% A sandboxed worker wipes its environment (no tag): found by pid.
        {ok, #{os_pid := Confined}} = peer:call(Peer, pyport, worker_info, [{tty_sandboxed, 1}]),
        [begin
             Targets = [fd_target(P, Fd) || Fd <- fds(P)],
             ct:log("~b: ~p", [P, Targets]),
             ?assertNot(lists:member(NodeStderr, Targets)),
             ?assertEqual([], [T || "/dev/pts/" ++ _ = T <- Targets] ++
                              [T || "/dev/tty" ++ _ = T <- Targets]),
             ?assertEqual(0, tty_nr(P))
         end || P <- [Keeper, Worker, parent(Confined), Confined]],
        %% From inside: no descriptor is a terminal, /dev/tty cannot be opened.
        [?assertEqual({ok, {[], false}},
                      peer:call(Peer, py, call, [?H, terminals, [], #{}, #{pool => Pool}]))
         || Pool <- [tty, tty_sandboxed]]
    after
        peer:stop(Peer)
    end.

%%%===================================================================
%%% The VM killed
%%%===================================================================

%% kill -9 of the node: the keeper's parent-death signal has it kill the
%% worker (busy) and the daemon the worker started.
vm_killed_with_a_daemon_running(Config) ->
    {Peer, _} = start_peer(["/bin/sh", "-c", "exec \"$0\" \"$@\""], Config),
    Tag = tag(vm_killed),
    try
        ok = peer:call(Peer, application, set_env,
                       [pyport, pools, #{vm_killed => pool_opts(vm_killed, #{size => 1}, Config)}]),
        {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
        {ok, Daemon} = peer:call(Peer, py, call,
                                 [?H, fork_daemon, [path(Config)], #{}, #{pool => vm_killed}]),
        Busy = path(Config),
        _ = peer:call(Peer, erlang, spawn,
                      [py, call, [?H, spin, [Busy], #{}, #{pool => vm_killed, timeout => infinity}]]),
        wait_until(fun() -> filelib:is_regular(Busy) end),
        Tree = tagged(Tag),
        ?assertEqual(3, length(Tree)),
        ?assert(lists:member(Daemon, Tree)),
        VmPid = list_to_integer(peer:call(Peer, os, getpid, [])),
        pyport_os:kill(VmPid),
        wait_until(fun() -> tagged(Tag) =:= [] end, 300)
    after
        [pyport_os:kill(P) || P <- tagged(Tag)],
        catch peer:stop(Peer)
    end.

fds(OsPid) ->
    {ok, Names} = file:list_dir("/proc/" ++ integer_to_list(OsPid) ++ "/fd"),
    [list_to_integer(N) || N <- Names].

fd_target(OsPid, Fd) ->
    case file:read_link("/proc/" ++ integer_to_list(OsPid) ++ "/fd/" ++ integer_to_list(Fd)) of
        {ok, T} -> T;
        {error, _} -> closed
    end.

%% Field 7 of /proc/<pid>/stat: the controlling terminal (0: none).
tty_nr(OsPid) ->
    list_to_integer(lists:nth(5, stat_fields(OsPid))).

%%%===================================================================
%%% Helpers
%%%===================================================================

%% A pool's options: the suite's Python directory, and the pool's tag in
%% its workers' environment.
pool_opts(Name, Opts, Config) ->
    maps:merge(#{python_path => [?config(python_dir, Config)],
                 env => [{?TAG_VAR, tag(Name)}]}, Opts).

%% Starts a pool whose processes carry a tag of their own; returns it.
start_pool(Name, Opts, Config) ->
    {ok, _} = pyport:start_pool(Name, pool_opts(Name, Opts, Config)),
    tag(Name).

%% With this node's OS pid: two runs on one machine never count each
%% other's processes.
tag(Pool) ->
    "pyport-lifetime-" ++ os:getpid() ++ "-" ++ atom_to_list(Pool).

%% The live processes (zombies excepted) that carry a tag.
-spec tagged(string()) -> [pos_integer()].
tagged(Tag) ->
    Want = list_to_binary(?TAG_VAR ++ "=" ++ Tag),
    {ok, Names} = file:list_dir("/proc"),
    lists:sort([Pid || Name <- Names, {Pid, []} <- [string:to_integer(Name)], is_integer(Pid),
                       has_env(Pid, Want), pyport_os:alive(Pid)]).

has_env(Pid, Want) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/environ") of
        {ok, Env} -> lists:member(Want, binary:split(Env, <<0>>, [global]));
        {error, _} -> false
    end.

stat_fields(OsPid) ->
    {ok, Stat} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat"),
    [_, After] = string:split(binary_to_list(Stat), ") ", trailing),
    string:lexemes(After, " ").

parent(OsPid) ->
    list_to_integer(lists:nth(2, stat_fields(OsPid))).

path(Config) ->
    pyport_test_util:flag(Config).

owner(Pool, Slot) ->
    {ok, Info} = pyport_pool:info(Pool),
    {ok, Pid} = pyport_pool:worker(Info, Slot),
    Pid.

pool_sup(Pool) ->
    child_pid(pyport_sup, [pyport_pools_sup, {pool, Pool}, workers]).

child_pid(Sup, []) ->
    Sup;
child_pid(Sup, [Id | Rest]) ->
    [Pid] = [P || {I, P, _, _} <- supervisor:which_children(Sup), I =:= Id, is_pid(P)],
    child_pid(Pid, Rest).

wait_up(Slot) ->
    wait_until(fun() -> pyport_test_util:os_pid(Slot) =/= undefined end),
    pyport_test_util:os_pid(Slot).

wait_new_worker(Slot, Old) ->
    wait_until(fun() ->
                       case pyport_test_util:os_pid(Slot) of
                           undefined -> false;
                           Old -> false;
                           _ -> true
                       end
               end),
    pyport_test_util:os_pid(Slot).

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond).

wait_until(Cond, Tries) ->
    pyport_test_util:wait_until(Cond, Tries).

call_async(Ctx, Fun, Args) ->
    Self = self(),
    spawn(fun() ->
                  R = py:call(Ctx, ?H, Fun, Args, #{}, #{timeout => 30000}),
                  Self ! {answer, self(), R}
          end).

answer(Pid) ->
    receive {answer, Pid, R} -> R
    after 20000 -> ct:fail({no_answer, Pid})
    end.

no_more_answers() ->
    receive {answer, _, _} = Extra -> ct:fail({answered_twice, Extra})
    after 100 -> ok
    end.

%% A caller that calls the pool until told to stop; it reports how many
%% calls succeeded and the errors, and fails on any extra message.
spawn_caller(Pool, Timeout) ->
    Self = self(),
    spawn_link(fun() -> caller_loop(Self, Pool, Timeout, 0, []) end).

caller_loop(Parent, Pool, Timeout, Ok, Errors) ->
    R = py:call(?H, nap, [0.002], #{}, #{pool => Pool, timeout => Timeout}),
    {messages, Extra} = process_info(self(), messages),
    case Extra of
        [] -> ok;
        [stop] -> ok;
        _ -> exit({unexpected_messages, Extra})
    end,
    {Ok1, Errors1} = case R of
                         {ok, _} -> {Ok + 1, Errors};
                         _ -> {Ok, [R | Errors]}
                     end,
    receive
        stop -> Parent ! {caller_done, self(), Ok1, Errors1}
    after 0 ->
            caller_loop(Parent, Pool, Timeout, Ok1, Errors1)
    end.

stop_callers(Callers) ->
    [P ! stop || P <- Callers],
    [receive {caller_done, P, Ok, Errors} -> {Ok, Errors}
     after 30000 -> ct:fail({caller_stuck, P})
     end || P <- Callers].

wait_counters_zero(Pool) ->
    {ok, #{counters := C, size := Size}} = pyport_pool:info(Pool),
    Counts = fun() -> [counters:get(C, S) || S <- lists:seq(1, Size)] end,
    try wait_until(fun() -> lists:all(fun(N) -> N =:= 0 end, Counts()) end, 500)
    catch _:_ -> ct:fail({counters_not_zero, Counts()})
    end.

restart_app(Pools) ->
    pyport_test_util:stop(),
    ok = pyport_test_util:start(Pools).

%% A peer node started through a wrapper command (the wrapper's args, then
%% the peer's own command line).
start_peer([Exec | Args], _Config) ->
    Ebins = [filename:dirname(code:which(M)) || M <- [pyport_worker, ?MODULE]],
    {ok, Peer, Node} = peer:start(#{name => peer:random_name(?MODULE),
                                    connection => standard_io,
                                    exec => {Exec, Args ++ [os:find_executable("erl")]},
                                    args => lists:append([["-pa", E] || E <- Ebins])}),
    ok = peer:call(Peer, application, load, [pyport]),
    {Peer, Node}.

now_ms() ->
    erlang:monotonic_time(millisecond).
