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

%% @doc The slot the calling process is bound to on `Pool', if any.
-spec bound_slot(pyport_config:pool_name()) -> pos_integer() | undefined.
bound_slot(Pool) ->
    get(?BIND(Pool)).

%% @doc The slot and namespace number of the calling process's namespace
%% on `Pool', created (and registered with its worker) on first use.
-spec namespace(pyport_config:pool_name()) ->
          {ok, pos_integer(), pos_integer()} | {error, term()}.
namespace(Pool) ->
    case slot_for_new_affinity(Pool) of
        {ok, Slot} ->
            case pyport_namespaces:namespace(Pool, Slot) of
                {ok, Ns} ->
                    put(?NS(Pool), Slot),
                    {ok, Slot, Ns};
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
    case {get(?BIND(Pool)), get(?NS(Pool))} of
        {Slot, _} when is_integer(Slot) ->
            {ok, Slot};
        {undefined, Slot} when is_integer(Slot) ->
            {ok, Slot};
        {undefined, undefined} ->
            case pyport_pool:info(Pool) of
                {ok, Info} ->
                    case pyport_pool:pick(Info) of
                        {ok, Slot, _Pid} -> {ok, Slot};
                        {error, _} = Error -> Error
                    end;
                {error, _} = Error ->
                    Error
            end
    end.
