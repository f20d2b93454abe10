%% @doc The requests of a worker, kept by its port owner ({@link
%% pyport_worker}): what was written to the OS process and who waits for
%% each answer (`pending'), what waits for the next OS process (`queue'),
%% the requests interrupted and the timers that kill an OS process that
%% does not give them up (`kill_timers'); forwarding each answer to whoever
%% waits for it, timeouts, interrupts, and answering every request
%% `{error, {worker_exited, _}}' when its OS process dies. Every request is
%% answered once: by its answer, an error, a timeout, or the worker's exit.
%%
%% A worker's bytes are hostile: an answer is routed only by the id of a
%% request this owner wrote to this OS process, so a forged id reaches
%% nobody else's caller.
-module(pyport_worker_requests).

-include_lib("kernel/include/logger.hrl").
-include("pyport_worker.hrl").

-export([request/4, request/5, reply_deadline/3, sent/1, count_out/1, held/1, cancel_in_worker/2,
         drop_queued/2, flush_queue/1, pending_for_caller/2, cancel/2, interrupt/2,
         interrupt_on_request/2, kill_unresponsive/2, purge_expired/1, fail_all/2,
         fail_all_pending/2, answer/3, schedule/3, is_call/1, update_availability/1,
         cancel_timer/1, internal_request/4]).

-type noreply() :: {noreply, #state{}} | {stop, term(), #state{}}.

%% @doc A call (answered raw to its alias): written to the OS process if it
%% takes work, else queued.
-spec request(reference(), pos_integer(), deadline(), iodata(), #state{}) -> #state{}.
request(Alias, _Id, _Deadline, _Frame, #state{status = stopping} = State) ->
    finish(Alias, {error, {worker_exited, shutdown}}, State),
    State;
request(Alias, Id, Deadline, Frame, State) ->
    case pyport_payloads:adopt(Id, Frame) of
        ok ->
            request1(Alias, Id, Deadline, Frame, State);
        lost ->
            %% Its payload region is gone (pyport_payloads): a caller still
            %% waiting sends it again with the binaries in the frame.
            finish(Alias, pyport_payloads:lost(), State),
            State
    end.

request1(Alias, Id, Deadline, Frame, #state{status = Status} = State) ->
    case expired(Deadline, now_ms()) of
        true ->
            %% The caller has given up already; tell it anyway in case it is
            %% a spawn_call whose await runs longer than the call's timeout.
            %% Not sent: its payload region (if any) is free again.
            pyport_payloads:answered(Id),
            finish(Alias, {error, timeout}, State),
            State;
        false when Status =:= up, map_size(State#state.kill_timers) =:= 0 ->
            pyport_worker_writer:send_request(State#state.port, Frame, max_frame_size(State)),
            sent(State#state{pending = maps:put(Id, {Alias, Deadline}, State#state.pending)});
        false ->
            %% Restarting, draining, or stuck in code whose caller gave up:
            %% held until the OS process (this one or the next) takes work.
            State#state{queue = queue:in({call, Alias, Id, Deadline, Frame}, State#state.queue)}
    end.

%% A request went to the OS process: max_requests reached means it takes
%% no more (they queue for the next one) and is recycled once idle.
-spec sent(#state{}) -> #state{}.
sent(#state{sent_here = N, opts = #{max_requests := Max}} = State) ->
    State1 = State#state{sent_here = N + 1},
    case is_integer(Max) andalso N + 1 >= Max of
        true -> pyport_worker:start_drain({max_requests, Max}, State1);
        false -> State1
    end.

%% A request is finished: count it out of the slot and answer its caller
%% (unless it gave up). Counted out first, here and in finish_entry/3: a
%% caller that has its answer finds the worker free for its next request
%% (least-loaded routing, max_inflight).
finish(abandoned, Reply, State) ->
    ok = count_out(State),
    pyport_payloads:drop(Reply, State#state.pool, State#state.slot);
finish(Alias, Reply, State) ->
    ok = count_out(State),
    Alias ! {Alias, pyport_payloads:bind(Alias, Reply)},
    ok.

%% A task or stream: written at once when the OS process takes work, else
%% queued. An expired task is answered `{error, timeout}' unsent.
-spec request(pos_integer(), entry(), iodata(), #state{}) -> #state{}.
request(_Id, Entry, _Frame, #state{status = stopping} = State) ->
    finish_entry(Entry, {error, {worker_exited, shutdown}}, State),
    State;
request(Id, Entry, Frame, State) ->
    case pyport_payloads:adopt(Id, Frame) of
        ok ->
            request1(Id, Entry, Frame, State);
        lost ->
            finish_entry(Entry, pyport_payloads:lost(), State),
            State
    end.

request1(Id, Entry, Frame, #state{status = Status} = State) ->
    case expired(entry_deadline(Entry), now_ms()) of
        true ->
            pyport_payloads:answered(Id),
            finish_entry(Entry, {error, timeout}, State),
            State;
        false when Status =:= up, map_size(State#state.kill_timers) =:= 0 ->
            pyport_worker_writer:send_request(State#state.port, Frame, max_frame_size(State)),
            sent(State#state{pending = maps:put(Id, Entry, State#state.pending)});
        false ->
            State#state{queue = queue:in({req, Id, Entry, Frame}, State#state.queue)}
    end.

%% Answers any kind of entry with a final (decoded) outcome.
finish_entry({task, _, _, _, _} = Entry, Result, State) ->
    ok = count_out(State),
    finish_task(Entry, Result);
finish_entry({stream, Consumer, Ref, _, _}, Result, State) ->
    ok = count_out(State),
    Consumer ! {py_stream, Ref, stream_end(Result)},
    ok;
finish_entry({reply_msg, _, _, _, _} = Entry, Result, State) ->
    ok = count_out(State),
    finish_reply_msg(Entry, Result, State);
finish_entry({Alias, _Deadline}, Result, State) ->
    finish(Alias, Result, State).

%% A spawn_call's result, decoded, in erlang_python's message; the call is
%% counted when it ends, whether or not its caller awaits it.
finish_reply_msg(Entry, Result, #state{pool = Pool, slot = Slot}) ->
    finish_reply_msg(Entry, Result, Pool, Slot).

finish_reply_msg({reply_msg, Alias, _, Timer, {What, Start}}, Result, Pool, Slot) ->
    cancel_timer(Timer),
    Alias ! {py_response, Alias, Result},
    %% After the message: an await that finds no row finds the message.
    pyport_async:task_finished(Alias),
    _ = pyport_request:observe(Pool, Slot, What, Start, Result),
    ok.

%% A spawn_call's deadline passed: answered `{error, timeout}' now; if it
%% was sent, the worker interrupts it (as for a call whose caller gave up).
-spec reply_deadline(pos_integer(), reference(), #state{}) -> #state{}.
reply_deadline(Id, Timer, #state{pending = Pending} = State) ->
    case Pending of
        #{Id := {reply_msg, _, _, Timer, _} = Entry} ->
            finish_reply_msg(Entry, {error, timeout}, State),
            interrupt(Id, State#state{pending = Pending#{Id := {abandoned, entry_deadline(Entry)}}});
        #{} ->
            {Hit, Kept} = lists:partition(fun({req, I, {reply_msg, _, _, T, _}, _}) ->
                                                  I =:= Id andalso T =:= Timer;
                                             (_) -> false
                                          end, queue:to_list(State#state.queue)),
            [finish_entry(Entry, {error, timeout}, State) || {req, _, Entry, _} <- Hit],
            State#state{queue = queue:from_list(Kept)}
    end.

finish_task({task, Alias, Tag, Ref, _}, Result) ->
    Alias ! {Tag, Ref, Result},
    %% After the message: an await that finds no row finds the message.
    pyport_async:task_finished(Ref).

stream_end({ok, _}) -> done;
stream_end({error, _} = Error) -> Error.

-spec count_out(#state{}) -> ok.
count_out(#state{info = #{counters := C}, slot = Slot}) ->
    counters:sub(C, Slot, 1).

%% The requests held that callers counted in (casts are not), and a figure
%% that grows with every request taken: what pyport_inflight:check/4 needs.
-spec held(#state{}) -> {non_neg_integer(), non_neg_integer()}.
held(#state{pending = Pending, queue = Q, served = Served, sent_here = Sent}) ->
    Queued = length([E || E <- queue:to_list(Q), element(1, E) =/= cast]),
    {map_size(Pending) + Queued, Served + Sent}.

entry_deadline({_Alias, Deadline}) -> Deadline;
entry_deadline({reply_msg, _, Deadline, _, _}) -> Deadline;
entry_deadline({task, _, _, _, Deadline}) -> Deadline;
entry_deadline({stream, _, _, _, _}) -> infinity.

%% The worker cancels the task or stream (it then answers CancelledError,
%% which nobody may be waiting for any more).
-spec cancel_in_worker(pos_integer(), #state{}) -> ok.
cancel_in_worker(Id, #state{port = Port}) when Port =/= undefined ->
    _ = pyport_worker_writer:send_frame(Port, pyport_codec:encode_frame(?CANCEL, Id, [])),
    ok;
cancel_in_worker(_Id, _State) ->
    ok.

%% A queued task or stream that is no longer wanted.
-spec drop_queued(pos_integer(), #state{}) -> #state{}.
drop_queued(Id, #state{queue = Q} = State) ->
    Kept = queue:filter(fun({req, I, _, _}) when I =:= Id -> count_out(State), false;
                           (_) -> true
                        end, Q),
    State#state{queue = Kept}.


%% Sends what was queued while the OS process restarted (up to what it
%% may take before it is recycled; the rest waits for the next one).
-spec flush_queue(#state{}) -> #state{}.
flush_queue(#state{queue = Q} = State) ->
    flush_queue(queue:out(Q), now_ms(), State#state{queue = queue:new()}).

flush_queue({empty, _}, _Now, State) ->
    State;
flush_queue({{value, Item}, Rest}, _Now, #state{status = Status} = State) when Status =/= up ->
    %% max_requests reached: the rest stays queued, in order.
    State#state{queue = queue:join(queue:in_r(Item, Rest), State#state.queue)};
flush_queue({{value, {cast, Frame}}, Rest}, Now, State) ->
    _ = pyport_worker_writer:send_frame(State#state.port, Frame),
    flush_queue(queue:out(Rest), Now, sent(State));
flush_queue({{value, {call, Alias, Id, Deadline, _Frame}}, Rest}, Now, State)
  when is_integer(Deadline), Deadline < Now ->
    pyport_payloads:answered(Id),
    finish(Alias, {error, timeout}, State),
    flush_queue(queue:out(Rest), Now, State);
flush_queue({{value, {call, Alias, Id, Deadline, Frame}}, Rest}, Now, State) ->
    _ = pyport_worker_writer:send_frame(State#state.port, Frame),
    State1 = State#state{pending = maps:put(Id, {Alias, Deadline}, State#state.pending)},
    flush_queue(queue:out(Rest), Now, sent(State1));
flush_queue({{value, {req, Id, Entry, Frame}}, Rest}, Now, State) ->
    case expired(entry_deadline(Entry), Now) of
        true ->
            pyport_payloads:answered(Id),
            finish_entry(Entry, {error, timeout}, State),
            flush_queue(queue:out(Rest), Now, State);
        false ->
            _ = pyport_worker_writer:send_frame(State#state.port, Frame),
            State1 = State#state{pending = maps:put(Id, Entry, State#state.pending)},
            flush_queue(queue:out(Rest), Now, sent(State1))
    end.

%% Whether request Id may still be answered to its caller.
-spec pending_for_caller(pos_integer(), #state{}) -> boolean().
pending_for_caller(Id, #state{pending = Pending, queue = Q}) ->
    case Pending of
        #{Id := {abandoned, _}} -> false;
        #{Id := _} -> true;
        #{} -> lists:any(fun({call, _, I, _, _}) -> I =:= Id;
                            ({req, I, _, _}) -> I =:= Id;
                            (_) -> false
                         end, queue:to_list(Q))
    end.

%% The caller of request Id stopped waiting (its timeout passed).
-spec cancel(pos_integer(), #state{}) -> #state{}.
cancel(Id, #state{pending = Pending, queue = Q} = State) ->
    case Pending of
        #{Id := {abandoned, _}} ->
            State;
        #{Id := {task, _, _, _, Deadline}} ->
            %% A coroutine: cancelled, no KeyboardInterrupt (nor kill) needed.
            cancel_in_worker(Id, State),
            State#state{pending = Pending#{Id := {abandoned, Deadline}}};
        #{Id := {stream, _, _, _, _}} ->
            State;
        #{Id := {reply_msg, _, Deadline, Timer, _}} ->
            %% Its caller gave up (and counted it): interrupted like a call.
            cancel_timer(Timer),
            interrupt(Id, State#state{pending = Pending#{Id := {abandoned, Deadline}}});
        #{Id := {Alias, Deadline}} ->
            pyport_payloads:forget(Alias),
            interrupt(Id, State#state{pending = Pending#{Id := {abandoned, Deadline}}});
        #{} ->
            %% Not sent yet: it never will be.
            {Dropped, Kept} = lists:partition(fun({call, _, I, _, _}) -> I =:= Id;
                                                 ({req, I, _, _}) -> I =:= Id;
                                                 (_) -> false
                                              end, queue:to_list(Q)),
            [finish(abandoned, none, State) || _ <- Dropped],
            State#state{queue = queue:from_list(Kept)}
    end.

%% Asks the worker to raise KeyboardInterrupt in request Id; if it has not
%% answered within kill_after, the OS process is killed.
-spec interrupt(pos_integer(), #state{}) -> #state{}.
interrupt(Id, #state{pending = Pending, kill_timers = Timers, port = Port} = State) ->
    case is_map_key(Id, Pending) andalso not is_map_key(Id, Timers) of
        true ->
            _ = pyport_worker_writer:send_frame(Port, pyport_codec:encode_frame(?INTERRUPT, Id, [])),
            pyport_stats:interrupted(State#state.pool, State#state.slot),
            Timer = case State#state.opts of
                        #{kill_after := infinity} -> undefined;
                        #{kill_after := Ms} -> erlang:start_timer(Ms, self(), {kill, Id})
                    end,
            %% Busy with code its caller gave up on: no least-loaded traffic
            %% until it answers.
            pyport_pool:set_available(State#state.info, State#state.slot, false),
            State#state{kill_timers = Timers#{Id => Timer}};
        false ->
            State
    end.

%% py:interrupt/1: a request still held here is answered without being sent,
%% as the worker answers one interrupted before it started.
-spec interrupt_on_request(pos_integer(), #state{}) -> #state{}.
interrupt_on_request(Id, #state{pending = Pending, queue = Q} = State) ->
    case is_map_key(Id, Pending) of
        true ->
            interrupt(Id, State);
        false ->
            {Hit, Kept} = lists:partition(fun({call, _, I, _, _}) -> I =:= Id;
                                             ({req, I, {reply_msg, _, _, _, _}, _}) -> I =:= Id;
                                             (_) -> false
                                          end, queue:to_list(Q)),
            Message = iolist_to_binary(io_lib:format("request ~b was interrupted before it started",
                                                     [Id])),
            [finish_queued(Item, {error, {'KeyboardInterrupt', Message}}, State) || Item <- Hit],
            State#state{queue = queue:from_list(Kept)}
    end.

%% An interrupted request did not end within kill_after: its OS process is
%% killed (its exit answers everything it had).
-spec kill_unresponsive(pos_integer(), #state{}) -> {noreply, #state{}}.
kill_unresponsive(Id, #state{opts = #{kill_after := Ms}} = State) ->
    ?LOG_WARNING("pyport worker ~tp/~b: request ~b did not stop within ~b ms of its "
                   "interrupt; killing OS process ~tp",
                   [State#state.pool, State#state.slot, Id, Ms, State#state.os_pid],
                   pyport_worker:metadata(State)),
    pyport_os:kill(State#state.port),
    {noreply, State#state{kill_reason = {interrupt_timeout, Ms}}}.

%% Deadlines that passed: the caller has stopped waiting (a killed caller
%% could not say so), so the request is abandoned and interrupted.
-spec purge_expired(#state{}) -> #state{}.
purge_expired(#state{pending = Pending, queue = Q} = State) ->
    Now = now_ms(),
    Expired = maps:fold(fun(_Id, {abandoned, _}, Acc) ->
                                Acc;
                           (_Id, {reply_msg, _, _, _, _}, Acc) ->
                                %% Its own timer answers it at its deadline.
                                Acc;
                           (Id, Entry, Acc) ->
                                case expired(entry_deadline(Entry), Now) of
                                    true -> [{Id, Entry} | Acc];
                                    false -> Acc
                                end
                        end, [], Pending),
    State1 = lists:foldl(fun({Id, {Alias, _}}, S) ->
                                 Alias ! {Alias, {error, timeout}},
                                 cancel(Id, S);
                            ({Id, {task, _, _, _, _} = Entry}, S) ->
                                 finish_task(Entry, {error, timeout}),
                                 cancel(Id, S)
                         end, State, Expired),
    {Dropped, Kept} = lists:partition(
                        fun({call, _, _, Deadline, _}) -> expired(Deadline, Now);
                           ({req, _, {reply_msg, _, _, _, _}, _}) -> false;
                           ({req, _, Entry, _}) -> expired(entry_deadline(Entry), Now);
                           ({cast, _}) -> false
                        end, queue:to_list(Q)),
    [finish_queued(Item, {error, timeout}, State1) || Item <- Dropped],
    State1#state{queue = queue:from_list(Kept)}.

%% Never sent: a payload region it holds is free again.
finish_queued({call, Alias, Id, _, _}, Reply, State) ->
    pyport_payloads:answered(Id),
    finish(Alias, Reply, State);
finish_queued({req, Id, Entry, _}, Reply, State) ->
    pyport_payloads:answered(Id),
    finish_entry(Entry, Reply, State);
finish_queued({cast, _}, _Reply, _State) -> ok.

%% Every request, written or queued, answered `{error, {worker_exited, Detail}}'.
-spec fail_all(term(), #state{}) -> #state{}.
fail_all(Detail, #state{queue = Q} = State0) ->
    State = fail_all_pending(Detail, State0),
    Reply = {error, {worker_exited, Detail}},
    [finish_queued(Item, Reply, State) || Item <- queue:to_list(Q)],
    State#state{queue = queue:new()}.

%% Only requests already written to the dead process fail; queued ones wait
%% for the next process.
-spec fail_all_pending(term(), #state{}) -> #state{}.
fail_all_pending(Detail, #state{pending = Pending, kill_timers = Timers} = State) ->
    Reply = {error, {worker_exited, Detail}},
    maps:foreach(fun(_Id, Entry) -> finish_entry(Entry, Reply, State) end, Pending),
    maps:foreach(fun(_Id, Timer) -> cancel_timer(Timer) end, Timers),
    pyport_output:retain(fun(Id) -> not is_map_key(Id, Pending) end),
    State#state{pending = #{}, kill_timers = #{}, internal = #{}}.


%% An answer (or an error standing for one) to request Id: to whoever
%% waits for it; an init step or namespace drop goes back to the owner.
-spec answer(integer(), term(), #state{}) -> noreply().
answer(Id, Reply, State0) ->
    pyport_payloads:answered(Id),
    State = case maps:take(Id, State0#state.kill_timers) of
                {Timer, Timers} ->
                    cancel_timer(Timer),
                    S = State0#state{kill_timers = Timers},
                    update_availability(S),
                    %% No longer stuck: what was held meanwhile goes out.
                    case map_size(Timers) =:= 0 andalso S#state.status =:= up of
                        true -> flush_queue(S);
                        false -> S
                    end;
                error ->
                    State0
            end,
    case maps:take(Id, State#state.pending) of
        {Entry, Rest} ->
            pyport_output:forget(Id),
            answer_entry(Id, Entry, Reply, State),
            pyport_worker:after_answer(State#state{pending = Rest, served = State#state.served + 1,
                                     answered_here = State#state.answered_here + 1});
        error ->
            case maps:take(Id, State#state.internal) of
                {Purpose, Rest} ->
                    pyport_worker:internal_answer(Purpose, Reply, State#state{internal = Rest});
                error ->
                    %% It answers a cast (e.g. a FrameError): nobody waits for it.
                    ?LOG_DEBUG("pyport worker ~tp/~b: answer to request ~b that nobody waits for",
                               [State#state.pool, State#state.slot, Id], pyport_worker:metadata(State)),
                    {noreply, State}
            end
    end.

%% A call answered "continue elsewhere" (erlang.schedule and friends).
-spec schedule(pos_integer(), binary(), #state{}) -> noreply().
schedule(Id, Rest, #state{port = Port} = State) ->
    case pyport_codec:decode_fields(2, Rest) of
        {ok, [<<"erlang">>, [Name, Args]]} when is_list(Args) ->
            case maps:get(Id, State#state.pending, undefined) of
                {task, _, _, _, _} = Entry ->
                    %% Nobody runs code on a task's behalf: its result
                    %% message comes from a process of its own.
                    _ = spawn(fun() -> finish_task(Entry, pyport_registry:call(Name, Args)) end),
                    count_out(State),
                    {noreply, State#state{pending = maps:remove(Id, State#state.pending)}};
                {stream, _, _, _, _} ->
                    answer(Id, {error, {protocol_error, {schedule_for_a_stream, Id}}}, State);
                {reply_msg, _, _, Timer, _} = Entry ->
                    %% As for a task: the function runs in a process of its
                    %% own, which sends the result.
                    cancel_timer(Timer),
                    #state{pool = Pool, slot = Slot} = State,
                    _ = spawn(fun() ->
                                      finish_reply_msg(setelement(4, Entry, undefined),
                                                       pyport_registry:call(Name, Args), Pool, Slot)
                              end),
                    count_out(State),
                    {noreply, State#state{pending = maps:remove(Id, State#state.pending)}};
                {_Alias, _Deadline} ->
                    %% The request is answered: its caller runs the function
                    %% and takes its result.
                    answer(Id, {schedule, Name, Args}, State);
                undefined ->
                    %% A cast (or a caller that gave up): run it for nobody.
                    pyport_callback:schedule_cast(Name, Args, pyport_worker:callback_context(State)),
                    {noreply, State}
            end;
        {ok, [<<"py">>, Frame]} when is_binary(Frame) ->
            %% The continuation goes back to the worker behind everything
            %% sent so far; the request stays in flight under its id.
            _ = pyport_worker_writer:send_frame(Port, Frame),
            {noreply, State};
        Other ->
            Why = {bad_schedule, Other},
            ?LOG_ERROR("pyport worker ~tp/~b: ~tp", [State#state.pool, State#state.slot, Why],
                       pyport_worker:metadata(State)),
            answer(Id, {error, {protocol_error, Why}}, State)
    end.


%% The final answer of a request: raw to a call's alias; decoded for a task
%% or a stream (whose END is its normal end).
answer_entry(_Id, {Alias, _Deadline}, Reply, State) ->
    finish(Alias, Reply, State);
answer_entry(_Id, {stream, _, _, _, _} = Entry, {?STREAM_END, _}, State) ->
    finish_entry(Entry, {ok, done}, State);
answer_entry(Id, {stream, _, _, _, _} = Entry, {?RESULT, _}, State) ->
    %% A stream is not answered with RESULT: the worker broke the protocol.
    finish_entry(Entry, {error, {protocol_error, {unexpected_frame, ?RESULT, Id}}}, State);
answer_entry(_Id, Entry, Reply, State) ->
    finish_entry(Entry, pyport_request:decode_reply(pyport_payloads:bind(Reply), State#state.pool,
                                                    State#state.slot),
                 State).


%% A call, whose caller waits (not a task or stream).
-spec is_call(entry()) -> boolean().
is_call({Alias, _}) -> is_reference(Alias);
is_call({reply_msg, _, _, _, _}) -> true;
is_call(_) -> false.

%% Least-loaded routing takes the slot while it is up and not stuck in a
%% request its caller gave up on.
-spec update_availability(#state{}) -> ok.
update_availability(#state{status = Status, kill_timers = Timers, info = Info, slot = Slot,
                           leaving = Leaving}) ->
    pyport_pool:set_available(Info, Slot, Status =:= up andalso map_size(Timers) =:= 0
                              andalso Leaving =:= false).

-spec cancel_timer(reference() | undefined) -> ok.
cancel_timer(undefined) -> ok;
cancel_timer(Timer) -> _ = erlang:cancel_timer(Timer, [{async, true}, {info, false}]), ok.

expired(infinity, _Now) -> false;
expired(Deadline, Now) -> Deadline < Now.


now_ms() ->
    erlang:monotonic_time(millisecond).

max_frame_size(#state{opts = #{max_frame_size := Max}}) -> Max.

%% @doc A request the owner makes itself (an init step, a namespace drop):
%% its answer goes back to pyport_worker:internal_answer/3.
-spec internal_request(pos_integer(), [term()], term(), #state{}) -> #state{}.
internal_request(Kind, Fields, Purpose, #state{port = Port, internal = Internal} = State) ->
    Id = erlang:unique_integer([positive]),
    _ = pyport_worker_writer:send_frame(Port, pyport_codec:encode_frame(Kind, Id, Fields)),
    State#state{internal = Internal#{Id => Purpose}}.
