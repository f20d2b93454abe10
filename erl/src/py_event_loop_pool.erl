%% @doc Coroutines on a pool of event loops, one per worker, with process
%% affinity: every task of one calling process goes to the same worker's
%% loop, so a process's tasks start in the order it created them.
%%
%% The loops are the first `event_loop_pool_size' workers (default: all) of
%% the pool named by `event_loop_pool' (default: `default'), both set in
%% the `pyport' application environment:
%%
%% ```
%% [{pyport, [{pools, #{default => #{size => 8}}},
%%            {event_loop_pool_size, 4}]}].
%% '''
%%
%% Results arrive as `{async_result, Ref, Result}'; see {@link
%% py_event_loop} for the single-loop variant with the same API.
-module(py_event_loop_pool).

-export([run/3, run/4, create_task/3, create_task/4, await/1, await/2,
         spawn_task/3, spawn_task/4, get_loop/0, get_stats/0, get_all_loops/0,
         exec/1, exec/2, eval/1, eval/2]).
-export([loops/0, run_on/5, create_task_on/5, spawn_task_on/5]).

-define(CALL, 1).
-define(CAST, 2).
-define(DEFAULT_TIMEOUT, 5000).

-type name() :: py:name().
-type ref() :: pyport_async:ref().
-type opts() :: #{timeout => timeout(), kwargs => map()}.

%% @doc Runs `Module.Function(*Args)' (a coroutine function, typically) on
%% the caller's loop and waits for it, at most 5000 ms.
-spec run(name(), name(), [term()]) -> {ok, term()} | {error, term()}.
run(Module, Function, Args) ->
    run(Module, Function, Args, #{}).

%% @doc {@link run/3} with options: `timeout' (ms or `infinity', default
%% 5000) and `kwargs'. On timeout the task is cancelled in the worker.
-spec run(name(), name(), [term()], opts()) -> {ok, term()} | {error, term()}.
run(Module, Function, Args, Opts) ->
    run_on(target(), Module, Function, Args, Opts).

%% @doc Starts `Module.Function(*Args)' on the caller's loop; returns a
%% reference to {@link await/1,2}, or to match in `{async_result, Ref,
%% Result}'.
-spec create_task(name(), name(), [term()]) -> ref().
create_task(Module, Function, Args) ->
    create_task(Module, Function, Args, #{}).

%% @doc {@link create_task/3} with keyword arguments.
-spec create_task(name(), name(), [term()], map()) -> ref().
create_task(Module, Function, Args, Kwargs) ->
    create_task_on(target(), Module, Function, Args, Kwargs).

%% @doc Waits at most 5000 ms for a task's result.
-spec await(ref()) -> {ok, term()} | {error, term()}.
await(Ref) ->
    await(Ref, ?DEFAULT_TIMEOUT).

%% @doc Waits at most `Timeout' ms (or `infinity') for a task's result;
%% `{error, timeout}' cancels the task in the worker.
-spec await(ref(), timeout()) -> {ok, term()} | {error, term()}.
await(Ref, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    pyport_async:await(async_result, Ref, Timeout).

%% @doc Runs `Module.Function(*Args)' on the caller's loop and forgets it
%% (an exception is logged by the worker).
-spec spawn_task(name(), name(), [term()]) -> ok | {error, term()}.
spawn_task(Module, Function, Args) ->
    spawn_task(Module, Function, Args, #{}).

%% @doc {@link spawn_task/3} with keyword arguments.
-spec spawn_task(name(), name(), [term()], map()) -> ok | {error, term()}.
spawn_task(Module, Function, Args, Kwargs) ->
    spawn_task_on(target(), Module, Function, Args, Kwargs).

%% @doc The loop of the calling process: `{ok, LoopRef}', the pid of its
%% worker (a context, usable with {@link py:call/4} and friends).
-spec get_loop() -> {ok, pid()} | {error, term()}.
get_loop() ->
    case loops() of
        {ok, Pool, N} -> pyport_contexts:context_pid(Pool, slot(N));
        {error, _} = Error -> Error
    end.

%% @doc Every loop: `{ok, [{LoopRef, WorkerPid}]}' (both the worker's pid).
-spec get_all_loops() -> {ok, [{pid(), pid()}]} | {error, term()}.
get_all_loops() ->
    case loops() of
        {ok, Pool, N} ->
            Pids = [Pid || Slot <- lists:seq(1, N),
                           {ok, Pid} <- [pyport_contexts:context_pid(Pool, Slot)]],
            {ok, [{Pid, Pid} || Pid <- Pids]};
        {error, _} = Error ->
            Error
    end.

%% @doc Runs statements in the calling process's namespace on its loop's
%% worker: `ok' or `{error, _}'.
-spec exec(py:code()) -> ok | {error, term()}.
exec(Code) ->
    case get_loop() of
        {ok, Loop} -> py:exec(Loop, Code);
        {error, _} = Error -> Error
    end.

%% @doc {@link exec/1} on the loop `LoopRef'.
-spec exec(pid(), py:code()) -> ok | {error, term()}.
exec(LoopRef, Code) ->
    py:exec(LoopRef, Code).

%% @doc Evaluates an expression in the calling process's namespace on its
%% loop's worker.
-spec eval(py:code()) -> {ok, term()} | {error, term()}.
eval(Code) ->
    case get_loop() of
        {ok, Loop} -> py:eval(Loop, Code);
        {error, _} = Error -> Error
    end.

%% @doc {@link eval/1} on the loop `LoopRef'.
-spec eval(pid(), py:code()) -> {ok, term()} | {error, term()}.
eval(LoopRef, Code) ->
    py:eval(LoopRef, Code).

%% @doc `num_loops', `pool', `supported' (always true: every worker has an
%% event loop), `owngil_enabled' (always true: every loop has an
%% interpreter and GIL of its own) and `in_flight', the requests in flight
%% on each loop.
-spec get_stats() -> #{atom() => term()}.
get_stats() ->
    case loops() of
        {ok, Pool, N} ->
            {ok, #{counters := C}} = pyport_pool:info(Pool),
            %% owngil_enabled: every loop runs in an interpreter (and
            %% process) of its own, what erlang_python's OWN_GIL mode gives.
            #{num_loops => N, pool => Pool, supported => true, owngil_enabled => true,
              in_flight => [counters:get(C, Slot) || Slot <- lists:seq(1, N)]};
        {error, Reason} ->
            #{num_loops => 0, supported => false, error => Reason}
    end.

%%%===================================================================
%%% Shared with py_event_loop
%%%===================================================================

%% @doc The event loop pool and how many of its workers are loops.
-spec loops() -> {ok, atom(), pos_integer()} | {error, term()}.
loops() ->
    Pool = application:get_env(pyport, event_loop_pool, default),
    case pyport_pool:info(Pool) of
        {ok, #{size := Size}} ->
            case application:get_env(pyport, event_loop_pool_size) of
                {ok, N} when is_integer(N), N > 0 -> {ok, Pool, min(N, Size)};
                _ -> {ok, Pool, Size}
            end;
        {error, _} = Error ->
            Error
    end.

%% @private
-spec run_on({ok, pyport_request:target()} | {error, term()}, name(), name(), [term()], opts()) ->
          {ok, term()} | {error, term()}.
run_on({ok, Target}, Module, Function, Args, Opts) when is_map(Opts) ->
    %% No result message is needed: the answer comes undecoded to the
    %% caller, which decodes it itself, as for py:call; a caller that gives
    %% up has the worker's owner interrupt it, which cancels the task.
    case fields(Module, Function, Args, maps:get(kwargs, Opts, #{})) of
        {ok, Fields0} ->
            {Target1, Fields} = pyport_namespaces:route_main(Target, Fields0),
            pyport_request:call(Target1, ?CALL, Fields, maps:get(timeout, Opts, ?DEFAULT_TIMEOUT));
        {error, _} = Error ->
            Error
    end;
run_on({error, _} = Error, _Module, _Function, _Args, _Opts) ->
    Error.

%% @private
-spec create_task_on({ok, pyport_request:target()} | {error, term()}, name(), name(), [term()],
                     map()) -> ref().
create_task_on({ok, Target}, Module, Function, Args, Kwargs) ->
    case fields(Module, Function, Args, Kwargs) of
        {ok, Fields0} ->
            %% '__main__' is the caller's py:exec namespace on that worker.
            {Target1, Fields} = pyport_namespaces:route_main(Target, Fields0),
            %% No deadline of its own: a task lives until it ends, or until
            %% whoever awaits it gives up.
            pyport_async:start_task(Target1, async_result, {?CALL, Fields}, infinity);
        {error, Reason} ->
            pyport_async:failed_task(async_result, Reason)
    end;
create_task_on({error, Reason}, _Module, _Function, _Args, _Kwargs) ->
    pyport_async:failed_task(async_result, Reason).

%% @private
-spec spawn_task_on({ok, pyport_request:target()} | {error, term()}, name(), name(), [term()],
                    map()) -> ok | {error, term()}.
spawn_task_on({ok, Target}, Module, Function, Args, Kwargs) ->
    case fields(Module, Function, Args, Kwargs) of
        {ok, Fields} -> pyport_request:cast(Target, Fields);
        {error, _} = Error -> Error
    end;
spawn_task_on({error, _} = Error, _Module, _Function, _Args, _Kwargs) ->
    Error.

%%%===================================================================
%%% Internals
%%%===================================================================

target() ->
    case loops() of
        {ok, Pool, N} -> {ok, {slot, Pool, slot(N)}};
        {error, _} = Error -> Error
    end.

%% Affinity: the same process, the same loop.
slot(N) ->
    erlang:phash2(self(), N) + 1.

fields(Module, Function, Args, Kwargs) ->
    try
        {ok, py:call_fields(Module, Function, Args, Kwargs)}
    catch
        throw:{error, _} = Error -> Error
    end.
