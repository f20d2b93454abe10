%% @doc Keeps a slot's in-flight counter (the `counters' array of the
%% pool's routing data, see {@link pyport_pool}) true across the deaths of
%% its worker gen_server.
%%
%% Callers count a request in before they send it to the slot's gen_server;
%% the gen_server counts it out when it is finished. A gen_server killed
%% with requests in flight never counts those out, and callers that picked
%% its pid just before a new one registered count in requests that nobody
%% receives. So:
%%
%% <ul>
%% <li>a new gen_server starts its slot from zero ({@link reset/2}), as it
%%   registers (what was sent to the one before died with it);</li>
%% <li>every second it compares the counter with the requests it really
%%   holds ({@link check/4}). When neither has changed for a whole interval
%%   and no request arrived meanwhile, nothing is in transit, so any
%%   difference is a count nobody will ever undo: it is corrected. A busy
%%   slot is left alone until it is quiet for a second.</li>
%% </ul>
-module(pyport_inflight).

-export([reset/2, check/4]).
-export_type([snapshot/0]).

-opaque snapshot() :: {integer(), non_neg_integer(), non_neg_integer()} | undefined.

%% @doc Starts the slot's count from zero.
-spec reset(pyport_pool:info(), pos_integer()) -> ok.
reset(#{counters := C}, Slot) ->
    counters:put(C, Slot, 0).

%% @doc One periodic check. `Held': the requests the gen_server holds now
%% (pending and queued, those callers counted in); `Received': how many
%% requests it has taken so far (any figure that grows with each). Returns
%% the snapshot to pass to the next check.
-spec check(pyport_pool:info(), pos_integer(), {non_neg_integer(), non_neg_integer()},
            snapshot()) -> snapshot().
check(#{counters := C}, Slot, {Held, Received}, Previous) ->
    Now = {counters:get(C, Slot), Held, Received},
    case Now of
        Previous when element(1, Now) =/= Held ->
            %% Quiet for a whole interval, yet the counter disagrees.
            counters:sub(C, Slot, element(1, Now) - Held),
            {Held, Held, Received};
        _ ->
            Now
    end.
