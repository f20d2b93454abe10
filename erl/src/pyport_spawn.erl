%% @doc `py:spawn_call' as erlang_python has it: a plain reference at once,
%% and the result as the message `{py_response, Ref, Result}'.
%%
%% A helper process per call makes the request (so it is counted, traced and
%% routed as any call, and its output follows the caller's group leader,
%% which the helper inherits), waits for it until its deadline, and sends
%% the result to the caller. The helper has started the request when
%% `start/3' returns. A row in `pyport_tasks' (ref => helper, request
%% handle, owner) lets the owner await it once ({@link await/2}: `{error,
%% not_owner}' for another process, `{error, already_awaited}' after), give
%% up on it (the request is cancelled in the worker and counted as a
%% timeout), or interrupt it; the helper deletes the row once it has sent
%% the result. If the caller exits, the call still finishes and its result
%% is dropped.
-module(pyport_spawn).

-export([start/3, is_spawn/1, await/2, interrupt/1]).

-define(TASKS, pyport_tasks).
-define(CALL, 1).

%% @doc Starts `Fields' (a CALL's) on `Target'; the reference.
-spec start(pyport_request:target(), [term()], timeout() | default) -> reference().
start(Target, Fields, Timeout) ->
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

%% @doc Whether `Ref' came from {@link start/3} and is still in flight.
-spec is_spawn(reference()) -> boolean().
is_spawn(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, _, spawn, _, _}] -> true;
        _ -> false
    end.

%% @doc Waits for the result at most `Timeout' ms (`deadline': until the
%% call's own deadline). On `{error, timeout}' the call is given up: it is
%% cancelled in the worker, counted as a timeout, and its result never
%% arrives.
-spec await(reference(), timeout() | deadline) -> {ok, term()} | {error, term()}.
await(Ref, Timeout) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, _, spawn, _, Owner}] when Owner =/= self() ->
            {error, not_owner};
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

%% @doc Raises KeyboardInterrupt in the call's Python code (`ok', also
%% when it has finished).
-spec interrupt(reference()) -> ok | {error, not_local}.
interrupt(Ref) ->
    case ets:lookup(?TASKS, Ref) of
        [{Ref, _, spawn, {Handle, _, _}, _}] -> pyport_request:interrupt(Handle);
        _ -> ok
    end.
