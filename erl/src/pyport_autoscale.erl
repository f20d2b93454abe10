%% @doc Elastic pools (`min' < `max'): workers started on demand and
%% stopped when idle, decided in the pool's `pyport_pool' gen_server.
%%
%% <ul>
%% <li>Growth: a least-loaded call that finds every worker busy (the
%% least-loaded one already has a request in flight, or every worker is
%% unavailable) raises the pool's growth flag and tells the gen_server,
%% which starts one more worker (up to `max') and then lowers the flag; a
%% load that lasts raises it again. One atomic compare-and-swap per such
%% call: the gen_server hears of it once per worker started, not once per
%% call. Calls with a shard key or a context do not count (they cannot go
%% to a new worker).</li>
%% <li>Shrinking: every `idle_timeout' / 4 (50 ms to 1 s) the gen_server
%% looks at the workers above `min': one that answered nothing and held
%% nothing for `idle_timeout' ms is idle. The idle slots at the top of
%% the pool are removed (jump hashing needs the top slots to go first;
%% least-loaded routing of an elastic pool prefers low slots, so the top
%% ones are the ones that fall idle).</li>
%% </ul>
-module(pyport_autoscale).

-include_lib("kernel/include/logger.hrl").

-export([bounds/1, new/1, start/1, busy_hint/2, handle_info/3, resized/4]).

-export_type([state/0]).

-define(CHECK_MIN_MS, 50).
-define(CHECK_MAX_MS, 1000).
%% How long a worker has to answer the idle check before it counts as busy.
-define(ASK_MS, 200).
%% After a worker failed to start on demand, no other is tried for this long.
-define(RETRY_MS, 1000).

-opaque state() :: fixed
                 | #{min := pos_integer(), max := pos_integer(),
                     idle_timeout := pos_integer(), interval := pos_integer(),
                     %% per slot above min: its worker, what it had served,
                     %% and since when it has been idle (monotonic ms).
                     seen := #{pos_integer() => {pid(), non_neg_integer(), integer()}}}.

%% @doc A pool's `{min, max}' (both its `size' for a fixed pool, whose
%% validated options have them `undefined').
-spec bounds(map()) -> {pos_integer(), pos_integer()}.
bounds(#{size := Size} = Opts) ->
    {or_size(maps:get(min, Opts, undefined), Size), or_size(maps:get(max, Opts, undefined), Size)}.

or_size(undefined, Size) -> Size;
or_size(N, _Size) -> N.

%% @doc The autoscaling state of a pool with these options.
-spec new(map()) -> state().
new(Opts) ->
    case bounds(Opts) of
        {Min, Max} when Min < Max ->
            Idle = maps:get(idle_timeout, Opts, 60000),
            #{min => Min, max => Max, idle_timeout => Idle,
              interval => max(?CHECK_MIN_MS, min(?CHECK_MAX_MS, Idle div 4)), seen => #{}};
        _ ->
            fixed
    end.

%% @doc Starts the idle checks (in the pool's gen_server).
-spec start(state()) -> state().
start(fixed) ->
    fixed;
start(#{interval := Ms} = State) ->
    _ = erlang:send_after(Ms, self(), '$pyport_idle_check'),
    State.

%% @doc Called by a caller of an elastic pool with the load of the
%% least-loaded worker it found.
-spec busy_hint(pyport_pool:info(), term()) -> ok.
busy_hint(#{size := Size, max := Max}, _Load) when Size >= Max ->
    ok;
busy_hint(_Info, 0) ->
    ok;
busy_hint(#{control := Control, owner := Owner}, _Busy) ->
    case atomics:compare_exchange(Control, 2, 0, 1) of
        ok -> Owner ! '$pyport_grow', ok;
        _ -> ok                                 % already asked
    end.

%% @doc A message of the pool's gen_server that may be ours: `{resize, N,
%% State}' to resize, `{ok, State}' when handled, `ignore' when not ours.
-spec handle_info(term(), pyport_config:pool_name(), state()) ->
          {resize, pos_integer(), state()} | {ok, state()} | ignore.
handle_info('$pyport_grow', Name, State) ->
    case pyport_pool:info(Name) of
        {ok, #{size := Size, max := Max}} when Size < Max -> {resize, Size + 1, State};
        {ok, Info} -> lower_flag(Info), {ok, State}
    end;
handle_info('$pyport_grow_retry', Name, State) ->
    {ok, Info} = pyport_pool:info(Name),
    lower_flag(Info),
    {ok, State};
handle_info('$pyport_idle_check', Name, #{min := Min, interval := Ms} = State) ->
    _ = erlang:send_after(Ms, self(), '$pyport_idle_check'),
    {ok, #{size := Size} = Info} = pyport_pool:info(Name),
    Now = erlang:monotonic_time(millisecond),
    Slots = lists:seq(Min + 1, Size),
    Seen = maps:from_list([{Slot, observe(Info, Slot, Now, State)} || Slot <- Slots]),
    State1 = State#{seen := Seen},
    case idle_top(lists:reverse(Slots), Seen, Now, State1) of
        0 -> {ok, State1};
        Idle -> {resize, Size - Idle, State1}
    end;
handle_info(_Msg, _Name, fixed) ->
    ignore;
handle_info(_Msg, _Name, _State) ->
    ignore.

%% @doc After a resize asked by {@link handle_info/3}: growth may be asked
%% for again (at once, or after a pause if a worker failed to start).
-spec resized(ok | {error, term()}, term(), pyport_config:pool_name(), state()) -> state().
resized(ok, '$pyport_grow', Name, State) ->
    {ok, Info} = pyport_pool:info(Name),
    lower_flag(Info),
    State;
resized({error, Reason}, Msg, Name, State) ->
    ?LOG_WARNING("pyport pool ~tp: resizing on ~tp failed: ~tp", [Name, Msg, Reason],
                 #{domain => [pyport], pyport_pool => Name}),
    retry_later(Msg),
    State;
resized(ok, _Msg, _Name, State) ->
    State.

%% The growth flag stays up (no call asks again) until the retry.
retry_later('$pyport_grow') ->
    _ = erlang:send_after(?RETRY_MS, self(), '$pyport_grow_retry'),
    ok;
retry_later(_Msg) ->
    ok.

lower_flag(#{control := Control}) ->
    atomics:put(Control, 2, 0).

%% A worker's activity since the last check: busy (or another gen_server,
%% or one that does not answer in time) resets its idle time.
observe(Info, Slot, Now, #{seen := Seen}) ->
    case pyport_pool:worker(Info, Slot) of
        {ok, Pid} ->
            Served = try gen_server:call(Pid, info, ?ASK_MS) of
                         #{pending := 0, queued := 0, served := S} -> S;
                         _ -> busy
                     catch
                         exit:_ -> busy
                     end,
            case Seen of
                #{Slot := {Pid, Served, Since}} when is_integer(Served) -> {Pid, Served, Since};
                _ -> {Pid, Served, Now}
            end;
        error ->
            {undefined, busy, Now}
    end.

%% How many slots, from the top, have been idle for idle_timeout.
idle_top([], _Seen, _Now, _State) ->
    0;
idle_top([Slot | Lower], Seen, Now, #{idle_timeout := Idle} = State) ->
    case Seen of
        #{Slot := {_, Served, Since}} when is_integer(Served), Now - Since >= Idle ->
            1 + idle_top(Lower, Seen, Now, State);
        _ ->
            0
    end.
