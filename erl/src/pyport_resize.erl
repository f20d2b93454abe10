%% @doc Changing a pool's size at run time: the work of its `pyport_pool'
%% gen_server when asked to resize ({@link pyport_pool:resize/2}) or when
%% {@link pyport_autoscale} decides to.
%%
%% Slots are always 1..Size, so that shard keys (jump consistent hashing,
%% {@link pyport_pool:shard_slot/2}) move no more than that allows: growing
%% adds slots at the top, shrinking removes the top ones.
%%
%% <ul>
%% <li>Grow to N: the target becomes N, a worker is started for each new
%% slot (or a slot still draining is taken back), and once all are ready
%% the pool is published with size N. A worker that fails to start undoes
%% the whole grow: `{error, {worker_start_failed, Slot, Detail}}'.</li>
%% <li>Shrink to N: the pool is published with size N at once (no new
%% routed request reaches slots above N), then each leaving worker is told
%% to drain ({@link pyport_drain}): it keeps answering what it holds or
%% receives, and reports when it has been quiet for a while; it is then
%% stopped and its child removed.</li>
%% </ul>
%%
%% A worker gen_server restarted while its slot is above the target
%% drains at once too (it reads the target in its init), and the workers'
%% supervisor, when it restarts, starts the target's number of workers.
-module(pyport_resize).

-include_lib("kernel/include/logger.hrl").

-export([new/4, resize/2, handle_info/2, check_size/2, workers_sup_started/2]).

-export_type([state/0]).

-type state() :: #{name := pyport_config:pool_name(),
                   tab := ets:tid(),
                   pool_sup := pid() | undefined,
                   workers_sup := pid() | undefined,
                   auto := pyport_autoscale:state()}.

%% @doc The gen_server's state for pool `Name'.
-spec new(pyport_config:pool_name(), ets:tid(), pid() | undefined, pyport_autoscale:state()) ->
          state().
new(Name, Tab, PoolSup, Auto) ->
    #{name => Name, tab => Tab, pool_sup => PoolSup, workers_sup => undefined,
      auto => pyport_autoscale:start(Auto)}.

%% @doc Told by the workers' supervisor as it starts (it starts after the
%% routing owner, and again whenever it restarts).
-spec workers_sup_started(pyport_pool:info(), pid()) -> ok.
workers_sup_started(#{owner := Owner}, Sup) ->
    Owner ! {'$pyport_workers_sup', Sup},
    ok.

%% @doc Whether `N' is a size pool `Info' may take: an integer within
%% `[min, max]' for an elastic pool, `[1, capacity]' for a fixed one.
-spec check_size(pyport_pool:info(), term()) -> ok | {error, term()}.
check_size(#{name := Name}, N) when not is_integer(N) ->
    {error, {invalid_pool_size, Name, N}};
check_size(#{name := Name, elastic := true, opts := Opts}, N) ->
    case pyport_autoscale:bounds(Opts) of
        {Min, Max} when N < Min; N > Max -> {error, {pool_size_out_of_range, Name, N, {Min, Max}}};
        _ -> ok
    end;
check_size(#{name := Name}, N) when N < 1 ->
    {error, {pool_size_out_of_range, Name, N, {1, pyport_pool:capacity()}}};
check_size(#{name := Name}, N) ->
    case N > pyport_pool:capacity() of
        true -> {error, {pool_size_out_of_range, Name, N, {1, pyport_pool:capacity()}}};
        false -> ok
    end.

%% @doc Resizes to `N' (already checked).
-spec resize(pos_integer(), state()) -> {ok | {error, term()}, state()}.
resize(N, #{name := Name} = State0) ->
    State = known_workers_sup(State0),
    {ok, #{size := Size} = Info} = pyport_pool:info(Name),
    if
        N =:= Size -> {ok, State};
        N > Size -> grow(Size, N, Info, State);
        true -> {shrink(N, Info, State), State}
    end.

grow(_Size, _N, #{name := Name}, #{workers_sup := undefined} = State) ->
    {{error, {pool_starting, Name}}, State};
grow(Size, N, #{control := Control} = Info, #{workers_sup := Sup} = State) ->
    atomics:put(Control, 1, N),
    case start_slots(lists:seq(Size + 1, N), Info, Sup, []) of
        ok ->
            publish(Info#{size => N}),
            {ok, State};
        {error, Slot, Detail, Started} ->
            %% All or nothing: the pool keeps its size.
            atomics:put(Control, 1, Size),
            [stop_slot(Sup, S) || S <- Started],
            {{error, {worker_start_failed, Slot, Detail}}, State}
    end.

start_slots([], _Info, _Sup, _Started) ->
    ok;
start_slots([Slot | Rest], Info, Sup, Started) ->
    case child_pid(Sup, Slot) of
        {ok, Pid} ->
            %% Still draining: it stays.
            Pid ! '$pyport_rejoin',
            start_slots(Rest, Info, Sup, Started);
        none ->
            case sup(fun() -> supervisor:start_child(Sup, pyport_workers_sup:child_spec(Info, Slot)) end) of
                {ok, _} -> start_slots(Rest, Info, Sup, [Slot | Started]);
                {error, Reason} -> {error, Slot, start_detail(Reason), Started}
            end
    end.

%% supervisor:start_child/2 gives {error, {Reason, Child}}.
start_detail({{worker_start_failed, Detail}, _Child}) -> Detail;
start_detail({Reason, _Child}) -> Reason;
start_detail(Reason) -> Reason.

shrink(N, #{size := Size, control := Control} = Info, _State) ->
    atomics:put(Control, 1, N),
    publish(Info#{size => N}),
    [Pid ! '$pyport_leave' || Slot <- lists:seq(N + 1, Size),
                              {ok, Pid} <- [pyport_pool:worker(Info, Slot)]],
    ok.

%% Callers read the routing data from persistent_term: publishing a new
%% size costs a scan of the processes that hold the old one, which a
%% resize (rare next to calls) can afford.
publish(#{name := Name} = Info) ->
    persistent_term:put({pyport_pool, Name}, Info).

%% @doc The gen_server's other messages: a worker that drained, the
%% workers' supervisor starting, growth asked for, the idle check.
-spec handle_info(term(), state()) -> state().
handle_info({'$pyport_drained', Slot, Pid}, #{name := Name} = State0) ->
    State = known_workers_sup(State0),
    {ok, Info} = pyport_pool:info(Name),
    case Slot > pyport_pool:target(Info) andalso State of
        #{workers_sup := Sup} when is_pid(Sup) ->
            case child_pid(Sup, Slot) of
                {ok, Pid} -> stop_slot(Sup, Slot);
                _ -> ok                          % another incarnation: it reports itself
            end;
        _ ->
            ok                                   % taken back meanwhile
    end,
    State;
handle_info({'$pyport_workers_sup', Sup}, State) ->
    State#{workers_sup := Sup};
handle_info(Msg, #{name := Name, auto := Auto0} = State) ->
    case pyport_autoscale:handle_info(Msg, Name, Auto0) of
        {resize, N, Auto} ->
            {Reply, State1} = resize(N, State#{auto := Auto}),
            State1#{auto := pyport_autoscale:resized(Reply, Msg, Name, maps:get(auto, State1))};
        {ok, Auto} ->
            State#{auto := Auto};
        ignore ->
            ?LOG_WARNING("pyport pool ~tp: unexpected message ~tp", [Name, Msg],
                         #{domain => [pyport]}),
            State
    end.

stop_slot(Sup, Slot) ->
    _ = sup(fun() -> supervisor:terminate_child(Sup, {worker, Slot}) end),
    _ = sup(fun() -> supervisor:delete_child(Sup, {worker, Slot}) end),
    ok.

child_pid(Sup, Slot) ->
    case sup(fun() -> supervisor:which_children(Sup) end) of
        Children when is_list(Children) ->
            case [Pid || {{worker, S}, Pid, _, _} <- Children, S =:= Slot] of
                [Pid] when is_pid(Pid) -> {ok, Pid};
                _ -> none
            end;
        {error, _} ->
            none
    end.

%% The workers' supervisor may be stopping (the pool stops) or restarting:
%% a call to it that fails is an error, not a crash of the routing owner.
sup(Fun) ->
    try Fun()
    catch exit:Reason -> {error, {workers_supervisor, Reason}}
    end.

%% The workers' supervisor announces itself as it starts; should the
%% announcement not have arrived yet, it is asked for.
known_workers_sup(#{workers_sup := Sup} = State) when is_pid(Sup) ->
    case is_process_alive(Sup) of
        true -> State;
        false -> known_workers_sup(State#{workers_sup := undefined})
    end;
known_workers_sup(#{pool_sup := PoolSup} = State) when is_pid(PoolSup) ->
    receive
        {'$pyport_workers_sup', Sup} -> known_workers_sup(State#{workers_sup := Sup})
    after 0 ->
            State
    end;
known_workers_sup(State) ->
    State.
