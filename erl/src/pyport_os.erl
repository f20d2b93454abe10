%% @doc The worker OS process as the operating system sees it: how it is
%% spawned from a pool's options, how it is killed, what its exit status
%% means, and how much memory it holds.
-module(pyport_os).

-export([open/1, args/1, environment/1, kill/1, remove_tree/1, exit_detail/1, rss_bytes/1, cpu_seconds/1, alive/1]).

%% @doc Spawns a worker OS process for a pool's options. The port is a
%% byte stream: the owner cuts frames itself ({@link pyport_framer}), so
%% that a length header is checked before the VM buffers what it claims.
-spec open(pyport_config:pool_opts()) ->
          {ok, port(), non_neg_integer() | undefined} | {error, term()}.
open(#{worker := Exe} = Opts) ->
    PortOpts = [{args, args(Opts)}, stream, binary, exit_status, use_stdio,
                %% Never suspend the owner on a full pipe: it must stay able
                %% to route answers, notice exits and run its timers while
                %% the worker is busy.
                {busy_limits_port, disabled}]
        ++ env(Opts) ++ cd(Opts),
    case filelib:is_regular(Exe) of
        false ->
            {error, {no_executable, Exe}};
        true ->
            try open_port({spawn_executable, Exe}, PortOpts) of
                Port ->
                    send_env(Port, Opts),
                    OsPid = case erlang:port_info(Port, os_pid) of
                                {os_pid, P} -> P;
                                undefined -> undefined
                            end,
                    %% Its process tree ends when the port closes, however
                    %% the owner ends.
                    ok = pyport_reaper:watch(Port, OsPid),
                    {ok, Port, OsPid}
            catch
                error:Reason -> {error, {cannot_execute, Exe, Reason}}
            end
    end.

%% A sandboxed worker's environment goes over its stdin, first thing, in
%% one length-prefixed frame (pyport_sandbox:args/2): nobody else can read
%% that pipe.
send_env(_Port, #{sandbox := false}) ->
    ok;
send_env(Port, Opts) ->
    true = port_command(Port, pyport_framer:frame(pyport_sandbox:env_frame(environment(Opts)))),
    ok.

%% @doc The worker's command line for a pool's options (without the
%% executable).
-spec args(pyport_config:pool_opts()) -> [string()].
args(#{python_path := Path, max_frame_size := Max, venv := Venv} = Opts) ->
    %% Absolute: the worker may run in another directory (`cd').
    Dirs = [filename:absname(Dir) || Dir <- Path ++ venv_site_packages(Venv)],
    ["--runtime", runtime_dir()]
        ++ lists:append([["--path", Dir] || Dir <- Dirs])
        ++ ["--max-frame-size", integer_to_list(Max)]
        ++ log_rate(maps:get(log_rate, Opts, default))
        ++ spin(maps:get(spin_us, Opts, 100))
        ++ limit("--max-memory", pyport_sandbox:effective_limit(max_memory, Opts))
        ++ limit("--cpu-seconds", pyport_sandbox:effective_limit(cpu_seconds, Opts))
        ++ limit("--max-open-files", pyport_sandbox:effective_limit(max_open_files, Opts))
        ++ pyport_sandbox:args(Opts, environment(Opts)).

%% The worker's log relay drops output above the pool's log_rate at the
%% source (pyport_worker_log drops what bypasses the relay).
log_rate(default) -> log_rate(pyport_worker_log:default_rate());
log_rate(infinity) -> [];
log_rate(#{lines := Lines, bytes := Bytes}) ->
    limit("--log-lines", Lines) ++ limit("--log-bytes", Bytes).

%% The worker's own default (port_worker/options.hpp) needs no flag.
spin(100) -> [];
spin(Us) -> ["--spin-us", integer_to_list(Us)].

limit(_Flag, infinity) -> [];
limit(Flag, N) -> [Flag, integer_to_list(N)].

%% A venv is activated the way its site module would: its site-packages on
%% sys.path and VIRTUAL_ENV set (subprocesses of the worker then find the
%% venv's bin/ first on PATH too).
venv_site_packages(undefined) ->
    [];
venv_site_packages(Venv) ->
    lists:sort(filelib:wildcard(binary_to_list(filename:join(Venv, "lib/python3*/site-packages")))).

env(#{sandbox := false} = Opts) ->
    case environment(Opts) of
        [] -> [];
        Env -> [{env, Env}]
    end;
env(#{sandbox := #{env_keep := Keep}}) ->
    %% The node's variables never reach a sandboxed worker, not even in
    %% the memory where the kernel puts a new program's environment (which
    %% clearing it later leaves behind, readable through ctypes).
    %% TMPDIR stays: the worker makes its directory there (when the pool
    %% names no workdir_parent), then points TMPDIR at that directory.
    %% The pool's own variables are not set here either: they come on the
    %% worker's stdin (send_env/2), never in a process environment that
    %% /proc/<pid>/environ shows.
    Unset = [{Name, false} || Name <- node_env_names(), not lists:member(Name, Keep),
                              Name =/= "TMPDIR"],
    [{env, Unset}].

node_env_names() ->
    [Name || Var <- os:getenv(), [Name | _] <- [string:split(Var, "=")], Name =/= ""].

%% @doc What the pool sets in the worker's environment. A sandboxed worker
%% clears its environment and keeps only this (sent on its stdin).
-spec environment(pyport_config:pool_opts()) -> [{string(), string() | false}].
environment(#{env := Env, venv := undefined}) ->
    Env;
environment(#{env := Env, venv := Venv}) ->
    Dir = filename:absname(unicode:characters_to_list(Venv)),
    Path = filename:join(Dir, "bin") ++ ":" ++ os:getenv("PATH", ""),
    [{"VIRTUAL_ENV", Dir}, {"PATH", Path} | Env].

cd(#{cd := undefined}) -> [];
cd(#{cd := Dir}) -> [{cd, Dir}].

%% Absolute: a sandboxed worker changes to its private directory before it
%% loads the runtime.
runtime_dir() ->
    case code:priv_dir(pyport) of
        {error, bad_name} -> filename:absname("python_runtime");
        Priv -> filename:absname(filename:join(Priv, "python_runtime"))
    end.

%% @doc Kills a worker's whole OS process tree: given its port, through
%% the worker's keeper (the port's OS process, which kills the worker and
%% everything it started, then exits with the worker's status); given an
%% OS pid, that process alone (SIGKILL; for tests and operators). Needs no
%% new descriptor and no shell: {@link pyport_reaper}'s helper does it.
-spec kill(port() | non_neg_integer() | undefined) -> ok.
kill(Port) when is_port(Port) ->
    pyport_reaper:kill(Port);
kill(OsPid) when is_integer(OsPid), OsPid > 1 ->
    pyport_reaper:kill_os_pid(OsPid);
kill(_) ->
    ok.

%% @doc Removes a directory tree that untrusted code may have written, as
%% the node's user (often root). `rm -rf' never follows a symbolic link
%% and opens each directory relative to its parent, so links a job left,
%% or swaps in while this runs, cannot send the removal elsewhere;
%% file:del_dir_r/1 checks then acts by path. Without rm, del_dir_r.
%% A sandboxed worker's cgroups (named like its directory) go too, should
%% its keeper have died before it removed them.
-spec remove_tree(binary()) -> ok.
remove_tree(Dir) ->
    remove_dir_tree(Dir),
    pyport_sandbox:remove_cgroups(filename:basename(Dir)).

remove_dir_tree(Dir) ->
    case os:find_executable("rm", "/usr/bin:/bin") of
        false ->
            _ = file:del_dir_r(Dir),
            ok;
        Rm ->
            Port = open_port({spawn_executable, Rm},
                             [{args, ["-rf", "--one-file-system", "--", Dir]}, exit_status,
                              stderr_to_stdout]),
            wait_exit(Port)
    end.

wait_exit(Port) ->
    receive
        {Port, {exit_status, _}} -> ok;
        {Port, {data, _}} -> wait_exit(Port)
    end.

%% @doc How an exit status of the OS process is reported: statuses above 128
%% are deaths by a signal (128 + the Linux signal number).
-spec exit_detail(non_neg_integer()) ->
          {exit_status, non_neg_integer()} | {signal, atom() | pos_integer()}.
exit_detail(Status) when Status > 128 -> {signal, signal_name(Status - 128)};
exit_detail(Status) -> {exit_status, Status}.

%% @doc The resident set size of a process, from /proc.
-spec rss_bytes(non_neg_integer() | undefined) -> non_neg_integer() | undefined.
rss_bytes(OsPid) when is_integer(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status") of
        {ok, Status} ->
            case binary:split(Status, <<"VmRSS:">>) of
                [_, Rest] ->
                    [Kb | _] = string:lexemes(Rest, " \t\n"),
                    binary_to_integer(Kb) * 1024;
                _ ->
                    undefined                    % a zombie has no memory
            end;
        {error, _} ->
            undefined
    end;
rss_bytes(undefined) ->
    undefined.

%% @doc The CPU time (user + system) a process has used, in seconds, from
%% /proc; what RLIMIT_CPU counts.
-spec cpu_seconds(non_neg_integer() | undefined) -> float() | undefined.
cpu_seconds(OsPid) when is_integer(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, Stat} ->
            %% Fields after the command name (which may hold spaces): state
            %% is field 3, utime and stime are fields 14 and 15, in clock
            %% ticks (USER_HZ, 100 on Linux).
            [_, AfterComm] = string:split(Stat, <<") ">>, trailing),
            Fields = binary:split(AfterComm, <<" ">>, [global]),
            Ticks = binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)),
            Ticks / 100;
        {error, _} ->
            undefined
    end;
cpu_seconds(undefined) ->
    undefined.

%% @doc True while a process exists and has not exited (a zombie, exited
%% but not yet reaped, counts as gone).
-spec alive(non_neg_integer()) -> boolean().
alive(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, Stat} ->
            [_, AfterComm] = string:split(Stat, <<") ">>, trailing),
            not lists:member(binary:first(AfterComm), [$Z, $X]);
        {error, _} ->
            false
    end.

%% Linux signal numbers.
signal_name(1) -> sighup;
signal_name(2) -> sigint;
signal_name(3) -> sigquit;
signal_name(4) -> sigill;
signal_name(5) -> sigtrap;
signal_name(6) -> sigabrt;
signal_name(7) -> sigbus;
signal_name(8) -> sigfpe;
signal_name(9) -> sigkill;
signal_name(10) -> sigusr1;
signal_name(11) -> sigsegv;
signal_name(12) -> sigusr2;
signal_name(13) -> sigpipe;
signal_name(14) -> sigalrm;
signal_name(15) -> sigterm;
signal_name(24) -> sigxcpu;
signal_name(25) -> sigxfsz;
signal_name(31) -> sigsys;
signal_name(N) -> N.
