%% @doc Streams of the public API: the items of a Python iterable (a
%% generator, an async generator, any (async) iterable, or a coroutine
%% whose value is one) collected into a list within limits ({@link
%% collect_call/5}, {@link collect_eval/3}), or sent as messages to an owner
%% ({@link start/4}, see {@link pyport_async}).
-module(pyport_stream).

-export([collect_call/5, collect_eval/3, start/4]).

-define(CALL, 1).
-define(EVAL, 3).
-define(DEFAULT_POOL, default).
%% A streamed expression runs in the worker's shared globals.
-define(SHARED_NAMESPACE, 0).

-type result() :: {ok, term()} | {error, term()}.

%% @doc Collects the items of `Module.Function(*Args, **Kwargs)'. Options:
%% `pool', `timeout' (the longest wait for the next item; default the
%% pool's `call_timeout'), `max_items', `max_bytes'; past a limit `{error,
%% {stream_too_large, Key, Limit}}'.
-spec collect_call(py:name(), py:name(), [term()], map(), py:stream_opts()) -> result().
collect_call(Module, Function, Args, Kwargs, Opts) ->
    collect(Opts, fun(Pool) ->
                          pyport_async:stream_start(
                            {pool, Pool},
                            {?CALL, pyport_args:call_fields(Module, Function, Args, Kwargs)},
                            self())
                  end).

%% @doc Collects the items of an expression's value.
-spec collect_eval(py:code(), map(), py:stream_opts()) -> result().
collect_eval(Code, Locals, Opts) ->
    collect(Opts, fun(Pool) ->
                          pyport_async:stream_start(
                            {pool, Pool},
                            {?EVAL, pyport_args:eval_fields(Code, Locals, ?SHARED_NAMESPACE)},
                            self())
                  end).

%% @doc Starts a stream of `Module.Function(*Args)' whose items go to the
%% owner as messages. Options: `kwargs', `pool', `owner' (default the
%% caller).
-spec start(py:name(), py:name(), [term()], map()) ->
          {ok, pyport_async:stream_ref()} | {error, term()}.
start(Module, Function, Args, Opts) ->
    pyport_args:checked(
      fun() ->
              Kwargs = maps:get(kwargs, Opts, #{}),
              Pool = maps:get(pool, Opts, ?DEFAULT_POOL),
              Owner = case maps:get(owner, Opts, self()) of
                          P when is_pid(P) -> P;
                          Bad -> throw({error, {invalid_option, owner, Bad}})
                      end,
              [throw({error, {bad_option, K}}) || K <- maps:keys(Opts),
                                                 not lists:member(K, [kwargs, pool, owner])],
              pyport_async:stream_start(
                {pool, Pool},
                {?CALL, pyport_args:call_fields(Module, Function, Args, Kwargs)}, Owner)
      end).

collect(Opts, Start) ->
    pyport_args:checked(
      fun() ->
              #{pool := Pool} = O = options(Opts),
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

options(Opts) when is_map(Opts) ->
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
options(Other) ->
    throw({error, {bad_option, Other}}).
