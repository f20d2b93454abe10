%% @doc Where a request of the public API goes, and with what timeout: its
%% options checked (`timeout', `pool', `shard', `node', `output' and the
%% conversion options of {@link pyport_objects}; through a context
%% erlang_python's map: `timeout', `namespace', `output', conversion
%% options, other keys ignored) and turned into a {@link
%% pyport_request:target()}. A bad option is thrown as `{error,
%% {invalid_option, Key, Value}}' or `{error, {bad_option, Key}}'.
%%
%% Without a context: a shard key if given; else the worker the process is
%% bound to; else the pool (its least-loaded worker). eval/exec run in the
%% calling process's own namespace unless a shard, node or cluster was
%% asked for (then the worker's shared globals).
-module(pyport_route).

-export([options/1, target/1, code_target/1, ctx_target/2,
         ctx_code_target/2, registered_pool/3]).

-define(DEFAULT_POOL, default).
%% eval/exec in the worker's shared globals (PROTOCOL.md, Namespace).
-define(SHARED_NAMESPACE, 0).

-type opts() :: #{pool := atom() | {cluster, atom()}, timeout := timeout() | default,
                  shard => term(), node => node(), output => caller | logger,
                  atom() => term()}.
-type ctx_opts() :: #{timeout := timeout() | default, namespace := process | shared,
                      output => caller | logger}.

%% @doc The options of a context-less request (a timeout or a map), with
%% the defaults `pool => default', `timeout => default' (the pool's
%% `call_timeout').
-spec options(py:opts()) -> opts().
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

%% @doc Where a call goes, and its timeout.
-spec target(py:opts()) -> {pyport_request:target(), timeout() | default}.
target(Opts) ->
    #{timeout := Timeout} = O = options(Opts),
    {with_output(O, remote(O, local_call_target(O))), Timeout}.

%% @doc Where an eval/exec goes, its timeout and its namespace: the calling
%% process's own, unless another route was asked for.
-spec code_target(py:opts()) ->
          {pyport_request:target(), timeout() | default, non_neg_integer()}.
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

%% The options of a request through a context: a timeout, or
%% erlang_python's map (its timeout `infinity' unless given, the
%% erlang_python default for context calls; `namespace' `process').
-spec ctx_options(term()) -> ctx_opts().
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

%% @doc Where a call through a context goes (its pool and slot), its
%% timeout and where its `'__main__'' is (the `namespace' option).
-spec ctx_target(py:context(), term()) ->
          {pyport_request:target(), timeout() | default, process | shared}.
ctx_target(Ctx, Opts) ->
    {Pool, Slot} = pyport_contexts:ctx_slot(Ctx),
    #{timeout := Timeout, namespace := Which} = O = ctx_options(Opts),
    {with_output(O, {slot, Pool, Slot}), Timeout, Which}.

%% @doc Where an eval/exec through a context goes, its timeout and its
%% namespace (`process': the caller's own there; `shared': the globals).
-spec ctx_code_target(py:context(), term()) ->
          {pyport_request:target(), timeout() | default, non_neg_integer()}.
ctx_code_target(Ctx, Opts) ->
    {Pool, Slot} = pyport_contexts:ctx_slot(Ctx),
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

%% @doc A context-less call's options with its pool: the `pool' option,
%% else the registration of its module or function ({@link
%% pyport_contexts:register_pool/2}), else `default'.
-spec registered_pool(py:name(), py:name(), py:opts()) -> py:opts().
registered_pool(Module, Function, Opts) when is_map(Opts) ->
    case is_map_key(pool, Opts) of
        true -> Opts;
        false -> registered(Module, Function, Opts)
    end;
registered_pool(Module, Function, Timeout) ->
    registered(Module, Function, #{timeout => Timeout}).

registered(Module, Function, Opts) ->
    case pyport_contexts:lookup_pool(pyport_args:safe_name(Module),
                                     pyport_args:safe_name(Function)) of
        ?DEFAULT_POOL -> Opts;
        Pool -> Opts#{pool => Pool}
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

%% A call's own `output' option travels with its target (pyport_output).
with_output(#{output := Where}, Target) -> {output, Where, Target};
with_output(_Opts, Target) -> Target.

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
