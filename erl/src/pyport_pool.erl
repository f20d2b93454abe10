%% @doc One pool's routing data, and how a caller picks a worker from it.
%%
%% The `pyport_pool' gen_server owns the pool's ETS table (slot → worker
%% pid, written by each worker in its init) and publishes, in
%% `persistent_term' under `{pyport_pool, Name}', everything a caller needs
%% to route a request without talking to any central process: the table,
%% a `counters' array of requests in flight per slot, and the pool's
%% limits. The gen_server itself is never on a call's path.
%%
%% In-flight accounting: the caller increments its slot's counter when it
%% sends a request; the worker decrements it once the request is finished
%% (answered, dropped, or failed because the OS process died). Counting on
%% the worker side keeps the figure true when a caller is killed while
%% waiting or gives up on a worker that is still busy with its request.
%% A worker gen_server that is killed cannot count out what it held: its
%% successor resets the slot and corrects it when quiet
%% ({@link pyport_inflight}).
%%
%% Availability: a worker that is draining (to be recycled) or stuck in a
%% request its caller gave up on marks its slot unavailable in an `atomics'
%% array; least-loaded routing skips such slots while any other is
%% available. Explicit routes (a context, a shard key, a binding) still
%% reach them: the worker holds those requests until it is back.
%%
%% Size: the pool routes over slots 1..`size'. The gen_server changes it
%% at run time ({@link resize/2}, and on demand between `min' and `max',
%% see {@link pyport_resize} and {@link pyport_autoscale}) by publishing a
%% new `info()'; the counters and availability arrays are allocated for
%% the largest size a pool may have, so they never change. A slot above
%% `size' takes no new routed request (its worker drains and stops).

-module(pyport_pool).
-behaviour(gen_server).

-export([start_link/2, start_link/3, info/1, pick/1, worker/2, shard_slot/2, set_available/3,
         decode_limits/1, resize/2, in_service/2, target/1, capacity/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
%% Whether a slot takes work now (pyport_payloads).
-export([available/2]).

-export_type([info/0]).

%% What callers read from persistent_term.
-type info() :: #{name := pyport_config:pool_name(),
                  tab := ets:tid(),
                  counters := counters:counters_ref(),
                  unavailable := atomics:atomics_ref(),
                  max_inflight := pos_integer() | infinity,
                  size := pos_integer(),
                  %% The size the pool is heading for (1) and the on-demand
                  %% growth flag (2); see pyport_resize.
                  control := atomics:atomics_ref(),
                  owner := pid(),
                  %% min < max: workers started on demand, stopped when idle.
                  elastic := boolean(),
                  max := pos_integer(),
                  max_frame_size := pos_integer(),
                  call_timeout := timeout(),
                  grants := pyport_grants:grants(),
                  decode_limits := pyport_limits:limits(),
                  opts := pyport_config:pool_opts()}.

%% Above this size a caller samples two slots instead of reading them all.
-define(SCAN_ALL_MAX, 8).

%% The node's largest pool: the arrays of every pool have this many slots.
-define(CAPACITY, pyport_config:max_value(size)).
%% Elastic pools up to this size compare every slot on each call.
-define(SCAN_ELASTIC_MAX, 64).

%% @doc Starts the pool's routing owner. Workers start after it.
-spec start_link(pyport_config:pool_name(), pyport_config:pool_opts()) ->
          {ok, pid()} | {error, term()}.
start_link(Name, Opts) ->
    start_link(Name, Opts, undefined).

%% @doc Starts the pool's routing owner under supervisor `PoolSup'.
-spec start_link(pyport_config:pool_name(), pyport_config:pool_opts(), pid() | undefined) ->
          {ok, pid()} | {error, term()}.
start_link(Name, Opts, PoolSup) ->
    gen_server:start_link(?MODULE, {Name, Opts, PoolSup}, []).

%% @doc The most slots any pool may have (`pyport_config:max_value(size)').
-spec capacity() -> pos_integer().
capacity() ->
    ?CAPACITY.

%% @doc Resizes pool `Name' to `N' workers: growing starts the new
%% workers and returns once they take requests; shrinking takes the slots
%% above `N' out of routing at once and returns, their workers finishing
%% what they hold before they stop (see {@link pyport_resize}).
-spec resize(term(), term()) -> ok | {error, term()}.
resize(Name, N) ->
    case info(Name) of
        {ok, #{owner := Owner} = Info} ->
            case pyport_resize:check_size(Info, N) of
                ok ->
                    try gen_server:call(Owner, {resize, N}, infinity)
                    catch exit:_ -> {error, {no_pool, Name}}
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc Whether `Slot' is one the pool routes to now (not above its size).
-spec in_service(pyport_config:pool_name(), pos_integer()) -> boolean().
in_service(Name, Slot) ->
    case persistent_term:get({pyport_pool, Name}, undefined) of
        #{size := Size} -> Slot =< Size;
        undefined -> false
    end.

%% @doc The size the pool is heading for: a worker of a slot above it
%% leaves the pool.
-spec target(info()) -> pos_integer().
target(#{control := Control}) ->
    atomics:get(Control, 1).

%% @doc The routing data of pool `Name'.
-spec info(term()) -> {ok, info()} | {error, {no_pool, term()}}.
info(Name) ->
    case persistent_term:get({pyport_pool, Name}, undefined) of
        undefined -> {error, {no_pool, Name}};
        Info -> {ok, Info}
    end.

%% @doc What decoding an answer of pool `Name' may cost (see {@link
%% pyport_limits}); for a pool that is gone, the defaults without new atoms.
-spec decode_limits(term()) -> pyport_limits:limits().
decode_limits(Name) ->
    case persistent_term:get({pyport_pool, Name}, undefined) of
        #{decode_limits := Limits} -> Limits;
        undefined -> pyport_limits:existing_atoms_only(pyport_limits:default())
    end.

%% @doc Picks the least-loaded live worker of a pool: every slot is read for
%% small pools, two random slots (the less loaded wins) for larger ones.
%% Slots marked unavailable come last.
-spec pick(info()) -> {ok, pos_integer(), pid()} | {error, {no_workers, atom()}}.
pick(#{elastic := true, size := Size} = Info) when Size =< ?SCAN_ELASTIC_MAX ->
    %% Ties go to the lowest slot, so that the top slots fall idle (and
    %% stop) when the load drops; a busy least-loaded worker asks for one
    %% more (pyport_autoscale).
    Ranked = lists:keysort(1, [{load(Info, Slot), Slot} || Slot <- lists:seq(1, Size)]),
    pyport_autoscale:busy_hint(Info, element(1, hd(Ranked))),
    first_live(Info, [Slot || {_, Slot} <- Ranked]);
pick(#{size := Size} = Info) when Size =< ?SCAN_ALL_MAX ->
    %% Scanning from a varying start spreads idle-time calls over all slots.
    Start = erlang:unique_integer([positive]) rem Size,
    Order = [(Start + I) rem Size + 1 || I <- lists:seq(0, Size - 1)],
    Ranked = lists:keysort(1, [{load(Info, Slot), Slot} || Slot <- Order]),
    first_live(Info, [Slot || {_, Slot} <- Ranked]);
pick(#{size := Size} = Info) ->
    A = rand:uniform(Size),
    B = case rand:uniform(Size - 1) of
            N when N >= A -> N + 1;
            N -> N
        end,
    First = case load(Info, A) =< load(Info, B) of
                true -> [A, B];
                false -> [B, A]
            end,
    case Info of
        #{elastic := true} -> pyport_autoscale:busy_hint(Info, load(Info, hd(First)));
        #{} -> ok
    end,
    case [S || S <- First, available(Info, S)] of
        [] ->
            pick_any(Info);
        Available ->
            case first_live(Info, Available) of
                {ok, _, _} = Found -> Found;
                %% The sampled slots are between gen_server restarts.
                {error, _} -> pick_any(Info)
            end
    end.

%% Every slot, ranked: the fallback of sampling.
pick_any(#{size := Size} = Info) ->
    Ranked = lists:keysort(1, [{load(Info, Slot), Slot} || Slot <- lists:seq(1, Size)]),
    first_live(Info, [Slot || {_, Slot} <- Ranked]).

%% Requests in flight, with unavailable slots ranked after all others.
load(#{counters := C} = Info, Slot) ->
    case available(Info, Slot) of
        true -> counters:get(C, Slot);
        false -> {unavailable, counters:get(C, Slot)}
    end.

%% @doc Whether Slot takes work now: not restarting, draining or stuck.
-spec available(info(), pos_integer()) -> boolean().
available(#{unavailable := U}, Slot) ->
    atomics:get(U, Slot) =:= 0.

first_live(#{name := Name}, []) ->
    {error, {no_workers, Name}};
first_live(Info, [Slot | Rest]) ->
    case worker(Info, Slot) of
        {ok, Pid} -> {ok, Slot, Pid};
        error -> first_live(Info, Rest)
    end.

%% @doc Marks a slot available to least-loaded routing, or not.
-spec set_available(info(), pos_integer(), boolean()) -> ok.
set_available(#{unavailable := U}, Slot, true) -> atomics:put(U, Slot, 0);
set_available(#{unavailable := U}, Slot, false) -> atomics:put(U, Slot, 1).

%% @doc The slot (1..Size) of a shard key: jump consistent hashing (Lamping
%% and Veach) of the key's portable hash. The same key gives the same slot
%% on every node and across worker restarts; keys spread evenly; and when
%% a pool grows from N to N+1 slots only 1/(N+1) of the keys move.
-spec shard_slot(term(), pos_integer()) -> pos_integer().
shard_slot(Key, Size) ->
    %% phash2 gives 32 bits; two of them make the 64-bit key jump needs.
    Hash = (erlang:phash2(Key, 1 bsl 32) bsl 32) bor erlang:phash2({pyport, Key}, 1 bsl 32),
    jump(Hash, -1, 0, Size) + 1.

jump(_Key, B, J, Buckets) when J >= Buckets ->
    B;
jump(Key0, _B, J, Buckets) ->
    Key = (Key0 * 2862933555777941757 + 1) band 16#FFFFFFFFFFFFFFFF,
    Next = trunc((J + 1) * ((1 bsl 31) / ((Key bsr 33) + 1))),
    jump(Key, J, Next, Buckets).

%% @doc The worker pid currently registered for `Slot'.
%% A slot above the pool's size has none: its worker is leaving.
-spec worker(info(), pos_integer()) -> {ok, pid()} | error.
worker(#{size := Size}, Slot) when Slot > Size ->
    error;
worker(#{tab := Tab}, Slot) ->
    try ets:lookup_element(Tab, Slot, 2) of
        Pid -> {ok, Pid}
    catch
        %% No entry, or the table went away with a restarting pool.
        error:badarg -> error
    end.

%% @private
-spec init({pyport_config:pool_name(), pyport_config:pool_opts(), pid() | undefined}) ->
          {ok, map()}.
init({Name, #{size := Size, max_frame_size := Max, call_timeout := Timeout,
              max_inflight := MaxInflight} = Opts, PoolSup}) ->
    %% terminate/2 must run on shutdown to unpublish the pool.
    process_flag(trap_exit, true),
    Tab = ets:new(pyport_pool_workers, [set, public, {read_concurrency, true}]),
    Capacity = max(Size, ?CAPACITY),
    Control = atomics:new(2, []),
    atomics:put(Control, 1, Size),
    {Min, MaxSize} = pyport_autoscale:bounds(Opts),
    Info = #{name => Name,
             tab => Tab,
             counters => counters:new(Capacity, [write_concurrency]),
             unavailable => atomics:new(Capacity, []),
             max_inflight => MaxInflight,
             size => Size,
             control => Control,
             owner => self(),
             elastic => Min < MaxSize,
             max => MaxSize,
             max_frame_size => Max,
             call_timeout => Timeout,
             %% What the pool's Python code may reach (checked per frame).
             grants => pyport_grants:new(Name, Opts),
             decode_limits => pyport_limits:of_pool(Name, Opts),
             opts => Opts},
    persistent_term:put({pyport_pool, Name}, Info),
    {ok, pyport_resize:new(Name, Tab, PoolSup, pyport_autoscale:new(Opts))}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({resize, N}, _From, State) ->
    {Reply, State1} = pyport_resize:resize(N, State),
    {reply, Reply, State1};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'ETS-TRANSFER', _Tab, _From, pyport_stats}, State) ->
    %% The pool's stats table, handed over by its first worker (pyport_stats):
    %% owning it is all there is to do.
    {noreply, State};
handle_info(Msg, State) ->
    {noreply, pyport_resize:handle_info(Msg, State)}.

%% @private
-spec terminate(term(), map()) -> ok.
terminate(_Reason, #{name := Name, tab := Tab}) ->
    %% Callers then get {error, {no_pool, Name}} instead of a dead table;
    %% unless a new incarnation of the pool published itself meanwhile (its
    %% supervisor killed, this one stopping while the next one started).
    case persistent_term:get({pyport_pool, Name}, undefined) of
        #{tab := Tab} -> _ = persistent_term:erase({pyport_pool, Name});
        _ -> ok
    end,
    ok.
