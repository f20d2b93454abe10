%% @doc The caller's side of coroutine tasks and streams (see
%% docs/asyncio.md): what {@link py}, {@link py_event_loop} and {@link
%% py_event_loop_pool} build on.
%%
%% A task is a request whose Python function returns a coroutine: it runs
%% on the worker's event loop and its outcome comes back as a message
%% `{Tag, Ref, Result}' (`Result' is `{ok, Value}' or `{error, Reason}'),
%% sent by the worker's gen_server to an alias of the caller, so a caller
%% that gave up never receives it. Giving up (an await that times out)
%% cancels the task in the worker.
%%
%% A stream runs a generator, async generator or any iterable in the worker
%% and delivers `{py_stream, Ref, {data, Item}}' for each item, then
%% `{py_stream, Ref, done}' or `{py_stream, Ref, {error, Reason}}'. The
%% worker's gen_server grants the worker credit only while the consumer's
%% mailbox is short, so a slow consumer suspends the Python producer.
-module(pyport_async).

-export([start_task/4, failed_task/2, await/3, cancel/1, task_finished/1, interrupt/1,
         stream_start/3, stream_cancel/1, collect/2, collect/3, collect_limits/1]).

-export_type([ref/0, stream_ref/0, collect_limits/0]).

%% The most items a collected stream may have, by default.
-define(MAX_ITEMS, 1000000).

-define(STREAM_START, 6).

%% Tasks in flight: ref => worker, request id, deadline, owner. A row is
%% written when a task starts and deleted once its result is sent (by the
%% worker's gen_server), awaited or cancelled, so the table holds only
%% tasks in flight (and those of a worker gen_server that was killed, until
%% they are awaited). Owned by pyport_contexts.
-define(TASKS, pyport_tasks).

%% How long an await waits before it asks the worker whether the task is
%% still pending (see await/3).
-define(UNCHECKED_MS, 10).

%% A task: a plain reference (erlang_python code checks is_reference/1).
%% It is also the alias its result is sent to.
-type ref() :: reference().
%% A stream: a unique reference, the worker and the request id.
-opaque stream_ref() :: {pyport_stream, reference(), pid(), pos_integer()}.
%% How much of a stream {@link collect/3} holds at most: items, and bytes
%% (their external size, `erlang:external_size/1', summed).
-type collect_limits() :: #{max_items := pos_integer() | infinity,
                            max_bytes := pos_integer() | infinity}.

%% @doc Starts a request whose answer comes as `{Tag, Ref, Result}'.
%% `Timeout' (ms, `infinity', or `default' for the pool's `call_timeout')
%% is the task's own deadline, after which the worker cancels it and the
%% message says `{error, timeout}'. If it cannot be sent, the message
%% `{Tag, Ref, {error, Reason}}' is in the caller's mailbox at once.
-spec start_task(pyport_request:target(), atom(), {pos_integer(), [term()]},
                 timeout() | default) -> ref().
start_task(Target, Tag, Request, Timeout) ->
    Sent = pyport_request:send(
             Target, Request,
             fun(Pid, Id, Frame, #{call_timeout := CallTimeout}) ->
                     Deadline = deadline(case Timeout of
                                             default -> CallTimeout;
                                             _ -> Timeout
                                         end),
                     %% A one-shot alias; the worker is monitored only by an
                     %% await that waits (a monitor per task would be two
                     %% signals more for the worker's gen_server).
                     Ref = erlang:alias([reply]),
                     true = ets:insert(?TASKS, {Ref, Pid, Id, Deadline, self()}),
                     Pid ! {'$pyport_task', Ref, Tag, Ref, Id, Deadline, Frame},
                     {task, Ref}
             end),
    case Sent of
        {task, Ref} -> Ref;
        {error, Reason} -> failed_task(Tag, Reason)
    end.

%% @doc A task that could not start: its `{Tag, Ref, {error, Reason}}' is
%% in the caller's mailbox at once.
-spec failed_task(atom(), term()) -> ref().
failed_task(Tag, Reason) ->
    Ref = make_ref(),
    self() ! {Tag, Ref, {error, Reason}},
    Ref.

%% @private The worker's gen_server sends a task's result.
-spec task_finished(term()) -> ok.
task_finished(Ref) when is_reference(Ref) ->
    _ = (catch ets:delete(?TASKS, Ref)),
    ok;
task_finished(_Ref) ->
    ok.

%% @doc Waits for a task's `{Tag, Ref, Result}' at most `Timeout' ms
%% (`deadline': until the task's own deadline). On `{error, timeout}' the
%% task is cancelled in the worker and its result can no longer arrive.
%% Only the process that started the task may await it (`{error,
%% not_owner}' at once, the task goes on); a task whose result was already
%% taken answers `{error, already_awaited}'.
-spec await(atom(), ref(), timeout() | deadline) -> {ok, term()} | {error, term()}.
await(Tag, Ref, Timeout) when is_reference(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, _, Spawn, _, _}] when Spawn =:= spawn; element(1, Spawn) =:= spawn ->
            %% A py:spawn_call reference (pyport_spawn), not a task.
            {error, {invalid_ref, Ref}};
        [{Ref, _Pid, _Id, _Deadline, Owner}] when Owner =/= self() ->
            {error, not_owner};
        [{Ref, Pid, Id, Deadline, _}] ->
            D = case Timeout of
                    deadline -> Deadline;
                    _ -> pyport_request:deadline(Timeout)
                end,
            Result = await_until(Tag, Ref, Pid, Id, D),
            true = ets:delete(?TASKS, Ref),
            Result;
        [] ->
            %% Its result was sent before its row went (or it never
            %% started: the message was there from the start), so it is in
            %% the mailbox unless it was taken already.
            receive
                {Tag, Ref, Result} -> Result
            after 0 ->
                    {error, already_awaited}
            end
    end;
await(_Tag, Ref, _Timeout) ->
    {error, {invalid_ref, Ref}}.

await_until(Tag, Ref, Pid, Id, Deadline) ->
    receive
        {Tag, Ref, Result} ->
            Result
    after min(?UNCHECKED_MS, pyport_request:wait_ms(Deadline)) ->
            %% Slow, or already taken: the worker's gen_server says
            %% `not_pending' if it no longer has the task, after the result
            %% if it sent one (its messages arrive in order).
            Probe = erlang:alias([reply]),
            Pid ! {'$pyport_pending', Id, Probe},
            Monitor = erlang:monitor(process, Pid),
            Result = checked_wait(Tag, Ref, Pid, Id, Probe, Monitor, Deadline),
            erlang:unalias(Probe),
            erlang:demonitor(Monitor, [flush]),
            receive {Probe, _} -> ok after 0 -> ok end,
            Result
    end.

checked_wait(Tag, Ref, Pid, Id, Probe, Monitor, Deadline) ->
    receive
        {Tag, Ref, Result} ->
            Result;
        {'DOWN', Monitor, process, _, Reason} ->
            %% A gen_server that ended sent its answers first.
            erlang:unalias(Ref),
            receive
                {Tag, Ref, Result} -> Result
            after 0 ->
                    {error, {worker_exited, Reason}}
            end;
        {Probe, not_pending} ->
            {error, already_awaited}
    after pyport_request:wait_ms(Deadline) ->
            case Deadline =/= infinity andalso Deadline =< erlang:monotonic_time(millisecond) of
                true ->
                    cancel(Ref, Pid, Id),
                    %% A result that arrived just before the alias went
                    %% away still counts.
                    receive
                        {Tag, Ref, Result} -> Result
                    after 0 ->
                            {error, timeout}
                    end;
                false ->
                    checked_wait(Tag, Ref, Pid, Id, Probe, Monitor, Deadline)
            end
    end.

%% @doc Gives up on a task: cancels it in the worker and drops its alias (no
%% result message arrives afterwards, unless it is already queued).
-spec cancel(ref()) -> ok.
cancel(Ref) when is_reference(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, Pid, Id, _, Owner}] when Owner =:= self(), is_integer(Id) -> cancel(Ref, Pid, Id);
        _ -> ok
    end.

cancel(Ref, Pid, Id) ->
    erlang:unalias(Ref),
    _ = ets:delete(?TASKS, Ref),
    Pid ! {'$pyport_cancel', Id},
    ok.

%% @doc Raises KeyboardInterrupt in a task's (or `py:spawn_call''s) Python
%% code; it then answers for itself. `ok' also when it has finished.
-spec interrupt(ref()) -> ok.
interrupt(Ref) when is_reference(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, Pid, Id, _, _}] when is_integer(Id) -> Pid ! {'$pyport_interrupt', Id}, ok;
        [_] -> ok;
        [] -> ok
    end.

%% @doc Starts a stream of the items of the value `Request' produces: `{1,
%% [Module, Function, Args, Kwargs]}' (a call) or `{3, [Code, Locals,
%% Namespace]}' (an expression). Its messages go to the calling process.
-spec stream_start(pyport_request:target(), {pos_integer(), [term()]}, pid()) ->
          {ok, stream_ref()} | {error, term()}.
stream_start(Target, {Kind, Fields}, Consumer) ->
    Credit = pyport_worker:stream_window(),
    pyport_request:send(
      Target, {?STREAM_START, [Credit, [Kind | Fields]]},
      fun(Pid, Id, Frame, _Where) ->
              Ref = {pyport_stream, make_ref(), Pid, Id},
              Pid ! {'$pyport_stream', Consumer, Ref, Id, Frame},
              {ok, Ref}
      end).

%% @doc Stops a stream: the worker cancels its producer (a generator is
%% closed) and sends its consumer `{py_stream, Ref, {error,
%% <<"cancelled">>}}' as the last message of the stream (erlang_python's
%% event); items already delivered stay in the mailbox.
-spec stream_cancel(stream_ref()) -> ok.
stream_cancel({pyport_stream, _, Pid, Id}) ->
    ok = pyport_worker:stream_cancel(Pid, Id).

%% Cancels a stream the caller collects, leaving none of its messages.
cancel_collected(Ref) ->
    ok = stream_cancel(Ref),
    flush_stream(Ref).

flush_stream(Ref) ->
    receive
        {py_stream, Ref, _} -> flush_stream(Ref)
    after 0 ->
            ok
    end.

%% @doc Collects every item of a stream started by the calling process:
%% `{ok, Items}', or `{error, Reason}' (the stream's error, `{worker_exited,
%% _}', or `timeout' when no item came for `Timeout' ms, after which the
%% stream is cancelled). At most the default limits are collected (see
%% {@link collect_limits/1}).
-spec collect(stream_ref(), timeout()) -> {ok, [term()]} | {error, term()}.
collect(Ref, Timeout) ->
    collect(Ref, Timeout, collect_limits(pyport_config:defaults())).

%% @doc {@link collect/2} with limits: past `max_items' items or
%% `max_bytes' bytes the stream is cancelled in the worker (a generator is
%% closed) and the answer is `{error, {stream_too_large, Key, Limit}}'.
-spec collect(stream_ref(), timeout(), collect_limits()) -> {ok, [term()]} | {error, term()}.
collect({pyport_stream, _, Pid, _} = Ref, Timeout, Limits) ->
    Monitor = erlang:monitor(process, Pid),
    Result = collect(Ref, Monitor, Timeout, Limits, {0, 0, []}),
    erlang:demonitor(Monitor, [flush]),
    Result.

%% @doc The default collection limits for a pool's options: a million
%% items, and as many bytes as the pool's `max_frame_size' (what one call
%% may return).
-spec collect_limits(#{max_frame_size := pos_integer(), _ => _}) -> collect_limits().
collect_limits(#{max_frame_size := Bytes}) ->
    #{max_items => ?MAX_ITEMS, max_bytes => Bytes}.

collect(Ref, Monitor, Timeout, Limits, Acc) ->
    next_item(Ref, Monitor, Timeout, Limits, Acc, pyport_request:deadline(Timeout)).

next_item(Ref, Monitor, Timeout, Limits, {N, Bytes, Items} = Acc, Deadline) ->
    receive
        {py_stream, Ref, {data, Item}} ->
            Acc1 = {N + 1, Bytes + erlang:external_size(Item), [Item | Items]},
            case over(Acc1, Limits) of
                false ->
                    collect(Ref, Monitor, Timeout, Limits, Acc1);
                {Key, Max} ->
                    cancel_collected(Ref),
                    {error, {stream_too_large, Key, Max}}
            end;
        {py_stream, Ref, done} ->
            {ok, lists:reverse(Items)};
        {py_stream, Ref, {error, _} = Error} ->
            Error;
        {'DOWN', Monitor, process, _, Reason} ->
            {error, {worker_exited, Reason}}
    after pyport_request:wait_ms(Deadline) ->
            case Deadline =/= infinity andalso Deadline =< erlang:monotonic_time(millisecond) of
                true ->
                    cancel_collected(Ref),
                    {error, timeout};
                false ->
                    next_item(Ref, Monitor, Timeout, Limits, Acc, Deadline)
            end
    end.

over({N, _, _}, #{max_items := Max}) when is_integer(Max), N > Max -> {max_items, Max};
over({_, Bytes, _}, #{max_bytes := Max}) when is_integer(Max), Bytes > Max -> {max_bytes, Max};
over(_, _) -> false.

deadline(infinity) -> infinity;
deadline(Timeout) -> erlang:monotonic_time(millisecond) + Timeout.
