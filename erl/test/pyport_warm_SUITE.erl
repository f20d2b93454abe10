%% Pools that start warm (issue 15 item 5): `warm_start => true' forks each
%% worker from a per-pool zygote that imported the pool's modules and ran
%% its init_code once (pyport_zygote, port_worker/zygote.hpp).
%%
%% The probe module (warm_probe.py) appends a line to a file each time it
%% is imported: a warm pool's file has one line per zygote, never one per
%% worker.
-module(pyport_warm_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([serves_calls_imported_once/1, crashed_worker_replaced_warm/1,
         zygote_killed_workers_go_on/1, threads_at_fork_refused/1,
         init_code_error_named/1, sandbox_conflict_refused/1,
         stop_leaves_no_process/1, shared_memory_bound/1, stopped_zygote_no_hang/1,
         venv_activated_in_zygote/1]).

all() ->
    [serves_calls_imported_once, crashed_worker_replaced_warm, zygote_killed_workers_go_on,
     threads_at_fork_refused, init_code_error_named, sandbox_conflict_refused,
     stop_leaves_no_process, shared_memory_bound, stopped_zygote_no_hang,
     venv_activated_in_zygote].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    _ = [catch pyport:stop_pool(P) || P <- pyport:pools()],
    ok.

%%%===================================================================
%%% Cases
%%%===================================================================

serves_calls_imported_once(Config) ->
    {Opts, Log} = start(warm4, #{size => 4}, Config),
    Zygote = pyport_zygote:os_pid(warm4, Opts),
    ?assert(is_integer(Zygote)),
    Pids = [begin
                %% init_code ran (in the zygote): its name is there.
                ?assertEqual({ok, 42}, py:eval(py:context(warm4, I), <<"X + 1">>)),
                %% The module is imported before any call asks for it.
                ?assertEqual({ok, true}, py:eval(py:context(warm4, I),
                                                 <<"'warm_probe' in __import__('sys').modules">>)),
                {ok, P} = py:call(py:context(warm4, I), warm_probe, pid, []),
                P
            end || I <- lists:seq(1, 4)],
    ?assertEqual(4, length(lists:usort(Pids))),
    %% Imported once, by the zygote; init_code ran once too.
    ?assertEqual([{import, Zygote}], imports(Log)),
    ?assertEqual([<<"init">>], [L || L <- lines(Log), L =:= <<"init">>]),
    %% Each worker's parent is its keeper, whose parent is the zygote.
    [begin
         Keeper = parent(P),
         ?assertEqual(Zygote, parent(Keeper))
     end || P <- Pids],
    ok.

crashed_worker_replaced_warm(Config) ->
    {_Opts, Log} = start(warm_crash, #{size => 2}, Config),
    Ctx = py:context(warm_crash, 1),
    {ok, Old} = py:call(Ctx, warm_probe, pid, []),
    %% Exactly one answer, with the worker's own exit status.
    ?assertEqual({error, {worker_exited, {exit_status, 3}}},
                 py:exec(Ctx, <<"import os\nos._exit(3)">>, #{timeout => 10000})),
    New = wait_new_worker({warm_crash, 1}, Old),
    ?assertEqual({ok, New}, py:call(Ctx, warm_probe, pid, [])),
    ?assertEqual({ok, 42}, py:eval(Ctx, <<"X + 1">>)),
    %% Still warm: no new import.
    ?assertEqual(1, length(imports(Log))),
    %% The other worker did not notice.
    ?assertEqual({ok, 42}, py:eval(py:context(warm_crash, 2), <<"X + 1">>)).

zygote_killed_workers_go_on(Config) ->
    {Opts, Log} = start(warm_zk, #{size => 2}, Config),
    Zygote = pyport_zygote:os_pid(warm_zk, Opts),
    {ok, W1} = py:call(py:context(warm_zk, 1), warm_probe, pid, []),
    ok = pyport_os:kill(Zygote),
    ok = pyport_test_util:wait_until(fun() -> not pyport_os:alive(Zygote) end),
    ok = pyport_test_util:wait_until(
           fun() -> pyport_zygote:os_pid(warm_zk, Opts) =:= undefined end),
    %% Running workers keep serving.
    [?assertEqual({ok, 42}, py:eval(py:context(warm_zk, I), <<"X + 1">>)) || I <- [1, 2]],
    ?assertEqual({ok, W1}, py:call(py:context(warm_zk, 1), warm_probe, pid, [])),
    %% A new worker starts from a new zygote.
    {error, {worker_exited, _}} = py:exec(py:context(warm_zk, 1), <<"import os\nos._exit(0)">>,
                                           #{timeout => 10000}),
    New = wait_new_worker({warm_zk, 1}, W1),
    ?assertEqual({ok, 42}, py:eval(py:context(warm_zk, 1), <<"X + 1">>)),
    Zygote2 = pyport_zygote:os_pid(warm_zk, Opts),
    ?assert(is_integer(Zygote2) andalso Zygote2 =/= Zygote),
    ?assertEqual(Zygote2, parent(parent(New))),
    ?assertEqual([{import, Zygote}, {import, Zygote2}], imports(Log)).

threads_at_fork_refused(Config) ->
    Code = <<"import threading, time\n"
             "threading.Thread(target=time.sleep, args=(60,), daemon=True,\n"
             "                 name='ticker').start()\n">>,
    {error, Reason} = pyport:start_pool(warm_threads,
                                         (opts(Config))#{size => 2, init_code => Code}),
    Text = lists:flatten(io_lib:format("~tp", [Reason])),
    ct:comment("~ts", [Text]),
    ?assertNotEqual(nomatch, string:find(Text, "threads running in the zygote")),
    ?assertNotEqual(nomatch, string:find(Text, "threads do not survive a fork")),
    ?assertNotEqual(nomatch, string:find(Text, "Python threads: ticker")),
    ?assertNot(lists:member(warm_threads, pyport:pools())).

init_code_error_named(Config) ->
    {error, Reason} = pyport:start_pool(warm_bad,
                                         (opts(Config))#{size => 1, init_code => <<"1/0">>}),
    Text = lists:flatten(io_lib:format("~tp", [Reason])),
    ?assertNotEqual(nomatch, string:find(Text, "init_code failed: ZeroDivisionError")),
    {error, Reason2} = pyport:start_pool(warm_bad, (opts(Config))#{size => 1,
                                                                    imports => [<<"no_such_mod">>]}),
    Text2 = lists:flatten(io_lib:format("~tp", [Reason2])),
    ?assertNotEqual(nomatch, string:find(Text2, "cannot import no_such_mod")).

sandbox_conflict_refused(_Config) ->
    ?assertEqual({error, {pool_options_conflict, p, warm_start, sandbox}},
                 pyport_config:validate_pool(p, #{warm_start => true, sandbox => true})),
    ?assertMatch({error, {invalid_pool_option, p, warm_start, yes}},
                 pyport_config:validate_pool(p, #{warm_start => yes})).

stop_leaves_no_process(Config) ->
    Ports0 = length(erlang:ports()),
    Dirs0 = socket_dirs(),
    {Opts, _Log} = start(warm_stop, #{size => 3}, Config),
    [_] = socket_dirs() -- Dirs0,
    [_] = zygote_servers(),
    Zygote = pyport_zygote:os_pid(warm_stop, Opts),
    Workers = [begin {ok, P} = py:call(py:context(warm_stop, I), warm_probe, pid, []), P end
               || I <- [1, 2, 3]],
    Keepers = [parent(P) || P <- Workers],
    Children = [begin
                    {ok, C} = py:eval(py:context(warm_stop, I),
                                      <<"__import__('subprocess').Popen(['sleep', '60']).pid">>),
                    C
                end || I <- [1, 2, 3]],
    ok = pyport:stop_pool(warm_stop),
    All = [Zygote | Workers ++ Keepers ++ Children],
    ok = pyport_test_util:wait_until(fun() -> not lists:any(fun pyport_os:alive/1, All) end),
    %% Nothing left in the node or on disk either.
    ok = pyport_test_util:wait_until(fun() -> zygote_servers() =:= [] end),
    ok = pyport_test_util:wait_until(fun() -> length(erlang:ports()) =< Ports0 end),
    ok = pyport_test_util:wait_until(fun() -> socket_dirs() -- Dirs0 =:= [] end).

zygote_servers() ->
    [P || P <- processes(), {pyport_zygote, init, _} <- [proc_lib:initial_call(P)]].

socket_dirs() ->
    Tmp = case os:getenv("TMPDIR") of
              [$/ | _] = T -> T;
              _ -> "/tmp"
          end,
    filelib:wildcard(filename:join(Tmp, "pyport-warm-*")).

%% Generous bounds only (the machine is shared); bench/pyport_bench.erl
%% has the figures. Each worker's unique memory (USS) must be far below
%% the 24 MiB the module holds, which a cold worker has to itself.
shared_memory_bound(Config) ->
    {_, _} = start(warm_mem, #{size => 4}, Config),
    Uss = [begin
               Ctx = py:context(warm_mem, I),
               {ok, _} = py:call(Ctx, warm_probe, touch, []),
               {ok, P} = py:call(Ctx, warm_probe, pid, []),
               uss_kib(P)
           end || I <- [1, 2, 3, 4]],
    {ok, _} = pyport:start_pool(cold_mem, (opts(Config))#{size => 1, warm_start => false}),
    {ok, _} = py:call(py:context(cold_mem, 1), warm_probe, touch, []),
    {ok, ColdPid} = py:call(py:context(cold_mem, 1), warm_probe, pid, []),
    Cold = uss_kib(ColdPid),
    ct:comment("USS KiB: warm ~w, cold ~w", [Uss, Cold]),
    ?assert(Cold > 24 * 1024),
    %% Four warm workers together hold less than one cold one.
    ?assert(lists:sum(Uss) < Cold).

%% A zygote that does not answer (stopped) delays new workers, never
%% hangs them: the start times out, the port process ends at once, the
%% other workers serve, and the slot comes back once the zygote runs.
stopped_zygote_no_hang(Config) ->
    {Opts, _Log} = start(warm_stopped, #{size => 2, start_timeout => 1000}, Config),
    Zygote = pyport_zygote:os_pid(warm_stopped, Opts),
    {ok, W1} = py:call(py:context(warm_stopped, 1), warm_probe, pid, []),
    [] = os:cmd("kill -STOP " ++ integer_to_list(Zygote)),
    Before = warm_ports(),
    try
        {error, {worker_exited, _}} = py:exec(py:context(warm_stopped, 1),
                                               <<"import os\nos._exit(0)">>, #{timeout => 10000}),
        %% The port process waiting for the stopped zygote goes when its
        %% start times out.
        ok = pyport_test_util:wait_until(fun() -> warm_ports() -- Before =/= [] end),
        [Waiting] = warm_ports() -- Before,
        ok = pyport_test_util:wait_until(fun() -> not pyport_os:alive(Waiting) end, 1000),
        ?assertEqual({ok, 42}, py:eval(py:context(warm_stopped, 2), <<"X + 1">>))
    after
        os:cmd("kill -CONT " ++ integer_to_list(Zygote))
    end,
    New = wait_new_worker({warm_stopped, 1}, W1),
    ?assertEqual({ok, New}, py:call(py:context(warm_stopped, 1), warm_probe, pid, [])).

%% A pool's venv is activated in the zygote before its imports, .pth
%% files included (a module only a .pth makes importable).
venv_activated_in_zygote(Config) ->
    Priv = ?config(priv_dir, Config),
    Venv = filename:join(Priv, "venv"),
    Port = open_port({spawn_executable, "/usr/bin/python3"},
                     [{args, ["-m", "venv", "--without-pip", Venv]}, exit_status]),
    receive {Port, {exit_status, 0}} -> ok after 60000 -> ct:fail(venv_not_made) end,
    [SP] = filelib:wildcard(filename:join(Venv, "lib/python3*/site-packages")),
    Src = filename:join(Priv, "pth_src"),
    ok = filelib:ensure_dir(filename:join(Src, "x")),
    ok = file:write_file(filename:join(Src, "warm_pthmod.py"), <<"VALUE = 'via .pth'\n">>),
    ok = file:write_file(filename:join(SP, "warm.pth"), [Src, "\n"]),
    {ok, _} = pyport:start_pool(warm_venv, #{size => 2, warm_start => true, venv => Venv,
                                             imports => [<<"warm_pthmod">>]}),
    [?assertEqual({ok, {true, <<"via .pth">>}},
                  py:eval(py:context(warm_venv, I),
                          <<"('warm_pthmod' in __import__('sys').modules, "
                            "__import__('warm_pthmod').VALUE)">>)) || I <- [1, 2]],
    ?assertEqual({ok, list_to_binary(Venv)},
                 py:eval(py:context(warm_venv, 1), <<"__import__('os').environ['VIRTUAL_ENV']">>)).

%% This node's warm workers' port processes (`pyport_worker --warm-from
%% ...'): children of its erl_child_setup, so another node's are not.
warm_ports() ->
    Setup = os:cmd("pgrep -P " ++ os:getpid() ++ " -x erl_child_setup"),
    [list_to_integer(P)
     || P <- string:lexemes(os:cmd("pgrep -P " ++ string:trim(Setup) ++ " -f -- '--warm-from '"),
                            "\n")].

%%%===================================================================
%%% Helpers
%%%===================================================================

opts(Config) ->
    Data = ?config(data_dir, Config),
    Log = filename:join(?config(priv_dir, Config),
                        "imports-" ++ integer_to_list(erlang:unique_integer([positive]))),
    #{python_path => [Data], warm_start => true, imports => [<<"warm_probe">>],
      init_code => <<"import os\nX = 41\nwith open(os.environ['WARM_PROBE_LOG'], 'a') as f: "
                     "f.write('init\\n')\n">>,
      env => [{"WARM_PROBE_LOG", Log}]}.

start(Pool, Extra, Config) ->
    Opts0 = maps:merge(opts(Config), Extra),
    {ok, _} = pyport:start_pool(Pool, Opts0),
    {ok, Opts} = pyport_config:validate_pool(Pool, Opts0),
    [{"WARM_PROBE_LOG", Log}] = maps:get(env, Opts0),
    {Opts, Log}.

lines(Log) ->
    {ok, Bin} = file:read_file(Log),
    binary:split(Bin, <<"\n">>, [global, trim_all]).

imports(Log) ->
    [{import, binary_to_integer(P)} || <<"import ", Rest/binary>> <- lines(Log),
                                        [P, _] <- [binary:split(Rest, <<" ">>)]].

parent(Pid) ->
    {ok, Bin} = file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/stat"),
    [_, After] = string:split(Bin, ")", trailing),
    [_State, PPid | _] = string:lexemes(After, " "),
    binary_to_integer(PPid).

wait_new_worker(Slot, Old) ->
    ok = pyport_test_util:wait_until(
           fun() ->
                   case pyport_test_util:os_pid(Slot) of
                       undefined -> false;
                       Old -> false;
                       _ -> true
                   end
           end),
    pyport_test_util:os_pid(Slot).

uss_kib(Pid) ->
    {ok, Bin} = file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/smaps_rollup"),
    lists:sum([binary_to_integer(V) || Line <- binary:split(Bin, <<"\n">>, [global]),
                                       [K, V] <- [string:lexemes(Line, ": kB")],
                                       K =:= <<"Private_Clean">> orelse K =:= <<"Private_Dirty">>]).
