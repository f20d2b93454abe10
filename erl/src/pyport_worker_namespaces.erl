%% @doc Process-bound namespaces of a worker (see {@link
%% pyport_namespaces}), kept by its port owner: a caller registers its
%% namespace, the owner monitors the caller and frees the namespace in the
%% worker (`CONTROL drop_namespace') when the caller exits or drops it.
-module(pyport_worker_namespaces).

-include("pyport_worker.hrl").

-export([register_checked/3, register/3, drop/2, owner_down/2]).

%% @doc Registers `Ns' for `Owner' within the pool's `max_namespaces',
%% which bounds the monitors here and the globals in the worker.
-spec register_checked(pid(), pos_integer(), #state{}) ->
          {ok | {error, {too_many_namespaces, pos_integer()}}, #state{}}.
register_checked(Owner, Ns, #state{monitor_by_ns = ByNs, opts = Opts} = State) ->
    Max = maps:get(max_namespaces, Opts, 10000),
    case is_map_key(Ns, ByNs) orelse map_size(ByNs) < Max of
        true -> {ok, register(Owner, Ns, State)};
        false -> {{error, {too_many_namespaces, Max}}, State}
    end.

%% @doc Registers `Ns' for `Owner' (once: a second registration is a no-op).
-spec register(pid(), pos_integer(), #state{}) -> #state{}.
register(Owner, Ns, #state{monitor_by_ns = ByNs, ns_by_monitor = ByMon} = State) ->
    case is_map_key(Ns, ByNs) of
        true ->
            State;
        false ->
            Mon = erlang:monitor(process, Owner),
            State#state{monitor_by_ns = ByNs#{Ns => Mon}, ns_by_monitor = ByMon#{Mon => Ns}}
    end.

%% @doc Its owner gives `Ns' up.
-spec drop(pos_integer(), #state{}) -> #state{}.
drop(Ns, #state{monitor_by_ns = ByNs} = State) ->
    case maps:take(Ns, ByNs) of
        {Mon, Rest} ->
            erlang:demonitor(Mon, [flush]),
            drop_in_worker(Ns, State#state{monitor_by_ns = Rest,
                                           ns_by_monitor = maps:remove(Mon, State#state.ns_by_monitor)});
        error ->
            State
    end.

%% @doc A monitored process exited: its namespace, if it had one, goes.
-spec owner_down(reference(), #state{}) -> #state{}.
owner_down(Mon, #state{ns_by_monitor = ByMon} = State) ->
    case maps:take(Mon, ByMon) of
        {Ns, Rest} ->
            drop_in_worker(Ns, State#state{ns_by_monitor = Rest,
                                           monitor_by_ns = maps:remove(Ns, State#state.monitor_by_ns)});
        error ->
            State
    end.

%% Frees a namespace in the worker, if the OS process that has it still
%% runs (a new one starts with none).
drop_in_worker(Ns, #state{status = Status} = State) when Status =:= up; Status =:= draining ->
    pyport_worker_requests:internal_request(?CONTROL, [<<"drop_namespace">>, Ns],
                                            {drop_namespace, Ns}, State);
drop_in_worker(_Ns, State) ->
    State.
