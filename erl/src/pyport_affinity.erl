%% @doc Affinity of the calling process to workers: bindings
%% (`py:bind/0,1') and process-bound namespaces, both kept in the calling
%% process's dictionary, so routing needs no central process.
%%
%% A binding pins every call of the process on a pool to one slot until
%% `py:unbind/0,1' or the process exits (it holds nothing in the worker, so
%% nothing needs freeing).
%%
%% A process-bound namespace is the globals of `py:eval'/`py:exec' from one
%% process: created on a worker at the process's first eval/exec on a pool,
%% and used by all of them afterwards (which keeps them on that worker).
%% The worker's gen_server monitors the process and frees the namespace
%% when it exits or unbinds. If the worker's OS process restarts, the
%% namespace starts again empty, as every Python state of that worker does.
%%
%% When the pool shrinks below a binding's or a namespace's slot (see
%% {@link pyport_resize}), the process's next call moves it to a slot the
%% pool still has, the least-loaded one, as if its worker had restarted:
%% the old namespace is freed, the new one starts empty.
-module(pyport_affinity).

-export([bind/1, unbind/1, bound_slot/1, namespace/1]).

-define(BIND(Pool), {'$pyport_bind', Pool}).
-define(NS(Pool), {'$pyport_ns', Pool}).

%% @doc Binds the calling process to one worker of `Pool': the one its
%% namespace is on, else the least-loaded. Binding again keeps the slot.
-spec bind(pyport_config:pool_name()) -> ok | {error, term()}.
bind(Pool) ->
    case get(?BIND(Pool)) of
        undefined ->
            case slot_for_new_affinity(Pool) of
                {ok, Slot} ->
                    put(?BIND(Pool), Slot),
                    ok;
                {error, _} = Error ->
                    Error
            end;
        _Slot ->
            ok
    end.

%% @doc Removes the binding and frees the process's namespace on `Pool'.
-spec unbind(pyport_config:pool_name()) -> ok.
unbind(Pool) ->
    _ = erase(?BIND(Pool)),
    case erase(?NS(Pool)) of
        {_Slot, Ns, Worker} ->
            Worker ! {'$pyport_ns_drop', Ns},
            ok;
        undefined ->
            ok
    end.

%% @doc The slot the calling process is bound to on `Pool', if any; a
%% binding to a slot the pool no longer has moves to one it has.
-spec bound_slot(pyport_config:pool_name()) -> pos_integer() | undefined.
bound_slot(Pool) ->
    case get(?BIND(Pool)) of
        undefined ->
            undefined;
        Slot ->
            case pyport_pool:in_service(Pool, Slot) of
                true -> Slot;
                false -> rebind(Pool, Slot)
            end
    end.

rebind(Pool, Old) ->
    _ = erase(?BIND(Pool)),
    case slot_for_new_affinity(Pool) of
        {ok, Slot} ->
            put(?BIND(Pool), Slot),
            Slot;
        {error, _} ->
            %% No pool (or no worker) to move to: calls say so.
            put(?BIND(Pool), Old),
            Old
    end.

%% @doc The slot and namespace number of the calling process's namespace
%% on `Pool', created (and registered with its worker) on first use.
-spec namespace(pyport_config:pool_name()) ->
          {ok, pos_integer(), pos_integer()} | {error, term()}.
namespace(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case get(?NS(Pool)) of
                {Slot, Ns, Worker} when Slot > map_get(size, Info) ->
                    %% The pool shrank below it: freed, and made again.
                    Worker ! {'$pyport_ns_drop', Ns},
                    _ = erase(?NS(Pool)),
                    namespace(Pool);
                {Slot, Ns, Worker} ->
                    case pyport_pool:worker(Info, Slot) of
                        {ok, Worker} -> {ok, Slot, Ns};
                        %% A new gen_server for the slot: register with it.
                        {ok, New} -> register(Pool, Slot, Ns, New);
                        error -> {error, {no_worker, Pool, Slot}}
                    end;
                undefined ->
                    case slot_for_new_affinity(Pool) of
                        {ok, Slot} ->
                            case pyport_pool:worker(Info, Slot) of
                                {ok, Worker} ->
                                    register(Pool, Slot, erlang:unique_integer([positive]), Worker);
                                error ->
                                    {error, {no_worker, Pool, Slot}}
                            end;
                        {error, _} = Error ->
                            Error
                    end
            end;
        {error, _} = Error ->
            Error
    end.

%% The message goes before any request of this process to that worker, so
%% the worker monitors the process before it runs code in the namespace.
register(Pool, Slot, Ns, Worker) ->
    Worker ! {'$pyport_ns', self(), Ns},
    put(?NS(Pool), {Slot, Ns, Worker}),
    {ok, Slot, Ns}.

slot_for_new_affinity(Pool) ->
    case {bound_slot(Pool), get(?NS(Pool))} of
        {Slot, _} when is_integer(Slot) ->
            {ok, Slot};
        {undefined, {Slot, _, _}} ->
            case pyport_pool:in_service(Pool, Slot) of
                true -> {ok, Slot};
                false -> least_loaded(Pool)
            end;
        {undefined, undefined} ->
            least_loaded(Pool)
    end.

least_loaded(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case pyport_pool:pick(Info) of
                {ok, Slot, _Pid} -> {ok, Slot};
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.
