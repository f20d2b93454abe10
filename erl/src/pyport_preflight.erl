%% @doc Checks, when pyport starts, that this machine can run the worker
%% shipped in pyport's priv/: the binary is there and executable, the
%% shared libraries it links (libuv, libseccomp, ...) load, and the Python
%% standard library it was built against is installed. A release copied to
%% another machine then fails at start with the missing piece named, rather
%% than with every worker dying at its first breath.
%%
%% Only the default worker (priv/pyport_worker, also the node's process
%% reaper) is checked: a pool's own `worker' option is reported by the pool,
%% as before (`{worker_start_failed, {no_executable, Path}}').
-module(pyport_preflight).

-include_lib("kernel/include/file.hrl").
-include_lib("kernel/include/logger.hrl").

-export([check/0, check/1, check/2, format_error/1]).

-export_type([problem/0]).

-type problem() ::
        {worker_missing, file:filename_all()}
      | {worker_not_executable, file:filename_all()}
      | {python_runtime_missing, file:filename_all()}
      | {missing_library, file:filename_all(), Library :: binary(),
         DebianPackage :: string() | unknown}
      | {python_stdlib_missing, Dir :: string(), PythonVersion :: string(),
         DebianPackage :: string()}
      | {worker_failed, file:filename_all(), ExitStatus :: integer(), Output :: binary()}
      | {worker_timeout, file:filename_all()}.

%% How long `pyport_worker --help' may take, and how much of its output is
%% kept: it prints a usage page, or the dynamic loader's one-line complaint.
-define(RUN_TIMEOUT, 10000).
-define(MAX_OUTPUT, 16384).

%% @doc Checks pyport's own priv/ directory; logs and returns the first
%% problem found.
-spec check() -> ok | {error, {preflight, problem()}}.
check() ->
    case code:priv_dir(pyport) of
        {error, bad_name} -> ok;   % not loaded as an application: nothing shipped to check
        Priv -> check(Priv)
    end.

%% @doc Checks the worker and the Python runtime in `Priv'.
-spec check(file:filename_all()) -> ok | {error, {preflight, problem()}}.
check(Priv) ->
    check(Priv, ?RUN_TIMEOUT).

%% @doc As {@link check/1}, giving `pyport_worker --help' `Timeout' ms.
-spec check(file:filename_all(), pos_integer()) -> ok | {error, {preflight, problem()}}.
check(Priv, Timeout) ->
    Worker = filename:join(Priv, "pyport_worker"),
    Steps = [fun() -> executable(Worker) end,
             fun() -> runtime(filename:join(Priv, "python_runtime")) end,
             fun() -> stdlib(filename:join(Priv, "pyport_build.config")) end,
             fun() -> runs(Worker, Timeout) end],
    case first_problem(Steps) of
        ok ->
            ok;
        {error, Problem} ->
            %% No domain [pyport] here: OTP's default handler drops events
            %% of a domain it does not know, and this one must be seen.
            ?LOG_ERROR("pyport cannot start on this machine: ~ts", [format_error(Problem)]),
            {error, {preflight, Problem}}
    end.

%% @doc A sentence saying what is missing and what to install.
-spec format_error(problem()) -> string().
format_error({worker_missing, W}) ->
    flat("~ts is missing: pyport's priv/ was not built or not shipped "
         "(the dependency's compile runs tools/build-worker)", [W]);
format_error({worker_not_executable, W}) ->
    flat("~ts is not an executable file (was it copied without its mode bits?)", [W]);
format_error({python_runtime_missing, D}) ->
    flat("the Python runtime directory ~ts is missing: pyport's priv/ is incomplete", [D]);
format_error({missing_library, W, Lib, unknown}) ->
    flat("~ts needs the shared library ~ts, which is not installed", [W, Lib]);
format_error({missing_library, W, Lib, Package}) ->
    flat("~ts needs the shared library ~ts, which is not installed: "
         "install the Debian package ~ts", [W, Lib, Package]);
format_error({python_stdlib_missing, Dir, Vsn, Package}) ->
    flat("the worker embeds Python ~ts, whose standard library ~ts is not installed: "
         "install the Debian package ~ts", [Vsn, Dir, Package]);
format_error({worker_failed, W, Status, Output}) ->
    flat("~ts --help exited with status ~b: ~ts", [W, Status, Output]);
format_error({worker_timeout, W}) ->
    flat("~ts --help did not finish in time", [W]).

%% ---- the checks -----------------------------------------------------------

first_problem([]) ->
    ok;
first_problem([Step | Rest]) ->
    case Step() of
        ok -> first_problem(Rest);
        {error, _} = Error -> Error
    end.

executable(W) ->
    case file:read_file_info(W) of
        {ok, #file_info{type = regular, mode = Mode}} when Mode band 8#111 =/= 0 -> ok;
        {ok, _} -> {error, {worker_not_executable, W}};
        {error, _} -> {error, {worker_missing, W}}
    end.

runtime(Dir) ->
    case filelib:is_regular(filename:join([Dir, "erlang", "__init__.py"])) of
        true -> ok;
        false -> {error, {python_runtime_missing, Dir}}
    end.

%% What the worker was built against (written by CMake, installed by
%% tools/build-worker). A priv/ without it (a worker built by hand) skips
%% this check; the worker's own start error still names the problem.
stdlib(BuildConfig) ->
    case file:consult(BuildConfig) of
        {ok, Terms} ->
            Vsn = proplists:get_value(python_version, Terms),
            Dir = proplists:get_value(python_stdlib, Terms),
            stdlib(Dir, Vsn);
        {error, _} ->
            ok
    end.

stdlib(Dir, Vsn) when is_list(Dir), is_list(Vsn) ->
    %% os and encodings start the interpreter; asyncio the runtime package.
    Needed = [filename:join(Dir, "os.py"), filename:join([Dir, "encodings", "__init__.py"]),
              filename:join([Dir, "asyncio", "__init__.py"])],
    case lists:all(fun filelib:is_regular/1, Needed) of
        true -> ok;
        false -> {error, {python_stdlib_missing, Dir, Vsn, "libpython" ++ Vsn ++ "-stdlib"}}
    end;
stdlib(_, _) ->
    ok.

%% The dynamic loader refuses a binary whose libraries are missing before
%% main() runs; `--help' returns before Python starts, so this costs
%% milliseconds.
runs(W, Timeout) ->
    try open_port({spawn_executable, W},
                  [{args, ["--help"]}, exit_status, stderr_to_stdout, binary, in]) of
        Port -> collect(W, Port, <<>>, erlang:monotonic_time(millisecond) + Timeout)
    catch
        error:Reason -> {error, {worker_failed, W, -1, atom_bin(Reason)}}
    end.

collect(W, Port, Acc, Deadline) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} when byte_size(Acc) < ?MAX_OUTPUT ->
            Keep = binary:part(Data, 0, min(byte_size(Data), ?MAX_OUTPUT - byte_size(Acc))),
            collect(W, Port, <<Acc/binary, Keep/binary>>, Deadline);
        {Port, {data, _}} ->
            collect(W, Port, Acc, Deadline);
        {Port, {exit_status, 0}} ->
            ok;
        {Port, {exit_status, Status}} ->
            {error, failure(W, Status, Acc)}
    after Left ->
        %% Closing the port would leave the process running: kill it (the
        %% reaper is not started yet; this path is rare enough for a shell).
        _ = case erlang:port_info(Port, os_pid) of
                {os_pid, OsPid} -> os:cmd("kill -9 " ++ integer_to_list(OsPid));
                undefined -> ok
            end,
        catch port_close(Port),
        {error, {worker_timeout, W}}
    end.

%% glibc's loader: "<prog>: error while loading shared libraries: <lib>:
%% cannot open shared object file: No such file or directory".
failure(W, Status, Output) ->
    case re:run(Output, <<"error while loading shared libraries: ([^:\\s]+):">>,
                [{capture, all_but_first, binary}]) of
        {match, [Lib]} -> {missing_library, W, Lib, package(Lib)};
        nomatch -> {worker_failed, W, Status, string:trim(Output)}
    end.

%% Debian's package for each library the worker links (ldd pyport_worker).
package(<<"libuv.so.1">>) -> "libuv1";
package(<<"libseccomp.so.2">>) -> "libseccomp2";
package(<<"libexpat.so.1">>) -> "libexpat1";
package(<<"libz.so.1">>) -> "zlib1g";
package(<<"libstdc++.so.6">>) -> "libstdc++6";
package(<<"libgcc_s.so.1">>) -> "libgcc-s1";
package(<<"libpython", Rest/binary>>) ->
    case re:run(Rest, <<"^(\\d+\\.\\d+)">>, [{capture, all_but_first, list}]) of
        {match, [Vsn]} -> "libpython" ++ Vsn;
        nomatch -> unknown
    end;
package(_) -> unknown.

atom_bin(Reason) ->
    unicode:characters_to_binary(io_lib:format("~0p", [Reason])).

flat(Format, Args) ->
    lists:flatten(io_lib:format(Format, Args)).
