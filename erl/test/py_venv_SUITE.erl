%% Virtualenvs (docs/channels.md): the pool option `venv' and
%% py:activate_venv/1 go through site.addsitedir (.pth files work), a venv
%% made for another Python is refused, py:ensure_venv/2,3 makes venvs with
%% Debian's python3 -m venv and installs only offline.
-module(py_venv_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [pool_option_with_pth, other_python_refused, activate_and_deactivate, activate_invalid,
     ensure_venv_creates, ensure_venv_offline_only].

init_per_suite(Config) ->
    Priv = ?config(priv_dir, Config),
    Venv = filename:join(Priv, "venv"),
    make_venv(Venv, Priv),
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    [{venv, Venv} | Config].

end_per_suite(_Config) ->
    py:deactivate_venv(),
    pyport_test_util:stop().

end_per_testcase(_Case, _Config) ->
    py:deactivate_venv(),
    pyport_test_util:stop_other_pools().

%% A venv made by Debian's Python with a module in site-packages and a .pth
%% file naming a directory outside it (as an editable install does).
make_venv(Venv, Priv) ->
    {0, _} = run("/usr/bin/python3", ["-m", "venv", "--without-pip", Venv]),
    [SP] = filelib:wildcard(filename:join(Venv, "lib/python3*/site-packages")),
    ok = file:write_file(filename:join(SP, "venvmod.py"), <<"def where():\n    return __file__\n">>),
    Src = filename:join(Priv, "editable_src"),
    ok = filelib:ensure_dir(filename:join(Src, "x")),
    ok = file:write_file(filename:join(Src, "pthmod.py"), <<"VALUE = 'from a .pth'\n">>),
    ok = file:write_file(filename:join(SP, "editable.pth"), [Src, "\n"]),
    SP.

run(Exe, Args) ->
    Port = open_port({spawn_executable, Exe}, [{args, Args}, exit_status, stderr_to_stdout, binary]),
    collect(Port, <<>>).

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, <<Acc/binary, D/binary>>);
        {Port, {exit_status, S}} -> {S, Acc}
    after 60000 -> ct:fail(command_hangs)
    end.

imports_from_venv(Ctx) ->
    py:eval(Ctx, <<"(__import__('venvmod').where().startswith(v), __import__('pthmod').VALUE)">>,
            #{v => <<"">>}).

pool_option_with_pth(Config) ->
    Venv = ?config(venv, Config),
    {ok, _} = pyport:start_pool(venvpool, #{size => 1, venv => Venv}),
    Ctx = py:context(venvpool, 1),
    ?assertEqual({ok, {true, <<"from a .pth">>}}, imports_from_venv(Ctx)),
    {ok, Info} = pyport_venv:info(venvpool),
    ?assertMatch(#{<<"active">> := true}, Info),
    ?assertEqual(list_to_binary(Venv), maps:get(<<"venv_path">>, Info)),
    %% The venv's variables too (subprocesses find its bin/ first).
    ?assertEqual({ok, list_to_binary(Venv)},
                 py:eval(Ctx, <<"__import__('os').environ['VIRTUAL_ENV']">>)).

other_python_refused(Config) ->
    Other = filename:join(?config(priv_dir, Config), "venv39"),
    {0, _} = run("/usr/bin/python3", ["-m", "venv", "--without-pip", Other]),
    %% As if made by a Python 3.9: its cfg and its lib/ say so.
    {ok, Cfg} = file:read_file(filename:join(Other, "pyvenv.cfg")),
    ok = file:write_file(filename:join(Other, "pyvenv.cfg"),
                         re:replace(Cfg, <<"version = [0-9.]+">>, <<"version = 3.9.2">>)),
    [Lib] = filelib:wildcard(filename:join(Other, "lib/python3*")),
    ok = file:rename(Lib, filename:join(Other, "lib/python3.9")),
    {error, Why} = pyport:start_pool(oldvenv, #{size => 1, venv => Other}),
    Text = iolist_to_binary(io_lib:format("~tp", [Why])),
    ct:log("refused: ~ts", [Text]),
    ?assertMatch({_, _}, binary:match(Text, <<"venv">>)),
    ?assertMatch({_, _}, binary:match(Text, <<"made for Python 3.9.2">>)),
    ?assertMatch({error, {invalid_venv, _}}, py:activate_venv(Other)),
    ?assertEqual({ok, #{<<"active">> => false}}, py:venv_info()),
    %% A refused venv leaves the one active before in place.
    ok = py:activate_venv(?config(venv, Config)),
    ?assertMatch({error, {invalid_venv, _}}, py:activate_venv(Other)),
    ?assertMatch({ok, #{<<"active">> := true}}, py:venv_info()),
    ?assertEqual({ok, {true, <<"from a .pth">>}}, imports_from_venv(py:context(2))).

activate_and_deactivate(Config) ->
    Venv = ?config(venv, Config),
    ?assertEqual({ok, #{<<"active">> => false}}, py:venv_info()),
    ok = py:activate_venv(Venv),
    [?assertEqual({ok, {true, <<"from a .pth">>}}, imports_from_venv(py:context(N))) || N <- [1, 2]],
    {ok, #{<<"active">> := true, <<"venv_path">> := VP, <<"site_packages">> := SP,
           <<"sys_path">> := [First | _]}} = py:venv_info(),
    ?assertEqual(list_to_binary(Venv), VP),
    ?assertEqual(SP, First),
    %% A worker started after (a restart) has it too.
    {ok, OsPid} = py:eval(py:context(1), <<"__import__('os').getpid()">>),
    pyport_os:kill(OsPid),
    pyport_test_util:wait_until(
      fun() -> case py:eval(py:context(1), <<"__import__('os').getpid()">>) of
                   {ok, P} -> P =/= OsPid;
                   _ -> false
               end
      end),
    ?assertEqual({ok, {true, <<"from a .pth">>}}, imports_from_venv(py:context(1))),
    ok = py:deactivate_venv(),
    ?assertEqual({ok, #{<<"active">> => false}}, py:venv_info()),
    [?assertEqual({ok, false}, py:eval(py:context(N), <<"s in __import__('sys').path">>, #{s => SP}))
     || N <- [1, 2]].

activate_invalid(Config) ->
    ?assertMatch({error, {invalid_venv, _}}, py:activate_venv(?config(priv_dir, Config))),
    ?assertMatch({error, {invalid_venv, _}}, py:activate_venv("/nonexistent/venv")).

ensure_venv_creates(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "made"),
    ok = py:ensure_venv(Dir, undefined),
    ?assert(filelib:is_regular(filename:join(Dir, "pyvenv.cfg"))),
    ?assertMatch({ok, #{<<"active">> := true}}, py:venv_info()),
    %% Exists: not made again (its files stay).
    Marker = filename:join(Dir, "marker"),
    ok = file:write_file(Marker, <<>>),
    ok = py:ensure_venv(Dir, undefined, []),
    ?assert(filelib:is_regular(Marker)),
    ?assertEqual({error, {executable_not_found, "/nonexistent/python3"}},
                 py:ensure_venv(filename:join(?config(priv_dir, Config), "x"), undefined,
                                [{python, "/nonexistent/python3"}])).

ensure_venv_offline_only(Config) ->
    Priv = ?config(priv_dir, Config),
    Venv = ?config(venv, Config),
    Req = filename:join(Priv, "requirements.txt"),
    ok = file:write_file(Req, <<"# nothing but comments\n\n">>),
    ok = py:ensure_venv(Venv, Req),
    ok = file:write_file(Req, <<"requests>=2\n">>),
    {error, {offline_install_only, Msg}} = py:ensure_venv(Venv, Req),
    ?assertMatch({_, _}, binary:match(Msg, <<"find_links">>)),
    case os:find_executable("uv") of
        false -> ?assertEqual({error, {executable_not_found, "uv"}},
                              py:ensure_venv(Venv, Req, [{installer, uv}, {find_links, Priv}]));
        _ -> ok
    end,
    ?assertMatch({error, {invalid_requirements, _}}, py:ensure_venv(Venv, "/nonexistent/req.txt")).
