%% Hostile jobs aimed at the kernel-level layers where the node matters
%% (issue 11, items 3, 4, 6-10): raising hard limits, acting on the node
%% and on another pool's worker (prlimit, setpriority, sched_*, ioprio),
%% memory past max_memory (memfd), files past max_disk, the node's cookie
%% in /proc, another pool's env, a host UNIX socket, stat outside the view.
%% Each runs warm and fresh, with the node as root (this node) and as an
%% unprivileged user (a peer node started as the test user
%% `pyport-hostile', created here), and checks the exact error and that
%% the node and the other pool are untouched. The worker-level catalogue,
%% one attack per file, is tests/harness/hostile/test_kernel_*.py.
-module(pyport_hostile_kernel_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1, init_per_group/2,
         end_per_group/2, init_per_testcase/2, end_per_testcase/2]).
-export([raise_hard_limits/1, node_untouchable/1, other_pool_untouchable/1,
         memfd_past_max_memory/1, files_past_max_disk/1, node_cookie_unreadable/1,
         other_pool_env_unreadable/1, host_unix_socket_unreachable/1,
         stat_outside_the_view/1, pool_info_reports_the_layers/1, damaged_worker_replaced/1,
         killed_keeper_leaves_nothing/1]).

-define(USER, "pyport-hostile").
-define(MIB, 1048576).
-define(SECRET, "pyport-ct-env-secret-31d9").

all() ->
    [{group, root}, {group, user}].

groups() ->
    Cases = [pool_info_reports_the_layers, raise_hard_limits, node_untouchable,
             other_pool_untouchable, memfd_past_max_memory, files_past_max_disk,
             node_cookie_unreadable, other_pool_env_unreadable, host_unix_socket_unreachable,
             stat_outside_the_view, damaged_worker_replaced],
    Modes = [{warm, [], Cases}, {fresh, [], Cases}],
    [{root, [], [{group, warm}, {group, fresh}, killed_keeper_leaves_nothing]},
     {user, [], [{group, warm}, {group, fresh}]} | Modes].

init_per_suite(Config) ->
    case os:getenv("USER") =:= "root" orelse os:cmd("id -u") =:= "0\n" of
        true -> Config;
        false -> {skip, "the node as root and as a test user needs root"}
    end.

end_per_suite(_Config) ->
    ok.

init_per_group(root, Config) ->
    ok = pyport_test_util:start(#{}),
    [{node_kind, root}, {peer, undefined} | Config];
init_per_group(user, Config) ->
    case start_user_peer() of
        {ok, Peer} -> [{node_kind, user}, {peer, Peer} | Config];
        {error, Why} -> {skip, Why}
    end;
init_per_group(Mode, Config) when Mode =:= warm; Mode =:= fresh ->
    Fresh = Mode =:= fresh,
    ok = at(Config, fun() ->
                            {ok, _} = pyport:start_pool(jobs, pool(Fresh, #{})),
                            {ok, _} = pyport:start_pool(other, pool(Fresh, #{})),
                            ok
                    end),
    [{fresh, Fresh} | Config].

end_per_group(root, _Config) ->
    pyport_test_util:stop();
end_per_group(user, Config) ->
    catch peer:stop(?config(peer, Config)),
    ok;
end_per_group(_Mode, Config) ->
    at(Config, fun() -> pyport:stop_pool(jobs), pyport:stop_pool(other), ok end).

init_per_testcase(_Case, Config) ->
    [{before, at(Config, fun node_state/0)} | Config].

end_per_testcase(_Case, Config) ->
    %% The node and the other pool are untouched, whatever the case did.
    Fresh = ?config(fresh, Config),
    After = at(Config, fun() ->
                               case Fresh of
                                   undefined ->         % outside the warm/fresh groups
                                       ok;
                                   _ ->
                                       {ok, 42, _} = run(other, Fresh, <<"6 * 7">>),
                                       {ok, 4.0} = py:call(math, sqrt, [16.0], #{},
                                                           #{pool => other})
                               end,
                               node_state()
                       end),
    ?assertEqual(?config(before, Config), After),
    ok.

%%%===================================================================
%%% Cases
%%%===================================================================

pool_info_reports_the_layers(Config) ->
    Kind = ?config(node_kind, Config),
    at(Config, fun() ->
                       {ok, #{workers := [#{sandbox := S} | _]}} = pyport:pool_info(jobs),
                       ?assertMatch(#{pid_ns := true, mount_view := true, user_ns := true,
                                      max_disk := 67108864}, S),
                       %% Root makes the worker a cgroup; the test user cannot (cgroup v1
                       %% here): the rlimits stand alone and the report says why.
                       case Kind of
                           root -> ?assertEqual(v1, maps:get(cgroup, S));
                           user -> ?assertMatch(#{cgroup := false, unavailable := [_ | _]}, S)
                       end
               end).

raise_hard_limits(Config) ->
    Fresh = ?config(fresh, Config),
    Code = <<"import resource\n"
             "out = []\n"
             "for r in (resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE):\n"
             "    try:\n"
             "        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
             "        out.append('raised')\n"
             "    except ValueError as e:\n"
             "        out.append(str(e))\n"
             "out">>,
    at(Config, fun() ->
                       Refused = <<"not allowed to raise maximum limit">>,
                       ?assertMatch({ok, [Refused, Refused, Refused], _}, run(jobs, Fresh, Code)),
                       ?assertMatch({error, {memory_limit, _}},
                                    run(jobs, Fresh, <<"b'x' * (2 << 30)">>))
               end).

node_untouchable(Config) ->
    %% The node's own OS process (as an unprivileged node, a job once set
    %% its RLIMIT_CPU to 1 and it died of SIGXCPU).
    attack_pid(Config, fun() -> list_to_integer(os:getpid()) end).

other_pool_untouchable(Config) ->
    attack_pid(Config, fun() ->
                               {ok, #{workers := [#{os_pid := P} | _]}} = pyport:pool_info(other),
                               P
                       end).

memfd_past_max_memory(Config) ->
    Fresh = ?config(fresh, Config),
    Kind = ?config(node_kind, Config),
    %% Many memfds, each under max_file_size (which RLIMIT_FSIZE applies
    %% to a memfd too).
    Code = <<"import os\nfds = []\nchunk = b'x' * (1 << 20)\n"
             "for i in range(input):\n"
             "    if i % 16 == 0:\n        fds.append(os.memfd_create('hoard'))\n"
             "    os.write(fds[-1], chunk)\n'held'">>,
    at(Config, fun() ->
                       {ok, _} = pyport:start_pool(small, pool(Fresh, #{max_memory => 128 * ?MIB})),
                       try
                           Result = pyport:run_job(small, #{code => Code, input => 256}),
                           ct:log("~p", [Result]),
                           case Kind of
                               root ->
                                   %% The cgroup's OOM killer: the worker (or a fresh
                                   %% job's child) dies; the pool replaces what died.
                                   ?assert(lists:member(Result,
                                                        [{error, {worker_exited, {signal, sigkill}}},
                                                         {error, {crashed, #{signal => sigkill}}}]));
                               user ->
                                   ?assertEqual({error, {forbidden, <<"memfd_create">>}}, Result)
                           end,
                           pyport_test_util:wait_until(
                             fun() -> is_integer(pyport_test_util:os_pid({small, 1})) end, 500),
                           ?assertMatch({ok, 42, _}, run(small, Fresh, <<"6 * 7">>))
                       after
                           pyport:stop_pool(small)
                       end
               end).

files_past_max_disk(Config) ->
    Fresh = ?config(fresh, Config),
    Code = <<"chunk = b'x' * (1 << 20)\nn = 0\ntry:\n"
             "    for i in range(8):\n        with open(f'f{i}', 'wb') as f:\n"
             "            for _ in range(4):\n                f.write(chunk); f.flush(); n += 1\n"
             "except OSError as e:\n    out = (e.errno, n)\nout">>,
    at(Config, fun() ->
                       {ok, _} = pyport:start_pool(disk, pool(Fresh, #{max_disk => 16 * ?MIB})),
                       try
                           {ok, {28, N}, _} = pyport:run_job(disk, #{code => Code}),
                           ?assert(N >= 12 andalso N =< 16)
                       after
                           pyport:stop_pool(disk)
                       end
               end).

node_cookie_unreadable(Config) ->
    Fresh = ?config(fresh, Config),
    Scan = <<"import os\nfound = []\nfor e in os.listdir('/proc'):\n"
             "    try:\n        if input.encode() in open(f'/proc/{e}/cmdline', 'rb').read():\n"
             "            found.append(e)\n    except OSError:\n        pass\nfound">>,
    at(Config, fun() ->
                       Node = list_to_integer(os:getpid()),
                       {error, {exception, #{type := <<"FileNotFoundError">>}}} =
                           run(jobs, Fresh, <<"open(f'/proc/{input}/cmdline', 'rb').read()">>,
                               Node),
                       %% A process of the node's user with a cookie on its command
                       %% line, as `erl -setcookie' has (the peer node has one too).
                       Cookie = "pyport-ct-cookie-" ++ os:getpid(),
                       Port = open_port({spawn_executable, "/bin/sh"},
                                        [{args, ["-c", "sleep 30", "sh", "-setcookie", Cookie]}]),
                       {os_pid, Sh} = erlang:port_info(Port, os_pid),
                       try
                               pyport_test_util:wait_until(
                             fun() ->
                                     {ok, Cmd} = file:read_file("/proc/" ++ integer_to_list(Sh) ++ "/cmdline"),
                                     binary:match(Cmd, list_to_binary(Cookie)) =/= nomatch
                             end, 300),
                           ?assertMatch({ok, [], _}, run(jobs, Fresh, Scan, list_to_binary(Cookie))),
                           ?assertMatch({ok, [], _}, run(jobs, Fresh, Scan, <<"-setcookie">>))
                       after
                           os:cmd("kill " ++ integer_to_list(Sh)),
                           catch port_close(Port)
                       end
               end).

other_pool_env_unreadable(Config) ->
    Fresh = ?config(fresh, Config),
    Scan = <<"import os\nfound = []\nfor e in os.listdir('/proc'):\n"
             "    for w in ('cmdline', 'environ'):\n"
             "        try:\n            if input.encode() in open(f'/proc/{e}/{w}', 'rb').read():\n"
             "                found.append((e, w))\n        except OSError:\n            pass\nfound">>,
    Secret = list_to_binary(?SECRET),
    at(Config, fun() ->
                       [begin
                            {ok, _} = pyport:start_pool(secret, pool(Fresh, #{env => #{"API_TOKEN" => ?SECRET}})),
                            ?assertMatch({ok, Secret, _},
                                         run(secret, Fresh, <<"__import__('os').environ['API_TOKEN']">>)),
                            ?assertMatch({ok, [], _}, run(jobs, Fresh, Scan, Secret)),
                            ok = pyport:stop_pool(secret)
                        end || _ <- lists:seq(1, 3)],
                       ok
               end),
    %% No process on the host shows it either (seen as root, from here).
    ?assertEqual([], host_processes_holding(Secret)).

host_unix_socket_unreachable(Config) ->
    Fresh = ?config(fresh, Config),
    at(Config, fun() ->
                       Dir = "/tmp/pyport-hostile-ct-" ++ integer_to_list(erlang:unique_integer([positive])),
                       ok = file:make_dir(Dir),
                       Path = Dir ++ "/host.sock",
                       {ok, L} = gen_tcp:listen(0, [{ifaddr, {local, Path}}, binary, {active, false}]),
                       try
                           ok = file:change_mode(Path, 8#777),
                           {ok, C} = gen_tcp:connect({local, Path}, 0, []),
                           {ok, A} = gen_tcp:accept(L, 1000),
                           gen_tcp:close(C), gen_tcp:close(A),
                           Code = <<"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(input)">>,
                           {error, {exception, #{type := <<"FileNotFoundError">>}}} =
                               run(jobs, Fresh, Code, list_to_binary(Path)),
                           ?assertEqual({error, timeout}, gen_tcp:accept(L, 100))
                       after
                           gen_tcp:close(L),
                           file:del_dir_r(Dir)
                       end
               end).

stat_outside_the_view(Config) ->
    Fresh = ?config(fresh, Config),
    at(Config, fun() ->
                       File = "/tmp/pyport-hostile-ct-stat-" ++ os:getpid(),
                       ok = file:write_file(File, binary:copy(<<"x">>, 12345)),
                       try
                           Code = <<"__import__('os').stat(input).st_size">>,
                           {error, {exception, #{type := <<"FileNotFoundError">>}}} =
                               run(jobs, Fresh, Code, list_to_binary(File)),
                           ?assertMatch({ok, 0, _}, run(jobs, Fresh, Code, <<"/etc/shadow">>))
                       after
                           file:delete(File)
                       end
               end).

damaged_worker_replaced(Config) ->
    %% A worker (a zygote: its pool broke for good when a job set its open
    %% files to 4) whose limits changed: jobs cannot do that any more, so
    %% the change is made from outside, by a process of the worker's uid.
    %% Its keeper ends it within a second; the pool starts a new one.
    Fresh = ?config(fresh, Config),
    {OsPid, Uid} = at(Config, fun() ->
                                      {ok, #{workers := [#{os_pid := P, sandbox := #{uid := U}}]}} =
                                          pyport:pool_info(jobs),
                                      {P, U}
                              end),
    U = integer_to_list(Uid),
    Out = os:cmd("setpriv --reuid=" ++ U ++ " --regid=" ++ U ++ " --clear-groups prlimit "
                 "--nofile=16:16 --pid=" ++ integer_to_list(OsPid) ++ " && echo done"),
    ?assertEqual("done\n", Out),
    at(Config, fun() ->
                       pyport_test_util:wait_until(
                         fun() ->
                                 P = pyport_test_util:os_pid({jobs, 1}),
                                 is_integer(P) andalso P =/= OsPid
                         end, 500),
                       ?assertMatch({ok, 42, _}, run(jobs, Fresh, <<"6 * 7">>))
               end).

killed_keeper_leaves_nothing(_Config) ->
    %% The keeper SIGKILLed (it removes the working directory and the
    %% cgroups when the worker goes; here it cannot): the worker's processes
    %% die with it, and the owner removes the directory and the cgroups.
    {ok, _} = pyport:start_pool(doomed, pool(false, #{})),
    try
        {ok, #{workers := [#{os_pid := OsPid, sandbox := #{workdir := Dir, cgroup := v1}}]}} =
            pyport:pool_info(doomed),
        Cgroups = pyport_sandbox:cgroup_dirs(filename:basename(Dir)),
        ?assertMatch([_, _], Cgroups),
        ?assert(lists:all(fun filelib:is_dir/1, Cgroups)),
        Keeper = keeper_of(OsPid),
        pyport_os:kill(Keeper),
        pyport_test_util:wait_until(
          fun() -> not filelib:is_dir(Dir) andalso not lists:any(fun filelib:is_dir/1, Cgroups)
                       andalso not pyport_os:alive(OsPid) end, 500)
    after
        pyport:stop_pool(doomed)
    end.

%%%===================================================================
%%% Helpers

%% The keeper: the worker's ancestor that the node's port program started
%% (its parent is erl_child_setup).
keeper_of(Pid) ->
    Parent = parent_of(Pid),
    case file:read_file("/proc/" ++ integer_to_list(Parent) ++ "/comm") of
        {ok, <<"erl_child_setup", _/binary>>} -> Pid;
        {ok, _} -> keeper_of(Parent)
    end.

parent_of(Pid) ->
    {ok, Stat} = file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/stat"),
    [_, AfterComm] = string:split(Stat, <<") ">>, trailing),
    [_State, PPid | _] = binary:split(AfterComm, <<" ">>, [global]),
    binary_to_integer(PPid).
%%%===================================================================

pool(Fresh, Sandbox) ->
    {Pool, Box} = maps:fold(fun(env, V, {P, B}) -> {P#{env => V}, B};
                               (K, V, {P, B}) -> {P, B#{K => V}}
                            end, {#{}, #{}}, Sandbox),
    Pool#{size => 1, fresh_worker => Fresh,
          sandbox => case maps:size(Box) of 0 -> true; _ -> Box end}.

run(Pool, Fresh, Code) ->
    run(Pool, Fresh, Code, undefined).

run(Pool, _Fresh, Code, Input) ->
    Job = case Input of
              undefined -> #{code => Code};
              _ -> #{code => Code, input => Input}
          end,
    pyport:run_job(Pool, Job#{timeout => 20000}).

%% prlimit64, setpriority, sched_setscheduler, sched_setaffinity and
%% ioprio_set on the pid Target() gives (evaluated where the node runs):
%% each refused and named, the target's limits and priority unchanged.
attack_pid(Config, Target) ->
    Fresh = ?config(fresh, Config),
    Attacks = [{<<"prlimit64">>, <<"import resource\nresource.prlimit(input, resource.RLIMIT_CPU, (1, 1))">>},
               {<<"prlimit64">>, <<"import resource\nresource.prlimit(input, resource.RLIMIT_NOFILE, (4, 4))">>},
               {<<"setpriority">>, <<"import os\nos.setpriority(os.PRIO_PROCESS, input, 19)">>},
               {<<"sched_setscheduler">>,
                <<"import os\nos.sched_setscheduler(input, os.SCHED_IDLE, os.sched_param(0))">>},
               {<<"sched_setaffinity">>, <<"import os\nos.sched_setaffinity(input, {0})">>},
               {<<"ioprio_set">>,
                <<"import ctypes\nctypes.CDLL(None).syscall(251, 1, input, 3 << 13)">>}],
    at(Config, fun() ->
                       Pid = Target(),
                       Before = proc_state(Pid),
                       [?assertEqual({Name, {error, {forbidden, Name}}},
                                     {Name, run(jobs, Fresh, Code, Pid)})
                        || {Name, Code} <- Attacks],
                       ?assertEqual(Before, proc_state(Pid))
               end).

%% Limits, nice value and scheduling policy of a process, as /proc shows them.
proc_state(Pid) ->
    P = "/proc/" ++ integer_to_list(Pid),
    {ok, Limits} = file:read_file(P ++ "/limits"),
    {ok, Stat} = file:read_file(P ++ "/stat"),
    [_, AfterComm] = string:split(Stat, <<") ">>, trailing),
    Fields = binary:split(AfterComm, <<" ">>, [global]),
    %% nice is field 19, policy field 41 (after the command: 17 and 39).
    {Limits, lists:nth(17, Fields), lists:nth(39, Fields)}.

node_state() ->
    {proc_state(list_to_integer(os:getpid())), whereis(pyport_sup) =/= undefined}.

host_processes_holding(Secret) ->
    {ok, Entries} = file:list_dir("/proc"),
    [{E, W} || E <- Entries, lists:all(fun(C) -> C >= $0 andalso C =< $9 end, E),
               W <- ["cmdline", "environ"],
               {ok, Bin} <- [file:read_file("/proc/" ++ E ++ "/" ++ W)],
               binary:match(Bin, Secret) =/= nomatch].

%% Runs Fun where the group's node is: here (root) or in the peer (the
%% unprivileged node).
at(Config, Fun) ->
    case ?config(peer, Config) of
        undefined -> Fun();
        Peer -> peer:call(Peer, erlang, apply, [Fun, []], 60000)
    end.

%% A node running as the test user, created here if need be, with this
%% node's code path and pyport started.
start_user_peer() ->
    _ = os:cmd("id -u " ?USER " >/dev/null 2>&1 || useradd --system --no-create-home "
               "--shell /usr/sbin/nologin " ?USER),
    case string:trim(os:cmd("id -u " ?USER)) of
        "" ->
            {error, "cannot create the test user " ?USER};
        Uid ->
            Gid = string:trim(os:cmd("id -g " ?USER)),
            Setpriv = os:find_executable("setpriv"),
            As = Setpriv ++ " --reuid=" ++ Uid ++ " --regid=" ++ Gid ++ " --clear-groups ",
            %% A checkout below a private home directory is out of the user's reach.
            Needed = [code:lib_dir(pyport, ebin), filename:join(code:priv_dir(pyport), "pyport_worker"),
                      filename:dirname(code:which(?MODULE))],
            case [D || D <- Needed, os:cmd(As ++ "test -r '" ++ D ++ "' && echo ok") =/= "ok\n"] of
                [] -> start_user_peer(Setpriv, Uid, Gid);
                [Blocked | _] -> {error, "the test user " ?USER " cannot read " ++ Blocked}
            end
    end.

start_user_peer(Setpriv, Uid, Gid) ->
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    Paths = lists:append([["-pa", D] || D <- code:get_path(), filelib:is_dir(D)]),
    {ok, Peer, _} = peer:start(#{connection => standard_io,
                                 exec => {Setpriv, ["--reuid=" ++ Uid, "--regid=" ++ Gid,
                                                    "--clear-groups", "--inh-caps=-all",
                                                    Erl]},
                                 env => [{"HOME", "/tmp"}],
                                 args => ["-setcookie", "pyport-ct-peer-cookie" | Paths]}),
    "pyport-hostile" = peer:call(Peer, os, cmd, ["id -un | tr -d '\\n'"]),
    ok = peer:call(Peer, application, load, [pyport]),
    ok = peer:call(Peer, application, set_env, [pyport, pools, #{}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
    {ok, Peer}.
