%% @doc Virtualenvs for a pool's workers: `py:ensure_venv/2,3',
%% `activate_venv/1', `deactivate_venv/0', `venv_info/0' (erlang_python's
%% names; they act on the default pool). See docs/channels.md.
%%
%% `ensure' makes the venv with Debian's Python (`/usr/bin/python3 -m
%% venv'), installs requirements only offline (from a directory of wheels
%% given as `{find_links, Dir}': pyport never fetches from the network) and
%% activates it. `activate' applies to every worker of the pool now and to
%% every worker started later (restarts included), through
%% `site.addsitedir' (so `.pth' files and editable installs work); a venv
%% made for another Python is refused with an error naming both versions.
-module(pyport_venv).

-export([ensure/3, activate/2, deactivate/1, info/1]).

-define(EXEC, 4).
-define(EVAL, 3).
-define(TIMEOUT, 30000).
-define(INSTALL_TIMEOUT, 300000).
%% Output of a command kept for its error (the rest is dropped).
-define(MAX_OUTPUT, 65536).

-type error() :: {executable_not_found, string()} | {exit_code, integer(), binary()}
               | {spawn_failed, string(), term()} | timeout
               | {invalid_venv, term()} | {invalid_requirements, term()}
               | {offline_install_only, binary()}.

%% @doc Makes the venv at `Path' unless it exists (or `force'), installs
%% `Req' offline, then activates it for `Pool'. Options (a proplist, as
%% erlang_python's): `{python, Exe}' (default `/usr/bin/python3'), `force',
%% `{installer, pip | uv}', `{extras, [Name]}' and pyport's
%% `{find_links, WheelDir}'.
-spec ensure(unicode:chardata(), term(), list()) -> ok | {error, error()}.
ensure(Path0, Req, Opts) when is_list(Opts) ->
    ensure(default, Path0, Req, Opts).

ensure(Pool, Path0, Req, Opts) ->
    Path = filename:absname(unicode:characters_to_list(Path0)),
    Exists = filelib:is_regular(filename:join(Path, "pyvenv.cfg")),
    Force = proplists:get_bool(force, Opts),
    Made = case Exists andalso not Force of
               true -> ok;
               false -> create(Path, proplists:get_value(python, Opts, "/usr/bin/python3"), Force)
           end,
    case Made of
        ok ->
            case install(Path, Req, Opts) of
                ok -> activate(Pool, Path);
                Error -> Error
            end;
        Error ->
            Error
    end.

%% @doc Activates the venv in every worker of `Pool', and for its workers
%% started later.
-spec activate(atom(), unicode:chardata()) -> ok | {error, {invalid_venv, term()}}.
activate(Pool, Path0) ->
    Path = unicode:characters_to_binary(filename:absname(unicode:characters_to_list(Path0))),
    case filelib:is_regular(filename:join(Path, "pyvenv.cfg")) of
        false ->
            {error, {invalid_venv, <<Path/binary, " has no pyvenv.cfg: it is not a venv">>}};
        true ->
            case pyport_preload:everywhere([Pool], pyport_preload:venv_src(Path), ?TIMEOUT) of
                ok ->
                    pyport_preload:set_venv(Pool, Path);
                {error, [{_, _, {error, Why}} | _]} ->
                    %% Where it applied, it is taken back: the venv active
                    %% before (if any) is active again everywhere.
                    _ = case pyport_preload:venv(Pool) of
                            undefined -> deactivate(Pool);
                            Prev -> pyport_preload:everywhere([Pool], pyport_preload:venv_src(Prev),
                                                              ?TIMEOUT)
                        end,
                    {error, {invalid_venv, Why}}
            end
    end.

%% @doc Takes the active venv off `sys.path' in every worker of `Pool'.
-spec deactivate(atom()) -> ok.
deactivate(Pool) ->
    ok = pyport_preload:set_venv(Pool, undefined),
    _ = pyport_preload:everywhere([Pool], <<"import erlang._venv\nerlang._venv.deactivate()\n">>,
                                  ?TIMEOUT),
    ok.

%% @doc The active venv, as one worker of `Pool' sees it.
-spec info(atom()) -> {ok, map()} | {error, term()}.
info(Pool) ->
    case pyport_preload:in_pool(Pool, ?EVAL,
                                [<<"__import__('erlang._venv', fromlist=['info']).info()">>,
                                 none, 0], ?TIMEOUT) of
        [{_, _, {ok, #{} = Info}} | _] -> {ok, Info};
        [{_, _, {error, _} = Error} | _] -> Error;
        [] -> {error, {no_workers, Pool}}
    end.

%%%===================================================================
%%% Internals
%%%===================================================================

create(Path, Python, Force) ->
    Args = ["-m", "venv"] ++ ["--clear" || Force] ++ [Path],
    run(Python, Args, ?INSTALL_TIMEOUT).

install(_Path, Req, _Opts) when Req =:= undefined; Req =:= none; Req =:= <<>>; Req =:= "" ->
    ok;
install(Path, Req0, Opts) ->
    Req = filename:absname(unicode:characters_to_list(Req0)),
    case {filename:extension(Req), file:read_file(Req)} of
        {_, {error, Why}} ->
            {error, {invalid_requirements, {Req, Why}}};
        {".toml", {ok, _}} ->
            Extras = proplists:get_value(extras, Opts, []),
            Target = filename:dirname(Req) ++ extras(Extras),
            offline(Path, ["-e", Target], Req, Opts);
        {_, {ok, Text}} ->
            case requirements(Text) of
                [] -> ok;                       % nothing to install
                _ -> offline(Path, ["-r", Req], Req, Opts)
            end
    end.

%% Lines naming something to install (not blank, not a comment).
requirements(Text) ->
    [L || Line <- binary:split(Text, [<<"\n">>, <<"\r\n">>], [global]),
          L <- [string:trim(Line)], L =/= <<>>, binary:first(L) =/= $#].

extras([]) -> "";
extras(Names) -> "[" ++ lists:join(",", [unicode:characters_to_list(N) || N <- Names]) ++ "]".

%% pyport installs nothing from the network: a wheel directory or nothing.
offline(Path, What, Req, Opts) ->
    case proplists:get_value(find_links, Opts) of
        undefined ->
            {error, {offline_install_only,
                     iolist_to_binary(
                       ["pyport installs no package from the network: give {find_links, WheelDir} "
                        "(a directory of wheels) to install ", Req, " offline, or install the "
                        "packages with apt (python3-...) and make the venv with "
                        "--system-site-packages"])}};
        Dir ->
            Links = ["--no-index", "--find-links", unicode:characters_to_list(Dir)],
            case installer(Opts) of
                pip ->
                    run(filename:join([Path, "bin", "python"]),
                        ["-m", "pip", "install", "--disable-pip-version-check"] ++ Links ++ What,
                        ?INSTALL_TIMEOUT);
                {uv, Uv} ->
                    run(Uv, ["pip", "install", "--offline", "--python",
                             filename:join([Path, "bin", "python"])] ++ Links ++ What,
                        ?INSTALL_TIMEOUT);
                {error, _} = Error ->
                    Error
            end
    end.

installer(Opts) ->
    case proplists:get_value(installer, Opts) of
        pip -> pip;
        uv ->
            case os:find_executable("uv") of
                false -> {error, {executable_not_found, "uv"}};
                Uv -> {uv, Uv}
            end;
        undefined ->
            case os:find_executable("uv") of
                false -> pip;
                Uv -> {uv, Uv}
            end
    end.

%% Runs a program (no shell) with a deadline; its output is kept, bounded.
run(Exe0, Args, Timeout) ->
    Exe = case filename:pathtype(Exe0) of
              absolute -> Exe0;
              _ -> os:find_executable(Exe0)
          end,
    case Exe =/= false andalso filelib:is_regular(Exe) of
        false ->
            {error, {executable_not_found, Exe0}};
        true ->
            try open_port({spawn_executable, Exe},
                          [{args, Args}, exit_status, stderr_to_stdout, binary, hide]) of
                Port ->
                    Deadline = erlang:monotonic_time(millisecond) + Timeout,
                    collect(Port, Deadline, [], 0)
            catch error:Why ->
                    {error, {spawn_failed, Exe, Why}}
            end
    end.

collect(Port, Deadline, Acc, N) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} when N < ?MAX_OUTPUT ->
            collect(Port, Deadline, [Data | Acc], N + byte_size(Data));
        {Port, {data, _}} ->
            collect(Port, Deadline, Acc, N);
        {Port, {exit_status, 0}} ->
            ok;
        {Port, {exit_status, Code}} ->
            Out = iolist_to_binary(lists:reverse(Acc)),
            {error, {exit_code, Code, binary:part(Out, 0, min(byte_size(Out), ?MAX_OUTPUT))}}
    after Left ->
            case erlang:port_info(Port, os_pid) of
                {os_pid, OsPid} -> pyport_os:kill(OsPid);
                undefined -> ok
            end,
            catch port_close(Port),
            {error, timeout}
    end.
