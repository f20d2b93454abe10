%% @doc Coroutines on "the" event loop: the first worker of the event loop
%% pool (see {@link py_event_loop_pool}), so tasks from every caller start
%% in the order they were created. Use {@link py_event_loop_pool} to spread
%% callers over all the loops.
%%
%% ```
%% {ok, 4.0} = py_event_loop:run(math, sqrt, [16.0]),
%% Ref = py_event_loop:create_task(asyncio, sleep, [0.1, done]),
%% {ok, done} = py_event_loop:await(Ref),
%% ok = py_event_loop:spawn_task(my_module, background_job, []).
%% '''
%%
%% `create_task' returns a reference whose result also arrives as the
%% message `{async_result, Ref, Result}'; `await' waits for it (default
%% 5000 ms) and cancels the task in the worker if it gives up. Module
%% `'__main__'' is the calling process's namespace on the loop's worker
%% (what {@link exec/1} defined).
-module(py_event_loop).

-export([run/3, run/4, create_task/3, create_task/4, await/1, await/2,
         spawn_task/3, spawn_task/4, get_loop/0, exec/1, exec/2, eval/1, eval/2]).

-type name() :: py:name().
-type ref() :: pyport_async:ref().

%% @doc Runs `Module.Function(*Args)' on the loop and waits at most 5000 ms.
-spec run(name(), name(), [term()]) -> {ok, term()} | {error, term()}.
run(Module, Function, Args) ->
    run(Module, Function, Args, #{}).

%% @doc {@link run/3} with options `timeout' (default 5000) and `kwargs'.
-spec run(name(), name(), [term()], #{timeout => timeout(), kwargs => map()}) ->
          {ok, term()} | {error, term()}.
run(Module, Function, Args, Opts) ->
    pyport_loops:run(pyport_loops:first_loop_target(), Module, Function, Args, Opts).

%% @doc Starts `Module.Function(*Args)' on the loop without waiting.
-spec create_task(name(), name(), [term()]) -> ref().
create_task(Module, Function, Args) ->
    create_task(Module, Function, Args, #{}).

%% @doc {@link create_task/3} with keyword arguments.
-spec create_task(name(), name(), [term()], map()) -> ref().
create_task(Module, Function, Args, Kwargs) ->
    pyport_loops:task(pyport_loops:first_loop_target(), Module, Function, Args, Kwargs, infinity).

%% @doc Waits at most 5000 ms for a task's result.
-spec await(ref()) -> {ok, term()} | {error, term()}.
await(Ref) ->
    py_event_loop_pool:await(Ref).

%% @doc Waits at most `Timeout' ms (or `infinity'); `{error, timeout}'
%% cancels the task in the worker.
-spec await(ref(), timeout()) -> {ok, term()} | {error, term()}.
await(Ref, Timeout) ->
    py_event_loop_pool:await(Ref, Timeout).

%% @doc Runs `Module.Function(*Args)' on the loop and forgets it.
-spec spawn_task(name(), name(), [term()]) -> ok | {error, term()}.
spawn_task(Module, Function, Args) ->
    spawn_task(Module, Function, Args, #{}).

%% @doc {@link spawn_task/3} with keyword arguments.
-spec spawn_task(name(), name(), [term()], map()) -> ok | {error, term()}.
spawn_task(Module, Function, Args, Kwargs) ->
    pyport_loops:spawn_task(pyport_loops:first_loop_target(), Module, Function, Args, Kwargs).

%% @doc The loop: `{ok, LoopRef}' (the pid of its worker, a context).
-spec get_loop() -> {ok, pid()} | {error, term()}.
get_loop() ->
    pyport_loops:first_loop().

%% @doc Runs statements in the calling process's namespace on the loop's
%% worker (what a later {@link create_task/3} of `'__main__'' sees):
%% `ok' or `{error, _}'.
-spec exec(py:code()) -> ok | {error, term()}.
exec(Code) ->
    case get_loop() of
        {ok, Loop} -> exec(Loop, Code);
        {error, _} = Error -> Error
    end.

%% @doc {@link exec/1} on the loop `LoopRef'.
-spec exec(pid(), py:code()) -> ok | {error, term()}.
exec(LoopRef, Code) ->
    py:exec(LoopRef, Code).

%% @doc Evaluates an expression in the calling process's namespace on the
%% loop's worker.
-spec eval(py:code()) -> {ok, term()} | {error, term()}.
eval(Code) ->
    case get_loop() of
        {ok, Loop} -> eval(Loop, Code);
        {error, _} = Error -> Error
    end.

%% @doc {@link eval/1} on the loop `LoopRef'.
-spec eval(pid(), py:code()) -> {ok, term()} | {error, term()}.
eval(LoopRef, Code) ->
    py:eval(LoopRef, Code).
