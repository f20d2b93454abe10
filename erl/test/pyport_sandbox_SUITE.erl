%% Sandboxed pools end to end: every hostile job of issue 6 through
%% pyport:run_job/2, in a warm sandboxed pool and in a fresh_worker pool
%% (a zygote forking a child per job). Each is stopped with its exact error,
%% the next job and a py:call on the same pool work, and the node is
%% unharmed. Also: configuration errors, the pool_info/1 report, job
%% semantics, fresh-worker isolation, recycling, the private working
%% directory and the environment.
-module(pyport_sandbox_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(MIB, 1048576).
-define(SECRET, "PYPORT_SANDBOX_SUITE_SECRET").

suite() ->
    [{timetrap, {seconds, 180}}].

all() ->
    [{group, warm}, {group, fresh}, config_errors, not_sandboxed_pools,
     job_semantics, exception_keeps_output, pool_info_reports_sandbox,
     fresh_jobs_are_isolated, warm_worker_stays_after_failed_job,
     workdir_removed_after_kill, env_only_what_the_pool_names, imports_preloaded,
     concurrent_fresh_jobs, relaxations_reach_the_worker, stricter_limit_wins,
     warm_cpu_limit, fresh_cpu_limit, warm_jobs_each_get_their_cpu_seconds,
     fork_bomb_with_fork_allowed, warm_job_that_ignores_signals_is_killed,
     workdir_in_the_nodes_tmpdir_or_workdir_parent].

groups() ->
    Hostile = [connect_localhost, bind_port, exec_sh, fork_loop, allocate_10gb, spin_forever,
               write_10gb, write_outside_workdir, read_parent_environment, kill_parent,
               ctypes_raw_syscall, other_abi_syscall, print_100mb, segfault,
               realtime_signal],
    [{warm, [], Hostile}, {fresh, [], Hostile}].

init_per_suite(Config) ->
    %% The node's environment holds a secret no job may see.
    true = os:putenv(?SECRET, "hunter2"),
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    [{python_dir, pyport_test_util:python_dir()}, {sup, whereis(pyport_sup)} | Config].

end_per_suite(_Config) ->
    os:unsetenv(?SECRET),
    pyport_test_util:stop().

init_per_group(Group, Config) ->
    Fresh = Group =:= fresh,
    {ok, _} = pyport:start_pool(jobs, #{size => 2, sandbox => true, fresh_worker => Fresh,
                                        python_path => [?config(python_dir, Config)]}),
    [{fresh, Fresh} | Config].

end_per_group(_Group, _Config) ->
    ok = pyport:stop_pool(jobs).

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, Config) ->
    case ?config(fresh, Config) of
        undefined -> pyport_test_util:stop_other_pools();
        _ -> ok                                   % the group's pool stays
    end.

%%%===================================================================
%%% Hostile jobs (both groups)
%%%===================================================================

connect_localhost(Config) ->
    hostile(Config, <<"import socket\n"
                      "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
                      "s.connect(('127.0.0.1', 4369))\n">>,
            {forbidden, <<"socket">>}).

bind_port(Config) ->
    hostile(Config, <<"import socket\n"
                      "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                      "s.bind(('::', 0))\n">>,
            {forbidden, <<"socket">>}).

exec_sh(Config) ->
    hostile(Config, <<"import os\nos.execv('/bin/sh', ['sh', '-c', 'echo escaped'])\n">>,
            {forbidden, <<"execve">>}).

fork_loop(Config) ->
    %% The job catches the refusal and keeps trying: it fails anyway.
    hostile(Config, <<"import os\n"
                      "for _ in range(1000):\n"
                      "    try:\n"
                      "        if os.fork() == 0:\n"
                      "            os._exit(0)\n"
                      "    except OSError:\n"
                      "        pass\n">>,
            {forbidden, <<"clone">>}).

allocate_10gb(Config) ->
    hostile(Config, <<"b = bytearray(10 * 1024 ** 3)\n">>, {memory_limit, 1024 * ?MIB}).

spin_forever(Config) ->
    hostile(Config, #{code => <<"while True:\n    pass\n">>, timeout => 1000}, timeout).

write_10gb(Config) ->
    hostile(Config, <<"chunk = b'x' * (1 << 20)\n"
                      "with open('big', 'wb') as f:\n"
                      "    for _ in range(10 * 1024):\n"
                      "        f.write(chunk)\n">>,
            {file_size_limit, 64 * ?MIB}).

write_outside_workdir(Config) ->
    %% A directory everyone may write to: only the sandbox stops the job.
    Dir = filename:join(?config(priv_dir, Config), "open-" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = file:make_dir(Dir),
    ok = file:change_mode(Dir, 8#1777),
    Target = list_to_binary(filename:join(Dir, "escaped")),
    {error, {exception, #{type := Type}}} =
        hostile(Config, #{code => <<"open(input, 'w').write('escaped')">>, input => Target},
                exception),
    %% Not in the job's own root at all (a private mount view), or Landlock.
    ?assert(lists:member(Type, [<<"PermissionError">>, <<"FileNotFoundError">>])),
    ?assertNot(filelib:is_file(Target)).

read_parent_environment(Config) ->
    %% The node's environment: through the job's own, through /proc, and in
    %% the job's own memory where the kernel put the environment the
    %% process started with (argv[0] up to the executable's name, at the top
    %% of the stack), which clearing the environment does not erase.
    Code = <<"import ctypes, os\n"
             "try:\n"
             "    seen = open('/proc/%d/environ' % input, 'rb').read()\n"
             "except OSError as e:\n"
             "    seen = type(e).__name__\n"
             "libc = ctypes.CDLL(None)\n"
             "libc.getauxval.restype = ctypes.c_ulong\n"
             "start = ctypes.c_void_p.in_dll(libc, 'program_invocation_name').value\n"
             "end = libc.getauxval(31)\n"
             "initial = ctypes.string_at(start, end - start)\n"
             "(any('SECRET' in k for k in os.environ), seen, b'hunter2' in initial,\n"
             " b'--runtime' in initial)\n">>,
    {ok, {InEnv, Seen, InMemory, FoundArgv}, _} =
        job(Config, #{code => Code, input => list_to_integer(os:getpid())}),
    ?assertEqual(false, InEnv),
    %% The node is not in the job's /proc (its own pid namespace).
    ?assert(lists:member(Seen, [<<"PermissionError">>, <<"FileNotFoundError">>])),
    ?assertEqual({false, true}, {InMemory, FoundArgv}),
    follow_ups(Config).

kill_parent(Config) ->
    %% SIGKILL to the node, and to the job's parent (the keeper, or the
    %% zygote of a fresh job).
    Code = <<"import os, signal\n"
             "out = []\n"
             "for pid in (input, os.getppid()):\n"
             "    try:\n"
             "        os.kill(pid, signal.SIGKILL)\n"
             "        out.append('sent')\n"
             "    except OSError as e:\n"
             "        out.append(type(e).__name__)\n"
             "out\n">>,
    %% Refused: Landlock (ABI 6 and later) scopes signals to the sandbox
    %% (and the uid differs), and a fresh job's PID namespace does not even
    %% show the node; on older kernels the filter lets a process that may
    %% not fork signal only itself, and names the refusal.
    Result = job(Config, #{code => Code, input => list_to_integer(os:getpid())}),
    {ok, #{workers := [#{sandbox := #{landlock := Landlock}} | _]}} = pyport:pool_info(jobs),
    case is_integer(Landlock) andalso Landlock >= 6 of
        true ->
            %% Every worker's pid namespace hides the node.
            Node = <<"ProcessLookupError">>,
            ?assertMatch({ok, [Node, <<"PermissionError">>], _}, Result);
        false ->
            ?assertEqual({error, {forbidden, <<"kill">>}}, Result)
    end,
    follow_ups(Config).

ctypes_raw_syscall(Config) ->
    %% socket(AF_INET, SOCK_STREAM, 0) by number (x86_64: 41), bypassing
    %% Python; the job ignores the failure and still fails.
    hostile(Config, <<"import ctypes\n"
                      "libc = ctypes.CDLL(None, use_errno=True)\n"
                      "libc.syscall(41, 2, 1, 0)\n">>,
            {forbidden, <<"socket">>}).

other_abi_syscall(Config) ->
    %% getpid through the x32 ABI (bit 30): a call the filter cannot name
    %% kills the process (warm: the worker, replaced; fresh: the child).
    hostile(Config, <<"import ctypes\n"
                      "ctypes.CDLL(None).syscall(0x40000000 | 39)\n">>,
            {forbidden, <<"unknown">>}).

print_100mb(Config) ->
    hostile(Config, <<"import sys\n"
                      "chunk = 'x' * (1 << 20)\n"
                      "for _ in range(100):\n"
                      "    sys.stdout.write(chunk)\n">>,
            {output_limit, ?MIB}).

segfault(Config) ->
    %% A crash in C code takes only the job's runner, warm or fresh.
    hostile(Config, <<"import ctypes
ctypes.string_at(0)">>, {crashed, #{signal => sigsegv}}).

realtime_signal(Config) ->
    %% A signal without a name is reported by its number: a sandboxed pool
    %% may create no atom (its atom budget is 0), so no `signal37'.
    hostile(Config, <<"import os, signal
os.kill(os.getpid(), signal.SIGRTMIN + 3)">>, {crashed, #{signal => 37}}).

%%%===================================================================
%%% Pool options and reports
%%%===================================================================

config_errors(_Config) ->
    ?assertEqual({error, {invalid_pool_option, bad, sandbox, on}},
                 pyport:start_pool(bad, #{sandbox => on})),
    ?assertEqual({error, {unknown_sandbox_option, bad, net}},
                 pyport:start_pool(bad, #{sandbox => #{net => true}})),
    ?assertEqual({error, {invalid_pool_option, bad, {sandbox, max_memory}, 10}},
                 pyport:start_pool(bad, #{sandbox => #{max_memory => 10}})),
    ?assertEqual({error, {invalid_pool_option, bad, {sandbox, workdir_parent}, "/no/such/dir"}},
                 pyport:start_pool(bad, #{sandbox => #{workdir_parent => "/no/such/dir"}})),
    ?assertEqual({error, {pool_option_requires, bad, fresh_worker, sandbox}},
                 pyport:start_pool(bad, #{fresh_worker => true})),
    %% A preloaded module that cannot be imported: the worker never starts,
    %% and says why, as an unsandboxed pool would.
    ?assertEqual({error, {pool_start_failed, bad,
                          {worker_start_failed,
                           {init_failed, {import, <<"no_such_module_x">>},
                            {<<"ModuleNotFoundError">>, <<"No module named 'no_such_module_x'">>}}}}},
                 pyport:start_pool(bad, #{size => 1, sandbox => true, imports => [no_such_module_x]})),
    ?assertEqual([default], pyport:pools()).

not_sandboxed_pools(_Config) ->
    ?assertEqual({error, {not_sandboxed, default}}, pyport:run_job(default, #{code => <<"1">>})),
    ?assertEqual({error, {no_pool, nowhere}}, pyport:run_job(nowhere, #{code => <<"1">>})),
    %% Unsandboxed pools report no sandbox.
    {ok, #{workers := [W]}} = pyport:pool_info(default),
    ?assertNot(is_map_key(sandbox, W)).

job_semantics(Config) ->
    start(semantics, #{}, Config),
    ?assertMatch({ok, 42, #{stdout := <<>>, stderr := <<>>}},
                 pyport:run_job(semantics, #{code => <<"x = input * 2\nx">>, input => 21})),
    ?assertMatch({ok, [1, 2], _}, pyport:run_job(semantics, #{code => <<"result = [1, 2]\nx = 3">>})),
    ?assertMatch({ok, none, _}, pyport:run_job(semantics, #{code => "y = 1"})),
    {ok, none, Stats} = pyport:run_job(semantics, #{code => <<"import sys\nprint('out')\n"
                                                             "print('err', file=sys.stderr)\n"
                                                             "y = 2">>}),
    ?assertMatch(#{stdout := <<"out\n">>, stderr := <<"err\n">>}, Stats),
    [?assert(is_integer(maps:get(K, Stats)) andalso maps:get(K, Stats) >= 0)
     || K <- [cpu_ms, max_rss, wall_ms]],
    ?assertMatch({error, {exception, #{type := <<"SyntaxError">>}}},
                 pyport:run_job(semantics, #{code => <<"def (">>})),
    ?assertMatch({error, {bad_job, _}}, pyport:run_job(semantics, #{input => 1})),
    ?assertMatch({error, {bad_job, _}}, pyport:run_job(semantics, #{code => <<"1">>, timeout => 0})).

exception_keeps_output(Config) ->
    start(failing, #{}, Config),
    {error, {exception, E}} =
        pyport:run_job(failing, #{code => <<"print('before')\nraise ValueError('boom')">>}),
    ?assertMatch(#{type := <<"ValueError">>, message := <<"boom">>, stdout := <<"before\n">>,
                   stderr := <<>>}, E),
    ?assertNotEqual(nomatch, binary:match(maps:get(traceback, E), <<"ValueError">>)).

pool_info_reports_sandbox(Config) ->
    start(reported, #{size => 2, sandbox => #{max_file_size => 5 * ?MIB, max_open_files => 100}},
          Config),
    start(zygotes, #{size => 1, fresh_worker => true}, Config),
    {ok, #{workers := Workers}} = pyport:pool_info(reported),
    ?assertEqual(2, length(Workers)),
    [check_report(worker, S, Config) || #{sandbox := S} <- Workers],
    [#{sandbox := #{rlimits := Rlimits}} | _] = Workers,
    ?assertMatch(#{fsize := 5242880, nofile := 100, as := 1073741824, cpu := 60}, Rlimits),
    {ok, #{workers := [#{sandbox := Zygote}]}} = pyport:pool_info(zygotes),
    check_report(zygote, Zygote, Config).

check_report(Mode, Report, _Config) ->
    ct:log("~p sandbox report: ~p", [Mode, Report]),
    ?assertMatch(#{mode := Mode, seccomp := true, no_new_privs := true, allowed := [],
                   workdir := <<"/", _/binary>>, unavailable := _}, Report),
    %% Every layer is reported: on, or off with the kernel's reason.
    Unavailable = [L || {L, _} <- maps:get(unavailable, Report)],
    [?assert(maps:get(L, Report) =/= false orelse lists:member(L, Unavailable))
     || L <- [landlock, user_ns, net_ns, pid_ns, ipc_ns, mount_ns]],
    ?assert(filelib:is_dir(maps:get(workdir, Report))).

fresh_jobs_are_isolated(Config) ->
    start(isolated, #{size => 1, fresh_worker => true}, Config),
    Leak = <<"import builtins, sys, os\n"
             "builtins.leaked = 1\n"
             "sys.modules['json'] = None\n"
             "open('left-behind', 'w').write('x')\n"
             "os.getcwd()">>,
    {ok, Cwd1, _} = pyport:run_job(isolated, #{code => Leak}),
    {ok, {Leaked, JsonOk, LeftBehind, Cwd2}, _} =
        pyport:run_job(isolated, #{code => <<"import builtins, os\n"
                                             "import json\n"
                                             "(hasattr(builtins, 'leaked'), json is not None,\n"
                                             " os.path.exists('left-behind'), os.getcwd())">>}),
    ?assertEqual({false, true, false}, {Leaked, JsonOk, LeftBehind}),
    ?assertNotEqual(Cwd1, Cwd2).

warm_worker_stays_after_failed_job(Config) ->
    %% No job runs in the worker: whatever a job does, its worker stays,
    %% and every job runs in a process of its own.
    start(stays, #{size => 1}, Config),
    OsPid = pyport_test_util:os_pid({stays, 1}),
    {error, {exception, _}} = pyport:run_job(stays, #{code => <<"1/0">>}),
    ?assertEqual({error, timeout},
                 pyport:run_job(stays, #{code => <<"while True: pass">>, timeout => 300})),
    {ok, Pid1, _} = pyport:run_job(stays, #{code => <<"import os\nos.getpid()">>}),
    {ok, Pid2, _} = pyport:run_job(stays, #{code => <<"import os\nos.getpid()">>}),
    ?assertNotEqual(Pid1, Pid2),
    ?assertNotEqual(OsPid, Pid1),
    ?assertEqual(OsPid, pyport_test_util:os_pid({stays, 1})),
    {ok, #{workers := [#{recycles := 0}]}} = pyport:pool_info(stays).

workdir_removed_after_kill(Config) ->
    start(killed, #{size => 1}, Config),
    %% The worker killed: its keeper (parent) removes the directory.
    {Pid1, Dir1} = workdir_with_a_file(killed, undefined),
    pyport_os:kill(Pid1),
    pyport_test_util:wait_until(fun() -> not filelib:is_dir(Dir1) end),
    %% The keeper killed (the worker dies with it): the owner removes it.
    {Pid2, Dir2} = workdir_with_a_file(killed, Pid1),
    ?assertNotEqual(Dir1, Dir2),
    pyport_os:kill(parent_pid(Pid2)),
    pyport_test_util:wait_until(fun() -> not filelib:is_dir(Dir2) end),
    %% A graceful stop leaves nothing either.
    {_, Dir3} = workdir_with_a_file(killed, Pid2),
    ok = pyport:stop_pool(killed),
    pyport_test_util:wait_until(fun() -> not filelib:is_dir(Dir3) end).

%% The OS pid and working directory of the pool's worker once a process
%% other than Old is up, with a file the worker wrote in the directory.
workdir_with_a_file(Pool, Old) ->
    pyport_test_util:wait_until(fun() ->
                                        P = pyport_test_util:os_pid({Pool, 1}),
                                        is_integer(P) andalso P =/= Old
                                end),
    {ok, #{workers := [#{os_pid := OsPid, sandbox := #{workdir := Dir}}]}} = pyport:pool_info(Pool),
    ?assertEqual({ok, Dir}, py:eval(<<"open('f', 'w').write('x') and __import__('os').getcwd().encode()">>,
                                    none, #{pool => Pool})),
    %% The file is in the worker's own tmpfs, mounted on that directory in
    %% its mount namespace only: the host's directory stays empty.
    ?assert(filelib:is_dir(Dir)),
    ?assertNot(filelib:is_regular(filename:join(Dir, "f"))),
    {OsPid, Dir}.

parent_pid(OsPid) ->
    {ok, Stat} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat"),
    [_, AfterComm] = string:split(Stat, <<") ">>, trailing),
    [_State, PPid | _] = binary:split(AfterComm, <<" ">>, [global]),
    binary_to_integer(PPid).

env_only_what_the_pool_names(Config) ->
    true = os:putenv("PYPORT_SANDBOX_KEPT", "kept"),
    start(envs, #{env => #{"JOB_SETTING" => "on"},
                  sandbox => #{env_keep => ["PYPORT_SANDBOX_KEPT"]}}, Config),
    {ok, Env, _} = pyport:run_job(envs, #{code => <<"import os\ndict(os.environ)">>}),
    ?assertMatch(#{<<"JOB_SETTING">> := <<"on">>, <<"PYPORT_SANDBOX_KEPT">> := <<"kept">>}, Env),
    ?assertNot(is_map_key(<<?SECRET>>, Env)),
    ?assertNot(is_map_key(<<"PATH_TO_NODE_ONLY">>, Env)),
    os:unsetenv("PYPORT_SANDBOX_KEPT").

workdir_in_the_nodes_tmpdir_or_workdir_parent(Config) ->
    Tmp = filename:join(?config(priv_dir, Config), "tmp"),
    Parent = filename:join(?config(priv_dir, Config), "parent"),
    ok = file:make_dir(Tmp),
    ok = file:make_dir(Parent),
    Saved = os:getenv("TMPDIR"),
    true = os:putenv("TMPDIR", Tmp),
    try
        start(in_tmp, #{}, Config),
        start(in_parent, #{sandbox => #{workdir_parent => Parent}}, Config)
    after
        case Saved of
            false -> os:unsetenv("TMPDIR");
            _ -> os:putenv("TMPDIR", Saved)
        end
    end,
    [begin
         {ok, #{workers := [#{sandbox := #{workdir := Dir}}]}} = pyport:pool_info(Pool),
         ?assertEqual(list_to_binary(Expected), filename:dirname(Dir)),
         %% Inside, TMPDIR is the job's own directory, in the worker's.
         {ok, JobDir, _} = pyport:run_job(Pool, #{code => <<"import os\n"
                                                           "os.environ['TMPDIR'].encode()">>}),
         ?assertEqual(Dir, filename:dirname(JobDir)),
         ?assertMatch(<<"job-", _/binary>>, filename:basename(JobDir))
     end || {Pool, Expected} <- [{in_tmp, Tmp}, {in_parent, Parent}]].

imports_preloaded(Config) ->
    start(preloaded, #{imports => [json], fresh_worker => true}, Config),
    ?assertMatch({ok, true, _},
                 pyport:run_job(preloaded, #{code => <<"import sys\n'json' in sys.modules">>})).

concurrent_fresh_jobs(Config) ->
    start(parallel, #{size => 1, fresh_worker => true}, Config),
    %% One zygote: a job sleeping in its child does not hold up others.
    Slow = pyport_test_util:async(
             fun() -> pyport:run_job(parallel, #{code => <<"import time\ntime.sleep(1)\n'slow'">>}) end),
    Quick = [pyport:run_job(parallel, #{code => <<"input">>, input => I}) || I <- lists:seq(1, 5)],
    ?assertMatch([{ok, 1, _}, {ok, 2, _}, {ok, 3, _}, {ok, 4, _}, {ok, 5, _}], Quick),
    ?assertMatch({ok, <<"slow">>, _}, pyport_test_util:await(Slow)).

relaxations_reach_the_worker(Config) ->
    start(relaxed, #{sandbox => #{network => true, exec => true}}, Config),
    {ok, #{workers := [#{sandbox := #{allowed := Allowed, net_ns := NetNs}}]}} =
        pyport:pool_info(relaxed),
    ?assertEqual([exec, network], lists:sort(Allowed)),
    ?assertEqual(false, NetNs),
    ?assertMatch({ok, <<"ok">>, _}, pyport:run_job(relaxed, #{code => <<"import socket
"
                                                                 "socket.socket().close()
"
                                                                 "'ok'">>})),
    %% Only what was relaxed: process creation is still refused.
    ?assertEqual({error, {forbidden, <<"clone">>}},
                 pyport:run_job(relaxed, #{code => <<"import os
os.fork()">>})).

stricter_limit_wins(Config) ->
    start(strict, #{max_memory => 256 * ?MIB, cpu_seconds => 30,
                    sandbox => #{max_open_files => 64}, max_open_files => 128}, Config),
    {ok, #{workers := [#{sandbox := #{rlimits := Rlimits}}]}} = pyport:pool_info(strict),
    ?assertMatch(#{as := 268435456, cpu := 30, nofile := 64}, Rlimits),
    ?assertEqual({error, {memory_limit, 256 * ?MIB}},
                 pyport:run_job(strict, #{code => <<"b = bytearray(512 * 1024 ** 2)">>})).

warm_cpu_limit(Config) ->
    %% CPU seconds are each job's (its runner's), warm or fresh: the job
    %% that runs into the limit fails with it, the worker stays.
    start(cpu_warm, #{sandbox => #{cpu_seconds => 1}}, Config),
    OsPid = pyport_test_util:os_pid({cpu_warm, 1}),
    ?assertEqual({error, {cpu_limit, 1}},
                 pyport:run_job(cpu_warm, #{code => <<"while True: pass">>, timeout => 20000})),
    ?assertMatch({ok, 2, _}, pyport:run_job(cpu_warm, #{code => <<"1 + 1">>})),
    ?assertEqual(OsPid, pyport_test_util:os_pid({cpu_warm, 1})).

fresh_cpu_limit(Config) ->
    start(cpu_fresh, #{fresh_worker => true, sandbox => #{cpu_seconds => 1}}, Config),
    ZygotePid = pyport_test_util:os_pid({cpu_fresh, 1}),
    ?assertEqual({error, {cpu_limit, 1}},
                 pyport:run_job(cpu_fresh, #{code => <<"while True: pass">>, timeout => 20000})),
    ?assertMatch({ok, 2, _}, pyport:run_job(cpu_fresh, #{code => <<"1 + 1">>})),
    ?assertEqual(ZygotePid, pyport_test_util:os_pid({cpu_fresh, 1})).

warm_jobs_each_get_their_cpu_seconds(Config) ->
    %% Two jobs that each burn more than half of cpu_seconds both finish,
    %% in the same worker.
    start(budget, #{sandbox => #{cpu_seconds => 2}}, Config),
    OsPid = pyport_test_util:os_pid({budget, 1}),
    Burn = <<"import time\n"
             "t = time.process_time()\n"
             "while time.process_time() - t < 1.1:\n"
             "    pass\n">>,
    ?assertMatch({ok, none, _}, pyport:run_job(budget, #{code => Burn, timeout => 20000})),
    ?assertMatch({ok, none, _}, pyport:run_job(budget, #{code => Burn, timeout => 20000})),
    ?assertEqual(OsPid, pyport_test_util:os_pid({budget, 1})),
    {ok, #{workers := [#{recycles := 0}]}} = pyport:pool_info(budget).

warm_job_that_ignores_signals_is_killed(Config) ->
    %% Blocks SIGINT and sleeps in C: at its timeout the worker kills the
    %% job's runner (SIGKILL) and answers; the worker itself stays.
    start(stubborn, #{kill_after => 500}, Config),
    OsPid = pyport_test_util:os_pid({stubborn, 1}),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, timeout},
                 pyport:run_job(stubborn, #{code => <<"import ctypes, signal\n"
                                                     "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n"
                                                     "ctypes.CDLL(None).sleep(60)\n">>,
                                            timeout => 300})),
    %% Well before the job's own 60 s sleep would have ended.
    ?assert(erlang:monotonic_time(millisecond) - T0 < 10000),
    ?assertMatch({ok, 2, _}, pyport:run_job(stubborn, #{code => <<"1 + 1">>})),
    ?assertEqual(OsPid, pyport_test_util:os_pid({stubborn, 1})),
    ?assertMatch({ok, #{recycles := 0}}, pyport:worker_info({stubborn, 1})).

fork_bomb_with_fork_allowed(Config) ->
    %% With process creation relaxed, max_processes bounds a fork bomb, and
    %% nothing it started outlives the job.
    [begin
         Pool = list_to_atom("bomb_" ++ atom_to_list(Mode)),
         start(Pool, #{fresh_worker => Mode =:= fresh,
                       sandbox => #{fork => true, max_processes => 16}}, Config),
         ?assertEqual({error, {process_limit, 16}},
                      pyport:run_job(Pool, #{code => <<"import os, time\n"
                                                        "while True:\n"
                                                        "    if os.fork() == 0:\n"
                                                        "        time.sleep(60)\n"
                                                        "        os._exit(0)\n">>,
                                             timeout => 20000})),
         ?assertMatch({ok, 2, _}, pyport:run_job(Pool, #{code => <<"1 + 1">>})),
         %% The sleeping children are gone: the worker has none left but
         %% its job template and the runners it keeps ready, and its keeper
         %% (which inherits orphans) has only the worker.
         OsPid = pyport_test_util:os_pid({Pool, 1}),
         Keeper = parent_pid(OsPid),
         pyport_test_util:wait_until(fun() ->
                                             only_template_and_spares(OsPid) andalso
                                                 children(Keeper) =:= [integer_to_list(OsPid)]
                                     end)
     end || Mode <- [warm, fresh]].

%% The worker's children are its job template (the first) and runners
%% waiting for a job, which hold their job pipe (fd 4) until it comes.
only_template_and_spares(OsPid) ->
    case lists:sort([{start_time(P), P} || P <- children(OsPid)]) of
        [_Template | Runners] ->
            lists:all(fun({_, P}) -> element(1, file:read_link("/proc/" ++ P ++ "/fd/4")) =:= ok end,
                      Runners);
        [] ->
            false
    end.

start_time(P) ->
    case file:read_file("/proc/" ++ P ++ "/stat") of
        {ok, Stat} ->
            [_, After] = string:split(Stat, ")", trailing),
            binary_to_integer(lists:nth(20, string:lexemes(After, " ")));
        {error, _} ->
            0
    end.

children(OsPid) ->
    Path = "/proc/" ++ integer_to_list(OsPid) ++ "/task/" ++ integer_to_list(OsPid) ++ "/children",
    case file:read_file(Path) of
        {ok, Bin} -> string:lexemes(binary_to_list(Bin), " \n");
        {error, _} -> []
    end.

%%%===================================================================
%%% Helpers
%%%===================================================================

start(Name, Opts, Config) ->
    {ok, _} = pyport:start_pool(Name, maps:merge(#{size => 1, sandbox => true,
                                                   python_path => [?config(python_dir, Config)]},
                                                 Opts)).

job(_Config, Job) ->
    pyport:run_job(jobs, Job).

%% Runs a hostile job, checks its error, then that the pool and the node
%% carry on. Returns the job's result.
hostile(Config, Code, Expected) when is_binary(Code) ->
    hostile(Config, #{code => Code}, Expected);
hostile(Config, Job, Expected) ->
    Result = job(Config, Job#{timeout => maps:get(timeout, Job, 20000)}),
    ct:log("~p -> ~p", [Job, Result]),
    case Expected of
        exception -> ?assertMatch({error, {exception, _}}, Result);
        _ -> ?assertEqual({error, Expected}, Result)
    end,
    follow_ups(Config),
    Result.

follow_ups(Config) ->
    %% The next job and a plain call on the same pool work...
    ?assertMatch({ok, 42, _}, job(Config, #{code => <<"input + 1">>, input => 41, timeout => 20000})),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16.0], #{}, #{pool => jobs, timeout => 20000})),
    %% ...and so does the node: same supervisor, other pools serve.
    ?assertEqual(?config(sup, Config), whereis(pyport_sup)),
    ?assertEqual({ok, 3}, py:eval(<<"1 + 2">>, none, #{pool => default})).
