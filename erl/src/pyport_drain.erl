%% @doc A worker leaving its pool (the pool shrank below its slot, see
%% {@link pyport_resize}): the worker's side.
%%
%% The slot is out of routing already (the pool's size is below it), so
%% no new routed request comes. A caller that read the routing data just
%% before may still send one: the worker keeps serving everything it
%% receives, and reports itself drained to the pool's gen_server only
%% when it holds nothing (no request in flight or queued), the slot's
%% in-flight counter is zero (callers count a request in before sending
%% it) and no request arrived during a whole check interval. A request in
%% transit is then one whose caller was descheduled for that long between
%% reading the routing data and counting itself in; the worker's stop
%% still answers it (`{error, {worker_exited, shutdown}}'), never loses it.
%%
%% Requests end by themselves (a call at its deadline, interrupted and if
%% need be killed, see {@link pyport_worker}); coroutine tasks and streams
%% still running `shutdown_timeout' ms after the leave began are cancelled
%% then, as when recycling, so that one that never ends cannot keep the
%% worker.
%%
%% While leaving, the worker starts no recycle (it is about to stop
%% anyway), and a recycle already under way does not start a new OS
%% process unless requests wait for one.
-module(pyport_drain).

-export([leave/3, rejoin/2, check/4, overdue/2]).

-export_type([leaving/0]).

%% How often a leaving worker looks at whether it is done.
-define(CHECK_MS, 100).

%% A check under way (the worker matches the tag): its tag; what the last check saw (requests received
%% so far, or `reported'), when the leave began, whether what runs was
%% cancelled.
-type leaving() :: {reference(), #{last := non_neg_integer() | undefined | reported,
                                     since := integer(), cancelled := boolean()}}.

%% @doc Starts leaving: out of least-loaded routing and of the pool's
%% `pg' group; the first check is scheduled.
-spec leave(pyport_pool:info(), pyport_config:pool_name(), pos_integer()) -> leaving().
leave(Info, Pool, Slot) ->
    pyport_pool:set_available(Info, Slot, false),
    leave_group(Pool),
    schedule({make_ref(), #{last => undefined, since => erlang:monotonic_time(millisecond),
                            cancelled => false}}).

%% @doc Taken back (the pool grew again before the worker stopped).
-spec rejoin(leaving(), pyport_config:pool_name()) -> ok.
rejoin(_Leaving, Pool) ->
    pyport_cluster:join(Pool).

%% @doc One check: `Held' is `{Requests, Received}' of the worker (those
%% in flight or queued, and a figure that grows with each request
%% received), `Idle' whether it holds nothing else (casts, internal
%% requests). Returns the next state; reports to the pool's gen_server
%% once done.
-spec check(leaving(), pyport_pool:info(), pos_integer(),
            {{non_neg_integer(), non_neg_integer()}, boolean()}) -> leaving().
check({_Ref, #{last := reported}} = Leaving, _Info, _Slot, _Held) ->
    Leaving;
check({Ref, #{last := Last} = L}, #{counters := C, owner := Owner}, Slot,
      {{Held, Received}, Idle}) ->
    case Held =:= 0 andalso Idle andalso counters:get(C, Slot) =< 0 andalso Received =:= Last of
        true ->
            Owner ! {'$pyport_drained', Slot, self()},
            {Ref, L#{last := reported}};
        false ->
            schedule({Ref, L#{last := Received}})
    end.

%% @doc Whether the tasks and streams still running are to be cancelled
%% now (once: `Grace' ms after the leave began).
-spec overdue(leaving(), non_neg_integer()) -> {boolean(), leaving()}.
overdue({Ref, #{cancelled := false, since := Since} = L}, Grace) ->
    case erlang:monotonic_time(millisecond) - Since >= Grace of
        true -> {true, {Ref, L#{cancelled := true}}};
        false -> {false, {Ref, L}}
    end;
overdue(Leaving, _Grace) ->
    {false, Leaving}.

schedule({Ref, _} = Leaving) ->
    _ = erlang:send_after(?CHECK_MS, self(), {'$pyport_leave_check', Ref}),
    Leaving.

leave_group(Pool) ->
    try pg:leave(pyport_cluster:scope(), {pyport_pool, Pool}, self()) of
        _ -> ok
    catch
        error:badarg -> ok                      % no scope (tests of parts)
    end.
