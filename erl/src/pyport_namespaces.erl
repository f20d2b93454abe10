%% @doc Per-process namespaces: the globals `py:eval'/`py:exec' of one
%% Erlang process use on one worker (a pool slot, or a context).
%%
%% A namespace is created on the process's first eval/exec on that worker
%% and used by every later one, so what `py:exec' defines stays visible to
%% that process only; `py:call(Ctx, '__main__', F, Args)' finds `F' there
%% (see {@link main_call/3}). The worker's gen_server registers it
%% synchronously (so the pool's `max_namespaces' can refuse it with
%% `{error, {too_many_namespaces, Max}}'), monitors the process and frees the
%% namespace in the worker when the process exits. Which namespace a process
%% has where is kept in its own dictionary: no central process is asked.
%% If the worker's OS process restarts, the namespace starts again empty,
%% as all Python state of that worker does.
-module(pyport_namespaces).

-export([namespace/2, lookup/2, drop/2, main_call/3, route_main/2, route_main_shared/2]).

-define(NS(Pool, Slot), {'$pyport_ns', Pool, Slot}).
%% How long registering a namespace may wait for the worker's gen_server.
-define(REGISTER_TIMEOUT_MS, 5000).

%% @doc The calling process's namespace number on `{Pool, Slot}', created
%% (and registered with its worker) on first use.
-spec namespace(atom(), pos_integer()) -> {ok, pos_integer()} | {error, term()}.
namespace(Pool, Slot) ->
    case worker(Pool, Slot) of
        {ok, Worker} ->
            case get(?NS(Pool, Slot)) of
                {Ns, Worker} -> {ok, Ns};
                %% A new gen_server for the slot: register with it.
                {Ns, _Old} -> register(Pool, Slot, Ns, Worker);
                undefined -> register(Pool, Slot, erlang:unique_integer([positive]), Worker)
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc The calling process's namespace on `{Pool, Slot}', if it has one.
-spec lookup(atom(), pos_integer()) -> {ok, pos_integer()} | none.
lookup(Pool, Slot) ->
    case get(?NS(Pool, Slot)) of
        {Ns, _Worker} -> {ok, Ns};
        undefined -> none
    end.

%% @doc Frees the calling process's namespace on `{Pool, Slot}' now.
-spec drop(atom(), pos_integer()) -> ok.
drop(Pool, Slot) ->
    case erase(?NS(Pool, Slot)) of
        {Ns, Worker} -> Worker ! {'$pyport_ns_drop', Ns}, ok;
        undefined -> ok
    end.

%% @doc The fields of a CALL of `F' in module `__main__' by the calling
%% process on `{Pool, Slot}': `F' as the process defined it with `py:exec'
%% there, else the worker's real `__main__' (erlang_python's meaning of
%% `'__main__'' in `py:call'). `Fields' are a CALL's `[M, F, Args, Kwargs]'.
-spec main_call(atom(), pos_integer(), [term()]) -> [term()].
main_call(Pool, Slot, [<<"__main__">>, F, Args, Kwargs]) ->
    case lookup(Pool, Slot) of
        {ok, Ns} -> [<<"erlang._namespaces">>, <<"call">>, [Ns, F, Args, Kwargs], #{}];
        none -> [<<"__main__">>, F, Args, Kwargs]
    end;
main_call(_Pool, _Slot, Fields) ->
    Fields.

%% @doc Where a call goes and its fields, `'__main__'' resolved: on a slot,
%% the caller's namespace there; for a pool, the slot the caller's
%% namespace is on (if any) and that namespace.
-spec route_main(pyport_request:target(), [term()]) -> {pyport_request:target(), [term()]}.
route_main({slot, Pool, Slot} = Target, [<<"__main__">> | _] = Fields) ->
    {Target, main_call(Pool, Slot, Fields)};
route_main({pool, Pool} = Target, [<<"__main__">> | _] = Fields) ->
    case pyport_affinity:namespace_slot(Pool) of
        undefined -> {Target, Fields};
        Slot -> {{slot, Pool, Slot}, main_call(Pool, Slot, Fields)}
    end;
route_main({output, Output, Inner}, Fields) ->
    {Target, Fields1} = route_main(Inner, Fields),
    {{output, Output, Target}, Fields1};
route_main(Target, Fields) ->
    {Target, Fields}.

%% @doc As {@link route_main/2}, `'__main__'' being the worker's shared
%% namespace (what `py_context:exec/2' defines).
-spec route_main_shared(pyport_request:target(), [term()]) ->
          {pyport_request:target(), [term()]}.
route_main_shared(Target, [<<"__main__">>, F, Args, Kwargs]) ->
    {Target, [<<"erlang._namespaces">>, <<"call">>, [0, F, Args, Kwargs], #{}]};
route_main_shared(Target, Fields) ->
    {Target, Fields}.

register(Pool, Slot, Ns, Worker) ->
    try gen_server:call(Worker, {'$pyport_ns_register', self(), Ns}, ?REGISTER_TIMEOUT_MS) of
        ok ->
            put(?NS(Pool, Slot), {Ns, Worker}),
            {ok, Ns};
        {error, _} = Error ->
            Error
    catch
        exit:{timeout, _} -> {error, timeout};
        exit:{Reason, _} -> {error, {worker_exited, Reason}}
    end.

worker(Pool, Slot) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case pyport_pool:worker(Info, Slot) of
                {ok, Pid} -> {ok, Pid};
                error -> {error, {no_worker, Pool, Slot}}
            end;
        {error, _} = Error ->
            Error
    end.
