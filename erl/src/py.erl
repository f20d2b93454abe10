%% @doc Run Python from Erlang: the public API, after erlang_python's `py'.
%%
%% Every function answers `{ok, Value}' (or `ok'), a Python exception as
%% `{error, {Type, Message}}', `{error, timeout}', or `{error, {worker_exited,
%% Detail}}' when the worker OS process died under the request. Values
%% convert as described in docs/type-mapping.md. Module and function names
%% may be atoms, binaries or strings; code may be a binary, a string or
%% iodata.
%%
%% Options (`call/5', `spawn_call/5', `eval/3', `cast/5', `exec/2',
%% `parallel/2') are a timeout in milliseconds, `infinity', or a map:
%% <ul>
%% <li>`timeout': milliseconds or `infinity' (default: the pool's
%%   `call_timeout'). When it passes, the Python code is interrupted.</li>
%% <li>`pool': a pool name, or `{cluster, Name}' for the least-loaded node
%%   serving that pool (see docs/pools.md).</li>
%% <li>`shard': any term; every call with the same key goes to the same
%%   worker of the pool, also after that worker restarts.</li>
%% <li>`node': run the call on that node's pool.</li>
%% </ul>
%%
%% Routing without a context: a shard key if given; else the worker the
%% process is bound to ({@link bind/0}); else the pool registered for the
%% module or function ({@link register_pool/2}), its least-loaded worker.
%% `eval' and `exec' without a shard run in the calling process's own
%% namespace on one worker (kept for all its eval/exec, freed when it
%% exits); through a context, in its own namespace on that context's worker
%% (see {@link pyport_namespaces}).
%%
%% A context is a pid (erlang_python's): a pool worker's, from {@link
%% context/0,1} or {@link start_contexts/0,1}, or a dedicated one from
%% `py_context:new/1'. Calls through a context wait without limit unless
%% given a timeout; their options map is erlang_python's (`kwargs',
%% `timeout'); `call(Pool, M, F, Args)' and `call(Pool, M, F, Args, Kwargs)'
%% run on a named pool.
%%
%% ```
%% {ok, 4.0} = py:call(math, sqrt, [16]),
%% {ok, 25} = py:eval(<<"x * y">>, #{x => 5, y => 5}),
%% Ctx = py:context(1),
%% ok = py:exec(Ctx, <<"def inc(x):\n    return x + 1\n">>),
%% {ok, 42} = py:call(Ctx, '__main__', inc, [41], #{timeout => 5000}),
%% {ok, 4.0} = py:call(default, math, sqrt, [16]).
%% '''
-module(py).

-export([call/3, call/4, call/5, call/6,
         cast/3, cast/4, cast/5,
         eval/1, eval/2, eval/3, eval/4,
         exec/1, exec/2, exec/3,
         spawn_call/3, spawn_call/4, spawn_call/5,
         await/1, await/2, interrupt/1,
         async_call/3, async_call/4, async_await/1, async_await/2,
         async_gather/1, async_gather/2,
         stream/3, stream/4, stream/5, stream_eval/1, stream_eval/2, stream_eval/3,
         stream_start/3, stream_start/4, stream_cancel/1,
         parallel/1, parallel/2,
         context/0, context/1, context/2, context_slot/1,
         bind/0, bind/1, unbind/0, unbind/1, is_bound/0, is_bound/1,
         reload/1, reload/2, memory_stats/0, memory_stats/1, gc/0, gc/1, gc/2,
         version/0]).
%% erlang_python's contexts and pool registrations (pyport_contexts).
-export([start_contexts/0, start_contexts/1, stop_contexts/0, contexts_started/0,
         register_pool/2, unregister_pool/1, execution_mode/0, subinterp_supported/0]).
%% Objects kept in the worker: the section at the end of the file.
-export([call_method/3, call_method/4, getattr/2, to_term/1, is_ref/1, release/1]).
%% Erlang for Python: registered functions, shared state, pub/sub, logging
%% and tracing (docs/erlang-integration.md).
-export([register_function/2, register_function/3, unregister_function/1,
         state_store/2, state_fetch/1, state_remove/1, state_keys/0, state_clear/0,
         state_incr/1, state_incr/2, state_decr/1, state_decr/2,
         subscribe/1, unsubscribe/1, publish/2,
         configure_logging/0, configure_logging/1,
         enable_tracing/0, disable_tracing/0, get_traces/0, clear_traces/0]).

%% Channels, buffers, shared state, imports and venvs (section at the end).
-export([shared_dict_new/0, shared_dict_get/2, shared_dict_get/3, shared_dict_set/3,
         shared_dict_del/2, shared_dict_keys/1, shared_dict_destroy/1,
         ensure_venv/2, ensure_venv/3, activate_venv/1, deactivate_venv/0, venv_info/0,
         tracemalloc_start/0, tracemalloc_start/1, tracemalloc_stop/0, dup_fd/1]).

-export_type([context/0, handle/0, name/0, code/0, opts/0, result/0,
              async_ref/0, stream_ref/0, stream_opts/0]).

-define(DEFAULT_POOL, default).

%% The context record and the IS_CTX guard (shared with pyport_contexts).
-include("pyport_ctx.hrl").

%% A context: a pid (a worker's gen_server, or a dedicated context from
%% py_context:new/1), or the record older pyport code got from context/1,2.
-type context() :: pid() | #pyport_ctx{}.
-type handle() :: pyport_request:handle().
-type name() :: atom() | binary() | string().
-type code() :: binary() | string() | iodata().
-type opts() :: timeout() | #{timeout => timeout(),
                               pool => atom() | {cluster, atom()},
                               shard => term(),
                               node => node()}.
-type result() :: {ok, term()} | {error, term()}.
%% Options through a context: erlang_python ignores keys it does not know.
-type ctx_opts() :: timeout() | #{timeout => timeout() | default,
                                  namespace => process | shared, atom() => term()}.
-type async_ref() :: pyport_async:ref().
-type stream_ref() :: pyport_async:stream_ref().
-type call_spec() :: {name(), name(), [term()]} | {name(), name(), [term()], map()}.
-type stream_opts() :: #{pool => atom(), timeout => timeout(),
                         max_items => pos_integer() | infinity,
                         max_bytes => pos_integer() | infinity}.

%%%===================================================================
%%% Calls
%%%===================================================================

%% @doc Calls `Module.Function(*Args)' in the least-loaded worker.
-spec call(name(), name(), [term()]) -> result().
call(Module, Function, Args) ->
    call(Module, Function, Args, #{}, #{}).

%% @doc `call(M, F, Args, Kwargs)': with keyword arguments (a map with atom
%% or binary keys); `call(Ctx, M, F, Args)': through a context, no timeout
%% (as erlang_python); `call(Pool, M, F, Args)': on pool `Pool'. The third
%% argument tells them apart: a function name (atom or binary) there is the
%% pool form, a list the arguments of `call(M, F, Args, Kwargs)'.
-spec call(context() | name(), name(), [term()] | name(), map() | [term()]) -> result().
call(Ctx, Module, Function, Args) when ?IS_CTX(Ctx) ->
    call(Ctx, Module, Function, Args, #{}, infinity);
call(Pool, Module, Function, Args) when is_atom(Pool), is_atom(Function) orelse is_binary(Function),
                                        is_list(Args) ->
    call(Module, Function, Args, #{}, #{pool => Pool});
call(Module, Function, Args, Kwargs) ->
    call(Module, Function, Args, Kwargs, #{}).

%% @doc `call(M, F, Args, Kwargs, Opts)': with options (a timeout or a map);
%% `call(Ctx, M, F, Args, Opts)': through a context, `Opts' a map read as
%% erlang_python reads it (`kwargs', default `#{}'; `timeout', default
%% `infinity'; other keys ignored) or a timeout; `call(Pool, M, F, Args,
%% Kwargs)': on pool `Pool'. A context-less call without a `pool' option
%% goes to the pool registered for its module or function ({@link
%% register_pool/2}), else `default'.
-spec call(context() | name(), name(), [term()] | name(), map() | [term()],
           opts() | map()) -> result().
call(Ctx, Module, Function, Args, Opts) when ?IS_CTX(Ctx), is_map(Opts) ->
    call(Ctx, Module, Function, Args, maps:get(kwargs, Opts, #{}), maps:remove(kwargs, Opts));
call(Ctx, Module, Function, Args, Timeout) when ?IS_CTX(Ctx) ->
    call(Ctx, Module, Function, Args, #{}, Timeout);
call(Pool, Module, Function, Args, Kwargs) when is_atom(Pool), is_atom(Function) orelse is_binary(Function),
                                                is_list(Args), is_map(Kwargs) ->
    call(Module, Function, Args, Kwargs, #{pool => Pool});
call(Module, Function, Args, Kwargs, Opts) ->
    pyport_call:call(Module, Function, Args, Kwargs, Opts).

%% @doc Calls through a context, with keyword arguments and options (a
%% timeout, default `infinity', or a map with `timeout' (also `default':
%% the pool's `call_timeout'), the conversion options of {@link
%% pyport_objects} and `namespace':
%% where `'__main__'' is looked up, `process' (default, the caller's
%% {@link exec/2} namespace) or `shared' (the context's shared globals)).
-spec call(context(), name(), name(), [term()], map(), ctx_opts()) -> result().
call(Ctx, Module, Function, Args, Kwargs, Opts) when ?IS_CTX(Ctx) ->
    pyport_call:ctx_call(Ctx, Module, Function, Args, Kwargs, Opts).

%% @doc Calls `Module.Function(*Args)' without waiting for the result;
%% `cast(Ctx, M, F, Args)' through a context. An exception is logged.
-spec cast(context() | name(), name(), [term()] | name(), map() | [term()]) ->
          ok | {error, term()}.
cast(Ctx, Module, Function, Args) when ?IS_CTX(Ctx) ->
    cast(Ctx, Module, Function, Args, #{});
cast(Module, Function, Args, Kwargs) ->
    cast(Module, Function, Args, Kwargs, #{}).

%% @doc `cast(M, F, Args, Kwargs, Opts)': a cast with options (`pool',
%% `shard', `node'; a timeout is not used); `cast(Ctx, M, F, Args, Kwargs)':
%% through a context.
-spec cast(context() | name(), name(), [term()] | name(), map() | [term()], opts() | map()) ->
          ok | {error, term()}.
cast(Ctx, Module, Function, Args, Kwargs) when ?IS_CTX(Ctx) ->
    pyport_call:ctx_cast(Ctx, Module, Function, Args, Kwargs);
cast(Module, Function, Args, Kwargs, Opts) ->
    pyport_call:cast(Module, Function, Args, Kwargs, Opts).

%% @doc Calls `Module.Function(*Args)' without waiting for the result.
-spec cast(name(), name(), [term()]) -> ok | {error, term()}.
cast(Module, Function, Args) ->
    cast(Module, Function, Args, #{}).

%%%===================================================================
%%% Asynchronous calls
%%%===================================================================

%% @doc Starts a call and returns a reference at once; the result arrives
%% as the message `{py_response, Ref, Result}' ({@link await/1,2} waits for
%% it, in the same process). The worker's gen_server sends the message
%% itself: no process per call (see {@link pyport_spawn}).
-spec spawn_call(name(), name(), [term()]) -> reference().
spawn_call(Module, Function, Args) ->
    spawn_call(Module, Function, Args, #{}, #{}).

%% @doc `spawn_call(M, F, Args, Kwargs)' or `spawn_call(Ctx, M, F, Args)'.
-spec spawn_call(context() | name(), name(), [term()] | name(), map() | [term()]) ->
          reference().
spawn_call(Ctx, Module, Function, Args) when ?IS_CTX(Ctx) ->
    spawn_call(Ctx, Module, Function, Args, #{});
spawn_call(Module, Function, Args, Kwargs) ->
    spawn_call(Module, Function, Args, Kwargs, #{}).

%% @doc `spawn_call(M, F, Args, Kwargs, Opts)' or `spawn_call(Ctx, M, F,
%% Args, Kwargs)'. The timeout in `Opts' is the deadline of the request
%% (default: the pool's `call_timeout'; through a context `infinity').
-spec spawn_call(context() | name(), name(), [term()] | name(), map() | [term()],
                 opts() | map()) -> reference().
spawn_call(Ctx, Module, Function, Args, Kwargs) when ?IS_CTX(Ctx) ->
    pyport_call:ctx_spawn(Ctx, Module, Function, Args, Kwargs);
spawn_call(Module, Function, Args, Kwargs, Opts) ->
    pyport_call:spawn(Module, Function, Args, Kwargs, Opts).

%% @doc Waits for the result of a {@link spawn_call/3} until its deadline.
%% A call is awaited once, by the process that made it.
-spec await(reference() | handle()) -> result().
await(Ref) when is_reference(Ref) ->
    pyport_spawn:await(Ref, deadline);
await(Handle) ->
    pyport_request:await(Handle).

%% @doc Waits at most `Timeout' ms for the result of a {@link spawn_call/3}.
%% After `{error, timeout}' the call is abandoned and interrupted.
-spec await(reference() | handle(), timeout()) -> result().
await(Ref, Timeout) when is_reference(Ref), Timeout =:= infinity;
                         is_reference(Ref), is_integer(Timeout), Timeout >= 0 ->
    pyport_spawn:await(Ref, Timeout);
await(Handle, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    pyport_request:await(Handle, Timeout).

%% @doc `interrupt(Ctx)': raises KeyboardInterrupt in the calls running on
%% that context now: `ok', or `not_running' if none runs. `interrupt(Ref)':
%% in the call started by {@link spawn_call/3} (`ok', also when it has
%% finished). The interrupted call then answers for itself, usually
%% `{error, {KeyboardInterrupt, Message}}', or `{error, {worker_exited,
%% {interrupt_timeout, Ms}}}' if the code could not be interrupted within
%% the pool's `kill_after' and the worker was replaced.
-spec interrupt(context() | reference() | handle()) -> ok | not_running | {error, term()}.
interrupt(Ctx) when ?IS_CTX(Ctx) ->
    pyport_contexts:interrupt(Ctx);
interrupt(Ref) when is_reference(Ref) ->
    case pyport_spawn:is_spawn(Ref) of
        true -> pyport_spawn:interrupt(Ref);
        false -> pyport_async:interrupt(Ref)
    end;
interrupt(Handle) ->
    pyport_request:interrupt(Handle).

%% @doc Runs the calls spread over the default pool's workers, all at once:
%% `{ok, Values}' in the order of `Calls', or the first error in that order
%% (as erlang_python).
-spec parallel([{name(), name(), [term()]} | {name(), name(), [term()], map()}]) ->
          {ok, [term()]} | {error, term()}.
parallel(Calls) ->
    pyport_call:parallel(Calls).

%% @doc {@link parallel/1} with options (`pool', `timeout': the deadline of
%% every call), answering every call's outcome: `{ok, [{ok, Value} |
%% {error, Reason}]}'.
-spec parallel([{name(), name(), [term()]} | {name(), name(), [term()], map()}], opts()) ->
          {ok, [result()]} | {error, term()}.
parallel(Calls, Opts) when is_list(Calls) ->
    pyport_call:parallel(Calls, Opts).

%%%===================================================================
%%% Coroutines
%%%===================================================================

%% @doc Starts `Module.Function(*Args)' and returns a reference at once; for
%% a coroutine function it runs as a task on the worker's event loop,
%% concurrently with other tasks. The outcome arrives as `{async_result,
%% Ref, Result}' ({@link async_await/1,2} waits for it).
-spec async_call(name(), name(), [term()]) -> async_ref().
async_call(Module, Function, Args) ->
    async_call(Module, Function, Args, #{}).

%% @doc {@link async_call/3} with keyword arguments.
-spec async_call(name(), name(), [term()], map()) -> async_ref().
async_call(Module, Function, Args, Kwargs) ->
    pyport_loops:async_call(Module, Function, Args, Kwargs).

%% @doc Waits for the result of an {@link async_call/3} until its deadline
%% (the pool's `call_timeout', 30000 ms by default). Giving up cancels the
%% task in the worker.
-spec async_await(async_ref()) -> result().
async_await(Ref) ->
    pyport_async:await(async_result, Ref, deadline).

%% @doc Waits at most `Timeout' ms for the result of an {@link
%% async_call/3}; on `{error, timeout}' the task is cancelled in the worker.
-spec async_await(async_ref(), timeout()) -> result().
async_await(Ref, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    pyport_async:await(async_result, Ref, Timeout).

%% @doc Runs calls (`{M, F, Args}' or `{M, F, Args, Kwargs}') concurrently,
%% each awaited at most 30000 ms: `{ok, Values}' in the order of `Calls',
%% or `{error, {gather_failed, [{Index, Reason}]}}' naming every call that
%% failed (1-based, in order).
-spec async_gather([call_spec()]) -> {ok, [term()]} | {error, {gather_failed, [{pos_integer(), term()}]}}.
async_gather(Calls) ->
    async_gather(Calls, 30000).

%% @doc {@link async_gather/1} awaiting each call at most `Timeout' ms.
-spec async_gather([call_spec()], timeout()) ->
          {ok, [term()]} | {error, {gather_failed, [{pos_integer(), term()}]}}.
async_gather(Calls, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    pyport_loops:async_gather(Calls, Timeout).

%%%===================================================================
%%% Streams
%%%===================================================================

%% @doc Collects the items of `Module.Function(*Args)': a generator, an
%% async generator, or any (async) iterable; also a coroutine whose value
%% is one. `{ok, Items}' or `{error, Reason}'. Collection is bounded (see
%% {@link stream/5}); {@link stream_start/3} streams without collecting.
-spec stream(name(), name(), [term()]) -> result().
stream(Module, Function, Args) ->
    stream(Module, Function, Args, #{}).

%% @doc {@link stream/3} with keyword arguments.
-spec stream(name(), name(), [term()], map()) -> result().
stream(Module, Function, Args, Kwargs) ->
    stream(Module, Function, Args, Kwargs, #{}).

%% @doc {@link stream/4} with options: `pool'; `timeout', the longest wait
%% for the next item (default: the pool's `call_timeout'); `max_items'
%% (default 1000000) and `max_bytes' (default: the pool's
%% `max_frame_size'; the items' `erlang:external_size/1' summed), each a
%% positive integer or `infinity'. Past a limit the generator is closed in
%% the worker and the answer is `{error, {stream_too_large, Key, Limit}}'.
-spec stream(name(), name(), [term()], map(), stream_opts()) -> result().
stream(Module, Function, Args, Kwargs, Opts) ->
    pyport_stream:collect_call(Module, Function, Args, Kwargs, Opts).

%% @doc Collects the items of a Python expression's value, e.g. a generator
%% expression: `py:stream_eval(<<"(x * x for x in range(4))">>)'.
-spec stream_eval(code()) -> result().
stream_eval(Code) ->
    stream_eval(Code, #{}).

%% @doc {@link stream_eval/1} with local variables.
-spec stream_eval(code(), map()) -> result().
stream_eval(Code, Locals) ->
    stream_eval(Code, Locals, #{}).

%% @doc {@link stream_eval/2} with the options of {@link stream/5}.
-spec stream_eval(code(), map(), stream_opts()) -> result().
stream_eval(Code, Locals, Opts) when is_map(Locals) ->
    pyport_stream:collect_eval(Code, Locals, Opts).

%% @doc Starts a stream whose items arrive as messages to the calling
%% process: `{py_stream, Ref, {data, Item}}' for each, then `{py_stream, Ref,
%% done}' or `{py_stream, Ref, {error, Reason}}'. A consumer that falls
%% behind suspends the Python producer (credit-based flow control).
-spec stream_start(name(), name(), [term()]) -> {ok, stream_ref()} | {error, term()}.
stream_start(Module, Function, Args) ->
    stream_start(Module, Function, Args, #{}).

%% @doc {@link stream_start/3} with options: `kwargs' (a map), `pool', and
%% `owner' (the process the messages go to; default the caller).
-spec stream_start(name(), name(), [term()], map()) -> {ok, stream_ref()} | {error, term()}.
stream_start(Module, Function, Args, Opts) when is_map(Opts) ->
    pyport_stream:start(Module, Function, Args, Opts).

%% @doc Stops a stream started by {@link stream_start/3,4}: its producer is
%% cancelled in the worker and its owner gets `{py_stream, Ref, {error,
%% <<"cancelled">>}}' as its last message; items already delivered stay in
%% the owner's mailbox (as erlang_python).
-spec stream_cancel(stream_ref()) -> ok.
stream_cancel(Ref) ->
    pyport_async:stream_cancel(Ref).

%%%===================================================================
%%% Code
%%%===================================================================

%% @doc Evaluates one Python expression.
-spec eval(code()) -> result().
eval(Code) ->
    eval(Code, none, #{}).

%% @doc `eval(Code, Locals)': with local variables (a map); `eval(Ctx, Code)':
%% through a context.
-spec eval(context() | code(), map() | code()) -> result().
eval(Ctx, Code) when ?IS_CTX(Ctx) ->
    eval(Ctx, Code, none, infinity);
eval(Code, Locals) when is_map(Locals) ->
    eval(Code, Locals, #{}).

%% @doc `eval(Code, Locals, Opts)': with a timeout or options; `eval(Ctx,
%% Code, Locals)': through a context.
-spec eval(context() | code(), map() | none | code(), opts() | map()) -> result().
eval(Ctx, Code, Locals) when ?IS_CTX(Ctx) ->
    eval(Ctx, Code, Locals, infinity);
eval(Code, Locals, Opts) when is_map(Locals); Locals =:= none ->
    pyport_eval:eval(Code, Locals, Opts).

%% @doc Evaluates an expression through a context, with a timeout (default
%% `infinity') or options: `timeout', and `namespace': `process' (the
%% default: the calling process's own globals on that context, as
%% erlang_python's `py:eval/2,3') or `shared' (the context's shared
%% globals, as `py_context:eval').
-spec eval(context(), code(), map() | none, ctx_opts()) -> result().
eval(Ctx, Code, Locals, Opts) when ?IS_CTX(Ctx), is_map(Locals) orelse Locals =:= none ->
    pyport_eval:ctx_eval(Ctx, Code, Locals, Opts).

%% @doc Runs Python statements in the calling process's namespace: a later
%% {@link eval/1} from the same process sees the names they define.
-spec exec(code()) -> ok | {error, term()}.
exec(Code) ->
    exec(Code, #{}).

%% @doc `exec(Ctx, Code)': through a context (a later {@link eval/2} on the
%% same context sees the names); `exec(Code, Opts)': with options.
-spec exec(context() | code(), code() | opts()) -> ok | {error, term()}.
exec(Ctx, Code) when ?IS_CTX(Ctx) ->
    exec(Ctx, Code, infinity);
exec(Code, Opts) ->
    pyport_eval:exec(Code, Opts).

%% @doc Runs Python statements through a context, in the calling process's
%% own globals there (or the shared ones: options as {@link eval/4}).
-spec exec(context(), code(), ctx_opts()) -> ok | {error, term()}.
exec(Ctx, Code, Opts) when ?IS_CTX(Ctx) ->
    pyport_eval:ctx_exec(Ctx, Code, Opts).

%%%===================================================================
%%% Contexts and information
%%%===================================================================

%% @doc The context of the calling process: the pid of the same worker of
%% the default pool every time for the same process (the one it is bound
%% to, else one chosen by the process's pid).
-spec context() -> pid().
context() ->
    pyport_contexts:caller_context(?DEFAULT_POOL).

%% @doc Context `N' (1-based) of the default pool: one worker, and so one
%% interpreter.
-spec context(pos_integer()) -> pid().
context(N) when is_integer(N), N >= 1 ->
    context(?DEFAULT_POOL, N).

%% @doc Context `N' (1-based) of pool `Pool'.
-spec context(atom(), pos_integer()) -> pid().
context(Pool, N) when is_atom(Pool), is_integer(N), N >= 1 ->
    pyport_contexts:context(Pool, N).

%% @doc The pool and slot a context routes to.
-spec context_slot(context()) -> {atom(), pos_integer()}.
context_slot(Ctx) ->
    try pyport_contexts:ctx_slot(Ctx) catch throw:{error, Reason} -> erlang:error(Reason) end.

%% @doc `start_contexts(#{})'.
-spec start_contexts() -> {ok, [pid()]} | {error, term()}.
start_contexts() ->
    start_contexts(#{}).

%% @doc Starts pool `default' (if it does not run) with `contexts' workers
%% (default: the number of schedulers; `mode' `worker' or `owngil' is
%% accepted: every worker is its own interpreter anyway): `{ok, Contexts}',
%% the pids of its workers, or `{error, {context_start_failed, default, N,
%% Reason}}'. A running pool is returned as it is.
-spec start_contexts(#{contexts => pos_integer(), mode => worker | owngil}) ->
          {ok, [pid()]} | {error, term()}.
start_contexts(Opts) when is_map(Opts) ->
    pyport_contexts:start_pool(?DEFAULT_POOL, maps:get(contexts, Opts, default)).

%% @doc Stops pool `default': `ok'.
-spec stop_contexts() -> ok.
stop_contexts() ->
    pyport_contexts:stop(?DEFAULT_POOL).

%% @doc Whether pool `default' runs.
-spec contexts_started() -> boolean().
contexts_started() ->
    pyport_contexts:started(?DEFAULT_POOL).

%% @doc Context-less `call/3,4,5' (and `spawn_call', `async_call') of
%% `Module', or of `{Module, Function}', go to pool `Pool'; a function's
%% registration wins over its module's. `ok'.
-spec register_pool(atom(), name() | {name(), name()}) -> ok.
register_pool(Pool, Target) when is_atom(Pool) ->
    pyport_contexts:register_pool(Pool, Target).

%% @doc Removes a registration of {@link register_pool/2}: `ok'.
-spec unregister_pool(name() | {name(), name()}) -> ok.
unregister_pool(Target) ->
    pyport_contexts:unregister_pool(Target).

%% @doc `owngil': every context is a worker OS process with its own
%% interpreter and GIL, so contexts run in parallel and share no Python
%% state, which is what erlang_python's `owngil' mode promises.
-spec execution_mode() -> owngil.
execution_mode() ->
    owngil.

%% @doc `true': the isolation erlang_python gets from subinterpreters
%% (an interpreter and GIL per context) every pyport context has, on any
%% Python version, as a process of its own.
-spec subinterp_supported() -> true.
subinterp_supported() ->
    true.

%% @doc Binds the calling process to one worker of the default pool: every
%% call, eval and exec of the process goes there until {@link unbind/0} or
%% the process exits, so Python state it creates stays reachable.
-spec bind() -> ok | {error, term()}.
bind() ->
    bind(?DEFAULT_POOL).

%% @doc Binds the calling process to one worker of `Pool'.
-spec bind(atom()) -> ok | {error, term()}.
bind(Pool) when is_atom(Pool) ->
    pyport_affinity:bind(Pool).

%% @doc Ends the binding to the default pool and frees the process's
%% namespace there.
-spec unbind() -> ok.
unbind() ->
    unbind(?DEFAULT_POOL).

%% @doc Ends the binding to `Pool' and frees the process's namespace there.
-spec unbind(atom()) -> ok.
unbind(Pool) when is_atom(Pool) ->
    pyport_affinity:unbind(Pool).

%% @doc Whether the calling process is bound to a worker of the default pool.
-spec is_bound() -> boolean().
is_bound() ->
    is_bound(?DEFAULT_POOL).

%% @doc Whether the calling process is bound to a worker of `Pool'.
-spec is_bound(atom()) -> boolean().
is_bound(Pool) ->
    pyport_affinity:bound_slot(Pool) =/= undefined.

%% @doc Reloads `Module' in every worker of the default pool.
-spec reload(name()) -> ok | {error, [{pos_integer(), term()}]}.
reload(Module) ->
    reload(Module, #{}).

%% @doc Reloads `Module' in every worker of a pool (`#{pool => Name}'), one
%% worker after another. A worker that has not imported it has nothing to
%% do (it imports the new code when asked). A module that cannot be
%% re-run in a process (a C extension) is reloaded by recycling the
%% worker, gracefully, one at a time, so the pool keeps serving. Errors
%% (the new code raises) are returned per slot; those workers keep the old
%% code.
-spec reload(name(), opts()) -> ok | {error, term()}.
reload(Module, Opts) ->
    pyport_control:reload(Module, Opts).

%% @doc Memory statistics of the calling process's context (see {@link
%% context/0}), as erlang_python gives them: `{ok, #{gc_stats, gc_count,
%% gc_threshold}}' (`gc_count' and `gc_threshold' tuples; plus
%% `traced_memory_current' and `traced_memory_peak' while tracemalloc
%% traces), and pyport's `rss_bytes', `max_rss_bytes', `gc_enabled' and
%% `namespaces' (how many eval/exec namespaces the worker holds).
-spec memory_stats() -> {ok, #{atom() => term()}} | {error, term()}.
memory_stats() ->
    memory_stats(context()).

%% @doc `memory_stats(Ctx)': {@link memory_stats/0} of that context;
%% `memory_stats(Opts)': of every worker of a pool (`#{pool => Name}'),
%% by slot, as the worker reports them (binary keys).
-spec memory_stats(context() | opts()) ->
          {ok, #{atom() => term()} | #{pos_integer() => map() | {error, term()}}} |
          {error, term()}.
memory_stats(Ctx) when ?IS_CTX(Ctx) ->
    pyport_control:ctx_memory_stats(Ctx);
memory_stats(Opts) ->
    pyport_control:each_worker(<<"memory_stats">>, none, Opts).

%% @doc Runs Python's garbage collector in the calling process's context:
%% `{ok, Unreachable}', the number of unreachable objects found.
-spec gc() -> {ok, non_neg_integer()} | {error, term()}.
gc() ->
    pyport_control:ctx_gc(context(), none).

%% @doc `gc(Generation)' (0, 1 or 2) in the calling process's context;
%% `gc(Opts)': in every worker of a pool, by slot.
-spec gc(0..2 | opts()) ->
          {ok, non_neg_integer() | #{pos_integer() => non_neg_integer() | {error, term()}}} |
          {error, term()}.
gc(Generation) when is_integer(Generation) ->
    pyport_control:ctx_gc(context(), Generation);
gc(Opts) ->
    pyport_control:each_worker(<<"gc">>, none, Opts).

%% @doc One generation, in every worker of a pool.
-spec gc(0..2, opts()) ->
          {ok, #{pos_integer() => non_neg_integer() | {error, term()}}} | {error, term()}.
gc(Generation, Opts) when is_integer(Generation) ->
    pyport_control:each_worker(<<"gc">>, Generation, Opts).

%% @doc The Python version of the default pool's workers, e.g. `<<"3.11.2">>'.
-spec version() -> {ok, binary()} | {error, term()}.
version() ->
    pyport_control:version(?DEFAULT_POOL).

%%%===================================================================
%%% Erlang for Python
%%%===================================================================

%% @doc Makes `Fun' callable from Python as `erlang.call(Name, ...)' or
%% `erlang.Name(...)'; it receives Python's arguments as one list.
-spec register_function(name(), fun(([term()]) -> term())) -> ok | {error, term()}.
register_function(Name, Fun) ->
    pyport_registry:register(Name, Fun).

%% @doc Makes `Module:Function(Args)' callable from Python as `Name'.
-spec register_function(name(), module(), atom()) -> ok | {error, term()}.
register_function(Name, Module, Function) ->
    pyport_registry:register(Name, Module, Function).

%% @doc Python can no longer call `Name'.
-spec unregister_function(name()) -> ok | {error, term()}.
unregister_function(Name) ->
    pyport_registry:unregister(Name).

%% @doc Stores `Value' under `Key' in the shared state (Python's
%% `state_set'; Python's string keys are binaries here).
-spec state_store(term(), term()) -> ok | {error, {state_full, pos_integer()}}.
state_store(Key, Value) ->
    pyport_state:store(Key, Value).

%% @doc The value under `Key' in the shared state.
-spec state_fetch(term()) -> {ok, term()} | {error, not_found}.
state_fetch(Key) ->
    pyport_state:fetch(Key).

%% @doc Removes `Key' from the shared state.
-spec state_remove(term()) -> ok.
state_remove(Key) ->
    pyport_state:remove(Key).

%% @doc Every key of the shared state.
-spec state_keys() -> [term()].
state_keys() ->
    pyport_state:keys().

%% @doc Empties the shared state.
-spec state_clear() -> ok.
state_clear() ->
    pyport_state:clear().

%% @doc Adds 1 to the counter `Key' (missing counts as 0); the new value.
-spec state_incr(term()) -> integer() | {error, term()}.
state_incr(Key) ->
    state_incr(Key, 1).

%% @doc Adds `N' to the counter `Key' atomically; the new value, or an
%% error when the value is not an integer or the table is full.
-spec state_incr(term(), integer()) -> integer() | {error, term()}.
state_incr(Key, N) when is_integer(N) ->
    case pyport_state:incr(Key, N) of
        {ok, V} -> V;
        {error, _} = Error -> Error
    end.

%% @doc Subtracts 1 from the counter `Key'.
-spec state_decr(term()) -> integer() | {error, term()}.
state_decr(Key) ->
    state_incr(Key, -1).

%% @doc Subtracts `N' from the counter `Key'.
-spec state_decr(term(), integer()) -> integer() | {error, term()}.
state_decr(Key, N) when is_integer(N) ->
    state_incr(Key, -N).

%% @doc Subscribes the calling process to `Topic': it receives `{pubsub,
%% Topic, Msg}' for everything published there, from Erlang or Python, on
%% any node. Atoms and strings are topics as binaries.
-spec subscribe(term()) -> ok.
subscribe(Topic) ->
    pyport_pubsub:subscribe(Topic).

%% @doc Ends one subscription of the calling process to `Topic'.
-spec unsubscribe(term()) -> ok | not_joined.
unsubscribe(Topic) ->
    pyport_pubsub:unsubscribe(Topic).

%% @doc Sends `{pubsub, Topic, Msg}' to every subscriber of `Topic'; the
%% number of subscriptions reached.
-spec publish(term(), term()) -> non_neg_integer().
publish(Topic, Msg) ->
    pyport_pubsub:publish(Topic, Msg).

%% @doc `configure_logging(#{})'.
-spec configure_logging() -> ok | {error, term()}.
configure_logging() ->
    configure_logging(#{}).

%% @doc Python `logging' records of every worker, at `level' (a logger
%% level, default `info') and above, go to the Erlang `logger'.
-spec configure_logging(#{level => logger:level()}) -> ok | {error, term()}.
configure_logging(Opts) ->
    pyport_logging:configure(Opts).

%% @doc Keeps the spans Python code records (`erlang.Span', `@erlang.trace').
-spec enable_tracing() -> ok.
enable_tracing() ->
    pyport_trace:enable().

%% @doc Stops keeping spans.
-spec disable_tracing() -> ok.
disable_tracing() ->
    pyport_trace:disable().

%% @doc The spans kept, oldest first, as erlang_python gives them: `{ok,
%% [Span]}' (see {@link pyport_trace:compat_spans/0} for the keys).
-spec get_traces() -> {ok, [map()]}.
get_traces() ->
    {ok, pyport_trace:compat_spans()}.

%% @doc Forgets the spans kept.
-spec clear_traces() -> ok.
clear_traces() ->
    pyport_trace:clear().


%% ---- channels, buffers, shared state, imports and venvs (docs/channels.md) ----

%% @doc A dict shared by Erlang and every worker (`erlang.SharedDict(h)'
%% in Python), owned by the caller: freed when it exits.
-spec shared_dict_new() -> {ok, pyport_shared_dict:handle()} | {error, term()}.
shared_dict_new() ->
    pyport_shared_dict:new(#{}).

%% @doc The value of a binary key, or `undefined'.
-spec shared_dict_get(pyport_shared_dict:handle(), binary()) -> term().
shared_dict_get(Dict, Key) ->
    pyport_shared_dict:get(Dict, Key, undefined).

-spec shared_dict_get(pyport_shared_dict:handle(), binary(), term()) -> term().
shared_dict_get(Dict, Key, Default) ->
    pyport_shared_dict:get(Dict, Key, Default).

%% @doc `{error, {shared_dict_full, entries | bytes, Max}}' past its limits.
-spec shared_dict_set(pyport_shared_dict:handle(), binary(), term()) -> ok | {error, term()}.
shared_dict_set(Dict, Key, Value) ->
    pyport_shared_dict:set(Dict, Key, Value).

-spec shared_dict_del(pyport_shared_dict:handle(), binary()) -> ok.
shared_dict_del(Dict, Key) ->
    pyport_shared_dict:del(Dict, Key).

-spec shared_dict_keys(pyport_shared_dict:handle()) -> [binary()].
shared_dict_keys(Dict) ->
    pyport_shared_dict:keys(Dict).

%% @doc Frees it now (idempotent); later use raises `badarg'.
-spec shared_dict_destroy(pyport_shared_dict:handle()) -> ok.
shared_dict_destroy(Dict) ->
    pyport_shared_dict:destroy(Dict).

%% @doc Makes a venv (Debian's `python3 -m venv') unless it exists,
%% installs `Req' offline only, and activates it for the default pool.
-spec ensure_venv(unicode:chardata(), term()) -> ok | {error, term()}.
ensure_venv(Path, Req) ->
    pyport_venv:ensure(Path, Req, []).

%% @doc With options: `{python, Exe}', `force', `{installer, pip | uv}',
%% `{extras, [Name]}', `{find_links, WheelDir}'.
-spec ensure_venv(unicode:chardata(), term(), list()) -> ok | {error, term()}.
ensure_venv(Path, Req, Opts) ->
    pyport_venv:ensure(Path, Req, Opts).

%% @doc Activates a venv in every worker of the default pool, now and in
%% those started later.
-spec activate_venv(unicode:chardata()) -> ok | {error, {invalid_venv, term()}}.
activate_venv(Path) ->
    pyport_venv:activate(?DEFAULT_POOL, Path).

-spec deactivate_venv() -> ok.
deactivate_venv() ->
    pyport_venv:deactivate(?DEFAULT_POOL).

%% @doc `{ok, #{<<"active">> => true, <<"venv_path">>, <<"site_packages">>,
%% <<"sys_path">>}}' or `{ok, #{<<"active">> => false}}'.
-spec venv_info() -> {ok, map()} | {error, term()}.
venv_info() ->
    pyport_venv:info(?DEFAULT_POOL).

%% @doc Starts `tracemalloc' in every worker of the default pool.
-spec tracemalloc_start() -> ok | {error, term()}.
tracemalloc_start() ->
    tracemalloc_start(1).

-spec tracemalloc_start(pos_integer()) -> ok | {error, term()}.
tracemalloc_start(NFrames) ->
    pyport_control:tracemalloc_start(?DEFAULT_POOL, NFrames).

-spec tracemalloc_stop() -> ok | {error, term()}.
tracemalloc_stop() ->
    pyport_control:tracemalloc_stop(?DEFAULT_POOL).

%% @doc Not provided: a descriptor of the node is not one of a worker,
%% which is another OS process.
-spec dup_fd(integer()) -> {error, {not_supported, binary()}}.
dup_fd(_Fd) ->
    {error, {not_supported, <<"dup_fd: workers are separate OS processes; a descriptor of the "
                              "node means nothing in them (pass a socket path or a port number "
                              "to Python instead)">>}}.

%% ---- objects kept in the worker (pyport_objects) ----

%% @doc `Obj.Method(*Args)' in the worker that holds `Obj' (a handle from
%% `py:call(..., #{return => ref})'); the result converted.
-spec call_method(pyport_objects:ref(), name(), [term()]) -> result().
call_method(Ref, Method, Args) ->
    call_method(Ref, Method, Args, #{}).

%% @doc {@link call_method/3} with options: `kwargs' (a map), and those of
%% {@link call/5} (`return => ref' keeps the result in the worker too,
%% `timeout', `str_fallback', `numpy', `traceback').
-spec call_method(pyport_objects:ref(), name(), [term()], map()) -> result().
call_method(Ref, Method, Args, Opts) when is_list(Args), is_map(Opts) ->
    pyport_objects:call_method(Ref, Method, Args, Opts).

%% @doc `getattr(Obj, Name)', converted.
-spec getattr(pyport_objects:ref(), name()) -> result().
getattr(Ref, Name) ->
    pyport_objects:getattr(Ref, Name).

%% @doc The object itself, converted to a term.
-spec to_term(pyport_objects:ref()) -> result().
to_term(Ref) ->
    pyport_objects:to_term(Ref).

%% @doc Whether `Term' is a handle (its shape: it may be released, or
%% another process's).
-spec is_ref(term()) -> boolean().
is_ref(Term) ->
    pyport_objects:is_ref(Term).

%% @doc Drops the object in its worker now (it goes anyway when the owner
%% exits). Only the owner may; a second release is `ok'.
-spec release(pyport_objects:ref()) -> ok | {error, term()}.
release(Ref) ->
    pyport_objects:release(Ref).
