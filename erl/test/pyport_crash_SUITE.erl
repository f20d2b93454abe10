%% Crash isolation against real workers: a worker OS process that dies in
%% any way answers every request in flight on it with {error, {worker_exited,
%% Detail}} and is replaced; a module that fails to import is an error, not a
%% crash; a worker that cannot start fails its pool clearly and never loops.
-module(pyport_crash_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).
-define(IN_FLIGHT, 8).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [os_exit_status, os_abort, segfault, sigkill_from_outside,
     broken_imports_keep_the_worker, missing_executable_fails_the_pool,
     executable_that_exits_fails_the_pool, silent_executable_times_out,
     unsupported_protocol_refused, exit_details,
     crash_loop_gives_up, stop_pool_finishes_reads_then_kills_busy_worker,
     owner_killed_while_callers_wait].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_SUITE_data"),
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Data]}}),
    {ok, _} = application:ensure_all_started(pyport),
    [{python_dir, Data} | Config].

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%%%===================================================================
%%% A worker dying with requests in flight
%%%===================================================================

os_exit_status(Config) ->
    crash_in_flight(1, {python, <<"exit">>, 3}, {exit_status, 3}, Config).

os_abort(Config) ->
    crash_in_flight(2, {python, <<"abort">>, 0}, {signal, sigabrt}, Config).

segfault(Config) ->
    crash_in_flight(1, {python, <<"segv">>, 0}, {signal, sigsegv}, Config).

sigkill_from_outside(Config) ->
    crash_in_flight(2, sigkill, {signal, sigkill}, Config).

%% Puts ?IN_FLIGHT requests on one worker (the first blocks it until told),
%% crashes it, and checks that every caller gets exactly one answer naming
%% the cause, and that the slot answers again afterwards.
crash_in_flight(Slot, How, Detail, Config) ->
    Ctx = py:context(Slot),
    {ok, #{os_pid := OsPid, restarts := Restarts}} = pyport:worker_info(Ctx),
    Flag = filename:join(?config(priv_dir, Config),
                         "go-" ++ integer_to_list(erlang:unique_integer([positive]))),
    FlagBin = list_to_binary(Flag),
    Blocker = case How of
                  {python, Kind, Status} -> {crash_when, [FlagBin, Kind, Status]};
                  sigkill -> {wait_for_file, [FlagBin]}
              end,
    Self = self(),
    Caller = fun(F, A) ->
                     spawn_link(fun() ->
                                        R = py:call(Ctx, ?F, F, A, #{}, #{timeout => 30000}),
                                        {messages, Extra} = process_info(self(), messages),
                                        Self ! {answer, self(), R, Extra}
                                end)
             end,
    %% The blocker first, so that it is what the worker is running.
    First = Caller(element(1, Blocker), element(2, Blocker)),
    wait_for_pending(Ctx, 1),
    Rest = [Caller(identity, [N]) || N <- lists:seq(2, ?IN_FLIGHT)],
    wait_for_pending(Ctx, ?IN_FLIGHT),
    case How of
        {python, _, _} -> ok = file:write_file(Flag, <<>>);
        sigkill -> kill_9(OsPid)
    end,
    Answers = [receive {answer, P, R, Extra} -> {R, Extra}
               after 20000 -> ct:fail({no_answer, P})
               end || P <- [First | Rest]],
    ?assertEqual(lists:duplicate(?IN_FLIGHT, {{error, {worker_exited, Detail}}, []}), Answers),
    %% The next call to the same slot is served by a new OS process.
    ?assertEqual({ok, again}, py:call(Ctx, ?F, identity, [again])),
    {ok, #{os_pid := NewPid, restarts := NewRestarts, last_exit := Detail}} =
        pyport:worker_info(Ctx),
    ?assertNotEqual(OsPid, NewPid),
    ?assertEqual(Restarts + 1, NewRestarts),
    ?assertNot(os_process_alive(OsPid)).

wait_for_pending(Ctx, N) ->
    wait_until(fun() ->
                       {ok, #{pending := P}} = pyport:worker_info(Ctx),
                       P >= N
               end, {pending, N}).

%%%===================================================================
%%% Imports that fail
%%%===================================================================

broken_imports_keep_the_worker(_Config) ->
    Ctx = py:context(2),
    {ok, #{os_pid := OsPid}} = pyport:worker_info(Ctx),
    {error, {'ImportError', Msg}} = py:call(Ctx, pyport_broken_import, f, []),
    ?assertMatch({_, _}, binary:match(Msg, <<"broken on purpose">>)),
    {error, {'RuntimeError', Msg2}} = py:call(Ctx, pyport_raises_at_import, f, []),
    ?assertMatch({_, _}, binary:match(Msg2, <<"fails while importing">>)),
    %% Asking again gives the error again (nothing half-imported is cached).
    ?assertMatch({error, {'ImportError', _}}, py:call(Ctx, pyport_broken_import, f, [])),
    ?assertEqual({ok, 3}, py:call(Ctx, ?F, add, [1, 2])),
    ?assertMatch({ok, #{os_pid := OsPid}}, pyport:worker_info(Ctx)).

%%%===================================================================
%%% Workers that cannot start
%%%===================================================================

missing_executable_fails_the_pool(_Config) ->
    Path = <<"/nonexistent/pyport_worker">>,
    ?assertEqual({error, {pool_start_failed, broken,
                          {worker_start_failed, {no_executable, Path}}}},
                 pyport:start_pool(broken, #{size => 2, worker => Path})),
    ?assertEqual({error, {no_pool, broken}}, py:call(math, sqrt, [4], #{}, #{pool => broken})),
    ?assertEqual([default], pyport:pools()).

executable_that_exits_fails_the_pool(Config) ->
    Script = script(Config, "exits", "exit 4\n"),
    ?assertEqual({error, {pool_start_failed, exits, {worker_start_failed, {exit_status, 4}}}},
                 pyport:start_pool(exits, #{size => 1, worker => Script})),
    ?assertEqual([default], pyport:pools()).

silent_executable_times_out(Config) ->
    PidFile = filename:join(?config(priv_dir, Config), "silent.pid"),
    Script = script(Config, "silent", "echo $$ > " ++ PidFile ++ "\nexec sleep 60\n"),
    ?assertEqual({error, {pool_start_failed, silent, {worker_start_failed, {timeout, 300}}}},
                 pyport:start_pool(silent, #{size => 1, worker => Script, start_timeout => 300})),
    {ok, PidText} = file:read_file(PidFile),
    OsPid = binary_to_integer(string:trim(PidText)),
    %% The process that never said hello was killed, not left behind.
    wait_until(fun() -> not os_process_alive(OsPid) end, {still_alive, OsPid}).

%% A worker that speaks another protocol version is refused, and stopped.
unsupported_protocol_refused(Config) ->
    Hello = iolist_to_binary(pyport_codec:encode_frame(0, 0, [2, <<"3.11.2">>, 1, #{}])),
    Bytes = <<(byte_size(Hello)):32, Hello/binary>>,
    Printf = lists:append([io_lib:format("\\~3.8.0b", [B]) || <<B>> <= Bytes]),
    PidFile = filename:join(?config(priv_dir, Config), "v2.pid"),
    Script = script(Config, "v2", "echo $$ > " ++ PidFile ++ "\nprintf '" ++ Printf ++
                        "'\nexec sleep 60\n"),
    ?assertEqual({error, {pool_start_failed, v2, {worker_start_failed, {unsupported_protocol, 2}}}},
                 pyport:start_pool(v2, #{size => 1, worker => Script})),
    {ok, PidText} = file:read_file(PidFile),
    OsPid = binary_to_integer(string:trim(PidText)),
    wait_until(fun() -> not os_process_alive(OsPid) end, {still_alive, OsPid}).

%% How an exit status is reported: above 128 it is a signal.
exit_details(_Config) ->
    ?assertEqual({exit_status, 0}, pyport_worker:exit_detail(0)),
    ?assertEqual({exit_status, 128}, pyport_worker:exit_detail(128)),
    ?assertEqual({signal, sighup}, pyport_worker:exit_detail(129)),
    ?assertEqual({signal, sigabrt}, pyport_worker:exit_detail(134)),
    ?assertEqual({signal, sigkill}, pyport_worker:exit_detail(137)),
    ?assertEqual({signal, sigsegv}, pyport_worker:exit_detail(139)),
    ?assertEqual({signal, sigterm}, pyport_worker:exit_detail(143)),
    ?assertEqual({signal, 40}, pyport_worker:exit_detail(168)).

%% A worker whose OS process stops being able to start: five deaths before a
%% hello stop its gen_server, the pool's supervisor gives up after its
%% restart intensity, the pool goes away, and nothing else is affected.
crash_loop_gives_up(Config) ->
    Ok = filename:join(?config(priv_dir, Config), "flaky.ok"),
    Real = filename:join(code:priv_dir(pyport), "pyport_worker"),
    Script = script(Config, "flaky", "[ -e " ++ Ok ++ " ] || exit 7\nexec " ++ Real ++ " \"$@\"\n"),
    ok = file:write_file(Ok, <<>>),
    {ok, _} = pyport:start_pool(flaky, #{size => 1, worker => Script,
                                         python_path => [?config(python_dir, Config)]}),
    Opts = #{pool => flaky, timeout => 30000},
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4], #{}, Opts)),
    {ok, #{os_pid := OsPid}} = pyport:worker_info({flaky, 1}),
    ok = file:delete(Ok),
    Self = self(),
    Waiter = spawn_link(fun() -> Self ! {waiter, py:call(?F, sleep, [30], #{}, Opts)} end),
    wait_until(fun() -> {ok, #{pending => 1}} =:= pending_of({flaky, 1}) end, waiter_pending),
    kill_9(OsPid),
    receive {waiter, R} -> ?assertEqual({error, {worker_exited, {signal, sigkill}}}, R)
    after 20000 -> ct:fail({no_answer, Waiter})
    end,
    %% While it gives up, a call is answered with why, never left waiting.
    case py:call(math, sqrt, [4], #{}, Opts) of
        {error, {worker_exited, _}} -> ok;     % {start_failed, ...}, or noproc
        {error, {no_pool, flaky}} -> ok;
        {error, {no_workers, flaky}} -> ok;
        Other -> ct:fail({unexpected, Other})
    end,
    wait_until(fun() -> not lists:member(flaky, pyport:pools()) end, flaky_still_running),
    ?assertEqual({error, {no_pool, flaky}}, py:call(math, sqrt, [4], #{}, Opts)),
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4])),
    %% Once it can start again, the pool can be started again.
    ok = file:write_file(Ok, <<>>),
    {ok, _} = pyport:start_pool(flaky, #{size => 1, worker => Script}),
    ?assertEqual({ok, 3.0}, py:call(math, sqrt, [9], #{}, Opts)),
    ok = pyport:stop_pool(flaky).

pending_of(Target) ->
    case pyport:worker_info(Target) of
        {ok, #{pending := P}} -> {ok, #{pending => P}};
        Other -> Other
    end.

%% Stopping a pool: a request the worker has already read is still
%% answered; a worker stuck in a loop is killed, its caller answered.
stop_pool_finishes_reads_then_kills_busy_worker(Config) ->
    Data = ?config(python_dir, Config),
    {ok, _} = pyport:start_pool(graceful, #{size => 1, python_path => [Data]}),
    Self = self(),
    Opts = #{pool => graceful, timeout => 30000},
    spawn_link(fun() -> Self ! {graceful, py:call(?F, sleep, [0.3, finished], #{}, Opts)} end),
    wait_until(fun() -> {ok, #{pending => 1}} =:= pending_of({graceful, 1}) end, sleep_pending),
    ok = pyport:stop_pool(graceful),
    receive {graceful, R1} -> ?assertEqual({ok, finished}, R1)
    after 10000 -> ct:fail(no_graceful_answer)
    end,

    {ok, _} = pyport:start_pool(busy, #{size => 1, python_path => [Data]}),
    Flag = list_to_binary(filename:join(?config(priv_dir, Config), "spinning")),
    {ok, #{os_pid := OsPid}} = pyport:worker_info({busy, 1}),
    spawn_link(fun() -> Self ! {busy, py:call(?F, spin_after_touch, [Flag], #{},
                                              #{pool => busy, timeout => infinity})} end),
    wait_until(fun() -> filelib:is_file(Flag) end, not_spinning),
    ok = pyport:stop_pool(busy),
    receive {busy, R2} -> ?assertEqual({error, {worker_exited, shutdown}}, R2)
    after 10000 -> ct:fail(no_busy_answer)
    end,
    wait_until(fun() -> not os_process_alive(OsPid) end, {still_alive, OsPid}).

%% The worker's gen_server itself killed: callers are answered {error,
%% {worker_exited, _}} whether it died before they started to watch it (a
%% caller monitors only once an answer is slow, see pyport_request) or
%% after, and even with no timeout.
owner_killed_while_callers_wait(Config) ->
    {ok, _} = pyport:start_pool(owner_kill, #{size => 1,
                                              python_path => [?config(python_dir, Config)]}),
    Ctx = py:context(owner_kill, 1),
    ?assertEqual({ok, up}, py:call(Ctx, ?F, identity, [up], #{}, #{})),
    {ok, Info} = pyport_pool:info(owner_kill),
    {ok, Owner} = pyport_pool:worker(Info, 1),
    Self = self(),
    Call = fun() ->
                   spawn_link(fun() ->
                                      H = py:spawn_call(Ctx, ?F, sleep, [30]),
                                      Self ! {sent, self()},
                                      R = py:await(H, infinity),
                                      {messages, Extra} = process_info(self(), messages),
                                      Self ! {answer, self(), R, Extra}
                              end)
           end,
    Sent = fun(Ps) -> [receive {sent, P} -> P end || P <- Ps] end,
    Watching = Sent([Call() || _ <- lists:seq(1, 4)]),
    wait_for_pending(Ctx, 4),
    timer:sleep(100),                   % these four monitor the owner by now
    %% These four are held, unless late, before they start to.
    Fresh = [begin erlang:suspend_process(P), P end
             || P <- Sent([Call() || _ <- lists:seq(1, 4)])],
    exit(Owner, kill),
    [erlang:resume_process(P) || P <- Fresh],
    Answers = [receive {answer, P, R, Extra} -> {R, Extra}
               after 10000 -> ct:fail({no_answer, P})
               end || P <- Watching ++ Fresh],
    [?assertMatch({{error, {worker_exited, _}}, []}, A) || A <- Answers],
    %% The slot gets a new gen_server and OS process, which answers.
    wait_until(fun() -> {ok, up} =:= py:call(Ctx, ?F, identity, [up], #{}, #{}) end,
               owner_not_back),
    ok = pyport:stop_pool(owner_kill).

%%%===================================================================
%%% Helpers
%%%===================================================================

script(Config, Name, Body) ->
    Path = filename:join(?config(priv_dir, Config), Name ++ ".sh"),
    ok = file:write_file(Path, ["#!/bin/sh\n", Body]),
    ok = file:change_mode(Path, 8#755),
    list_to_binary(Path).

kill_9(OsPid) ->
    _ = os:cmd("kill -KILL " ++ integer_to_list(OsPid)),
    ok.

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
