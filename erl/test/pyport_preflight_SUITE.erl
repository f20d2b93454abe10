%% pyport_preflight: what a target machine lacks is named at start.
-module(pyport_preflight_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([shipped_priv_passes/1, worker_missing/1, worker_not_executable/1,
         runtime_missing/1, missing_shared_library/1, stdlib_missing/1,
         worker_fails/1, worker_hangs/1, app_start_fails_with_the_reason/1]).

all() ->
    [shipped_priv_passes, worker_missing, worker_not_executable, runtime_missing,
     missing_shared_library, stdlib_missing, worker_fails, worker_hangs,
     app_start_fails_with_the_reason].

init_per_testcase(_Case, Config) ->
    Dir = filename:join(?config(priv_dir, Config), "priv"),
    ok = copy_priv(code:priv_dir(pyport), Dir),
    [{priv, Dir} | Config].

end_per_testcase(_Case, _Config) ->
    ok.

%% The worker this build installed passes, and says what it was built
%% against.
shipped_priv_passes(Config) ->
    ?assertEqual(ok, pyport_preflight:check()),
    ?assertEqual(ok, pyport_preflight:check(?config(priv, Config))),
    {ok, Terms} = file:consult(filename:join(code:priv_dir(pyport), "pyport_build.config")),
    ?assertMatch("3." ++ _, proplists:get_value(python_version, Terms)),
    ?assert(filelib:is_dir(proplists:get_value(python_stdlib, Terms))).

worker_missing(Config) ->
    Priv = ?config(priv, Config),
    ok = file:delete(filename:join(Priv, "pyport_worker")),
    {error, {preflight, {worker_missing, W} = P}} = pyport_preflight:check(Priv),
    ?assertEqual(filename:join(Priv, "pyport_worker"), W),
    ?assertNotEqual(nomatch, string:find(pyport_preflight:format_error(P), "tools/build-worker")).

worker_not_executable(Config) ->
    Priv = ?config(priv, Config),
    ok = file:change_mode(filename:join(Priv, "pyport_worker"), 8#644),
    ?assertMatch({error, {preflight, {worker_not_executable, _}}}, pyport_preflight:check(Priv)).

runtime_missing(Config) ->
    Priv = ?config(priv, Config),
    ok = file:del_dir_r(filename:join(Priv, "python_runtime")),
    ?assertMatch({error, {preflight, {python_runtime_missing, _}}}, pyport_preflight:check(Priv)).

%% A real ELF linked against a library that is then removed: the dynamic
%% loader's refusal becomes the library's name.
missing_shared_library(Config) ->
    Priv = ?config(priv, Config),
    ok = orphan_binary(?config(priv_dir, Config), filename:join(Priv, "pyport_worker")),
    {error, {preflight, {missing_library, _, Lib, Package} = P}} = pyport_preflight:check(Priv),
    ?assertEqual(<<"libpyportgone.so">>, Lib),
    ?assertEqual(unknown, Package),
    ?assertNotEqual(nomatch, string:find(pyport_preflight:format_error(P), "libpyportgone.so")),
    %% Libraries the worker really links name their Debian package.
    Msg = pyport_preflight:format_error({missing_library, "w", <<"libuv.so.1">>, "libuv1"}),
    ?assertNotEqual(nomatch, string:find(Msg, "install the Debian package libuv1")).

stdlib_missing(Config) ->
    Priv = ?config(priv, Config),
    ok = file:write_file(filename:join(Priv, "pyport_build.config"),
                         "{python_version, \"3.11\"}.\n"
                         "{python_stdlib, \"/nonexistent/lib/python3.11\"}.\n"),
    {error, {preflight, {python_stdlib_missing, "/nonexistent/lib/python3.11", "3.11",
                         "libpython3.11-stdlib"} = P}} = pyport_preflight:check(Priv),
    ?assertNotEqual(nomatch, string:find(pyport_preflight:format_error(P),
                                     "install the Debian package libpython3.11-stdlib")).

%% Any other failure is reported with its status and bounded output.
worker_fails(Config) ->
    Priv = ?config(priv, Config),
    W = filename:join(Priv, "pyport_worker"),
    ok = file:write_file(W, "#!/bin/sh\nhead -c 100000 /dev/zero | tr '\\0' x\necho broken >&2\nexit 3\n"),
    ok = file:change_mode(W, 8#755),
    {error, {preflight, {worker_failed, W, 3, Out}}} = pyport_preflight:check(Priv),
    ?assert(byte_size(Out) =< 16384).

%% A worker that never returns from --help is given up on, and killed.
worker_hangs(Config) ->
    Priv = ?config(priv, Config),
    W = filename:join(Priv, "pyport_worker"),
    PidFile = filename:join(?config(priv_dir, Config), "hang.pid"),
    ok = file:write_file(W, ["#!/bin/sh\necho $$ > '", PidFile, "'\nexec sleep 60\n"]),
    ok = file:change_mode(W, 8#755),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, {preflight, {worker_timeout, W}}}, pyport_preflight:check(Priv, 300)),
    %% Well before the sleep would have ended.
    ?assert(erlang:monotonic_time(millisecond) - T0 < 30000),
    {ok, Pid} = file:read_file(PidFile),
    Proc = "/proc/" ++ string:trim(binary_to_list(Pid)),
    ok = pyport_test_util:wait_until(fun() -> not filelib:is_dir(Proc) end).

%% The application refuses to start, with the problem as the reason, in a
%% peer node whose pyport has a broken priv/.
app_start_fails_with_the_reason(Config) ->
    Lib = filename:join(?config(priv_dir, Config), "lib"),
    App = filename:join(Lib, "pyport"),
    ok = copy_priv(code:priv_dir(pyport), filename:join(App, "priv")),
    ok = file:make_dir(filename:join(App, "ebin")),
    Ebin = filename:dirname(code:which(pyport_app)),
    [{ok, _} = file:copy(F, filename:join([App, "ebin", filename:basename(F)]))
     || F <- filelib:wildcard(filename:join(Ebin, "*"))],
    ok = orphan_binary(?config(priv_dir, Config), filename:join([App, "priv", "pyport_worker"])),
    {ok, Peer, _Node} = peer:start(#{name => peer:random_name(?MODULE), connection => standard_io,
                                     args => ["-pa", filename:join(App, "ebin")]}),
    try
        ?assertEqual(filename:join(App, "priv"), peer:call(Peer, code, priv_dir, [pyport])),
        ?assertMatch({error, {{preflight, {missing_library, _, <<"libpyportgone.so">>, unknown}},
                              {pyport_app, start, [normal, []]}}},
                     peer:call(Peer, application, start, [pyport])),
        ?assertEqual(false, lists:keymember(pyport, 1,
                                            peer:call(Peer, application, which_applications, [])))
    after
        peer:stop(Peer)
    end.

%%%===================================================================
%%% Helpers
%%%===================================================================

copy_priv(From, To) ->
    Cmd = io_lib:format("rm -rf '~ts' && mkdir -p '~ts' && cp -a '~ts'/. '~ts'/ && echo ok",
                        [To, To, From, To]),
    "ok\n" = os:cmd(lists:flatten(Cmd)),
    ok.

%% Builds Target as a program that needs libpyportgone.so, then removes the
%% library.
orphan_binary(Work, Target) ->
    Src = filename:join(Work, "gone.c"),
    Lib = filename:join(Work, "libpyportgone.so"),
    ok = file:write_file(Src, "int pyport_gone(void) { return 0; }\n"),
    Main = filename:join(Work, "main.c"),
    ok = file:write_file(Main, "int pyport_gone(void);\nint main(void) { return pyport_gone(); }\n"),
    Cmd = io_lib:format("cc -shared -fPIC -o '~ts' '~ts' && cc -o '~ts' '~ts' -L'~ts' -lpyportgone"
                        " && rm '~ts' && echo ok", [Lib, Src, Target, Main, Work, Lib]),
    "ok\n" = os:cmd(lists:flatten(Cmd)),
    ok.
