%% @doc Why a worker OS process could not start, in terms of the pool's
%% configuration (see docs/configuration.md, Errors).
%%
%% A worker that fails before its hello (an option it refuses, a limit it
%% cannot apply, Python that cannot initialise in the environment it was
%% given, a sandbox preload that fails) first writes an `ERROR' frame with
%% id 0 and type `StartError': its message, and what is at fault, the
%% command-line option it names or the stage that failed (PROTOCOL.md).
%% This module maps that back to the pool key, so the start fails with
%% `{config_error, Key, Message}' instead of a bare exit status; a
%% sandboxed pool's `imports' module that fails before the hello gives the
%% same `{init_failed, {import, Name}, {Type, Message}}' as an unsandboxed
%% pool's. A process
%% that dies while it runs an `imports' module or the `init_code'
%% (`sys.exit' is an exception, `os._exit' is not) fails with
%% `{init_failed, Step, ExitDetail}'.
-module(pyport_start_error).

-export([from_frame/2, detail/3]).

-export_type([detail/0, reported/0]).

-type reported() :: {config_error, atom() | {sandbox, atom()}, binary()}
                  | {init_failed, {import, binary()}, {binary(), binary()}}.
-type detail() :: reported()
                | {init_failed, init_code | {import, binary()}, term()}
                | term().

%% @doc The reason in a worker's `StartError' frame (the fields after the
%% id), with the key of `Opts' it is about; `error' for any other frame.
-spec from_frame(binary(), map()) -> {ok, reported()} | error.
from_frame(Rest, Opts) ->
    case pyport_codec:decode_fields(3, Rest) of
        {ok, [<<"StartError">>, <<"cannot preload ", Failure/binary>> = Message,
              <<"--preload">>]} ->
            %% "cannot preload Name: Type: Message" (port_worker/worker.cpp).
            case binary:split(Failure, <<": ">>) of
                [Name, Error] ->
                    case binary:split(Error, <<": ">>) of
                        [Type, Text] -> {ok, {init_failed, {import, Name}, {Type, Text}}};
                        [Text] -> {ok, {init_failed, {import, Name}, {<<"ImportError">>, Text}}}
                    end;
                [_] ->
                    {ok, {config_error, imports, Message}}
            end;
        {ok, [<<"StartError">>, Message, Where]} when is_binary(Message), is_binary(Where) ->
            {ok, {config_error, key(Where, Opts), Message}};
        _ ->
            error
    end.

%% @doc What a start that ended with `Exit' (an exit detail) failed of: the
%% worker's own reason when it gave one, else the init step that was
%% running (`undefined' when none), else `Exit' itself.
-spec detail(term(), undefined | reported(),
             undefined | init_code | {import, binary()}) -> detail().
detail(_Exit, Reported, _Step) when Reported =/= undefined ->
    Reported;
detail(Exit, undefined, undefined) ->
    Exit;
detail(Exit, undefined, Step) ->
    {init_failed, Step, Exit}.

%% The worker's command-line options (pyport_os, pyport_sandbox) and the
%% pool keys they come from.
key(<<"--max-memory">>, Opts) -> limit(max_memory, Opts);
key(<<"--cpu-seconds">>, Opts) -> limit(cpu_seconds, Opts);
key(<<"--max-open-files">>, Opts) -> limit(max_open_files, Opts);
key(<<"--max-frame-size">>, _) -> max_frame_size;
key(<<"--path">>, _) -> python_path;
key(<<"--preload">>, _) -> imports;
key(<<"--runtime">>, _) -> worker;
key(<<"--env">>, _) -> env;
key(<<"--max-file-size">>, _) -> {sandbox, max_file_size};
key(<<"--max-processes">>, _) -> {sandbox, max_processes};
key(<<"--max-output">>, _) -> {sandbox, max_output};
key(<<"--workdir-parent">>, _) -> {sandbox, workdir_parent};
key(<<"--env-keep">>, _) -> {sandbox, env_keep};
key(<<"--log-lines">>, _) -> log_rate;
key(<<"--log-bytes">>, _) -> log_rate;
key(<<"--", _/binary>>, _) -> sandbox;
key(<<"sandbox">>, _) -> sandbox;
key(<<"python">>, Opts) ->
    %% Python itself did not start: what the pool changed in its
    %% environment is the likely cause, else the installation.
    Env = maps:get(env, Opts, []),
    case {[N || {"PYTHON" ++ _ = N, _} <- Env], maps:get(venv, Opts, undefined), Env} of
        {[_ | _], _, _} -> env;
        {[], Venv, _} when Venv =/= undefined -> venv;
        {[], _, [_ | _]} -> env;
        {[], _, []} -> worker
    end;
key(_, _) ->
    worker.

%% A sandboxed worker gets the smaller of the pool's and the sandbox's
%% limit; the pool's is checked to the worker's bounds (pyport_config), so
%% a refused one is the sandbox's.
limit(Key, #{sandbox := #{}}) -> {sandbox, Key};
limit(Key, _Opts) -> Key.
