%% Faults, bounded in time: workers killed under heavy load (chaos),
%% runaway Python code, memory bombs. What callers see, and that nothing
%% leaks afterwards.
-module(pyport_fault_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("kernel/include/file.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).
-define(CALLERS, 1000).
-define(CHAOS_MS, 30000).
-define(KILL_EVERY_MS, 100).
-define(KILL_AFTER_MS, 1000).

suite() ->
    [{timetrap, {seconds, 180}}].

all() ->
    [chaos, runaway_busy_loop, runaway_sleep, runaway_c_call_ignoring_signals, memory_bombs].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    [{python_dir, pyport_test_util:python_dir()} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools().

%%%===================================================================
%%% Chaos
%%%===================================================================

%% 1,000 callers for 30 s on a pool of 4 while a worker OS process is
%% killed every 100 ms.
chaos(Config) ->
    Worker = filename:join(code:priv_dir(pyport), "pyport_worker"),
    WorkersBefore = worker_processes(Worker),
    PortsBefore = length(erlang:ports()),
    {ok, _} = pyport:start_pool(chaos, #{size => 4, python_path => [?config(python_dir, Config)],
                                         call_timeout => 5000, kill_after => ?KILL_AFTER_MS}),
    Deadline = erlang:monotonic_time(millisecond) + ?CHAOS_MS,
    Self = self(),
    Callers = [spawn_link(fun() -> caller(Self, N, Deadline) end) || N <- lists:seq(1, ?CALLERS)],
    Killer = spawn_link(fun() -> killer(Self, Deadline, []) end),
    Reports = [receive {caller, C, Report} -> Report after ?CHAOS_MS + 60000 -> ct:fail({no_report, C}) end
               || C <- Callers],
    Killed = receive {killer, Killer, K} -> K after 60000 -> ct:fail(killer_hung) end,
    Totals = lists:foldl(fun(R, Acc) -> maps:merge_with(fun(_, A, B) -> A + B end, R, Acc) end,
                         #{}, Reports),
    ct:log("chaos: ~p calls answered, ~b kills: ~p", [maps:get(calls, Totals), length(Killed), Totals]),
    %% Every call answered exactly once, every ok result right.
    ?assertEqual(0, maps:get(wrong, Totals, 0)),
    ?assertEqual(0, maps:get(duplicates, Totals, 0)),
    ?assertEqual(0, maps:get(unexpected, Totals, 0)),
    ?assert(maps:get(ok, Totals, 0) > 10000),
    ?assert(length(Killed) > 100),
    ?assert(maps:get(worker_exited, Totals, 0) > 0),
    %% Afterwards: the pool is whole and idle, nothing is left over.
    {ok, #{workers := Ws}} = wait_until_value(fun() -> settled(chaos) end),
    [?assertMatch(#{status := up, in_flight := 0}, W) || W <- Ws],
    {ok, Pids} = pyport:workers(chaos),
    [begin
         ?assertEqual({monitors, []}, process_info(P, monitors)),
         ?assertEqual({message_queue_len, 0}, process_info(P, message_queue_len)),
         #{pending := 0, queued := 0, interrupted := 0, namespaces := 0} = pyport_worker:info(P)
     end || {_, P} <- Pids],
    {ok, #{tab := Tab}} = pyport_pool:info(chaos),
    ?assertEqual(4, ets:info(Tab, size)),
    %% Each worker is two OS processes: its keeper and the Python process.
    ?assertEqual(length(WorkersBefore) + 2 * 4, length(worker_processes(Worker))),
    ok = pyport:stop_pool(chaos),
    %% No orphan OS process, no port left open, nothing in our mailbox.
    wait_until(fun() -> lists:sort(worker_processes(Worker)) =:= lists:sort(WorkersBefore) end),
    [?assertNot(pyport_os:alive(P)) || P <- Killed],
    ?assertEqual(PortsBefore, length(erlang:ports())),
    ?assertEqual({messages, []}, process_info(self(), messages)).

caller(Parent, N, Deadline) ->
    rand:seed(exsss, {N, N * 7, N * 13}),
    Report = caller_loop(Deadline, #{}),
    %% Late or duplicate answers would arrive now.
    timer:sleep(200),
    {messages, Extra} = process_info(self(), messages),
    Parent ! {caller, self(), Report#{duplicates => length(Extra)}}.

caller_loop(Deadline, Acc) ->
    case erlang:monotonic_time(millisecond) < Deadline of
        false ->
            Acc;
        true ->
            A = rand:uniform(1000000),
            B = rand:uniform(1000000),
            Opts = #{pool => chaos},
            {Result, Expected} =
                case rand:uniform(5) of
                    1 -> {py:call(?F, add, [A, B], #{}, Opts), A + B};
                    2 -> {py:eval(<<"a * b">>, #{a => A, b => B}, Opts), A * B};
                    3 -> {py:await(py:spawn_call(?F, add, [A, B], #{}, Opts)), A + B};
                    4 -> {py:call(?F, identity, [{A, [B]}], #{}, Opts#{shard => A}), {A, [B]}};
                    5 -> {py:call(?F, sleep, [0.001, A], #{}, Opts), A}
                end,
            Kind = case Result of
                       {ok, Expected} -> ok;
                       {ok, _Other} -> wrong;
                       {error, {worker_exited, _}} -> worker_exited;
                       {error, timeout} -> timeout;
                       _ -> unexpected
                   end,
            Acc1 = maps:update_with(Kind, fun(X) -> X + 1 end, 1, Acc),
            caller_loop(Deadline, maps:update_with(calls, fun(X) -> X + 1 end, 1, Acc1))
    end.

killer(Parent, Deadline, Killed) ->
    case erlang:monotonic_time(millisecond) < Deadline of
        false ->
            Parent ! {killer, self(), Killed};
        true ->
            timer:sleep(?KILL_EVERY_MS),
            %% One of the workers that are up (a restarting one has no
            %% process to kill).
            Up = [P || S <- lists:seq(1, 4),
                       {ok, #{os_pid := P}} <- [catch pyport:worker_info({chaos, S})],
                       is_integer(P)],
            case Up of
                [] ->
                    killer(Parent, Deadline, Killed);
                _ ->
                    P = lists:nth(rand:uniform(length(Up)), Up),
                    pyport_os:kill(P),
                    killer(Parent, Deadline, [P | Killed])
            end
    end.

settled(Pool) ->
    {ok, #{workers := Ws}} = Info = pyport:pool_info(Pool),
    case lists:all(fun(#{status := S, in_flight := F}) -> S =:= up andalso F =:= 0 end, Ws) of
        true -> Info;
        false -> false
    end.

%% OS processes running this build's worker executable (the same file:
%% device and inode).
worker_processes(Exe) ->
    {ok, #file_info{inode = Inode, major_device = Dev}} = file:read_file_info(Exe),
    [list_to_integer(P) || P <- filelib:wildcard("[0-9]*", "/proc"),
                           same_file(P, Dev, Inode), pyport_os:alive(list_to_integer(P))].

same_file(Pid, Dev, Inode) ->
    case file:read_file_info("/proc/" ++ Pid ++ "/exe") of
        {ok, #file_info{inode = Inode, major_device = Dev}} -> true;
        _ -> false
    end.

%%%===================================================================
%%% Runaway code
%%%===================================================================

runaway_busy_loop(Config) ->
    runaway(<<"spin">>, interrupted, Config).

runaway_sleep(Config) ->
    runaway(<<"sleep">>, interrupted, Config).

runaway_c_call_ignoring_signals(Config) ->
    runaway(c_call, killed, Config).

%% The caller is answered at its timeout; the worker is back: the same OS
%% process when the interrupt worked, a new one kill_after later when not.
runaway(How, Outcome, Config) ->
    {ok, _} = pyport:start_pool(runaway, #{size => 1, python_path => [?config(python_dir, Config)],
                                           kill_after => ?KILL_AFTER_MS}),
    Opts = #{pool => runaway, timeout => 500},
    {ok, #{os_pid := OsPid}} = pyport:worker_info({runaway, 1}),
    Flag = pyport_test_util:flag(Config),
    Result = case How of
                 c_call -> py:call(?F, c_call_ignoring_signals, [Flag], #{}, Opts);
                 _ -> py:call(?F, runaway_after_touch, [Flag, How], #{}, Opts)
             end,
    ?assertEqual({error, timeout}, Result),
    ?assert(filelib:is_file(Flag)),
    {ok, NewPid} = py:call(os, getpid, [], #{}, #{pool => runaway, timeout => 30000}),
    case Outcome of
        interrupted -> ?assertEqual(OsPid, NewPid);
        killed -> ?assertNotEqual(OsPid, NewPid), ?assertNot(pyport_os:alive(OsPid))
    end,
    {ok, #{workers := [#{in_flight := 0, status := up}]}} = pyport:pool_info(runaway).

%%%===================================================================
%%% Memory bombs
%%%===================================================================

memory_bombs(Config) ->
    {ok, _} = pyport:start_pool(bombs, #{size => 1, python_path => [?config(python_dir, Config)],
                                         max_memory => 512 * 1024 * 1024,
                                         max_rss => 256 * 1024 * 1024}),
    Opts = #{pool => bombs, timeout => 60000},
    NodeBefore = erlang:memory(total),
    [begin
         R = py:call(?F, Bomb, [], #{}, Opts),
         ct:log("~p: ~p", [Bomb, R]),
         %% MemoryError, or the worker died of it and is replaced; never
         %% anything that reaches the node.
         ?assert(case R of
                     {error, {'MemoryError', _}} -> true;
                     {error, {worker_exited, _}} -> true;
                     _ -> false
                 end),
         ?assertEqual({ok, 3}, py:call(?F, add, [1, 2], #{}, Opts))
     end || Bomb <- [memory_bomb, small_object_bomb, string_doubling_bomb]],
    ?assert(erlang:memory(total) < NodeBefore + 64 * 1024 * 1024).

%%%===================================================================
%%% Helpers
%%%===================================================================

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond, 3000).

%% Polls every 20 ms for up to 30 s until Fun returns something other
%% than false.
wait_until_value(Fun) ->
    wait_until_value(Fun, 1500).

wait_until_value(_Fun, 0) ->
    ct:fail(condition_never_true);
wait_until_value(Fun, N) ->
    case Fun() of
        false -> timer:sleep(20), wait_until_value(Fun, N - 1);
        Value -> Value
    end.
