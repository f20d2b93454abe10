%% @doc Run Python from Erlang: the public API, after erlang_python's `py'.
%%
%% Every function answers `{ok, Value}' (or `ok'), a Python exception as
%% `{error, {Type, Message}}', `{error, timeout}', or `{error, {worker_exited,
%% Detail}}' when the worker OS process died under the request. Values
%% convert as described in docs/type-mapping.md. Module and function names
%% may be atoms, binaries or strings; code may be a binary, a string or
%% iodata.
%%
%% Options (`call/5', `spawn_call/5', `eval/3') are a timeout in
%% milliseconds, `infinity', or a map with `timeout' and `pool'.
%%
%% ```
%% {ok, 4.0} = py:call(math, sqrt, [16]),
%% {ok, 25} = py:eval(<<"x * y">>, #{x => 5, y => 5}),
%% Ctx = py:context(1),
%% ok = py:exec(Ctx, <<"counter = 41">>),
%% {ok, 42} = py:eval(Ctx, <<"counter + 1">>).
%% '''
-module(py).

-export([call/3, call/4, call/5, call/6,
         cast/3, cast/4,
         eval/1, eval/2, eval/3, eval/4,
         exec/1, exec/2,
         spawn_call/3, spawn_call/4, spawn_call/5,
         await/1, await/2,
         async_call/3, async_call/4, async_await/1, async_await/2,
         async_gather/1, async_gather/2,
         stream/3, stream/4, stream_eval/1, stream_eval/2,
         stream_start/3, stream_start/4, stream_cancel/1,
         context/0, context/1, context_slot/1, pool_context/2,
         version/0]).
-export([call_fields/4]).
%% Erlang for Python: registered functions, shared state, pub/sub, logging
%% and tracing (docs/erlang-integration.md).
-export([register_function/2, register_function/3, unregister_function/1,
         state_store/2, state_fetch/1, state_remove/1, state_keys/0, state_clear/0,
         state_incr/1, state_incr/2, state_decr/1, state_decr/2,
         subscribe/1, unsubscribe/1, publish/2,
         configure_logging/0, configure_logging/1,
         enable_tracing/0, disable_tracing/0, get_traces/0, clear_traces/0]).

-export_type([context/0, handle/0, name/0, code/0, opts/0, result/0,
              async_ref/0, stream_ref/0]).

-define(CALL, 1).
-define(EVAL, 3).
-define(EXEC, 4).
-define(DEFAULT_POOL, default).
%% eval/exec run in the worker's shared globals (PROTOCOL.md, Namespace).
-define(SHARED_NAMESPACE, 0).

-record(pyport_ctx, {pool :: atom(), slot :: pos_integer()}).

-opaque context() :: #pyport_ctx{}.
-type handle() :: pyport_request:handle().
-type name() :: atom() | binary() | string().
-type code() :: binary() | string() | iodata().
-type opts() :: timeout() | #{timeout => timeout(), pool => atom()}.
-type result() :: {ok, term()} | {error, term()}.
-type async_ref() :: pyport_async:ref().
-type stream_ref() :: pyport_async:stream_ref().
-type call_spec() :: {name(), name(), [term()]} | {name(), name(), [term()], map()}.

%%%===================================================================
%%% Calls
%%%===================================================================

%% @doc Calls `Module.Function(*Args)' in the least-loaded worker.
-spec call(name(), name(), [term()]) -> result().
call(Module, Function, Args) ->
    call(Module, Function, Args, #{}, #{}).

%% @doc `call(M, F, Args, Kwargs)': with keyword arguments (a map with atom
%% or binary keys); `call(Ctx, M, F, Args)': through a context.
-spec call(context() | name(), name(), [term()] | name(), map() | [term()]) -> result().
call(#pyport_ctx{} = Ctx, Module, Function, Args) ->
    call(Ctx, Module, Function, Args, #{}, #{});
call(Module, Function, Args, Kwargs) ->
    call(Module, Function, Args, Kwargs, #{}).

%% @doc `call(M, F, Args, Kwargs, Opts)': with options (a timeout or a map);
%% `call(Ctx, M, F, Args, Kwargs)': through a context.
-spec call(context() | name(), name(), [term()] | name(), map() | [term()],
           opts() | map()) -> result().
call(#pyport_ctx{} = Ctx, Module, Function, Args, Kwargs) ->
    call(Ctx, Module, Function, Args, Kwargs, #{});
call(Module, Function, Args, Kwargs, Opts) ->
    request(fun() ->
                    {Target, Timeout} = target(Opts),
                    pyport_request:call(Target, ?CALL,
                                        call_fields(Module, Function, Args, Kwargs), Timeout)
            end).

%% @doc Calls through a context, with keyword arguments and options.
-spec call(context(), name(), name(), [term()], map(), opts()) -> result().
call(#pyport_ctx{} = Ctx, Module, Function, Args, Kwargs, Opts) ->
    request(fun() ->
                    {Target, Timeout} = target(Ctx, Opts),
                    pyport_request:call(Target, ?CALL,
                                        call_fields(Module, Function, Args, Kwargs), Timeout)
            end).

%% @doc Calls `Module.Function(*Args)' without waiting for the result;
%% `cast(Ctx, M, F, Args)' through a context. An exception is logged.
-spec cast(context() | name(), name(), [term()] | name(), map() | [term()]) ->
          ok | {error, term()}.
cast(#pyport_ctx{pool = Pool, slot = Slot}, Module, Function, Args) ->
    request(fun() ->
                    pyport_request:cast({slot, Pool, Slot},
                                        call_fields(Module, Function, Args, #{}))
            end);
cast(Module, Function, Args, Kwargs) ->
    request(fun() ->
                    pyport_request:cast({pool, ?DEFAULT_POOL},
                                        call_fields(Module, Function, Args, Kwargs))
            end).

%% @doc Calls `Module.Function(*Args)' without waiting for the result.
-spec cast(name(), name(), [term()]) -> ok | {error, term()}.
cast(Module, Function, Args) ->
    cast(Module, Function, Args, #{}).

%%%===================================================================
%%% Asynchronous calls
%%%===================================================================

%% @doc Starts a call and returns a handle at once; {@link await/1} or {@link await/2}, in the
%% same process, collects the result.
-spec spawn_call(name(), name(), [term()]) -> handle().
spawn_call(Module, Function, Args) ->
    spawn_call(Module, Function, Args, #{}, #{}).

%% @doc `spawn_call(M, F, Args, Kwargs)' or `spawn_call(Ctx, M, F, Args)'.
-spec spawn_call(context() | name(), name(), [term()] | name(), map() | [term()]) -> handle().
spawn_call(#pyport_ctx{} = Ctx, Module, Function, Args) ->
    start_request(fun() ->
                          {Target, Timeout} = target(Ctx, #{}),
                          pyport_request:start(Target, ?CALL,
                                               call_fields(Module, Function, Args, #{}),
                                               Timeout)
                  end);
spawn_call(Module, Function, Args, Kwargs) ->
    spawn_call(Module, Function, Args, Kwargs, #{}).

%% @doc `spawn_call(M, F, Args, Kwargs, Opts)' or `spawn_call(Ctx, M, F,
%% Args, Kwargs)'. The timeout in `Opts' is the deadline of the request.
-spec spawn_call(context() | name(), name(), [term()] | name(), map() | [term()],
                 opts() | map()) -> handle().
spawn_call(#pyport_ctx{} = Ctx, Module, Function, Args, Kwargs) ->
    start_request(fun() ->
                          {Target, Timeout} = target(Ctx, #{}),
                          pyport_request:start(Target, ?CALL,
                                               call_fields(Module, Function, Args, Kwargs),
                                               Timeout)
                  end);
spawn_call(Module, Function, Args, Kwargs, Opts) ->
    start_request(fun() ->
                          {Target, Timeout} = target(Opts),
                          pyport_request:start(Target, ?CALL,
                                               call_fields(Module, Function, Args, Kwargs),
                                               Timeout)
                  end).

%% @doc Waits for the result of a {@link spawn_call/3} until its deadline.
%% A handle is awaited once, by the process that made it.
-spec await(handle()) -> result().
await(Handle) ->
    pyport_request:await(Handle).

%% @doc Waits at most `Timeout' ms for the result of a {@link spawn_call/3}.
-spec await(handle(), timeout()) -> result().
await(Handle, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    pyport_request:await(Handle, Timeout).

%%%===================================================================
%%% Coroutines
%%%===================================================================

%% @doc Starts `Module.Function(*Args)' and returns at once; for a coroutine
%% function it runs as a task on the worker's event loop, concurrently with
%% other tasks. The outcome arrives as `{py_result, Ref, Result}' ({@link
%% async_await/1,2} waits for it).
-spec async_call(name(), name(), [term()]) -> async_ref().
async_call(Module, Function, Args) ->
    async_call(Module, Function, Args, #{}).

%% @doc {@link async_call/3} with keyword arguments.
-spec async_call(name(), name(), [term()], map()) -> async_ref().
async_call(Module, Function, Args, Kwargs) ->
    start_task(fun() -> {{pool, ?DEFAULT_POOL}, call_fields(Module, Function, Args, Kwargs)} end).

%% @doc Waits for the result of an {@link async_call/3} until its deadline
%% (the pool's `call_timeout'). Giving up cancels the task in the worker.
-spec async_await(async_ref()) -> result().
async_await(Ref) ->
    pyport_async:await(py_result, Ref, deadline).

%% @doc Waits at most `Timeout' ms for the result of an {@link
%% async_call/3}; on `{error, timeout}' the task is cancelled in the worker.
-spec async_await(async_ref(), timeout()) -> result().
async_await(Ref, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    pyport_async:await(py_result, Ref, Timeout).

%% @doc Runs calls (`{M, F, Args}' or `{M, F, Args, Kwargs}') concurrently
%% and returns `{ok, Values}' in the order of `Calls', or the first error in
%% that order (the calls still running are then cancelled).
-spec async_gather([call_spec()]) -> {ok, [term()]} | {error, term()}.
async_gather(Calls) ->
    gather([async_spec(C) || C <- Calls], deadline).

%% @doc {@link async_gather/1} waiting at most `Timeout' ms in all.
-spec async_gather([call_spec()], timeout()) -> {ok, [term()]} | {error, term()}.
async_gather(Calls, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    gather([async_spec(C) || C <- Calls], Timeout).

async_spec({M, F, A}) -> async_call(M, F, A);
async_spec({M, F, A, Kw}) -> async_call(M, F, A, Kw);
async_spec(Other) -> erlang:error({badarg, Other}).

gather(Refs, Timeout) ->
    Deadline = case Timeout of
                   infinity -> infinity;
                   deadline -> deadline;
                   _ -> erlang:monotonic_time(millisecond) + Timeout
               end,
    gather(Refs, Deadline, []).

gather([], _Deadline, Acc) ->
    {ok, lists:reverse(Acc)};
gather([Ref | Rest], Deadline, Acc) ->
    Wait = case Deadline of
               infinity -> infinity;
               deadline -> deadline;
               _ -> max(0, Deadline - erlang:monotonic_time(millisecond))
           end,
    case pyport_async:await(py_result, Ref, Wait) of
        {ok, Value} ->
            gather(Rest, Deadline, [Value | Acc]);
        {error, _} = Error ->
            [pyport_async:cancel(R) || R <- Rest],
            [flush_result(R) || R <- Rest],
            Error
    end.

flush_result(Ref) ->
    receive {py_result, Ref, _} -> ok after 0 -> ok end.

start_task(Build) ->
    try Build() of
        {Target, Fields} -> pyport_async:start_task(Target, py_result, {?CALL, Fields}, default)
    catch
        throw:{error, Reason} -> pyport_async:failed_task(py_result, Reason)
    end.

%%%===================================================================
%%% Streams
%%%===================================================================

%% @doc Collects the items of `Module.Function(*Args)': a generator, an
%% async generator, or any (async) iterable; also a coroutine whose value
%% is one. `{ok, Items}' or `{error, Reason}'.
-spec stream(name(), name(), [term()]) -> result().
stream(Module, Function, Args) ->
    stream(Module, Function, Args, #{}).

%% @doc {@link stream/3} with keyword arguments.
-spec stream(name(), name(), [term()], map()) -> result().
stream(Module, Function, Args, Kwargs) ->
    collect(stream_start(Module, Function, Args, #{kwargs => Kwargs})).

%% @doc Collects the items of a Python expression's value, e.g. a generator
%% expression: `py:stream_eval(<<"(x * x for x in range(4))">>)'.
-spec stream_eval(code()) -> result().
stream_eval(Code) ->
    stream_eval(Code, #{}).

%% @doc {@link stream_eval/1} with local variables.
-spec stream_eval(code(), map()) -> result().
stream_eval(Code, Locals) when is_map(Locals) ->
    collect(request(fun() ->
                            pyport_async:stream_start({pool, ?DEFAULT_POOL},
                                                      {?EVAL, eval_fields(Code, Locals)}, self())
                    end)).

collect({ok, Ref}) ->
    pyport_async:collect(Ref, call_timeout(?DEFAULT_POOL));
collect({error, _} = Error) ->
    Error.

%% @doc Starts a stream whose items arrive as messages to the calling
%% process: `{py_stream, Ref, {data, Item}}' for each, then `{py_stream, Ref,
%% done}' or `{py_stream, Ref, {error, Reason}}'. A consumer that falls
%% behind suspends the Python producer (credit-based flow control).
-spec stream_start(name(), name(), [term()]) -> {ok, stream_ref()} | {error, term()}.
stream_start(Module, Function, Args) ->
    stream_start(Module, Function, Args, #{}).

%% @doc {@link stream_start/3} with options: `kwargs' (a map) and `pool'.
-spec stream_start(name(), name(), [term()], map()) -> {ok, stream_ref()} | {error, term()}.
stream_start(Module, Function, Args, Opts) when is_map(Opts) ->
    request(fun() ->
                    Kwargs = maps:get(kwargs, Opts, #{}),
                    Pool = maps:get(pool, Opts, ?DEFAULT_POOL),
                    [throw({error, {bad_option, K}}) || K <- maps:keys(Opts),
                                                       not lists:member(K, [kwargs, pool])],
                    pyport_async:stream_start({pool, Pool},
                                              {?CALL, call_fields(Module, Function, Args, Kwargs)},
                                              self())
            end).

%% @doc Stops a stream started by {@link stream_start/3,4}: its producer is
%% cancelled in the worker and no message of it remains in, or later
%% reaches, the calling process's mailbox.
-spec stream_cancel(stream_ref()) -> ok.
stream_cancel(Ref) ->
    pyport_async:stream_cancel(Ref).

call_timeout(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{call_timeout := T}} -> T;
        {error, _} -> infinity
    end.

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
eval(#pyport_ctx{} = Ctx, Code) ->
    eval(Ctx, Code, none, #{});
eval(Code, Locals) when is_map(Locals) ->
    eval(Code, Locals, #{}).

%% @doc `eval(Code, Locals, Opts)': with a timeout or options; `eval(Ctx,
%% Code, Locals)': through a context.
-spec eval(context() | code(), map() | none | code(), opts() | map()) -> result().
eval(#pyport_ctx{} = Ctx, Code, Locals) ->
    eval(Ctx, Code, Locals, #{});
eval(Code, Locals, Opts) when is_map(Locals); Locals =:= none ->
    request(fun() ->
                    {Target, Timeout} = target(Opts),
                    pyport_request:call(Target, ?EVAL, eval_fields(Code, Locals), Timeout)
            end).

%% @doc Evaluates an expression through a context, with a timeout or options.
-spec eval(context(), code(), map() | none, opts()) -> result().
eval(#pyport_ctx{} = Ctx, Code, Locals, Opts) when is_map(Locals); Locals =:= none ->
    request(fun() ->
                    {Target, Timeout} = target(Ctx, Opts),
                    pyport_request:call(Target, ?EVAL, eval_fields(Code, Locals), Timeout)
            end).

%% @doc Runs Python statements in a worker's shared globals.
-spec exec(code()) -> ok | {error, term()}.
exec(Code) ->
    exec_result(request(fun() ->
                                pyport_request:call({pool, ?DEFAULT_POOL}, ?EXEC,
                                                    exec_fields(Code), default)
                        end)).

%% @doc Runs Python statements through a context: a later {@link eval/2} on
%% the same context sees the names they define.
-spec exec(context(), code()) -> ok | {error, term()}.
exec(#pyport_ctx{pool = Pool, slot = Slot}, Code) ->
    exec_result(request(fun() ->
                                pyport_request:call({slot, Pool, Slot}, ?EXEC,
                                                    exec_fields(Code), default)
                        end)).

exec_result({ok, _}) -> ok;
exec_result({error, _} = Error) -> Error.

%%%===================================================================
%%% Contexts and information
%%%===================================================================

%% @doc The context of the calling process: always the same worker of the
%% default pool for the same process.
-spec context() -> context().
context() ->
    Size = pool_size(?DEFAULT_POOL),
    #pyport_ctx{pool = ?DEFAULT_POOL, slot = erlang:phash2(self(), Size) + 1}.

%% @doc Context `N' (1-based) of the default pool: one worker, and so one
%% set of Python globals.
-spec context(pos_integer()) -> context().
context(N) when is_integer(N), N >= 1 ->
    case pool_size(?DEFAULT_POOL) of
        Size when N =< Size -> #pyport_ctx{pool = ?DEFAULT_POOL, slot = N};
        Size -> erlang:error({bad_context, N, {pool_size, Size}})
    end.

%% @doc The context of slot `Slot' (1-based) of pool `Pool': one worker.
-spec pool_context(atom(), pos_integer()) -> context().
pool_context(Pool, Slot) when is_atom(Pool), is_integer(Slot), Slot >= 1 ->
    #pyport_ctx{pool = Pool, slot = Slot}.

%% @doc The pool and slot a context routes to.
-spec context_slot(context()) -> {atom(), pos_integer()}.
context_slot(#pyport_ctx{pool = Pool, slot = Slot}) ->
    {Pool, Slot}.

%% @doc The Python version of the default pool's workers, e.g. `<<"3.11.2">>'.
-spec version() -> {ok, binary()} | {error, term()}.
version() ->
    case pyport_pool:info(?DEFAULT_POOL) of
        {ok, Info} ->
            case pyport_pool:pick(Info) of
                {ok, _Slot, Pid} ->
                    try pyport_worker:info(Pid) of
                        #{python_version := V} when is_binary(V) -> {ok, V};
                        #{} -> {error, worker_restarting}
                    catch
                        exit:{Reason, _} -> {error, {worker_exited, Reason}}
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

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

%% @doc The spans kept, oldest first (maps, see {@link pyport_trace:spans/0}).
-spec get_traces() -> [map()].
get_traces() ->
    pyport_trace:spans().

%% @doc Forgets the spans kept.
-spec clear_traces() -> ok.
clear_traces() ->
    pyport_trace:clear().

%%%===================================================================
%%% Internals
%%%===================================================================

%% Argument problems are thrown as {error, Reason} and returned as such.
request(Fun) ->
    try Fun()
    catch throw:{error, _} = Error -> Error
    end.

start_request(Fun) ->
    case request(Fun) of
        {error, Reason} -> pyport_request:start_failed(Reason);
        Handle -> Handle
    end.

pool_size(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{size := Size}} -> Size;
        {error, Reason} -> erlang:error(Reason)
    end.

target(Opts) ->
    #{pool := Pool, timeout := Timeout} = options(Opts),
    {{pool, Pool}, Timeout}.

%% A context names its pool; `pool' in the options is not used.
target(#pyport_ctx{pool = Pool, slot = Slot}, Opts) ->
    #{timeout := Timeout} = options(Opts),
    {{slot, Pool, Slot}, Timeout}.

options(Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    #{pool => ?DEFAULT_POOL, timeout => Timeout};
options(Opts) when is_map(Opts) ->
    maps:fold(fun check_option/3, #{pool => ?DEFAULT_POOL, timeout => default}, Opts);
options(Other) ->
    throw({error, {bad_option, Other}}).

check_option(timeout, T, Acc) when T =:= infinity; is_integer(T), T >= 0 ->
    Acc#{timeout => T};
check_option(pool, P, Acc) when is_atom(P) ->
    Acc#{pool => P};
check_option(Key, Value, _Acc) when Key =:= timeout; Key =:= pool ->
    throw({error, {invalid_option, Key, Value}});
check_option(Key, _Value, _Acc) ->
    throw({error, {bad_option, Key}}).

%% @private The fields of a CALL frame; throws `{error, Reason}' for a bad
%% argument.
-spec call_fields(name(), name(), [term()], map()) -> [term()].
call_fields(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
    [name(Module), name(Function), Args, kwargs(Kwargs)];
call_fields(_Module, _Function, Args, Kwargs) when is_list(Args) ->
    throw({error, {invalid_kwargs, Kwargs}});
call_fields(_Module, _Function, Args, _Kwargs) ->
    throw({error, {invalid_args, Args}}).

eval_fields(Code, Locals) ->
    [code(Code), Locals, ?SHARED_NAMESPACE].

exec_fields(Code) ->
    [code(Code), ?SHARED_NAMESPACE].

name(A) when is_atom(A) -> atom_to_binary(A, utf8);
name(B) when is_binary(B) -> B;
name(L) when is_list(L) ->
    case unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> throw({error, {invalid_name, L}})
    end;
name(Other) -> throw({error, {invalid_name, Other}}).

%% Python needs str keyword names.
kwargs(Kwargs) ->
    maps:fold(fun(K, V, Acc) when is_atom(K) -> Acc#{atom_to_binary(K, utf8) => V};
                 (K, V, Acc) when is_binary(K) -> Acc#{K => V};
                 (K, _V, _Acc) -> throw({error, {invalid_kwarg, K}})
              end, #{}, Kwargs).

code(B) when is_binary(B) -> B;
code(L) when is_list(L) ->
    try unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> throw({error, {invalid_code, L}})
    catch
        error:badarg -> throw({error, {invalid_code, L}})
    end;
code(Other) -> throw({error, {invalid_code, Other}}).
