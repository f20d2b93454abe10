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
-export([call_fields/4]).
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
              async_ref/0, stream_ref/0]).

-define(CALL, 1).
-define(EVAL, 3).
-define(EXEC, 4).
-define(CONTROL, 11).
-define(DEFAULT_POOL, default).
%% eval/exec run in the worker's shared globals (PROTOCOL.md, Namespace).
-define(SHARED_NAMESPACE, 0).

-record(pyport_ctx, {pool :: atom(), slot :: pos_integer()}).
-define(IS_CTX(C), (is_pid(C) orelse is_record(C, pyport_ctx))).

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
    request(fun() ->
                    {Target, Timeout} = target(registered_pool(Module, Function, Opts)),
                    Fields = call_fields(Module, Function, Args, Kwargs),
                    {Target1, Fields1} = main_route(Target, Fields),
                    pyport_objects:call(Target1, ?CALL, Fields1, Timeout, Opts)
            end).

%% @doc Calls through a context, with keyword arguments and options (a
%% timeout, default `infinity', or a map with `timeout' (also `default':
%% the pool's `call_timeout'), the conversion options of {@link
%% pyport_objects} and `namespace':
%% where `'__main__'' is looked up, `process' (default, the caller's
%% {@link exec/2} namespace) or `shared' (the context's shared globals)).
-spec call(context(), name(), name(), [term()], map(), ctx_opts()) -> result().
call(Ctx, Module, Function, Args, Kwargs, Opts) when ?IS_CTX(Ctx) ->
    request(fun() ->
                    {Target, Timeout} = target(Ctx, Opts),
                    Fields = call_fields(Module, Function, Args, Kwargs),
                    {Target1, Fields1} = case ctx_options(Opts) of
                                             #{namespace := shared} ->
                                                 pyport_namespaces:route_main_shared(Target, Fields);
                                             #{} ->
                                                 main_route(Target, Fields)
                                         end,
                    pyport_objects:call(Target1, ?CALL, Fields1, Timeout, Opts)
            end).

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
    request(fun() ->
                    {Pool, Slot} = ctx_slot(Ctx),
                    pyport_request:cast({slot, Pool, Slot},
                                        call_fields(Module, Function, Args, Kwargs))
            end);
cast(Module, Function, Args, Kwargs, Opts) ->
    request(fun() ->
                    {Target, _Timeout} = target(Opts),
                    pyport_request:cast(Target, call_fields(Module, Function, Args, Kwargs))
            end).

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
    start_spawn(fun() ->
                        {Target, Timeout} = target(Ctx, infinity),
                        {Target1, Fields} = main_route(Target,
                                                       call_fields(Module, Function, Args, Kwargs)),
                        {Target1, Fields, Timeout}
                end);
spawn_call(Module, Function, Args, Kwargs, Opts) ->
    start_spawn(fun() ->
                        {Target, Timeout} = target(registered_pool(Module, Function, Opts)),
                        {Target1, Fields} = main_route(Target,
                                                       call_fields(Module, Function, Args, Kwargs)),
                        {Target1, Fields, Timeout}
                end).

%% A call whose arguments are wrong answers at once, as a message too.
start_spawn(Build) ->
    try Build() of
        {Target, Fields, Timeout} -> pyport_spawn:start(Target, Fields, Timeout)
    catch
        throw:{error, Reason} ->
            Ref = make_ref(),
            self() ! {py_response, Ref, {error, Reason}},
            Ref
    end.

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
    case parallel(Calls, #{}) of
        {ok, Results} -> first_error(Results, []);
        {error, _} = Error -> Error
    end.

first_error([], Acc) -> {ok, lists:reverse(Acc)};
first_error([{ok, V} | Rest], Acc) -> first_error(Rest, [V | Acc]);
first_error([{error, _} = Error | _], _Acc) -> Error.

%% @doc {@link parallel/1} with options (`pool', `timeout': the deadline of
%% every call), answering every call's outcome: `{ok, [{ok, Value} |
%% {error, Reason}]}'.
-spec parallel([{name(), name(), [term()]} | {name(), name(), [term()], map()}], opts()) ->
          {ok, [result()]} | {error, term()}.
parallel(Calls, Opts) when is_list(Calls) ->
    case request(fun() -> options(Opts) end) of
        #{pool := Pool, timeout := Timeout} when is_atom(Pool) ->
            %% Each start counts into its slot, so least-loaded picks spread
            %% the calls over every worker.
            Handles = [start_request(fun() ->
                                             pyport_request:start({pool, Pool}, ?CALL,
                                                                  parallel_fields(Call), Timeout)
                                     end) || Call <- Calls],
            {ok, [pyport_request:await(H) || H <- Handles]};
        #{pool := Pool} ->
            {error, {invalid_option, pool, Pool}};
        {error, _} = Error ->
            Error
    end.

parallel_fields({M, F, A}) -> call_fields(M, F, A, #{});
parallel_fields({M, F, A, Kw}) -> call_fields(M, F, A, Kw);
parallel_fields(Other) -> throw({error, {invalid_call, Other}}).

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
    start_task(async_result,
               fun() ->
                       Pool = pyport_contexts:lookup_pool(safe_name(Module), safe_name(Function)),
                       {Target, Fields} = main_route({pool, Pool},
                                                     call_fields(Module, Function, Args, Kwargs)),
                       {Target, Fields, default}
               end).

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
    Refs = [async_spec(C) || C <- Calls],
    Results = [pyport_async:await(async_result, Ref, Timeout) || Ref <- Refs],
    case [{I, R} || {I, {error, R}} <- lists:zip(lists:seq(1, length(Results)), Results)] of
        [] -> {ok, [V || {ok, V} <- Results]};
        Failed -> {error, {gather_failed, Failed}}
    end.

async_spec({M, F, A}) -> async_call(M, F, A);
async_spec({M, F, A, Kw}) -> async_call(M, F, A, Kw);
async_spec(Other) -> erlang:error({badarg, Other}).

%% A task whose `Build' fails has its error message in the mailbox at once.
start_task(Tag, Build) ->
    try Build() of
        {Target, Fields, Timeout} -> pyport_async:start_task(Target, Tag, {?CALL, Fields}, Timeout)
    catch
        throw:{error, Reason} -> pyport_async:failed_task(Tag, Reason)
    end.

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
    collect_stream(Opts, fun(Pool) ->
                                 pyport_async:stream_start(
                                   {pool, Pool},
                                   {?CALL, call_fields(Module, Function, Args, Kwargs)}, self())
                         end).

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
    collect_stream(Opts, fun(Pool) ->
                                 pyport_async:stream_start(
                                   {pool, Pool},
                                   {?EVAL, eval_fields(Code, Locals, ?SHARED_NAMESPACE)}, self())
                         end).

collect_stream(Opts, Start) ->
    request(fun() ->
                    #{pool := Pool} = O = stream_options(Opts),
                    case pyport_pool:info(Pool) of
                        {ok, Info} ->
                            Limits = maps:merge(pyport_async:collect_limits(Info),
                                                maps:with([max_items, max_bytes], O)),
                            Timeout = maps:get(timeout, O, maps:get(call_timeout, Info)),
                            case Start(Pool) of
                                {ok, Ref} -> pyport_async:collect(Ref, Timeout, Limits);
                                {error, _} = Error -> Error
                            end;
                        {error, _} = Error ->
                            Error
                    end
            end).

stream_options(Opts) when is_map(Opts) ->
    maps:fold(fun(pool, P, Acc) when is_atom(P) -> Acc#{pool => P};
                 (timeout, T, Acc) when T =:= infinity; is_integer(T), T >= 0 -> Acc#{timeout => T};
                 (K, V, Acc) when (K =:= max_items orelse K =:= max_bytes),
                                  (V =:= infinity orelse is_integer(V) andalso V > 0) ->
                      Acc#{K => V};
                 (K, V, _Acc) when K =:= pool; K =:= timeout; K =:= max_items;
                                   K =:= max_bytes ->
                      throw({error, {invalid_option, K, V}});
                 (K, _V, _Acc) ->
                      throw({error, {bad_option, K}})
              end, #{pool => ?DEFAULT_POOL}, Opts);
stream_options(Other) ->
    throw({error, {bad_option, Other}}).

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
    request(fun() ->
                    Kwargs = maps:get(kwargs, Opts, #{}),
                    Pool = maps:get(pool, Opts, ?DEFAULT_POOL),
                    Owner = case maps:get(owner, Opts, self()) of
                                P when is_pid(P) -> P;
                                Bad -> throw({error, {invalid_option, owner, Bad}})
                            end,
                    [throw({error, {bad_option, K}}) || K <- maps:keys(Opts),
                                                       not lists:member(K, [kwargs, pool, owner])],
                    pyport_async:stream_start({pool, Pool},
                                              {?CALL, call_fields(Module, Function, Args, Kwargs)},
                                              Owner)
            end).

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
    request(fun() ->
                    {Target, Timeout, Ns} = code_target(Opts),
                    pyport_objects:call(Target, ?EVAL, eval_fields(Code, Locals, Ns), Timeout, Opts)
            end).

%% @doc Evaluates an expression through a context, with a timeout (default
%% `infinity') or options: `timeout', and `namespace': `process' (the
%% default: the calling process's own globals on that context, as
%% erlang_python's `py:eval/2,3') or `shared' (the context's shared
%% globals, as `py_context:eval').
-spec eval(context(), code(), map() | none, ctx_opts()) -> result().
eval(Ctx, Code, Locals, Opts) when ?IS_CTX(Ctx), is_map(Locals) orelse Locals =:= none ->
    request(fun() ->
                    {Target, Timeout, Ns} = ctx_code_target(Ctx, Opts),
                    pyport_objects:call(Target, ?EVAL, eval_fields(Code, Locals, Ns), Timeout, Opts)
            end).

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
    exec_result(request(fun() ->
                                {Target, Timeout, Ns} = code_target(Opts),
                                pyport_request:call(Target, ?EXEC, exec_fields(Code, Ns), Timeout)
                        end)).

%% @doc Runs Python statements through a context, in the calling process's
%% own globals there (or the shared ones: options as {@link eval/4}).
-spec exec(context(), code(), ctx_opts()) -> ok | {error, term()}.
exec(Ctx, Code, Opts) when ?IS_CTX(Ctx) ->
    exec_result(request(fun() ->
                                {Target, Timeout, Ns} = ctx_code_target(Ctx, Opts),
                                pyport_request:call(Target, ?EXEC, exec_fields(Code, Ns), Timeout)
                        end)).

exec_result({ok, _}) -> ok;
exec_result({error, _} = Error) -> Error.

%%%===================================================================
%%% Contexts and information
%%%===================================================================

%% @doc The context of the calling process: the pid of the same worker of
%% the default pool every time for the same process (the one it is bound
%% to, else one chosen by the process's pid).
-spec context() -> pid().
context() ->
    Slot = case pyport_affinity:bound_slot(?DEFAULT_POOL) of
               undefined -> erlang:phash2(self(), pool_size(?DEFAULT_POOL)) + 1;
               Bound -> Bound
           end,
    context_pid(?DEFAULT_POOL, Slot).

%% @doc Context `N' (1-based) of the default pool: one worker, and so one
%% interpreter.
-spec context(pos_integer()) -> pid().
context(N) when is_integer(N), N >= 1 ->
    context(?DEFAULT_POOL, N).

%% @doc Context `N' (1-based) of pool `Pool'.
-spec context(atom(), pos_integer()) -> pid().
context(Pool, N) when is_atom(Pool), is_integer(N), N >= 1 ->
    case pool_size(Pool) of
        Size when N =< Size -> context_pid(Pool, N);
        Size -> erlang:error({bad_context, N, {pool_size, Size}})
    end.

context_pid(Pool, Slot) ->
    case pyport_contexts:context_pid(Pool, Slot) of
        {ok, Pid} -> Pid;
        {error, Reason} -> erlang:error(Reason)
    end.

%% @doc The pool and slot a context routes to.
-spec context_slot(context()) -> {atom(), pos_integer()}.
context_slot(Ctx) ->
    case request(fun() -> ctx_slot(Ctx) end) of
        {error, Reason} -> erlang:error(Reason);
        Slot -> Slot
    end.

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
    _ = pyport:stop_pool(?DEFAULT_POOL),
    ok.

%% @doc Whether pool `default' runs.
-spec contexts_started() -> boolean().
contexts_started() ->
    element(1, pyport_pool:info(?DEFAULT_POOL)) =:= ok.

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
    case request(fun() -> {name(Module), options(Opts)} end) of
        {Name, #{pool := Pool, timeout := Timeout}} when is_atom(Pool) ->
            case pyport:workers(Pool) of
                {ok, Workers} ->
                    Errors = lists:foldr(
                               fun({Slot, Pid}, Acc) ->
                                       case reload_slot(Pool, Slot, Pid, Name, Timeout) of
                                           ok -> Acc;
                                           Error -> [{Slot, Error} | Acc]
                                       end
                               end, [], Workers),
                    case Errors of
                        [] -> ok;
                        _ -> {error, Errors}
                    end;
                {error, _} = Error ->
                    Error
            end;
        {_, #{pool := Pool}} ->
            {error, {invalid_option, pool, Pool}};
        {error, _} = Error ->
            Error
    end.

reload_slot(Pool, Slot, Pid, Name, Timeout) ->
    case control(Pool, Slot, <<"reload">>, Name, Timeout) of
        {ok, <<"needs_restart">>} ->
            recycle(Pid, pyport_request:deadline(recycle_timeout(Timeout)));
        {ok, _ReloadedOrNotLoaded} ->
            ok;
        {error, _} = Error ->
            Error
    end.

recycle_timeout(default) -> 60000;
recycle_timeout(T) -> T.

%% pyport_worker:recycle/2, with a wait of any length (a gen_server call
%% takes at most 2^32-1 ms: longer ones are waited in pieces).
recycle(Pid, Deadline) ->
    recycle_wait(gen_server:send_request(Pid, recycle), Deadline).

recycle_wait(ReqId, Deadline) ->
    case pyport_request:wait_ms(Deadline) of
        Ms when Ms =:= infinity; Ms < 16#FFFFFFFF ->
            recycle_reply(gen_server:receive_response(ReqId, Ms));
        Ms ->
            case gen_server:wait_response(ReqId, Ms) of
                timeout -> recycle_wait(ReqId, Deadline);
                Reply -> recycle_reply(Reply)
            end
    end.

recycle_reply({reply, Reply}) -> Reply;
recycle_reply({error, {Reason, _ServerRef}}) -> {error, {worker_exited, Reason}};
recycle_reply(timeout) -> {error, timeout}.

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
    case ctx_control(Ctx, <<"memory_stats">>, none) of
        {ok, Stats} when is_map(Stats) -> {ok, pyport_contexts:memory_stats(Stats)};
        Other -> Other
    end;
memory_stats(Opts) ->
    each_worker(<<"memory_stats">>, none, Opts).

%% @doc Runs Python's garbage collector in the calling process's context:
%% `{ok, Unreachable}', the number of unreachable objects found.
-spec gc() -> {ok, non_neg_integer()} | {error, term()}.
gc() ->
    ctx_control(context(), <<"gc">>, none).

%% @doc `gc(Generation)' (0, 1 or 2) in the calling process's context;
%% `gc(Opts)': in every worker of a pool, by slot.
-spec gc(0..2 | opts()) ->
          {ok, non_neg_integer() | #{pos_integer() => non_neg_integer() | {error, term()}}} |
          {error, term()}.
gc(Generation) when is_integer(Generation) ->
    ctx_control(context(), <<"gc">>, Generation);
gc(Opts) ->
    each_worker(<<"gc">>, none, Opts).

%% @doc One generation, in every worker of a pool.
-spec gc(0..2, opts()) ->
          {ok, #{pos_integer() => non_neg_integer() | {error, term()}}} | {error, term()}.
gc(Generation, Opts) when is_integer(Generation) ->
    each_worker(<<"gc">>, Generation, Opts).

ctx_control(Ctx, Op, Arg) ->
    request(fun() ->
                    {Pool, Slot} = ctx_slot(Ctx),
                    control(Pool, Slot, Op, Arg, default)
            end).

%% CONTROL Op on every worker of a pool, concurrently.
each_worker(Op, Arg, Opts) ->
    case request(fun() -> options(Opts) end) of
        #{pool := Pool, timeout := Timeout} when is_atom(Pool) ->
            case pyport:workers(Pool) of
                {ok, Workers} ->
                    Handles = [{Slot, pyport_request:start({slot, Pool, Slot}, ?CONTROL,
                                                           [Op, Arg], Timeout)}
                               || {Slot, _} <- Workers],
                    {ok, maps:from_list([{Slot, unwrap(pyport_request:await(H))}
                                         || {Slot, H} <- Handles])};
                {error, _} = Error ->
                    Error
            end;
        #{pool := Pool} ->
            {error, {invalid_option, pool, Pool}};
        {error, _} = Error ->
            Error
    end.

unwrap({ok, Value}) -> Value;
unwrap({error, _} = Error) -> Error.

control(Pool, Slot, Op, Arg, Timeout) ->
    pyport_request:call({slot, Pool, Slot}, ?CONTROL, [Op, Arg], Timeout).

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

%% @doc The spans kept, oldest first, as erlang_python gives them: `{ok,
%% [Span]}' (see {@link pyport_trace:compat_spans/0} for the keys).
-spec get_traces() -> {ok, [map()]}.
get_traces() ->
    {ok, pyport_trace:compat_spans()}.

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

%% Where a call goes, and its timeout.
target(Opts) ->
    #{timeout := Timeout} = O = options(Opts),
    {with_output(O, remote(O, local_call_target(O))), Timeout}.

%% Where an eval/exec goes, its timeout and its namespace: the calling
%% process's own, unless another route was asked for.
code_target(Opts) ->
    #{pool := Pool, timeout := Timeout} = O = options(Opts),
    case O of
        #{node := Node} when Node =/= node() ->
            {remote(O, local_call_target(O)), Timeout, ?SHARED_NAMESPACE};
        #{shard := _} ->
            {remote(O, local_call_target(O)), Timeout, ?SHARED_NAMESPACE};
        _ when not is_atom(Pool) ->
            {remote(O, local_call_target(O)), Timeout, ?SHARED_NAMESPACE};
        _ ->
            case pyport_affinity:namespace(Pool) of
                {ok, Slot, Ns} -> {{slot, Pool, Slot}, Timeout, Ns};
                {error, _} = Error -> throw(Error)
            end
    end.

local_call_target(#{pool := {cluster, Pool}}) ->
    {cluster, Pool};
local_call_target(#{pool := Pool, shard := Key}) ->
    {shard, Pool, Key};
local_call_target(#{pool := Pool}) ->
    case pyport_affinity:bound_slot(Pool) of
        undefined -> {pool, Pool};
        Slot -> {slot, Pool, Slot}
    end.

remote(#{node := Node}, {cluster, _}) ->
    throw({error, {invalid_option, node, Node}});
remote(#{node := Node, pool := Pool} = O, _Local) when Node =/= node() ->
    %% A binding is to a local worker: another node routes by itself.
    Local = case O of
                #{shard := Key} -> {shard, Pool, Key};
                #{} -> {pool, Pool}
            end,
    {node, Node, Local};
remote(_O, Local) ->
    Local.

%% A context names its pool and slot; its timeout is `infinity' unless
%% given (erlang_python's default for context calls).
target(Ctx, Opts) ->
    {Pool, Slot} = ctx_slot(Ctx),
    #{timeout := Timeout} = O = ctx_options(Opts),
    {with_output(O, {slot, Pool, Slot}), Timeout}.

ctx_code_target(Ctx, Opts) ->
    {Pool, Slot} = ctx_slot(Ctx),
    #{timeout := Timeout, namespace := Which} = ctx_options(Opts),
    case Which of
        shared ->
            {{slot, Pool, Slot}, Timeout, ?SHARED_NAMESPACE};
        process ->
            case pyport_namespaces:namespace(Pool, Slot) of
                {ok, Ns} -> {{slot, Pool, Slot}, Timeout, Ns};
                {error, _} = Error -> throw(Error)
            end
    end.

ctx_options(Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    #{timeout => Timeout, namespace => process};
ctx_options(Opts) when is_map(Opts) ->
    maps:fold(fun(timeout, T, Acc) when T =:= infinity; T =:= default;
                                        is_integer(T), T >= 0 ->
                      %% default: the pool's call_timeout (pyport's).
                      Acc#{timeout => T};
                 (namespace, N, Acc) when N =:= process; N =:= shared ->
                      Acc#{namespace => N};
                 (output, W, Acc) when W =:= caller; W =:= logger ->
                      Acc#{output => W};
                 (K, V, _Acc) when K =:= timeout; K =:= namespace; K =:= output ->
                      throw({error, {invalid_option, K, V}});
                 (K, V, Acc) when K =:= return; K =:= str_fallback; K =:= numpy;
                                  K =:= traceback ->
                      %% Conversion options (pyport_objects), checked.
                      ok = pyport_objects:check_option(K, V),
                      Acc;
                 (_K, _V, Acc) ->
                      %% erlang_python ignores other keys (pool, kwargs...).
                      Acc
              end, #{timeout => infinity, namespace => process}, Opts);
ctx_options(Other) ->
    throw({error, {bad_option, Other}}).

%% The pool and slot of a context; throws {error, _} for a dead or unknown
%% one.
ctx_slot(#pyport_ctx{pool = Pool, slot = Slot}) ->
    {Pool, Slot};
ctx_slot(Pid) when is_pid(Pid) ->
    case pyport_contexts:resolve(Pid) of
        {ok, Pool, Slot} -> {Pool, Slot};
        {error, _} = Error -> throw(Error)
    end;
ctx_slot(Other) ->
    throw({error, {invalid_context, Other}}).

%% A context-less call's pool: the `pool' option, else the registration
%% of its module or function (register_pool/2), else `default'.
registered_pool(Module, Function, Opts) when is_map(Opts) ->
    case is_map_key(pool, Opts) of
        true -> Opts;
        false -> registered(Module, Function, Opts)
    end;
registered_pool(Module, Function, Timeout) ->
    registered(Module, Function, #{timeout => Timeout}).

registered(Module, Function, Opts) ->
    case pyport_contexts:lookup_pool(safe_name(Module), safe_name(Function)) of
        ?DEFAULT_POOL -> Opts;
        Pool -> Opts#{pool => Pool}
    end.

safe_name(N) when is_atom(N); is_binary(N) -> N;
safe_name(N) -> try name(N) catch throw:_ -> <<>> end.

main_route(Target, Fields) ->
    pyport_namespaces:route_main(Target, Fields).

options(Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    #{pool => ?DEFAULT_POOL, timeout => Timeout};
options(Opts) when is_map(Opts) ->
    O = maps:fold(fun check_option/3, #{pool => ?DEFAULT_POOL, timeout => default}, Opts),
    case O of
        #{pool := {cluster, _}, shard := Key} -> throw({error, {invalid_option, shard, Key}});
        _ -> O
    end;
options(Other) ->
    throw({error, {bad_option, Other}}).

check_option(timeout, T, Acc) when T =:= infinity; is_integer(T), T >= 0 ->
    Acc#{timeout => T};
check_option(pool, P, Acc) when is_atom(P) ->
    Acc#{pool => P};
check_option(pool, {cluster, P} = C, Acc) when is_atom(P) ->
    Acc#{pool => C};
check_option(shard, Key, Acc) ->
    Acc#{shard => Key};
check_option(node, N, Acc) when is_atom(N) ->
    Acc#{node => N};
check_option(output, Where, Acc) when Where =:= caller; Where =:= logger ->
    Acc#{output => Where};
check_option(Key, Value, Acc) when Key =:= return; Key =:= str_fallback; Key =:= numpy;
                                   Key =:= traceback ->
    ok = pyport_objects:check_option(Key, Value),
    Acc#{Key => Value};
check_option(Key, Value, _Acc) when Key =:= timeout; Key =:= pool; Key =:= node;
                                    Key =:= output ->
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

eval_fields(Code, Locals, Ns) ->
    [code(Code), Locals, Ns].

exec_fields(Code, Ns) ->
    [code(Code), Ns].

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
tracemalloc_start(NFrames) when is_integer(NFrames), NFrames > 0 ->
    pyport_preload:everywhere([?DEFAULT_POOL],
                              iolist_to_binary(["import tracemalloc\ntracemalloc.start(",
                                                integer_to_list(NFrames), ")\n"]), 30000);
tracemalloc_start(NFrames) ->
    {error, {invalid_nframes, NFrames}}.

-spec tracemalloc_stop() -> ok | {error, term()}.
tracemalloc_stop() ->
    pyport_preload:everywhere([?DEFAULT_POOL], <<"import tracemalloc\ntracemalloc.stop()\n">>, 30000).

%% @doc Not provided: a descriptor of the node is not one of a worker,
%% which is another OS process.
-spec dup_fd(integer()) -> {error, {not_supported, binary()}}.
dup_fd(_Fd) ->
    {error, {not_supported, <<"dup_fd: workers are separate OS processes; a descriptor of the "
                              "node means nothing in them (pass a socket path or a port number "
                              "to Python instead)">>}}.

%% ---- output (pyport_output) ----

%% A call's own `output' option travels with its target.
with_output(#{output := Where}, Target) -> {output, Where, Target};
with_output(_Opts, Target) -> Target.

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
    with_name(Method, fun(M) ->
                              call(<<"erlang._objects">>, <<"call_method">>, [Ref, M | Args],
                                   maps:get(kwargs, Opts, #{}), maps:remove(kwargs, Opts))
                      end).

%% @doc `getattr(Obj, Name)', converted.
-spec getattr(pyport_objects:ref(), name()) -> result().
getattr(Ref, Name) ->
    with_name(Name, fun(N) -> call(builtins, getattr, [Ref, N]) end).

%% @doc The object itself, converted to a term.
-spec to_term(pyport_objects:ref()) -> result().
to_term(Ref) ->
    call(<<"erlang._objects">>, <<"identity">>, [Ref]).

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

with_name(Name, Fun) ->
    request(fun() -> Fun(name(Name)) end).
