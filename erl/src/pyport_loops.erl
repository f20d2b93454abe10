%% @doc Coroutines as tasks on the workers' event loops: `py:async_call'
%% and `py:async_gather' (on the pool registered for the call), and the
%% loops of `py_event_loop' and `py_event_loop_pool': the first
%% `event_loop_pool_size' workers (default: all) of the pool named by
%% `event_loop_pool' (default `default'), application environment of
%% `pyport'. A task's outcome arrives as `{async_result, Ref, Result}'
%% ({@link pyport_async}); module `'__main__'' is the caller's eval/exec
%% namespace on the task's worker.
-module(pyport_loops).

-export([async_call/4, async_gather/2, task/6, run/5, spawn_task/5,
         loops/0, loop_target/0, first_loop_target/0, caller_loop/0, first_loop/0,
         all_loops/0, stats/0]).

-define(CALL, 1).
%% erlang_python's wait for py_event_loop:run/3,4.
-define(RUN_TIMEOUT, 5000).

-type target() :: {ok, pyport_request:target()} | {error, term()}.
-type result() :: {ok, term()} | {error, term()}.
-type call_spec() :: {py:name(), py:name(), [term()]} |
                     {py:name(), py:name(), [term()], map()}.

%%%===================================================================
%%% py:async_call, py:async_gather
%%%===================================================================

%% @doc A task of `Module.Function(*Args, **Kwargs)' on the pool registered
%% for it; its deadline the pool's `call_timeout'.
-spec async_call(py:name(), py:name(), [term()], map()) -> pyport_async:ref().
async_call(Module, Function, Args, Kwargs) ->
    Pool = pyport_contexts:lookup_pool(pyport_args:safe_name(Module),
                                       pyport_args:safe_name(Function)),
    task({ok, {pool, Pool}}, Module, Function, Args, Kwargs, default).

%% @doc The calls as concurrent tasks, each awaited at most `Timeout' ms:
%% `{ok, Values}' in order, or `{error, {gather_failed, [{Index, Reason}]}}'.
-spec async_gather([call_spec()], timeout()) ->
          {ok, [term()]} | {error, {gather_failed, [{pos_integer(), term()}]}}.
async_gather(Calls, Timeout) ->
    Refs = [async_spec(C) || C <- Calls],
    Results = [pyport_async:await(async_result, Ref, Timeout) || Ref <- Refs],
    case [{I, R} || {I, {error, R}} <- lists:zip(lists:seq(1, length(Results)), Results)] of
        [] -> {ok, [V || {ok, V} <- Results]};
        Failed -> {error, {gather_failed, Failed}}
    end.

async_spec({M, F, A}) -> async_call(M, F, A, #{});
async_spec({M, F, A, Kw}) -> async_call(M, F, A, Kw);
async_spec(Other) -> erlang:error({badarg, Other}).

%%%===================================================================
%%% Tasks on a target
%%%===================================================================

%% @doc Starts a task on `Target' with deadline `Timeout'; a bad target or
%% argument has its error message in the mailbox at once.
-spec task(target(), py:name(), py:name(), [term()], map(), timeout() | default) ->
          pyport_async:ref().
task({ok, Target}, Module, Function, Args, Kwargs, Timeout) ->
    try pyport_args:call_fields(Module, Function, Args, Kwargs) of
        Fields0 ->
            {Target1, Fields} = pyport_namespaces:route_main(Target, Fields0),
            pyport_async:start_task(Target1, async_result, {?CALL, Fields}, Timeout)
    catch
        throw:{error, Reason} -> pyport_async:failed_task(async_result, Reason)
    end;
task({error, Reason}, _Module, _Function, _Args, _Kwargs, _Timeout) ->
    pyport_async:failed_task(async_result, Reason).

%% @doc Runs a call on `Target' and waits for it (`timeout', default 5000
%% ms; `kwargs'). No result message is needed: the answer comes undecoded
%% to the caller, as for py:call; a caller that gives up has the worker's
%% owner interrupt it, which cancels the task.
-spec run(target(), py:name(), py:name(), [term()], map()) -> result().
run({ok, Target}, Module, Function, Args, Opts) when is_map(Opts) ->
    pyport_args:checked(
      fun() ->
              Fields0 = pyport_args:call_fields(Module, Function, Args,
                                                maps:get(kwargs, Opts, #{})),
              {Target1, Fields} = pyport_namespaces:route_main(Target, Fields0),
              pyport_request:call(Target1, ?CALL, Fields,
                                  maps:get(timeout, Opts, ?RUN_TIMEOUT))
      end);
run({error, _} = Error, _Module, _Function, _Args, _Opts) ->
    Error.

%% @doc Runs a call on `Target' and forgets it (an exception is logged).
-spec spawn_task(target(), py:name(), py:name(), [term()], map()) -> ok | {error, term()}.
spawn_task({ok, Target}, Module, Function, Args, Kwargs) ->
    pyport_args:checked(
      fun() ->
              pyport_request:cast(Target, pyport_args:call_fields(Module, Function, Args, Kwargs))
      end);
spawn_task({error, _} = Error, _Module, _Function, _Args, _Kwargs) ->
    Error.

%%%===================================================================
%%% The loops
%%%===================================================================

%% @doc The event loop pool and how many of its workers are loops.
-spec loops() -> {ok, atom(), pos_integer()} | {error, term()}.
loops() ->
    case loops_info() of
        {ok, Pool, N, _Info} -> {ok, Pool, N};
        {error, _} = Error -> Error
    end.

%% loops/0 with the pool's info (read once).
loops_info() ->
    Pool = application:get_env(pyport, event_loop_pool, default),
    case pyport_pool:info(Pool) of
        {ok, #{size := Size} = Info} ->
            case application:get_env(pyport, event_loop_pool_size) of
                {ok, N} when is_integer(N), N > 0 -> {ok, Pool, min(N, Size), Info};
                _ -> {ok, Pool, Size, Info}
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc The calling process's loop (the same process, the same loop).
-spec loop_target() -> target().
loop_target() ->
    loop_target(fun slot/1).

%% @doc The first loop (py_event_loop's one loop).
-spec first_loop_target() -> target().
first_loop_target() ->
    loop_target(fun(_N) -> 1 end).

%% @doc The context pid of the calling process's loop.
-spec caller_loop() -> {ok, pid()} | {error, term()}.
caller_loop() ->
    context_pid(loop_target()).

%% @doc The context pid of the first loop.
-spec first_loop() -> {ok, pid()} | {error, term()}.
first_loop() ->
    context_pid(first_loop_target()).

loop_target(Pick) ->
    case loops() of
        {ok, Pool, N} -> {ok, {slot, Pool, Pick(N)}};
        {error, _} = Error -> Error
    end.

context_pid({ok, {slot, Pool, Slot}}) -> pyport_contexts:context_pid(Pool, Slot);
context_pid({error, _} = Error) -> Error.

%% @doc Every loop: `{ok, [{LoopRef, WorkerPid}]}' (both the worker's pid).
-spec all_loops() -> {ok, [{pid(), pid()}]} | {error, term()}.
all_loops() ->
    case loops() of
        {ok, Pool, N} ->
            Pids = [Pid || Slot <- lists:seq(1, N),
                           {ok, Pid} <- [pyport_contexts:context_pid(Pool, Slot)]],
            {ok, [{Pid, Pid} || Pid <- Pids]};
        {error, _} = Error ->
            Error
    end.

%% @doc `num_loops', `pool', `supported', `owngil_enabled' and `in_flight'
%% (the requests in flight on each loop).
-spec stats() -> #{atom() => term()}.
stats() ->
    case loops_info() of
        {ok, Pool, N, #{counters := C}} ->
            %% owngil_enabled: every loop runs in an interpreter (and
            %% process) of its own, what erlang_python's OWN_GIL mode gives.
            #{num_loops => N, pool => Pool, supported => true, owngil_enabled => true,
              in_flight => [counters:get(C, Slot) || Slot <- lists:seq(1, N)]};
        {error, Reason} ->
            #{num_loops => 0, supported => false, error => Reason}
    end.

%% Affinity: the same process, the same loop.
slot(N) ->
    erlang:phash2(self(), N) + 1.
