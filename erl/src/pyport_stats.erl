%% @doc Counters of each pool and worker: calls and their outcomes, a
%% latency histogram, interrupts, OS-process restarts and recycles with
%% their reasons ({@link pyport:stats/0,1}; docs/metrics.md).
%%
%% Cheap on the call path: no process and no message. A caller counts its
%% own call, when it has its answer, with one `ets:update_counter/4' on its
%% slot's row of the pool's table (public, `write_concurrency'); the
%% worker's gen_server counts interrupts, restarts and recycles the same
%% way. The table is found through `persistent_term'.
%%
%% Lifetime: the table belongs to the pool's routing owner ({@link
%% pyport_pool}, which ignores the `ETS-TRANSFER' message): it survives
%% every worker restart, its gen_server's too, and goes with the pool.
%% A pool started again under the same name starts from zero.
-module(pyport_stats).

-export([attach/2, call_done/4, rejected/3, interrupted/2, os_process_ended/5,
         stats/0, stats/1, buckets/0, error_kind/1, recycle_kind/1, restart_kind/1]).

-export_type([pool_stats/0, outcome/0]).

-type outcome() :: ok | python_error | timeout | worker_exited | overloaded | other_error.
-type pool_stats() :: #{atom() => term()}.

%% Row {Slot, ...}: the positions of the fixed counters.
-define(CALLS, 2).
-define(OK, 3).
-define(PYTHON_ERROR, 4).
-define(TIMEOUT, 5).
-define(WORKER_EXITED, 6).
-define(OVERLOADED, 7).
-define(OTHER_ERROR, 8).
-define(INTERRUPTS, 9).
-define(RESTARTS, 10).
-define(RECYCLES, 11).
-define(STARTS, 12).
-define(LATENCY_SUM_US, 13).
-define(FIRST_BUCKET, 14).
%% Latency buckets: below 64 µs, then each twice the one before, up to
%% 2^26 µs (about 67 s), then one for everything longer.
-define(FIRST_BOUND_US, 64).
-define(LAST_BOUND_US, 67108864).
-define(NBUCKETS, 22).
-define(ROW_SIZE, (?FIRST_BUCKET + ?NBUCKETS - 1)).

-define(KEY(Pool), {?MODULE, Pool}).
%% How long stats/1 waits for a worker's queue length.
-define(INFO_TIMEOUT_MS, 500).

%%%===================================================================
%%% Counting
%%%===================================================================

%% @doc Called by a worker's gen_server as it starts: makes the pool's table
%% if this is the pool's first worker, and counts the start of slot `Slot'.
-spec attach(pyport_pool:info(), pos_integer()) -> ok.
attach(#{name := Pool, tab := RoutingTab}, Slot) ->
    Tab = case persistent_term:get(?KEY(Pool), undefined) of
              {RoutingTab, T} -> T;
              _ -> create(Pool, RoutingTab)
          end,
    _ = ets:update_counter(Tab, Slot, {?STARTS, 1}, empty_row(Slot)),
    ok.

%% Two workers of a new pool may start at once: one makes the table.
create(Pool, RoutingTab) ->
    global:trans({?KEY(Pool), self()},
                 fun() ->
                         case persistent_term:get(?KEY(Pool), undefined) of
                             {RoutingTab, T} ->
                                 T;
                             _ ->
                                 T = ets:new(pyport_stats, [set, public, {write_concurrency, true}]),
                                 %% The routing owner outlives this worker.
                                 true = ets:give_away(T, ets:info(RoutingTab, owner), pyport_stats),
                                 persistent_term:put(?KEY(Pool), {RoutingTab, T}),
                                 T
                         end
                 end, [node()]).

empty_row(Slot) ->
    erlang:make_tuple(?ROW_SIZE, 0, [{1, Slot}]).

%% @doc A call on `Slot' of `Pool' finished with `Result' after
%% `Native' (erlang:monotonic_time/0 units).
-spec call_done(atom(), pos_integer(), {ok, term()} | {error, term()}, integer()) -> ok.
call_done(Pool, Slot, Result, Native) ->
    case persistent_term:get(?KEY(Pool), undefined) of
        {_, Tab} ->
            Us = erlang:convert_time_unit(Native, native, microsecond),
            Ops = [{?CALLS, 1}, {outcome_pos(Result), 1}, {?LATENCY_SUM_US, Us},
                   {bucket(Us, ?FIRST_BOUND_US, ?FIRST_BUCKET), 1}],
            update(Tab, Slot, Ops);
        undefined ->
            ok
    end.

%% @doc A call refused before it was sent (`overloaded': the slot was at
%% the pool's max_inflight).
-spec rejected(atom(), pos_integer(), overloaded) -> ok.
rejected(Pool, Slot, overloaded) ->
    bump(Pool, Slot, [{?CALLS, 1}, {?OVERLOADED, 1}]).

%% @doc The worker of `Slot' sent an INTERRUPT (a caller's timeout or
%% py:interrupt/1).
-spec interrupted(atom(), pos_integer()) -> ok.
interrupted(Pool, Slot) ->
    bump(Pool, Slot, [{?INTERRUPTS, 1}]).

%% @doc The OS process of `Slot' ended after `UptimeMs': it died
%% (`{exited, Detail}') or was recycled (`{recycled, Reason}'). Counted
%% with the kind of its reason ({@link restart_kind/1}, {@link
%% recycle_kind/1}), and told to telemetry (`[pyport, worker, exit]' or
%% `[pyport, worker, recycle]').
-spec os_process_ended(atom(), pos_integer(), non_neg_integer() | undefined, integer(),
                       {exited | recycled, term()}) -> ok.
os_process_ended(Pool, Slot, OsPid, UptimeMs, {How, Reason}) ->
    {Counter, What, Kind, Event} = case How of
                                       exited -> {?RESTARTS, restart, restart_kind(Reason), exit};
                                       recycled -> {?RECYCLES, recycle, recycle_kind(Reason),
                                                    recycle}
                                   end,
    bump(Pool, Slot, [{Counter, 1}]),
    bump_key(Pool, {Slot, What, Kind}),
    pyport_telemetry:worker_event(Event, #{uptime_ms => UptimeMs},
                                  #{pool => Pool, slot => Slot, os_pid => OsPid,
                                    reason => Reason, kind => Kind}).

bump(Pool, Slot, Ops) ->
    case persistent_term:get(?KEY(Pool), undefined) of
        {_, Tab} ->
            update(Tab, Slot, Ops);
        undefined ->
            ok
    end.

%% The row exists once the slot's worker started: the default row is
%% built only when it does not (a slot that shrank away meanwhile).
update(Tab, Slot, Ops) ->
    try ets:update_counter(Tab, Slot, Ops) of
        _ -> ok
    catch
        error:badarg ->
            try ets:update_counter(Tab, Slot, Ops, empty_row(Slot)) of
                _ -> ok
            catch
                error:badarg -> ok               % the pool is gone
            end
    end.

bump_key(Pool, Key) ->
    case persistent_term:get(?KEY(Pool), undefined) of
        {_, Tab} ->
            try ets:update_counter(Tab, Key, {2, 1}, {Key, 0}) of
                _ -> ok
            catch
                error:badarg -> ok
            end;
        undefined ->
            ok
    end.

outcome_pos({ok, _}) -> ?OK;
outcome_pos({error, Reason}) ->
    case error_kind(Reason) of
        python_error -> ?PYTHON_ERROR;
        timeout -> ?TIMEOUT;
        worker_exited -> ?WORKER_EXITED;
        overloaded -> ?OVERLOADED;
        other_error -> ?OTHER_ERROR
    end.

%% @doc The kind of a call's error, as counted and as telemetry's
%% `exception' events name it: `python_error' (an exception raised in
%% Python, `{Type, Message}'), `timeout', `worker_exited', `overloaded',
%% or `other_error' (a frame too large, a term that cannot be converted,
%% a protocol error, ...).
-spec error_kind(term()) -> python_error | timeout | worker_exited | overloaded | other_error.
error_kind(timeout) -> timeout;
error_kind({worker_exited, _}) -> worker_exited;
error_kind(overloaded) -> overloaded;
error_kind({Type, Message}) when is_atom(Type), is_binary(Message) -> python_error;
error_kind({Type, Message}) when is_binary(Type), is_binary(Message) -> python_error;
error_kind(_) -> other_error.

%% The bucket of a latency: its index in the row.
bucket(Us, Bound, Pos) when Us < Bound -> Pos;
bucket(_Us, Bound, Pos) when Bound > ?LAST_BOUND_US -> Pos;
bucket(Us, Bound, Pos) -> bucket(Us, Bound * 2, Pos + 1).

%% @doc The upper bounds (µs, exclusive) of the latency buckets, the last
%% one `infinity'.
-spec buckets() -> [pos_integer() | infinity].
buckets() ->
    [?FIRST_BOUND_US bsl I || I <- lists:seq(0, ?NBUCKETS - 2)] ++ [infinity].

%% @doc Why an OS process was replaced, as a few kinds (a worker decides
%% its exit details: counting them as they are could grow without bound).
-spec restart_kind(term()) -> atom().
restart_kind({exit_status, _}) -> exit_status;
restart_kind({signal, _}) -> signal;
restart_kind({interrupt_timeout, _}) -> interrupt_timeout;
restart_kind({flooding, _}) -> flooding;
restart_kind({frame_too_large, _, _}) -> frame_too_large;
restart_kind({bad_frame, _}) -> bad_frame;
restart_kind({port_closed, _}) -> port_closed;
restart_kind({timeout, _}) -> start_timeout;
restart_kind({init_failed, _, _}) -> init_failed;
restart_kind({config_error, _, _}) -> config_error;
restart_kind({cannot_execute, _, _}) -> cannot_execute;
restart_kind(_) -> other.

%% @doc Why an OS process was recycled, as a few kinds.
-spec recycle_kind(term()) -> atom().
recycle_kind({max_requests, _}) -> max_requests;
recycle_kind({max_rss, _, _}) -> max_rss;
recycle_kind(requested) -> requested;
recycle_kind(no_runner) -> no_runner;
recycle_kind(_) -> other.

%%%===================================================================
%%% Reading
%%%===================================================================

%% @doc The stats of every running pool, by name.
-spec stats() -> #{atom() => pool_stats()}.
stats() ->
    maps:from_list([{Pool, S} || Pool <- pyport:pools(), {ok, S} <- [stats(Pool)]]).

%% @doc The stats of one pool: totals over its slots, and per worker.
-spec stats(atom()) -> {ok, pool_stats()} | {error, {no_pool, atom()}}.
stats(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{tab := RoutingTab, size := Size} = Info} ->
            Tab = case persistent_term:get(?KEY(Pool), undefined) of
                      {RoutingTab, T} -> T;
                      _ -> undefined
                  end,
            Slots = slots(Tab, Size),
            Queued = queued(Info, Slots),
            Workers = [worker_stats(Tab, Info, Slot, maps:get(Slot, Queued))
                       || Slot <- Slots],
            {ok, (totals(Workers))#{pool => Pool, size => Size, workers => Workers}};
        {error, _} = Error ->
            %% A pool stopped: what it counted goes with it.
            _ = persistent_term:get(?KEY(Pool), undefined) =/= undefined andalso
                persistent_term:erase(?KEY(Pool)),
            Error
    end.

%% Every slot of the pool, and slots that counted something before it
%% shrank.
slots(undefined, Size) ->
    lists:seq(1, Size);
slots(Tab, Size) ->
    Counted = ets:select(Tab, [{'$1', [{is_integer, {element, 1, '$1'}}], [{element, 1, '$1'}]}]),
    lists:usort(lists:seq(1, Size) ++ Counted).

worker_stats(Tab, Info, Slot, Queued) ->
    Row = case Tab =/= undefined andalso ets:lookup(Tab, Slot) of
              [R] -> R;
              _ -> empty_row(Slot)
          end,
    Latency = [{Bound, element(?FIRST_BUCKET + I, Row)}
               || {I, Bound} <- lists:zip(lists:seq(0, ?NBUCKETS - 1), buckets())],
    #{slot => Slot,
      calls => element(?CALLS, Row),
      ok => element(?OK, Row),
      errors => #{python_error => element(?PYTHON_ERROR, Row),
                  timeout => element(?TIMEOUT, Row),
                  worker_exited => element(?WORKER_EXITED, Row),
                  overloaded => element(?OVERLOADED, Row),
                  other_error => element(?OTHER_ERROR, Row)},
      timeouts => element(?TIMEOUT, Row),
      interrupts => element(?INTERRUPTS, Row),
      restarts => element(?RESTARTS, Row),
      restart_reasons => reasons(Tab, Slot, restart),
      recycles => element(?RECYCLES, Row),
      recycle_reasons => reasons(Tab, Slot, recycle),
      owner_starts => element(?STARTS, Row),
      latency => #{buckets_us => Latency, sum_us => element(?LATENCY_SUM_US, Row)},
      in_flight => in_flight(Info, Slot),
      queued => Queued}.

reasons(undefined, _Slot, _What) ->
    #{};
reasons(Tab, Slot, What) ->
    maps:from_list(ets:select(Tab, [{{{Slot, What, '$1'}, '$2'}, [], [{{'$1', '$2'}}]}])).

in_flight(#{counters := C, size := Size}, Slot) when Slot =< Size ->
    counters:get(C, Slot);
in_flight(_Info, _Slot) ->
    0.

%% Requests each worker holds while its OS process restarts or drains,
%% by slot; `unknown' for a gen_server too busy to say in time. All are
%% asked at once: a few busy workers cost one wait, not one each.
queued(Info, Slots) ->
    Asked = [{Slot, case pyport_pool:worker(Info, Slot) of
                        {ok, Pid} -> gen_server:send_request(Pid, info);
                        error -> none
                    end} || Slot <- Slots],
    Deadline = erlang:monotonic_time(millisecond) + ?INFO_TIMEOUT_MS,
    maps:from_list([{Slot, answer(Request, Deadline)} || {Slot, Request} <- Asked]).

answer(none, _Deadline) ->
    0;
answer(Request, Deadline) ->
    %% An answer that comes too late is dropped (the request's alias is
    %% gone), never left in this process's mailbox.
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    case gen_server:receive_response(Request, Left) of
        {reply, #{queued := Q}} -> Q;
        _ -> unknown
    end.

totals(Workers) ->
    Sum = fun(Key) -> lists:sum([maps:get(Key, W) || W <- Workers]) end,
    SumMaps = fun(Key) ->
                      lists:foldl(fun(W, Acc) ->
                                          maps:fold(fun(K, V, A) -> A#{K => V + maps:get(K, A, 0)} end,
                                                    Acc, maps:get(Key, W))
                                  end, #{}, Workers)
              end,
    Buckets = case Workers of
                  [] -> [{B, 0} || B <- buckets()];
                  _ -> lists:foldl(fun(#{latency := #{buckets_us := L}}, Acc) ->
                                           [{B, N + M} || {{B, N}, {B, M}} <- lists:zip(L, Acc)]
                                   end, [{B, 0} || B <- buckets()], Workers)
              end,
    #{calls => Sum(calls), ok => Sum(ok), errors => SumMaps(errors),
      timeouts => Sum(timeouts), interrupts => Sum(interrupts),
      restarts => Sum(restarts), restart_reasons => SumMaps(restart_reasons),
      recycles => Sum(recycles), recycle_reasons => SumMaps(recycle_reasons),
      latency => #{buckets_us => Buckets,
                   sum_us => lists:sum([S || #{latency := #{sum_us := S}} <- Workers])},
      in_flight => Sum(in_flight),
      queued => lists:sum([Q || #{queued := Q} <- Workers, is_integer(Q)])}.
