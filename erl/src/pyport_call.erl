%% @doc Calls of a Python function from the public API: with the result
%% ({@link call/5}), without it ({@link cast/5}), started now and awaited
%% later ({@link spawn/5}), and several at once ({@link parallel/2});
%% without a context or through one (the `ctx_' functions). Arguments and
%% options are checked first (`pyport_args', `pyport_route'): a bad one is
%% the answer, `{error, Reason}'. Module `'__main__'' is the calling
%% process's eval/exec namespace on the worker (`pyport_namespaces').
-module(pyport_call).

-export([call/5, ctx_call/6, cast/5, ctx_cast/5, spawn/5, ctx_spawn/5,
         parallel/1, parallel/2]).

-define(CALL, 1).

-type result() :: {ok, term()} | {error, term()}.
-type call_spec() :: {py:name(), py:name(), [term()]} |
                     {py:name(), py:name(), [term()], map()}.

%% @doc `Module.Function(*Args, **Kwargs)' with options (see `py'): on the
%% pool of the `pool' option, else the one registered for the module or
%% function, else `default'.
-spec call(py:name(), py:name(), [term()], map(), py:opts()) -> result().
call(Module, Function, Args, Kwargs, Opts) ->
    pyport_args:checked(
      fun() ->
              {Target, Timeout} = pyport_route:target(
                                    pyport_route:registered_pool(Module, Function, Opts)),
              Fields = pyport_args:call_fields(Module, Function, Args, Kwargs),
              {Target1, Fields1} = pyport_namespaces:route_main(Target, Fields),
              pyport_objects:call(Target1, ?CALL, Fields1, Timeout, Opts)
      end).

%% @doc A call through a context; `namespace => shared' looks `'__main__''
%% up in the context's shared globals.
-spec ctx_call(py:context(), py:name(), py:name(), [term()], map(), term()) -> result().
ctx_call(Ctx, Module, Function, Args, Kwargs, Opts) ->
    pyport_args:checked(
      fun() ->
              {Target, Timeout, Which} = pyport_route:ctx_target(Ctx, Opts),
              Fields = pyport_args:call_fields(Module, Function, Args, Kwargs),
              {Target1, Fields1} = case Which of
                                       shared ->
                                           pyport_namespaces:route_main_shared(Target, Fields);
                                       process ->
                                           pyport_namespaces:route_main(Target, Fields)
                                   end,
              pyport_objects:call(Target1, ?CALL, Fields1, Timeout, Opts)
      end).

%% @doc A call whose result nobody waits for (an exception is logged).
-spec cast(py:name(), py:name(), [term()], map(), py:opts()) -> ok | {error, term()}.
cast(Module, Function, Args, Kwargs, Opts) ->
    pyport_args:checked(
      fun() ->
              {Target, _Timeout} = pyport_route:target(Opts),
              pyport_request:cast(Target, pyport_args:call_fields(Module, Function, Args, Kwargs))
      end).

%% @doc {@link cast/5} through a context.
-spec ctx_cast(py:context(), py:name(), py:name(), [term()], map()) -> ok | {error, term()}.
ctx_cast(Ctx, Module, Function, Args, Kwargs) ->
    pyport_args:checked(
      fun() ->
              {Pool, Slot} = pyport_contexts:ctx_slot(Ctx),
              pyport_request:cast({slot, Pool, Slot},
                                  pyport_args:call_fields(Module, Function, Args, Kwargs))
      end).

%% @doc Starts a call whose answer comes as `{py_response, Ref, Result}'
%% (see {@link pyport_spawn}); bad arguments answer so at once.
-spec spawn(py:name(), py:name(), [term()], map(), py:opts()) -> reference().
spawn(Module, Function, Args, Kwargs, Opts) ->
    start_spawn(fun() ->
                        {Target, Timeout} = pyport_route:target(
                                              pyport_route:registered_pool(Module, Function, Opts)),
                        spawn_route(Target, Timeout, Module, Function, Args, Kwargs)
                end).

%% @doc {@link spawn/5} through a context (deadline `infinity').
-spec ctx_spawn(py:context(), py:name(), py:name(), [term()], map()) -> reference().
ctx_spawn(Ctx, Module, Function, Args, Kwargs) ->
    start_spawn(fun() ->
                        {Target, Timeout, _} = pyport_route:ctx_target(Ctx, infinity),
                        spawn_route(Target, Timeout, Module, Function, Args, Kwargs)
                end).

spawn_route(Target, Timeout, Module, Function, Args, Kwargs) ->
    {Target1, Fields} = pyport_namespaces:route_main(
                          Target, pyport_args:call_fields(Module, Function, Args, Kwargs)),
    {Target1, Fields, Timeout}.

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

%% @doc The calls on pool `default', all at once: `{ok, Values}' in order,
%% or the first error in that order (as erlang_python).
-spec parallel([call_spec()]) -> {ok, [term()]} | {error, term()}.
parallel(Calls) ->
    case parallel(Calls, #{}) of
        {ok, Results} -> first_error(Results, []);
        {error, _} = Error -> Error
    end.

first_error([], Acc) -> {ok, lists:reverse(Acc)};
first_error([{ok, V} | Rest], Acc) -> first_error(Rest, [V | Acc]);
first_error([{error, _} = Error | _], _Acc) -> Error.

%% @doc The calls spread over a pool's workers, all at once, answering
%% every call's outcome in order.
-spec parallel([call_spec()], py:opts()) -> {ok, [result()]} | {error, term()}.
parallel(Calls, Opts) when is_list(Calls) ->
    case pyport_args:checked(fun() -> pyport_route:options(Opts) end) of
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

parallel_fields({M, F, A}) -> pyport_args:call_fields(M, F, A, #{});
parallel_fields({M, F, A, Kw}) -> pyport_args:call_fields(M, F, A, Kw);
parallel_fields(Other) -> throw({error, {invalid_call, Other}}).

start_request(Fun) ->
    case pyport_args:checked(Fun) of
        {error, Reason} -> pyport_request:start_failed(Reason);
        Handle -> Handle
    end.
