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
    pyport_loops:run(pyport_loops:loop_target(), Module, Function, Args, Opts).

%% @doc Starts `Module.Function(*Args)' on the caller's loop; returns a
%% reference to {@link await/1,2}, or to match in `{async_result, Ref,
%% Result}'.
-spec create_task(name(), name(), [term()]) -> ref().
create_task(Module, Function, Args) ->
    create_task(Module, Function, Args, #{}).

%% @doc {@link create_task/3} with keyword arguments.
-spec create_task(name(), name(), [term()], map()) -> ref().
create_task(Module, Function, Args, Kwargs) ->
    %% No deadline of its own: a task lives until it ends, or until whoever
    %% awaits it gives up.
    pyport_loops:task(pyport_loops:loop_target(), Module, Function, Args, Kwargs, infinity).

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
    pyport_loops:spawn_task(pyport_loops:loop_target(), Module, Function, Args, Kwargs).

%% @doc The loop of the calling process: `{ok, LoopRef}', the pid of its
%% worker (a context, usable with {@link py:call/4} and friends).
-spec get_loop() -> {ok, pid()} | {error, term()}.
get_loop() ->
    pyport_loops:caller_loop().

%% @doc Every loop: `{ok, [{LoopRef, WorkerPid}]}' (both the worker's pid).
-spec get_all_loops() -> {ok, [{pid(), pid()}]} | {error, term()}.
get_all_loops() ->
    pyport_loops:all_loops().

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
    pyport_loops:stats().
