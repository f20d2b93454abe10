%% py_import and py_preload (erlang_python's API, docs/channels.md):
%% applied to every worker now and to every worker started later.
-module(py_import_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [paths_and_imports_everywhere, failed_import_not_recorded, function_imports,
     later_workers_and_restarts, preload_for_new_workers, sandboxed_pool_untouched, clear].

init_per_suite(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "mods"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "imp_probe.py"),
                         <<"import os\nloaded_by = os.getpid()\ndef hello():\n    return 'hi'\n">>),
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    [{mods, Dir} | Config].

end_per_suite(_Config) ->
    clean(),
    pyport_test_util:stop().

end_per_testcase(_Case, _Config) ->
    clean(),
    pyport_test_util:stop_other_pools().

clean() ->
    py_import:clear_imports(),
    py_import:clear_paths(),
    py_preload:clear_code().

in_worker(Ctx, Expr) ->
    py:eval(Ctx, Expr).

modules_loaded(Ctx) ->
    in_worker(Ctx, <<"'imp_probe' in __import__('sys').modules">>).

paths_and_imports_everywhere(Config) ->
    Dir = list_to_binary(?config(mods, Config)),
    ok = py_import:add_path(Dir),
    ?assert(py_import:is_path_added(Dir)),
    ?assertEqual([Dir], py_import:all_paths()),
    ?assertEqual({ok, Dir}, in_worker(py:context(2), <<"__import__('sys').path[0]">>)),
    ok = py_import:ensure_imported(imp_probe),
    [?assertEqual({ok, true}, modules_loaded(py:context(N))) || N <- [1, 2]],
    ?assert(py_import:is_imported(imp_probe)),
    ?assert(py_import:is_imported(<<"imp_probe">>, hello)),
    ?assertEqual([{<<"imp_probe">>, all}], py_import:all_imports()),
    ?assertEqual({ok, #{<<"imp_probe">> => []}}, py_import:import_list()),
    ok = py_import:ensure_imported(imp_probe),          % once only
    ?assertEqual([{<<"imp_probe">>, all}], py_import:all_imports()).

failed_import_not_recorded(_Config) ->
    ?assertMatch({error, [{default, _, {error, {'ModuleNotFoundError', _}}} | _]},
                 py_import:ensure_imported(no_such_module_xyz)),
    ?assertNot(py_import:is_imported(no_such_module_xyz)),
    ?assertEqual({error, main_not_cacheable}, py_import:ensure_imported('__main__')),
    ?assertEqual([], py_import:all_imports()).

function_imports(Config) ->
    ok = py_import:add_path(?config(mods, Config)),
    ok = py_import:ensure_imported(imp_probe, hello),
    ?assertMatch({error, [{default, _, {error, {'AttributeError', _}}} | _]},
                 py_import:ensure_imported(imp_probe, nope)),
    ?assert(py_import:is_imported(imp_probe, hello)),
    ?assertNot(py_import:is_imported(imp_probe, nope)),
    ?assertEqual({ok, #{<<"imp_probe">> => [<<"hello">>]}}, py_import:import_list()).

later_workers_and_restarts(Config) ->
    ok = py_import:add_path(?config(mods, Config)),
    ok = py_import:ensure_imported(imp_probe),
    %% A pool started later...
    {ok, _} = pyport:start_pool(later, #{size => 1}),
    Later = py:context(later, 1),
    ?assertEqual({ok, true}, modules_loaded(Later)),
    %% ...and a worker restarted after a crash get them too.
    {ok, OsPid} = in_worker(py:context(1), <<"__import__('os').getpid()">>),
    pyport_os:kill(OsPid),
    pyport_test_util:wait_until(
      fun() -> case in_worker(py:context(1), <<"__import__('os').getpid()">>) of
                   {ok, P} -> P =/= OsPid;
                   _ -> false
               end
      end),
    ?assertEqual({ok, true}, modules_loaded(py:context(1))),
    %% A recorded import that fails later (the module went away) does not
    %% stop a worker from starting.
    ok = file:delete(filename:join(?config(mods, Config), "imp_probe.py")),
    ok = pyport:stop_pool(later),
    {ok, _} = pyport:start_pool(later, #{size => 1}),
    ?assertEqual({ok, false}, modules_loaded(py:context(later, 1))),
    ok = file:write_file(filename:join(?config(mods, Config), "imp_probe.py"),
                         <<"import os\nloaded_by = os.getpid()\ndef hello():\n    return 'hi'\n">>).

preload_for_new_workers(_Config) ->
    ?assertNot(py_preload:has_preload()),
    Code = <<"import sys\nsys.pyport_preload_marker = 41 + 1\n">>,
    ok = py_preload:set_code(Code),
    ?assert(py_preload:has_preload()),
    ?assertEqual(Code, py_preload:get_code()),
    Marker = <<"getattr(__import__('sys'), 'pyport_preload_marker', None)">>,
    %% Running workers are not touched; new ones run it once.
    ?assertEqual({ok, none}, in_worker(py:context(1), Marker)),
    {ok, _} = pyport:start_pool(later, #{size => 1}),
    ?assertEqual({ok, 42}, in_worker(py:context(later, 1), Marker)),
    %% Code that raises is logged; the worker starts anyway.
    ok = py_preload:set_code("raise RuntimeError('preload broke')"),
    ok = pyport:stop_pool(later),
    {ok, _} = pyport:start_pool(later, #{size => 1}),
    ?assertEqual({ok, 2}, in_worker(py:context(later, 1), <<"1 + 1">>)).

clear(Config) ->
    ok = py_import:add_paths([?config(mods, Config), <<"/nonexistent/x">>]),
    ?assertEqual([list_to_binary(?config(mods, Config)), <<"/nonexistent/x">>], py_import:all_paths()),
    ok = py_import:ensure_imported(imp_probe),
    ok = py_import:clear_imports(),
    ok = py_import:clear_paths(),
    ok = py_preload:clear_code(),
    ?assertEqual([], py_import:all_imports()),
    ?assertEqual([], py_import:all_paths()),
    ?assertEqual(undefined, py_preload:get_code()),
    %% Running workers keep what they imported.
    ?assertEqual({ok, true}, modules_loaded(py:context(1))).

sandboxed_pool_untouched(Config) ->
    {ok, _} = pyport:start_pool(sb, #{size => 1, sandbox => true}),
    ok = py_import:add_path(?config(mods, Config)),
    ok = py_import:ensure_imported(imp_probe),
    ok = py_preload:set_code(<<"import sys\nsys.pyport_preload_marker = 1\n">>),
    Probe = <<"('imp_probe' in __import__('sys').modules, "
              "hasattr(__import__('sys'), 'pyport_preload_marker'))">>,
    ?assertEqual({ok, {false, false}}, in_worker(py:context(sb, 1), Probe)),
    %% Nor when it starts after them.
    ok = pyport:stop_pool(sb),
    {ok, _} = pyport:start_pool(sb, #{size => 1, sandbox => true}),
    ?assertEqual({ok, {false, false}}, in_worker(py:context(sb, 1), Probe)),
    {ok, _} = pyport:start_pool(plain, #{size => 1}),
    ?assertEqual({ok, {true, true}}, in_worker(py:context(plain, 1), Probe)).
