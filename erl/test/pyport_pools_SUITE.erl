%% Several pools: started and stopped at run time, chosen per call,
%% reported by pool_info; each pool's Python settings (env, cd, imports,
%% init code, a venv); reload, memory_stats and gc in every worker.
-module(pyport_pools_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("kernel/include/file.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [pools_are_separate, pool_info_per_worker, env_and_cd, imports_and_init_code,
     failing_init_fails_the_start, venv_is_activated, reload_in_every_worker,
     reload_of_an_extension_recycles_workers, reload_errors_are_returned,
     memory_stats_and_gc_per_worker, sys_config_pools].

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
%%% Pools
%%%===================================================================

pools_are_separate(Config) ->
    {ok, _} = pyport:start_pool(extra, #{size => 2, python_path => [?config(python_dir, Config)]}),
    ?assertEqual([default, extra], lists:sort(pyport:pools())),
    {ok, DefaultPid} = py:call(os, getpid, []),
    {ok, ExtraPids} = py:parallel([{os, getpid, []} || _ <- lists:seq(1, 4)], #{pool => extra}),
    ?assertNot(lists:member({ok, DefaultPid}, ExtraPids)),
    %% Bindings and namespaces are per pool.
    ok = py:bind(extra),
    ?assert(py:is_bound(extra)),
    ?assertNot(py:is_bound()),
    ok = py:exec(<<"where = 'extra'">>, #{pool => extra}),
    ?assertEqual({ok, <<"extra">>}, py:eval(<<"where">>, none, #{pool => extra})),
    ?assertMatch({error, {'NameError', _}}, py:eval(<<"where">>)),
    ok = py:unbind(extra),
    ok = pyport:stop_pool(extra),
    ?assertEqual({error, {no_pool, extra}}, py:call(os, getpid, [], #{}, #{pool => extra})),
    ?assertEqual({error, {no_pool, extra}}, pyport:pool_info(extra)).

pool_info_per_worker(Config) ->
    {ok, _} = pyport:start_pool(info, #{size => 2, python_path => [?config(python_dir, Config)]}),
    {ok, #{name := info, size := 2, workers := [W1, W2]}} = pyport:pool_info(info),
    [?assertMatch(#{slot := _, pid := _, os_pid := _, status := up, in_flight := 0,
                    served := 0, restarts := 0, recycles := 0, rss_bytes := _}, W)
     || W <- [W1, W2]],
    #{os_pid := OsPid1, rss_bytes := Rss} = W1,
    ?assert(Rss > 1000000),
    ?assertEqual({ok, OsPid1}, py:call(py_context(info, 1), os, getpid, [])),
    %% A call in flight, then served.
    Flag = list_to_binary(filename:join(?config(priv_dir, Config), "info-flag")),
    Self = self(),
    spawn_link(fun() ->
                       Self ! {done, py:call(py_context(info, 1), ?F, wait_for_file, [Flag])}
               end),
    wait_until(fun() -> in_flight(info, 1) =:= 1 end),
    ok = file:write_file(Flag, <<>>),
    receive {done, {ok, true}} -> ok after 10000 -> ct:fail(no_answer) end,
    wait_until(fun() -> in_flight(info, 1) =:= 0 end),
    {ok, #{workers := [#{served := 2} | _]}} = pyport:pool_info(info),
    %% An OS process restart is counted.
    pyport_os:kill(OsPid1),
    wait_until(fun() ->
                       {ok, #{workers := [W | _]}} = pyport:pool_info(info),
                       maps:get(restarts, W) =:= 1 andalso maps:get(status, W) =:= up
               end).

env_and_cd(Config) ->
    Dir = ?config(priv_dir, Config),
    {ok, _} = pyport:start_pool(settings, #{size => 1,
                                            env => #{"PYPORT_SUITE_VAR" => "set", "HOME" => false},
                                            cd => Dir}),
    Opts = #{pool => settings},
    ?assertEqual({ok, <<"set">>},
                 py:eval(<<"__import__('os').environ['PYPORT_SUITE_VAR']">>, none, Opts)),
    ?assertEqual({ok, false}, py:eval(<<"'HOME' in __import__('os').environ">>, none, Opts)),
    {ok, Cwd} = py:call(os, getcwd, [], #{}, Opts),
    ?assertEqual(filename:absname(Dir), binary_to_list(Cwd)),
    %% python_path entries relative to the node's directory still work when
    %% the worker runs elsewhere.
    {ok, NodeCwd} = file:get_cwd(),
    Rel = relative_to(?config(python_dir, Config), NodeCwd),
    ok = pyport:stop_pool(settings),
    {ok, _} = pyport:start_pool(settings, #{size => 1, cd => Dir, python_path => [Rel]}),
    ?assertEqual({ok, 3}, py:call(?F, add, [1, 2], #{}, Opts)).

imports_and_init_code(_Config) ->
    {ok, _} = pyport:start_pool(init, #{size => 2, imports => [json, 'xml.dom'],
                                        init_code => <<"import sys\nSTARTED = 'yes'\n">>}),
    Opts = #{pool => init},
    [begin
         Ctx = py_context(init, Slot),
         ?assertEqual({ok, true}, py:eval(Ctx, <<"'json' in sys.modules and 'xml.dom' in sys.modules">>)),
         ?assertEqual({ok, <<"yes">>}, py:eval(Ctx, <<"STARTED">>)),
         ?assertEqual({ok, <<"{}">>}, py:eval(Ctx, <<"json.dumps({})">>))
     end || Slot <- [1, 2]],
    %% A replaced OS process runs them again before it takes requests.
    {ok, #{os_pid := OsPid}} = pyport:worker_info({init, 1}),
    pyport_os:kill(OsPid),
    wait_until(fun() -> not lists:member(up_os_pid(init, 1), [OsPid, undefined]) end),
    ?assertEqual({ok, <<"yes">>}, py:eval(py_context(init, 1), <<"STARTED">>)),
    ?assertNotEqual(OsPid, os_pid({init, 1})),
    ?assertEqual({ok, <<"{}">>}, py:eval(<<"__import__('json').dumps({})">>, none, Opts)).

failing_init_fails_the_start(_Config) ->
    {error, {pool_start_failed, bad_import, {worker_start_failed, Detail}}} =
        pyport:start_pool(bad_import, #{size => 1, imports => [no_such_module_pyport]}),
    ?assertMatch({init_failed, {import, <<"no_such_module_pyport">>},
                  {<<"ModuleNotFoundError">>, _}}, Detail),
    {error, {pool_start_failed, bad_code, {worker_start_failed, Detail2}}} =
        pyport:start_pool(bad_code, #{size => 1, init_code => <<"1/0">>}),
    ?assertMatch({init_failed, init_code, {<<"ZeroDivisionError">>, _}}, Detail2),
    ?assertEqual({error, {invalid_pool_option, p, imports, ["not a module"]}},
                 pyport:start_pool(p, #{imports => ["not a module"]})),
    ?assertEqual([default], pyport:pools()).

venv_is_activated(Config) ->
    Venv = filename:join(?config(priv_dir, Config), "venv"),
    "" = os:cmd("/usr/bin/python3 -m venv --without-pip " ++ Venv ++ " 2>&1"),
    [Site] = filelib:wildcard(filename:join(Venv, "lib/python3*/site-packages")),
    ok = file:write_file(filename:join(Site, "pyport_in_venv.py"), <<"WHERE = 'venv'\n">>),
    {ok, _} = pyport:start_pool(venv, #{size => 1, venv => Venv}),
    Opts = #{pool => venv},
    ?assertEqual({ok, <<"venv">>}, py:eval(<<"__import__('pyport_in_venv').WHERE">>, none, Opts)),
    {ok, Env} = py:eval(<<"__import__('os').environ['VIRTUAL_ENV']">>, none, Opts),
    ?assertEqual(filename:absname(Venv), binary_to_list(Env)),
    ?assertEqual({error, {invalid_pool_option, p, venv, ?config(priv_dir, Config)}},
                 pyport:start_pool(p, #{venv => ?config(priv_dir, Config)})).

%%%===================================================================
%%% reload, memory_stats, gc
%%%===================================================================

reload_in_every_worker(Config) ->
    Dir = module_dir(Config),
    write_module(Dir, "pyport_reloaded", "def version():\n    return 1\n", 1000000),
    {ok, _} = pyport:start_pool(reload, #{size => 2, python_path => [Dir]}),
    Opts = #{pool => reload},
    [?assertEqual({ok, 1}, py:call(py_context(reload, S), pyport_reloaded, version, [])) || S <- [1, 2]],
    write_module(Dir, "pyport_reloaded", "def version():\n    return 2\n", 2000000),
    %% Not reloaded yet: the module stays what was imported.
    ?assertEqual({ok, 1}, py:call(py_context(reload, 1), pyport_reloaded, version, [])),
    {ok, Pids} = py:parallel([{os, getpid, []} || _ <- [1, 2]], Opts),
    ok = py:reload(pyport_reloaded, Opts),
    [?assertEqual({ok, 2}, py:call(py_context(reload, S), pyport_reloaded, version, [])) || S <- [1, 2]],
    %% A reload, not a restart.
    {ok, Pids2} = py:parallel([{os, getpid, []} || _ <- [1, 2]], Opts),
    ?assertEqual(lists:sort(Pids), lists:sort(Pids2)),
    %% A module no worker imported: nothing to do.
    ok = py:reload(pyport_never_imported, Opts).

reload_of_an_extension_recycles_workers(Config) ->
    {ok, _} = pyport:start_pool(ext, #{size => 2, python_path => [?config(python_dir, Config)]}),
    Opts = #{pool => ext},
    Before = [os_pid({ext, S}) || S <- [1, 2]],
    [{ok, _} = py:call(py_context(ext, S), '_json', '__name__.upper', []) || S <- [1, 2]],
    %% Calls keep being answered while the workers are replaced one by one.
    Self = self(),
    Caller = spawn_link(fun() -> call_loop(Self, Opts, 0) end),
    ok = py:reload('_json', Opts),
    Caller ! stop,
    receive {calls, N, Errors} -> ?assertEqual([], Errors), ?assert(N > 0) end,
    After = [os_pid({ext, S}) || S <- [1, 2]],
    [?assertNotEqual(B, A) || {B, A} <- lists:zip(Before, After)],
    {ok, #{workers := Ws}} = pyport:pool_info(ext),
    ?assertEqual([1, 1], [maps:get(recycles, W) || W <- Ws]).

reload_errors_are_returned(Config) ->
    Dir = module_dir(Config),
    write_module(Dir, "pyport_breaks", "def f():\n    return 1\n", 1000000),
    {ok, _} = pyport:start_pool(broken, #{size => 2, python_path => [Dir]}),
    {ok, 1} = py:call(py_context(broken, 1), pyport_breaks, f, []),
    write_module(Dir, "pyport_breaks", "def f(:\n", 2000000),
    %% Only slot 1 had imported it.
    ?assertMatch({error, [{1, {error, {'SyntaxError', _}}}]},
                 py:reload(pyport_breaks, #{pool => broken})),
    ?assertEqual({ok, 1}, py:call(py_context(broken, 1), pyport_breaks, f, [])),
    ?assertEqual({error, {no_pool, nope}}, py:reload(x, #{pool => nope})).

memory_stats_and_gc_per_worker(Config) ->
    {ok, _} = pyport:start_pool(mem, #{size => 2, python_path => [?config(python_dir, Config)]}),
    Opts = #{pool => mem},
    {ok, Stats} = py:memory_stats(Opts),
    ?assertEqual([1, 2], lists:sort(maps:keys(Stats))),
    [?assertMatch(#{<<"rss_bytes">> := R, <<"gc_count">> := [_, _, _], <<"namespaces">> := _}
                  when R > 1000000, S) || S <- maps:values(Stats)],
    ok = py:exec(py_context(mem, 1), <<"import gc\ngc.disable()\nclass C: pass\n"
                                       "for _ in range(100):\n    c = C(); c.me = c\ndel c">>),
    {ok, Collected} = py:gc(Opts),
    ?assertEqual([1, 2], lists:sort(maps:keys(Collected))),
    ?assert(maps:get(1, Collected) >= 100),
    {ok, #{1 := G0}} = py:gc(0, Opts),
    ?assert(is_integer(G0)),
    {ok, #{1 := {error, {'ValueError', _}}}} = py:gc(5, Opts),
    %% The default pool.
    {ok, #{1 := #{<<"rss_bytes">> := _}}} = py:memory_stats(#{}),
    {ok, #{1 := _}} = py:gc(#{}),
    %% erlang_python's shapes: the calling process's context, or one given.
    {ok, #{gc_count := {_, _, _}, gc_threshold := {_, _, _}, gc_stats := [_, _, _],
           rss_bytes := _}} = py:memory_stats(),
    {ok, #{namespaces := _}} = py:memory_stats(py:context(mem, 2)),
    {ok, N} = py:gc(),
    ?assert(is_integer(N)),
    {ok, N2} = py:gc(2),
    ?assert(is_integer(N2)).

sys_config_pools(Config) ->
    %% Pools listed in the environment start with the application.
    ok = application:stop(pyport),
    Data = ?config(python_dir, Config),
    application:set_env(pyport, pools, #{default => #{size => 1, python_path => [Data]},
                                         second => #{size => 2, init_code => <<"K = 2">>}}),
    try
        {ok, _} = application:ensure_all_started(pyport),
        ?assertEqual([default, second], lists:sort(pyport:pools())),
        ?assertEqual({ok, 2}, py:eval(py_context(second, 2), <<"K">>))
    after
        ok = application:stop(pyport),
        application:set_env(pyport, pools, #{default => #{size => 1, python_path => [Data]}}),
        {ok, _} = application:ensure_all_started(pyport)
    end.

%%%===================================================================
%%% Helpers
%%%===================================================================

py_context(Pool, Slot) ->
    py:context(Pool, Slot).

os_pid({Pool, Slot}) ->
    {ok, #{os_pid := P}} = pyport:worker_info({Pool, Slot}),
    P.

up_os_pid(Pool, Slot) ->
    pyport_test_util:os_pid({Pool, Slot}).

in_flight(Pool, Slot) ->
    {ok, #{workers := Ws}} = pyport:pool_info(Pool),
    maps:get(in_flight, lists:nth(Slot, Ws)).

call_loop(Parent, Opts, N) ->
    receive
        stop -> Parent ! {calls, N, []}
    after 0 ->
            case py:call(math, sqrt, [4], #{}, Opts) of
                {ok, 2.0} -> call_loop(Parent, Opts, N + 1);
                Other -> Parent ! {calls, N, [Other]}
            end
    end.

module_dir(Config) ->
    Dir = filename:join(?config(priv_dir, Config),
                        "mods-" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

%% importlib trusts the source's mtime and size: set the mtime explicitly.
write_module(Dir, Name, Source, Mtime) ->
    Path = filename:join(Dir, Name ++ ".py"),
    ok = file:write_file(Path, Source),
    ok = file:write_file_info(Path, #file_info{mtime = Mtime}, [{time, posix}]).

relative_to(Path, Base) ->
    P = filename:split(filename:absname(Path)),
    B = filename:split(Base),
    {Common, RestP, RestB} = strip_common(P, B, []),
    _ = Common,
    filename:join([".." || _ <- RestB] ++ RestP).

strip_common([X | P], [X | B], Acc) -> strip_common(P, B, [X | Acc]);
strip_common(P, B, Acc) -> {lists:reverse(Acc), P, B}.

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond).
