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

-export([bind/1, bind/2, unbind/1, unbind_keep_namespace/1, bound_slot/1, namespace/1, namespace_slot/1]).

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
        Slot when is_integer(Slot) -> pyport_namespaces:drop(Pool, Slot);
        undefined -> ok
    end.

%% @doc Removes the binding only: the process's namespace stays (as
%% erlang_python's `py_context_router:unbind_context/0,1').
-spec unbind_keep_namespace(pyport_config:pool_name()) -> ok.
unbind_keep_namespace(Pool) ->
    _ = erase(?BIND(Pool)),
    ok.

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
    case get(?NS(Pool)) of
        Slot when is_integer(Slot) ->
            case pyport_pool:in_service(Pool, Slot) of
                true ->
                    ok;
                false ->
                    %% The pool shrank below it: freed, and made again.
                    ok = pyport_namespaces:drop(Pool, Slot),
                    _ = erase(?NS(Pool)),
                    ok
            end;
        undefined ->
            ok
    end,
    case slot_for_new_affinity(Pool) of
        {ok, Slot1} ->
            case pyport_namespaces:namespace(Pool, Slot1) of
                {ok, Ns} ->
                    put(?NS(Pool), Slot1),
                    {ok, Slot1, Ns};
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc The slot of the calling process's namespace on `Pool', if any.
-spec namespace_slot(pyport_config:pool_name()) -> pos_integer() | undefined.
namespace_slot(Pool) ->
    get(?NS(Pool)).

%% @doc Binds the calling process to slot `Slot' of `Pool' (a context it
%% chose, see py_context_router:bind_context/2).
-spec bind(pyport_config:pool_name(), pos_integer()) -> ok.
bind(Pool, Slot) ->
    put(?BIND(Pool), Slot),
    ok.

slot_for_new_affinity(Pool) ->
    case {bound_slot(Pool), get(?NS(Pool))} of
        {Slot, _} when is_integer(Slot) ->
            {ok, Slot};
        {undefined, Slot} when is_integer(Slot) ->
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
