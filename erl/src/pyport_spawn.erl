%% @doc `py:spawn_call' as erlang_python has it: a plain reference at once,
%% and the result as the message `{py_response, Ref, Result}'.
%%
%% On this node no process stands between the caller and the worker: the
%% reference is a one-shot alias of the caller, and the worker's gen_server
%% decodes the answer and sends `{py_response, Ref, Result}' to it itself
%% ({@link pyport_request:start_message/4}). The gen_server answers
%% `{error, timeout}' at the call's deadline, interrupts the Python code
%% then, and counts the call when it ends, so a caller that only
%% `receive's the message sees the same as one that awaits it. The output
%% of the call follows the caller's group leader.
%%
%% A row in `pyport_tasks' (ref => worker, request, deadline, owner) lets
%% the owner await it once ({@link await/2}: `{error, not_owner}' for
%% another process, `{error, already_awaited}' after), give up on it (the
%% request is interrupted in the worker and counted as a timeout), or
%% interrupt it. The gen_server deletes the row once it has sent the
%% result. If the caller exits, the call still finishes and its result is
%% dropped.
%%
%% A call to another node is made by a helper process here, which waits
%% for it and sends the same message.
-module(pyport_spawn).

-export([start/3, is_spawn/1, await/2, interrupt/1]).

-define(TASKS, pyport_tasks).
-define(CALL, 1).
%% How long an await waits before it monitors the worker's gen_server
%% (see pyport_request).
-define(UNWATCHED_MS, 10).
%% After the deadline, how long an await gives the gen_server to send its
%% `{error, timeout}' before it gives up itself.
-define(DEADLINE_GRACE_MS, 1000).

%% @doc Starts `Fields' (a CALL's) on `Target'; the reference.
-spec start(pyport_request:target(), [term()], timeout() | default) -> reference().
start(Target, Fields, Timeout) ->
    Owner = self(),
    Register = fun(Alias, Pid, Id, Deadline, Obs) ->
                       true = ets:insert(?TASKS, {Alias, Pid, {spawn, Id, Obs}, Deadline, Owner}),
                       ok
               end,
    case pyport_request:start_message(Target, Fields, Timeout, Register) of
        {ok, Alias} ->
            Alias;
        {error, Reason} ->
            Ref = make_ref(),
            self() ! {py_response, Ref, {error, Reason}},
            Ref;
        remote ->
            start_helper(Target, Fields, Timeout)
    end.

%% @doc Whether `Ref' came from {@link start/3} and is still in flight.
-spec is_spawn(reference()) -> boolean().
is_spawn(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, _, {spawn, _, _}, _, _}] -> true;
        [{Ref, _, spawn, _, _}] -> true;
        _ -> false
    end.

%% @doc Waits for the result at most `Timeout' ms (`deadline': until the
%% call's own deadline). On `{error, timeout}' the call is given up: it is
%% interrupted in the worker, counted as a timeout, and its result never
%% arrives.
-spec await(reference(), timeout() | deadline) -> {ok, term()} | {error, term()}.
await(Ref, Timeout) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, _, Kind, _, Owner}] when Owner =/= self(), (Kind =:= spawn orelse
                                                           element(1, Kind) =:= spawn) ->
            {error, not_owner};
        [{Ref, Pid, {spawn, Id, Obs}, Deadline, _}] ->
            await_direct(Ref, Pid, Id, Obs, Deadline, Timeout);
        [{Ref, Helper, spawn, _, _}] ->
            Mon = erlang:monitor(process, Helper),
            Deadline = case Timeout of
                           deadline -> infinity;        % the helper waits the call's own
                           _ -> pyport_request:deadline(Timeout)
                       end,
            wait(Ref, Helper, Mon, Deadline);
        _ ->
            receive
                {py_response, Ref, Result} -> Result
            after 0 ->
                    {error, already_awaited}
            end
    end.

%% @doc Raises KeyboardInterrupt in the call's Python code (`ok', also
%% when it has finished).
-spec interrupt(reference()) -> ok | {error, not_local}.
interrupt(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, Pid, {spawn, Id, _}, _, _}] ->
            Pid ! {'$pyport_interrupt', Id},
            ok;
        [{Ref, _, spawn, {Handle, _, _}, _}] ->
            pyport_request:interrupt(Handle);
        _ ->
            ok
    end.

%%%===================================================================
%%% A call on this node: the gen_server answers
%%%===================================================================

%% Up to the call's deadline the gen_server answers (a timeout too); an
%% await shorter than that gives up itself when it ends.
await_direct(Ref, Pid, Id, Obs, Deadline, Timeout) ->
    Own = case Timeout of
              deadline -> infinity;
              _ -> pyport_request:deadline(Timeout)
          end,
    GiveUp = case Deadline of
                 infinity -> Own;
                 _ when Own =:= infinity; Own >= Deadline -> {deadline, Deadline + ?DEADLINE_GRACE_MS};
                 _ -> Own
             end,
    receive
        {py_response, Ref, Result} ->
            _ = ets:delete(?TASKS, Ref),
            Result
    after min(?UNWATCHED_MS, pyport_request:wait_ms(give_up_at(GiveUp))) ->
            Monitor = erlang:monitor(process, Pid),
            Result = watched(Ref, Pid, Id, Obs, Monitor, GiveUp),
            erlang:demonitor(Monitor, [flush]),
            _ = ets:delete(?TASKS, Ref),
            Result
    end.

give_up_at({deadline, Ms}) -> Ms;
give_up_at(Ms) -> Ms.

watched(Ref, Pid, Id, Obs, Monitor, GiveUp) ->
    receive
        {py_response, Ref, Result} ->
            Result;
        {'DOWN', Monitor, process, _, Reason} ->
            %% A gen_server that ended answered first (its messages come
            %% before its DOWN); one that was killed could not.
            erlang:unalias(Ref),
            receive
                {py_response, Ref, Result} -> Result
            after 0 ->
                    observe(Obs, {error, {worker_exited, Reason}})
            end
    after pyport_request:wait_ms(give_up_at(GiveUp)) ->
            case erlang:monotonic_time(millisecond) >= give_up_at(GiveUp) of
                true -> give_up(Ref, Pid, Id, Obs);
                false -> watched(Ref, Pid, Id, Obs, Monitor, GiveUp)
            end
    end.

%% Once the alias is gone a later answer is dropped by the runtime; one
%% that arrived just before is still the answer.
give_up(Ref, Pid, Id, Obs) ->
    erlang:unalias(Ref),
    receive
        {py_response, Ref, Result} -> Result
    after 0 ->
            Pid ! {'$pyport_cancel', Id},
            observe(Obs, {error, timeout})
    end.

observe({Pool, Slot, What, Start}, Result) ->
    pyport_request:observe(Pool, Slot, What, Start, Result).

%%%===================================================================
%%% A call on another node: a helper process waits for it
%%%===================================================================

start_helper(Target, Fields, Timeout) ->
    Owner = self(),
    Ref = make_ref(),
    Helper = spawn(fun() -> helper(Owner, Ref, Target, Fields, Timeout) end),
    Mon = erlang:monitor(process, Helper),
    receive
        {Ref, started} -> erlang:demonitor(Mon, [flush]);
        {'DOWN', Mon, process, _, Reason} -> self() ! {py_response, Ref, {error, Reason}}
    end,
    Ref.

helper(Owner, Ref, Target, Fields, Timeout) ->
    Handle = pyport_request:start(Target, ?CALL, Fields, Timeout),
    true = ets:insert(?TASKS, {Ref, self(), spawn, {Handle, erlang:monotonic_time(), Fields}, Owner}),
    Owner ! {Ref, started},
    Result = pyport_request:await(Handle),
    Owner ! {py_response, Ref, Result},
    %% After the message: an await that finds no row finds the message.
    true = ets:delete(?TASKS, Ref),
    ok.

wait(Ref, Helper, Mon, Deadline) ->
    receive
        {py_response, Ref, Result} ->
            erlang:demonitor(Mon, [flush]),
            Result;
        {'DOWN', Mon, process, _, Reason} ->
            receive
                {py_response, Ref, Result} -> Result
            after 0 ->
                    _ = ets:delete(?TASKS, Ref),
                    {error, {spawn_call_failed, Reason}}
            end
    after pyport_request:wait_ms(Deadline) ->
            case Deadline =/= infinity andalso
                erlang:monotonic_time(millisecond) >= Deadline of
                true -> give_up(Ref, Helper, Mon);
                false -> wait(Ref, Helper, Mon, Deadline)
            end
    end.

give_up(Ref, Helper, Mon) ->
    Row = ets:lookup(?TASKS, Ref),
    exit(Helper, kill),
    receive {'DOWN', Mon, process, _, _} -> ok end,
    _ = ets:delete(?TASKS, Ref),
    receive
        {py_response, Ref, Result} ->
            %% It came before the helper was stopped.
            Result
    after 0 ->
            case Row of
                [{Ref, _, spawn, {Handle, Start, Fields}, _}] ->
                    pyport_request:abandon(Handle, ?CALL, Fields, Start);
                [] ->
                    ok
            end,
            {error, timeout}
    end.
