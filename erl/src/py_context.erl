%% @doc erlang_python's `py_context': a context you own, on pyport's
%% processes. A context is a dedicated worker (its own OS process, its own
%% interpreter and GIL) behind a process whose pid is the context; its
%% lifetime is that process's ({@link pyport_context}).
%%
%% `call', `eval' and `exec' without an environment use the context's
%% shared globals (a function defined by `exec/2' is callable as module
%% `'__main__''); with an environment (the `EnvRef' argument; any term, as
%% the caller's own namespace is the environment here) they use the
%% calling process's namespace, as `py:eval(Ctx, ...)' does. Any context
%% pid works here: those from `py:context/0,1' and `py:start_contexts/0,1'
%% too.
%%
%% ```
%% {ok, Ctx} = py_context:new(#{}),
%% ok = py_context:exec(Ctx, <<"def double(x):\n    return 2 * x\n">>),
%% {ok, 8} = py_context:call(Ctx, '__main__', double, [4]),
%% ok = py_context:stop(Ctx).
%% '''
-module(py_context).

-export([new/1, start_link/2, start_link/3, stop/1, destroy/1,
         call/4, call/5, call/6, call/7,
         eval/2, eval/3, eval/4, eval/5,
         exec/2, exec/3, interrupt/1,
         start_loop/1, start_loop/2, stop_loop/1, stop_loop/2, loop_ref/1,
         submit/4, submit/5, submit_await/4, submit_await/5, submit_await/6]).

-define(SUBMIT_AWAIT_TIMEOUT, 5000).

-type ctx() :: pid().
-type name() :: py:name().
-type result() :: {ok, term()} | {error, term()}.

%% @doc Starts a context, not linked to the caller. Options: `mode'
%% (`worker' or `owngil', both an interpreter of its own), `memory_limit'
%% (bytes: the worker's `max_memory'), `preload' (code run once in its
%% shared globals; a failure is only logged), `pool' (more pool options,
%% docs/configuration.md). `{ok, Ctx}' or `{error, Reason}': `{invalid_mode,
%% M}', `{invalid_memory_limit, V}', `{too_many_contexts, Max}', or why its
%% worker could not start.
-spec new(pyport_context:opts()) -> {ok, ctx()} | {error, term()}.
new(Opts) ->
    pyport_context:start(Opts, nolink).

%% @doc {@link new/1}, linked to the caller: the context stops when the
%% caller exits with `shutdown', `{shutdown, _}' or is killed.
-spec start_link(term(), worker | owngil) -> {ok, ctx()} | {error, term()}.
start_link(Id, Mode) ->
    start_link(Id, Mode, #{}).

%% @doc {@link start_link/2} with the options of {@link new/1}.
-spec start_link(term(), worker | owngil, pyport_context:opts()) -> {ok, ctx()} | {error, term()}.
start_link(Id, Mode, Opts) when is_map(Opts) ->
    pyport_context:start(Opts#{mode => Mode, id => Id}, link).

%% @doc Stops the context and its worker: `ok'.
-spec stop(ctx()) -> ok.
stop(Ctx) ->
    pyport_context:stop(Ctx).

%% @doc Same as {@link stop/1}.
-spec destroy(ctx()) -> ok.
destroy(Ctx) ->
    stop(Ctx).

%% @doc `Module.Function(*Args)' in the context, no timeout.
-spec call(ctx(), name(), name(), [term()]) -> result().
call(Ctx, Module, Function, Args) ->
    call(Ctx, Module, Function, Args, #{}).

%% @doc {@link call/4} with keyword arguments.
-spec call(ctx(), name(), name(), [term()], map()) -> result().
call(Ctx, Module, Function, Args, Kwargs) ->
    call(Ctx, Module, Function, Args, Kwargs, infinity).

%% @doc {@link call/5} with a timeout (ms or `infinity').
-spec call(ctx(), name(), name(), [term()], map(), timeout()) -> result().
call(Ctx, Module, Function, Args, Kwargs, Timeout) ->
    py:call(Ctx, Module, Function, Args, Kwargs, #{timeout => Timeout, namespace => shared}).

%% @doc {@link call/6} in the calling process's namespace (`EnvRef' is not
%% used: the caller's own namespace is its environment).
-spec call(ctx(), name(), name(), [term()], map(), timeout(), term()) -> result().
call(Ctx, Module, Function, Args, Kwargs, Timeout, _EnvRef) ->
    py:call(Ctx, Module, Function, Args, Kwargs, #{timeout => Timeout, namespace => process}).

%% @doc Evaluates an expression in the context's shared globals.
-spec eval(ctx(), py:code()) -> result().
eval(Ctx, Code) ->
    eval(Ctx, Code, #{}).

%% @doc {@link eval/2} with local variables.
-spec eval(ctx(), py:code(), map()) -> result().
eval(Ctx, Code, Locals) ->
    eval(Ctx, Code, Locals, infinity).

%% @doc {@link eval/3} with a timeout.
-spec eval(ctx(), py:code(), map(), timeout()) -> result().
eval(Ctx, Code, Locals, Timeout) ->
    py:eval(Ctx, Code, Locals, #{timeout => Timeout, namespace => shared}).

%% @doc {@link eval/4} in the calling process's namespace.
-spec eval(ctx(), py:code(), map(), timeout(), term()) -> result().
eval(Ctx, Code, Locals, Timeout, _EnvRef) ->
    py:eval(Ctx, Code, Locals, #{timeout => Timeout, namespace => process}).

%% @doc Runs statements in the context's shared globals: `ok' or `{error, _}'.
-spec exec(ctx(), py:code()) -> ok | {error, term()}.
exec(Ctx, Code) ->
    py:exec(Ctx, Code, #{namespace => shared}).

%% @doc {@link exec/2} in the calling process's namespace.
-spec exec(ctx(), py:code(), term()) -> ok | {error, term()}.
exec(Ctx, Code, _EnvRef) ->
    py:exec(Ctx, Code, #{namespace => process}).

%% @doc Raises KeyboardInterrupt in what the context runs: `ok', or
%% `not_running' when it runs nothing.
-spec interrupt(ctx()) -> ok | not_running.
interrupt(Ctx) ->
    case py:interrupt(Ctx) of
        ok -> ok;
        _ -> not_running
    end.

%% @doc `start_loop(Ctx, #{})'.
-spec start_loop(ctx()) -> ok | {error, term()}.
start_loop(Ctx) ->
    start_loop(Ctx, #{}).

%% @doc The context's event loop, for `owner' (default the caller). Every
%% pyport worker runs its loop all the time, calls included, so this only
%% takes the loop's ownership: `ok', or `{error, already_running}'. The
%% owner gets `{py_loop_exit, Ctx, {ok, <<"stopped">>}}' at {@link
%% stop_loop/1}; its exit ends the ownership.
-spec start_loop(ctx(), #{owner => pid()}) -> ok | {error, term()}.
start_loop(Ctx, Opts) when is_map(Opts) ->
    case pyport_contexts:check(Ctx) of
        ok -> pyport_contexts:start_loop(Ctx, maps:get(owner, Opts, self()));
        {error, _} = Error -> Error
    end.

%% @doc Ends the loop's ownership: `ok' or `{error, no_loop}'.
-spec stop_loop(ctx()) -> ok | {error, no_loop}.
stop_loop(Ctx) ->
    pyport_contexts:stop_loop(Ctx).

%% @doc {@link stop_loop/1} (nothing needs interrupting: the loop goes on
%% serving the context).
-spec stop_loop(ctx(), non_neg_integer()) -> ok | {error, no_loop}.
stop_loop(Ctx, _GraceMs) ->
    stop_loop(Ctx).

%% @doc The context's loop: `{ok, LoopRef}', usable with `py_event_loop:exec/2'
%% and `eval/2' (it is the context itself).
-spec loop_ref(ctx()) -> {ok, ctx()} | {error, term()}.
loop_ref(Ctx) ->
    case pyport_contexts:check(Ctx) of
        ok -> {ok, Ctx};
        {error, _} = Error -> Error
    end.

%% @doc Schedules `Module.Function(*Args)' on the context's loop: `{ok,
%% TaskRef}'; the outcome comes as `{async_result, TaskRef, Result}'.
-spec submit(ctx(), name(), name(), [term()]) -> {ok, reference()}.
submit(Ctx, Module, Function, Args) ->
    submit(Ctx, Module, Function, Args, #{}).

%% @doc {@link submit/4} with keyword arguments.
-spec submit(ctx(), name(), name(), [term()], map()) -> {ok, reference()}.
submit(Ctx, Module, Function, Args, Kwargs) ->
    {ok, pyport_loops:task(pyport_contexts:ctx_target(Ctx), Module, Function, Args, Kwargs,
                           infinity)}.

%% @doc Submits and waits at most 5000 ms.
-spec submit_await(ctx(), name(), name(), [term()]) -> result().
submit_await(Ctx, Module, Function, Args) ->
    submit_await(Ctx, Module, Function, Args, #{}).

%% @doc {@link submit_await/4} with keyword arguments.
-spec submit_await(ctx(), name(), name(), [term()], map()) -> result().
submit_await(Ctx, Module, Function, Args, Kwargs) ->
    submit_await(Ctx, Module, Function, Args, Kwargs, ?SUBMIT_AWAIT_TIMEOUT).

%% @doc {@link submit_await/5} with a timeout; on `{error, timeout}' the
%% task is cancelled.
-spec submit_await(ctx(), name(), name(), [term()], map(), timeout()) -> result().
submit_await(Ctx, Module, Function, Args, Kwargs, Timeout) ->
    {ok, Ref} = submit(Ctx, Module, Function, Args, Kwargs),
    py_event_loop_pool:await(Ref, Timeout).
