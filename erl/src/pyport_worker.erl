%% @doc The owner of one worker OS process (`pyport_worker', C++ + CPython).
%%
%% The gen_server owns the port and is the supervisor of its OS process:
%%
%% <ul>
%% <li>Requests arrive already encoded by the caller
%%   (`{'$pyport', Alias, Id, Deadline, Frame}', see {@link pyport_request});
%%   the frame goes to the port and `Id => {Alias, Deadline}' is remembered.
%%   An answer is routed by reading only its frame head; the undecoded rest
%%   goes to the caller's alias, which decodes it on its own scheduler.</li>
%% <li>When the OS process exits, every request in flight is answered
%%   `{error, {worker_exited, Detail}}' at once and a new OS process is
%%   started: at once the first time, then with exponential backoff
%%   (10 ms doubling to 2 s) while it keeps dying within a second. Requests
%%   arriving meanwhile wait in a queue for the new process's hello (those
%%   whose deadline passed are dropped unsent). Five deaths in a row before
%%   a hello stop the gen_server with `{start_failed, Detail}'; the OTP
%%   supervisor's restart intensity then bounds the loop. OTP supervisors
%%   restart without backoff, so they cannot do this job themselves.</li>
%% <li>`LOG' frames (the worker's stdout/stderr and Python logging) go to
%%   `logger' with the pool, slot and OS pid as metadata.</li>
%% <li>Coroutine tasks (`{'$pyport_task', ...}', see {@link pyport_async}) are
%%   answered with a message `{Tag, Ref, Result}' to the caller's alias, the
%%   result decoded here since the caller may never run our code to decode
%%   it. Streams (`{'$pyport_stream', ...}') deliver `{py_stream, Ref, {data,
%%   Chunk}}', then `done' or `{error, E}', to their consumer, with credit:
%%   the worker sends at most ?STREAM_WINDOW chunks ahead, and credit is
%%   topped up only while the consumer's mailbox holds fewer than that, so a
%%   slow consumer suspends the Python producer instead of filling memory.
%%   A caller that gives up (`{'$pyport_cancel', Id}', or a deadline that
%%   passes) gets its task cancelled in the worker with a CANCEL frame.</li>
%% </ul>
%%
%% The gen_server's pid stays the same across OS-process restarts, so the
%% pool's routing table only changes when the gen_server itself restarts.
-module(pyport_worker).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/3, info/1, os_pid/1, stream_cancel/2, stream_window/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, format_status/1]).
-export([exit_detail/1]).

%% Frame kinds (proto/PROTOCOL.md).
-define(HELLO, 0).
-define(CAST, 2).
-define(CANCEL, 5).
-define(STREAM_CREDIT, 7).
-define(MESSAGE, 10).
-define(SHUTDOWN, 15).
-define(RESULT, 16).
-define(ERROR, 17).
-define(LOG_FRAME, 18).
-define(REQUEST, 19).
-define(NOTIFY, 20).
-define(SCHEDULE, 21).
-define(STREAM_CHUNK, 24).
-define(STREAM_END, 25).

%% Chunks a stream may have in flight (credit granted, not yet delivered),
%% and how often credit is reconsidered while a consumer is behind.
-define(STREAM_WINDOW, 64).
-define(STREAM_RECHECK_MS, 10).

-define(PROTOCOL_VERSION, 1).
%% An OS process that lived this long was healthy: its death does not
%% count as a crash loop.
-define(STABLE_AFTER_MS, 1000).
-define(BACKOFF_MIN_MS, 10).
-define(BACKOFF_MAX_MS, 2000).
-define(MAX_START_FAILURES, 5).
%% How long terminate/2 waits for the OS process to exit after SHUTDOWN.
-define(SHUTDOWN_GRACE_MS, 1000).
%% How often expired requests are purged from the pending map and queue.
-define(PURGE_INTERVAL_MS, 1000).

-type deadline() :: integer() | infinity.
-type entry() :: {reference(), deadline()}
               | {task, reference(), atom(), term(), deadline()}
               | {stream, pid(), term(), Credit :: non_neg_integer(), Checking :: boolean()}.
-type status() :: up          % hello received, frames flow
                | starting    % OS process spawned, waiting for its hello
                | waiting.    % backing off before the next spawn

-record(state, {
          pool :: pyport_config:pool_name(),
          slot :: pos_integer(),
          opts :: pyport_config:pool_opts(),
          tab :: ets:tid(),
          counters :: counters:counters_ref(),
          status = starting :: status(),
          port :: port() | undefined,
          %% OS pid: from the port at spawn, then the one the hello reports.
          os_pid :: non_neg_integer() | undefined,
          python_version :: binary() | undefined,
          capabilities = #{} :: map(),
          spawned_at = 0 :: integer(),                 % monotonic ms
          start_timer :: reference() | undefined,      % hello or backoff timer
          %% Requests written to the OS process, by id: a call answered raw
          %% to its alias, a task answered with a message, or a stream.
          pending = #{} :: #{pos_integer() => entry()},
          %% Held while the OS process restarts: {call, Alias, Id, Deadline,
          %% Frame}, {req, Id, Entry, Frame} or {cast, Frame}, in arrival order.
          queue = queue:new() :: queue:queue(),
          backoff = 0 :: non_neg_integer(),            % delay of the next quick restart
          start_failures = 0 :: non_neg_integer(),     % deaths in a row before a hello
          restarts = 0 :: non_neg_integer(),
          last_exit :: term(),
          %% Python's pub/sub subscriptions: the mailboxes (in the worker)
          %% subscribed to each topic, and the topics of each mailbox. This
          %% process joins a topic's pg group once per subscription.
          subs = #{} :: #{term() => [pos_integer()]},
          box_topics = #{} :: #{pos_integer() => [term()]}
         }).

%%%===================================================================
%%% API
%%%===================================================================

%% @doc Starts the owner of slot `Slot' of pool `Pool'. Returns once the OS
%% process has said hello, or fails with `{worker_start_failed, Detail}'.
-spec start_link(pyport_config:pool_name(), pos_integer(), pyport_config:pool_opts()) ->
          {ok, pid()} | {error, term()}.
start_link(Pool, Slot, Opts) ->
    gen_server:start_link(?MODULE, {Pool, Slot, Opts}, []).

%% @doc What the worker knows about itself and its OS process.
-spec info(pid()) -> #{atom() => term()}.
info(Pid) ->
    gen_server:call(Pid, info).

%% @doc The OS pid of the worker's current OS process (undefined while it
%% restarts).
-spec os_pid(pid()) -> non_neg_integer() | undefined.
os_pid(Pid) ->
    maps:get(os_pid, info(Pid)).

%% @doc The credit a stream starts with: chunks in flight at most.
-spec stream_window() -> pos_integer().
stream_window() ->
    ?STREAM_WINDOW.

%% @doc Stops stream `Id' (see {@link pyport_async:stream_cancel/1}): once
%% this returns, the consumer gets no further message for it.
-spec stream_cancel(pid(), pos_integer()) -> ok.
stream_cancel(Pid, Id) ->
    try gen_server:call(Pid, {stream_cancel, Id}, infinity)
    catch exit:_ -> ok          % the worker is gone, and its streams with it
    end.

%% @doc How an exit status of the OS process is reported: statuses above 128
%% are deaths by a signal (128 + the Linux signal number).
-spec exit_detail(non_neg_integer()) ->
          {exit_status, non_neg_integer()} | {signal, atom() | pos_integer()}.
exit_detail(Status) when Status > 128 -> {signal, signal_name(Status - 128)};
exit_detail(Status) -> {exit_status, Status}.

%%%===================================================================
%%% gen_server callbacks
%%%===================================================================

%% @private
-spec init({pyport_config:pool_name(), pos_integer(), pyport_config:pool_opts()}) ->
          {ok, #state{}} | {stop, term()}.
init({Pool, Slot, Opts}) ->
    %% terminate/2 must run on shutdown: it stops the OS process.
    process_flag(trap_exit, true),
    case pyport_pool:info(Pool) of
        {ok, #{tab := Tab, counters := Counters}} ->
            %% Requests sent to a previous gen_server of this slot died with it.
            counters:put(Counters, Slot, 0),
            State0 = #state{pool = Pool, slot = Slot, opts = Opts,
                            tab = Tab, counters = Counters},
            case first_start(State0) of
                {ok, State} ->
                    true = ets:insert(Tab, {Slot, self()}),
                    schedule_purge(),
                    {ok, State};
                {error, Detail} ->
                    {stop, {worker_start_failed, Detail}}
            end;
        {error, _} = Error ->
            {stop, Error}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(info, _From, State) ->
    {reply, info_map(State), State};
handle_call({stream_cancel, Id}, _From, #state{pending = Pending} = State) ->
    case maps:take(Id, Pending) of
        {{stream, _, _, _, _}, Rest} ->
            cancel_in_worker(Id, State),
            count_out(State),
            {reply, ok, State#state{pending = Rest}};
        _ ->
            {reply, ok, drop_queued(Id, State)}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({'$pyport', Alias, Id, Deadline, Frame}, State) ->
    {noreply, request(Alias, Id, Deadline, Frame, State)};
handle_info({'$pyport_task', Alias, Tag, Ref, Id, Deadline, Frame}, State) ->
    {noreply, request(Id, {task, Alias, Tag, Ref, Deadline}, Frame, State)};
handle_info({'$pyport_stream', Consumer, Ref, Id, Frame}, State) ->
    {noreply, request(Id, {stream, Consumer, Ref, ?STREAM_WINDOW, false}, Frame, State)};
handle_info({'$pyport_cancel', Id}, #state{pending = Pending} = State) ->
    case maps:is_key(Id, Pending) of
        true -> cancel_in_worker(Id, State);
        false -> ok
    end,
    {noreply, State};
handle_info({stream_recheck, Id}, State) ->
    {noreply, stream_recheck(Id, State)};
handle_info({'$pyport_cast', Frame}, #state{status = up, port = Port} = State) ->
    _ = send_frame(Port, Frame),
    {noreply, State};
handle_info({'$pyport_cast', Frame}, #state{queue = Q} = State) ->
    {noreply, State#state{queue = queue:in({cast, Frame}, Q)}};
handle_info({Port, {data, Bin}}, #state{port = Port} = State) ->
    frame(Bin, State);
handle_info({Port, {exit_status, Status}}, #state{port = Port} = State) ->
    os_process_died(exit_detail(Status), State);
handle_info({'EXIT', Port, Reason}, #state{port = Port} = State) ->
    %% The port closed without an exit status (it normally comes first).
    os_process_died({port_closed, Reason}, State);
handle_info({timeout, Timer, hello}, #state{start_timer = Timer, port = Port,
                                            opts = #{start_timeout := Ms}} = State) ->
    kill_port(Port, State#state.os_pid),
    os_process_died({timeout, Ms}, State#state{start_timer = undefined});
handle_info({timeout, Timer, respawn}, #state{start_timer = Timer} = State) ->
    respawn(State#state{start_timer = undefined});
handle_info(purge, State) ->
    schedule_purge(),
    {noreply, purge_expired(State)};
handle_info({pubsub, Topic, Msg}, State) ->
    forward_pubsub(Topic, Msg, State),
    {noreply, State};
handle_info({Port, _}, State) when is_port(Port) ->
    %% Data or exit status of a previous OS process of this slot.
    {noreply, State};
handle_info({'EXIT', _, _}, State) ->
    %% A previous port closing; the parent's exit is handled by gen_server.
    {noreply, State};
handle_info({timeout, _Timer, _}, State) ->
    %% A hello or respawn timer that fired just before it was cancelled.
    {noreply, State};
handle_info(Msg, State) ->
    ?LOG_WARNING("pyport worker ~tp/~b: unexpected message ~tp",
                   [State#state.pool, State#state.slot, Msg], #{domain => [pyport]}),
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(Reason, #state{tab = Tab, slot = Slot} = State0) ->
    %% Unregister first so that no new caller picks this worker.
    _ = (catch ets:delete_object(Tab, {Slot, self()})),
    State = stop_os_process(State0),
    Detail = case Reason of
                 normal -> shutdown;
                 {shutdown, _} -> shutdown;
                 Other -> Other
             end,
    _ = fail_all(Detail, State),
    ok.

%% @private
%% Crash reports and sys:get_status/1 show a summary (how many requests
%% were in flight, not their frames).
-spec format_status(gen_server:format_status()) -> gen_server:format_status().
format_status(#{state := #state{} = State} = Status) ->
    Status#{state := info_map(State)};
format_status(Status) ->
    Status.

%%%===================================================================
%%% Requests
%%%===================================================================

request(Alias, Id, Deadline, Frame, #state{status = Status} = State) ->
    case expired(Deadline, now_ms()) of
        true ->
            %% The caller has given up already; tell it anyway in case it is
            %% a spawn_call whose await runs longer than the call's timeout.
            finish(Alias, {error, timeout}, State),
            State;
        false when Status =:= up ->
            _ = send_frame(State#state.port, Frame),
            State#state{pending = maps:put(Id, {Alias, Deadline}, State#state.pending)};
        false ->
            State#state{queue = queue:in({call, Alias, Id, Deadline, Frame}, State#state.queue)}
    end.

%% A task or stream: written at once when the OS process is up, else
%% queued. Expired tasks are answered `{error, timeout}' unsent.
request(Id, Entry, Frame, #state{status = Status} = State) ->
    case expired(entry_deadline(Entry), now_ms()) of
        true ->
            finish_entry(Entry, {error, timeout}, State),
            State;
        false when Status =:= up ->
            _ = send_frame(State#state.port, Frame),
            State#state{pending = maps:put(Id, Entry, State#state.pending)};
        false ->
            State#state{queue = queue:in({req, Id, Entry, Frame}, State#state.queue)}
    end.

%% A request is finished: answer its caller and count it out of the slot.
finish(Alias, Reply, #state{counters = C, slot = Slot}) ->
    Alias ! {Alias, Reply},
    counters:sub(C, Slot, 1).

%% Answers any kind of entry with a final (decoded) outcome.
finish_entry({task, _, _, _, _} = Entry, Result, State) ->
    finish_task(Entry, Result),
    count_out(State);
finish_entry({stream, Consumer, Ref, _, _}, Result, State) ->
    Consumer ! {py_stream, Ref, stream_end(Result)},
    count_out(State);
finish_entry({Alias, _Deadline}, Result, State) ->
    finish(Alias, Result, State).

finish_task({task, Alias, Tag, Ref, _}, Result) ->
    Alias ! {Tag, Ref, Result},
    ok.

stream_end({ok, _}) -> done;
stream_end({error, _} = Error) -> Error.

count_out(#state{counters = C, slot = Slot}) ->
    counters:sub(C, Slot, 1).

entry_deadline({_Alias, Deadline}) -> Deadline;
entry_deadline({task, _, _, _, Deadline}) -> Deadline;
entry_deadline({stream, _, _, _, _}) -> infinity.

%% The worker cancels the task or stream (it then answers CancelledError,
%% which nobody may be waiting for any more).
cancel_in_worker(Id, #state{status = up, port = Port}) ->
    _ = send_frame(Port, pyport_codec:encode_frame(?CANCEL, Id, [])),
    ok;
cancel_in_worker(_Id, _State) ->
    ok.

%% A queued request that is no longer wanted (its stream was cancelled
%% before the OS process came up).
drop_queued(Id, #state{queue = Q} = State) ->
    Kept = queue:filter(fun({req, I, _, _}) when I =:= Id -> count_out(State), false;
                           (_) -> true
                        end, Q),
    State#state{queue = Kept}.

%% A closed port raises badarg; its exit status is then already on its way
%% and will answer the request.
send_frame(Port, Frame) ->
    try port_command(Port, Frame)
    catch error:badarg -> false
    end.

%% Sends what was queued while the OS process restarted.
flush_queue(#state{queue = Q} = State) ->
    Now = now_ms(),
    State1 = lists:foldl(
               fun({cast, Frame}, S) ->
                       _ = send_frame(S#state.port, Frame),
                       S;
                  ({call, Alias, _Id, Deadline, _Frame}, S) when is_integer(Deadline),
                                                                  Deadline < Now ->
                       finish(Alias, {error, timeout}, S),
                       S;
                  ({call, Alias, Id, Deadline, Frame}, S) ->
                       _ = send_frame(S#state.port, Frame),
                       S#state{pending = maps:put(Id, {Alias, Deadline}, S#state.pending)};
                  ({req, Id, Entry, Frame}, S) ->
                       case expired(entry_deadline(Entry), Now) of
                           true ->
                               finish_entry(Entry, {error, timeout}, S),
                               S;
                           false ->
                               _ = send_frame(S#state.port, Frame),
                               S#state{pending = maps:put(Id, Entry, S#state.pending)}
                       end
               end, State, queue:to_list(Q)),
    State1#state{queue = queue:new()}.

%% Deadlines that passed: the caller has stopped waiting, so the entry would
%% otherwise stay until the worker answers, which may be never.
purge_expired(#state{pending = Pending, queue = Q} = State) ->
    Now = now_ms(),
    {Expired, Live} = maps:fold(
                        fun(Id, Entry, {E, L}) ->
                                case expired(entry_deadline(Entry), Now) of
                                    true -> {[{Id, Entry} | E], L};
                                    false -> {E, maps:put(Id, Entry, L)}
                                end
                        end, {[], #{}}, Pending),
    %% Whatever still runs for them in the worker is cancelled (a coroutine;
    %% a synchronous call cannot be, and finishes unobserved).
    [begin
         cancel_in_worker(Id, State),
         finish_entry(Entry, {error, timeout}, State)
     end || {Id, Entry} <- Expired],
    {Dropped, Kept} = lists:partition(
                        fun({call, _, _, Deadline, _}) -> expired(Deadline, Now);
                           ({req, _, Entry, _}) -> expired(entry_deadline(Entry), Now);
                           ({cast, _}) -> false
                        end, queue:to_list(Q)),
    [finish_queued(Item, {error, timeout}, State) || Item <- Dropped],
    State#state{pending = Live, queue = queue:from_list(Kept)}.

finish_queued({call, Alias, _, _, _}, Reply, State) -> finish(Alias, Reply, State);
finish_queued({req, _, Entry, _}, Reply, State) -> finish_entry(Entry, Reply, State);
finish_queued({cast, _}, _Reply, _State) -> ok.

fail_all(Detail, #state{queue = Q} = State) ->
    Reply = {error, {worker_exited, Detail}},
    State1 = fail_all_pending(Detail, State),
    [finish_queued(Item, Reply, State1) || Item <- queue:to_list(Q)],
    State1#state{queue = queue:new()}.

%%%===================================================================
%%% Frames from the worker
%%%===================================================================

frame(Bin, State) ->
    case pyport_codec:decode_frame_head(Bin) of
        {ok, Kind, Id, NFields, Rest} ->
            frame(Kind, Id, NFields, Rest, State);
        {error, Why} ->
            ?LOG_ERROR("pyport worker ~tp/~b: undecodable frame from the worker: ~tp",
                         [State#state.pool, State#state.slot, Why], metadata(State)),
            {noreply, State}
    end.

frame(Kind, Id, 1, Rest, State) when Kind =:= ?RESULT, Id > 0 ->
    {noreply, answer(Id, {Kind, Rest}, State)};
frame(Kind, Id, 3, Rest, State) when Kind =:= ?ERROR, Id > 0 ->
    {noreply, answer(Id, {Kind, Rest}, State)};
frame(?STREAM_CHUNK, Id, 1, Rest, State) when Id > 0 ->
    {noreply, stream_chunk(Id, Rest, State)};
frame(?STREAM_END, Id, 0, _Rest, State) when Id > 0 ->
    {noreply, answer(Id, {?STREAM_END, <<>>}, State)};
frame(?ERROR, 0, 3, Rest, State) ->
    %% An error that answers no request (e.g. a frame the worker could not
    %% read far enough to find its id).
    case pyport_codec:decode_fields(3, Rest) of
        {ok, [Type, Message, _Traceback]} ->
            ?LOG_WARNING("pyport worker ~tp/~b: ~ts: ~ts",
                           [State#state.pool, State#state.slot, Type, Message],
                           metadata(State));
        {error, Why} ->
            ?LOG_ERROR("pyport worker ~tp/~b: undecodable ERROR frame: ~tp",
                         [State#state.pool, State#state.slot, Why], metadata(State))
    end,
    {noreply, State};
frame(?LOG_FRAME, _Id, 2, Rest, State) ->
    case pyport_codec:decode_fields(2, Rest) of
        {ok, [Level, Message]} ->
            ?LOG(pyport_logging:level(Level), "~ts", [Message],
                       (metadata(State))#{domain => [pyport, python]});
        {error, Why} ->
            ?LOG_ERROR("pyport worker ~tp/~b: undecodable LOG frame: ~tp",
                         [State#state.pool, State#state.slot, Why], metadata(State))
    end,
    {noreply, State};
frame(?REQUEST, Id, 2, Rest, #state{port = Port} = State) when Id > 0 ->
    {noreply, case pyport_callback:request(Id, Rest, callback_context(State)) of
                  {reply, Result} ->
                      _ = send_frame(Port, pyport_callback:encode_reply(Id, Result)),
                      State;
                  spawned ->
                      State;
                  {subscribe, Topic, Box} ->
                      _ = send_frame(Port, pyport_callback:encode_reply(Id, {ok, none})),
                      subscribe(Topic, Box, State);
                  {unsubscribe, Topic, Box} ->
                      _ = send_frame(Port, pyport_callback:encode_reply(Id, {ok, none})),
                      unsubscribe(Topic, Box, State)
              end};
frame(?NOTIFY, 0, 2, Rest, State) ->
    {noreply, case pyport_callback:notify(Rest, callback_context(State)) of
                  ok -> State;
                  {unsubscribe_all, Box} -> unsubscribe_all(Box, State)
              end};
frame(?SCHEDULE, Id, 2, Rest, State) when Id > 0 ->
    {noreply, schedule(Id, Rest, State)};
frame(?HELLO, 0, 4, Rest, #state{status = starting} = State) ->
    case hello(Rest, State) of
        {ok, State1} ->
            _ = erlang:cancel_timer(State1#state.start_timer),
            ?LOG_INFO("pyport worker ~tp/~b: OS process ~b up (Python ~ts)",
                        [State1#state.pool, State1#state.slot, State1#state.os_pid,
                         State1#state.python_version], metadata(State1)),
            apply_logging(State1#state.port),
            {noreply, flush_queue(State1#state{status = up, start_timer = undefined,
                                              start_failures = 0})};
        {error, Detail} ->
            kill_port(State#state.port, State#state.os_pid),
            _ = erlang:cancel_timer(State#state.start_timer),
            os_process_died(Detail, State#state{start_timer = undefined})
    end;
frame(Kind, Id, NFields, _Rest, State) ->
    %% A protocol violation by the worker. Whoever waits on Id is answered so
    %% that no request is left hanging.
    Why = {unexpected_frame, Kind, Id, NFields},
    ?LOG_ERROR("pyport worker ~tp/~b: ~tp", [State#state.pool, State#state.slot, Why],
                 metadata(State)),
    {noreply, answer(Id, {error, {protocol_error, Why}}, State)}.

%% A call answered "continue elsewhere" (erlang.schedule and friends).
schedule(Id, Rest, #state{pending = Pending, port = Port} = State) ->
    case pyport_codec:decode_fields(2, Rest) of
        {ok, [<<"erlang">>, [Name, Args]]} when is_list(Args) ->
            case maps:take(Id, Pending) of
                {{Alias, _Deadline}, Pending1} when is_reference(Alias) ->
                    %% The caller runs the function and takes its result.
                    finish(Alias, {schedule, Name, Args}, State),
                    State#state{pending = Pending1};
                {{task, _, _, _, _} = Entry, Pending1} ->
                    %% Nobody runs code on a task's behalf: the result
                    %% message comes from a process of its own.
                    count_out(State),
                    _ = spawn(fun() ->
                                      finish_task(Entry, pyport_registry:call(Name, Args))
                              end),
                    State#state{pending = Pending1};
                {_Stream, _} ->
                    answer(Id, {error, {protocol_error, {schedule_for_a_stream, Id}}}, State);
                error ->
                    %% A cast (or a caller that gave up): run it for nobody.
                    _ = spawn(fun() -> pyport_registry:call(Name, Args) end),
                    State
            end;
        {ok, [<<"py">>, Frame]} when is_binary(Frame) ->
            %% The continuation goes back to the worker behind everything
            %% sent so far; the request stays pending under its id.
            _ = send_frame(Port, Frame),
            State;
        Other ->
            Why = {bad_schedule, Other},
            ?LOG_ERROR("pyport worker ~tp/~b: ~tp", [State#state.pool, State#state.slot, Why],
                       metadata(State)),
            answer(Id, {error, {protocol_error, Why}}, State)
    end.

answer(Id, Reply, #state{pending = Pending} = State) ->
    case maps:take(Id, Pending) of
        {{Alias, _Deadline}, Rest} when is_reference(Alias) ->
            finish(Alias, Reply, State),
            State#state{pending = Rest};
        {{stream, _, _, _, _} = Entry, Rest} when element(1, Reply) =:= ?STREAM_END ->
            finish_entry(Entry, {ok, done}, State),
            State#state{pending = Rest};
        {{stream, _, _, _, _} = Entry, Rest} when element(1, Reply) =:= ?RESULT ->
            %% A stream is not answered with RESULT: the worker broke the protocol.
            finish_entry(Entry, {error, {protocol_error, {unexpected_frame, ?RESULT, Id}}}, State),
            State#state{pending = Rest};
        {Entry, Rest} ->
            finish_entry(Entry, pyport_request:decode_reply(Reply, State#state.pool,
                                                            State#state.slot), State),
            State#state{pending = Rest};
        error ->
            %% Its deadline passed and it was purged, or it answers a cast
            %% (e.g. a FrameError): nobody waits for it.
            ?LOG_DEBUG("pyport worker ~tp/~b: answer to request ~b that nobody waits for",
                       [State#state.pool, State#state.slot, Id], metadata(State)),
            State
    end.

%% One chunk for its consumer; then credit, if it keeps up.
stream_chunk(Id, Rest, #state{pending = Pending} = State) ->
    case maps:get(Id, Pending, undefined) of
        {stream, Consumer, Ref, Credit, Checking} ->
            Msg = case pyport_codec:decode_fields(1, Rest) of
                      {ok, [Value]} -> {data, Value};
                      {error, _} = Error -> Error
                  end,
            Consumer ! {py_stream, Ref, Msg},
            Entry = {stream, Consumer, Ref, max(0, Credit - 1), Checking},
            top_up(Id, Entry, State#state{pending = Pending#{Id := Entry}});
        _ ->
            %% Cancelled meanwhile, or not a stream: nobody wants it.
            State
    end.

%% Grants credit back up to the window once half of it is used, unless the
%% consumer has a backlog: then it is looked at again shortly, and the
%% worker (out of credit) suspends its producer meanwhile.
top_up(_Id, {stream, _, _, _, true}, State) ->
    State;
top_up(Id, {stream, Consumer, Ref, Credit, false} = Entry0, State) when Credit =< ?STREAM_WINDOW div 2 ->
    case backlog(Consumer) of
        gone ->
            %% Nobody will read it: stop the producer.
            cancel_in_worker(Id, State),
            count_out(State),
            State#state{pending = maps:remove(Id, State#state.pending)};
        Backlog when Backlog < ?STREAM_WINDOW ->
            _ = send_frame(State#state.port,
                           pyport_codec:encode_frame(?STREAM_CREDIT, Id, [?STREAM_WINDOW - Credit])),
            Entry = {stream, Consumer, Ref, ?STREAM_WINDOW, false},
            State#state{pending = (State#state.pending)#{Id := Entry}};
        _ ->
            _ = erlang:send_after(?STREAM_RECHECK_MS, self(), {stream_recheck, Id}),
            Entry = setelement(5, Entry0, true),
            State#state{pending = (State#state.pending)#{Id := Entry}}
    end;
top_up(_Id, _Entry, State) ->
    State.

stream_recheck(Id, #state{pending = Pending} = State) ->
    case maps:get(Id, Pending, undefined) of
        {stream, Consumer, Ref, Credit, true} when State#state.status =:= up ->
            top_up(Id, {stream, Consumer, Ref, Credit, false}, State);
        _ ->
            State
    end.

%% Messages waiting in a local consumer's mailbox; `gone' if it exited; 0
%% on another node, where it cannot be looked at.
backlog(Pid) when node(Pid) =:= node() ->
    case erlang:process_info(Pid, message_queue_len) of
        {message_queue_len, N} -> N;
        undefined -> gone
    end;
backlog(_Pid) ->
    0.

metadata(#state{pool = Pool, slot = Slot, os_pid = OsPid}) ->
    #{pyport_pool => Pool, pyport_slot => Slot, os_pid => OsPid, domain => [pyport]}.

callback_context(#state{port = Port} = State) ->
    #{port => Port, meta => metadata(State)}.

%%%===================================================================
%%% Pub/sub for Python subscriptions
%%%===================================================================

subscribe(Topic, Box, #state{subs = Subs, box_topics = BoxTopics} = State) ->
    Boxes = maps:get(Topic, Subs, []),
    case lists:member(Box, Boxes) of
        true ->
            State;
        false ->
            ok = pg:join(pyport, Topic, self()),
            State#state{subs = Subs#{Topic => [Box | Boxes]},
                        box_topics = BoxTopics#{Box => [Topic | maps:get(Box, BoxTopics, [])]}}
    end.

unsubscribe(Topic, Box, #state{subs = Subs, box_topics = BoxTopics} = State) ->
    Boxes = maps:get(Topic, Subs, []),
    case lists:member(Box, Boxes) of
        false ->
            State;
        true ->
            _ = pg:leave(pyport, Topic, self()),
            Subs1 = case lists:delete(Box, Boxes) of
                        [] -> maps:remove(Topic, Subs);
                        Left -> Subs#{Topic := Left}
                    end,
            BoxTopics1 = case lists:delete(Topic, maps:get(Box, BoxTopics, [])) of
                             [] -> maps:remove(Box, BoxTopics);
                             Topics -> BoxTopics#{Box := Topics}
                         end,
            State#state{subs = Subs1, box_topics = BoxTopics1}
    end.

unsubscribe_all(Box, #state{box_topics = BoxTopics} = State) ->
    lists:foldl(fun(Topic, S) -> unsubscribe(Topic, Box, S) end, State,
                maps:get(Box, BoxTopics, [])).

%% The OS process is gone, and with it every Python subscription.
drop_subscriptions(#state{subs = Subs} = State) ->
    maps:foreach(fun(Topic, Boxes) ->
                         [pg:leave(pyport, Topic, self()) || _ <- Boxes]
                 end, Subs),
    State#state{subs = #{}, box_topics = #{}}.

%% One MESSAGE frame per subscribed mailbox; the term is encoded once.
forward_pubsub(Topic, Msg, #state{status = up, port = Port, subs = Subs} = State) ->
    case maps:get(Topic, Subs, []) of
        [] ->
            ok;
        Boxes ->
            try pyport_codec:encode({Topic, Msg}) of
                Term ->
                    %% [10, Box, {Topic, Msg}]: 16#93 is a 3-element array.
                    _ = [send_frame(Port, [16#93, ?MESSAGE, pyport_codec:encode(Box), Term])
                         || Box <- Boxes],
                    ok
            catch
                error:{unsupported_term, T} ->
                    ?LOG_WARNING("pyport worker ~tp/~b: cannot pass a message on topic ~0tp "
                                 "to Python: ~0tp cannot be converted",
                                 [State#state.pool, State#state.slot, Topic, T], metadata(State))
            end
    end;
forward_pubsub(_Topic, _Msg, _State) ->
    ok.

%% Python logging set up by py:configure_logging/0,1 applies to every new
%% OS process too.
apply_logging(Port) ->
    case pyport_logging:python_level() of
        undefined ->
            ok;
        Level ->
            Id = erlang:unique_integer([positive]),
            _ = send_frame(Port, pyport_codec:encode_frame(
                                   ?CAST, Id, [<<"erlang._logging">>, <<"setup_logging">>,
                                               [Level], #{}])),
            ok
    end.

%%%===================================================================
%%% The OS process
%%%===================================================================

%% The first OS process starts synchronously, so that a pool whose worker
%% cannot start fails to start, with the reason.
first_start(State) ->
    case spawn_os_process(State) of
        {ok, State1} ->
            #state{port = Port, opts = #{start_timeout := Ms}} = State1,
            Deadline = now_ms() + Ms,
            await_hello(Port, Deadline, State1);
        {error, _} = Error ->
            Error
    end.

await_hello(Port, Deadline, State) ->
    receive
        {Port, {data, Bin}} ->
            case pyport_codec:decode_frame_head(Bin) of
                {ok, ?HELLO, 0, 4, Rest} ->
                    case hello(Rest, State) of
                        {ok, State1} ->
                            apply_logging(Port),
                            {ok, State1#state{status = up}};
                        {error, _} = Error ->
                            kill_port(Port, State#state.os_pid),
                            Error
                    end;
                {ok, ?LOG_FRAME, _, 2, _} ->
                    {noreply, State} = frame(Bin, State),
                    await_hello(Port, Deadline, State);
                Other ->
                    kill_port(Port, State#state.os_pid),
                    {error, {bad_hello, Other}}
            end;
        {Port, {exit_status, Status}} ->
            {error, exit_detail(Status)};
        {'EXIT', Port, Reason} ->
            {error, {port_closed, Reason}}
    after max(0, Deadline - now_ms()) ->
            kill_port(Port, State#state.os_pid),
            {error, {timeout, maps:get(start_timeout, State#state.opts)}}
    end.

hello(Rest, State) ->
    case pyport_codec:decode_fields(4, Rest) of
        {ok, [?PROTOCOL_VERSION, PyVersion, OsPid, Caps]}
          when is_binary(PyVersion), is_integer(OsPid), is_map(Caps) ->
            check_frame_size(Caps, State),
            {ok, State#state{python_version = PyVersion, os_pid = OsPid,
                             capabilities = Caps}};
        {ok, [Version | _]} when Version =/= ?PROTOCOL_VERSION ->
            {error, {unsupported_protocol, Version}};
        {ok, Fields} ->
            {error, {bad_hello, Fields}};
        {error, Why} ->
            {error, {bad_hello, Why}}
    end.

%% The worker enforces the limit we gave it; a smaller one it announces
%% would turn requests we accept into FrameTooLarge errors.
check_frame_size(#{<<"max_frame_size">> := Theirs},
                 #state{opts = #{max_frame_size := Ours}} = State) when Theirs < Ours ->
    ?LOG_WARNING("pyport worker ~tp/~b: worker announces max_frame_size ~b, pool has ~b",
                   [State#state.pool, State#state.slot, Theirs, Ours], metadata(State));
check_frame_size(_, _) ->
    ok.

spawn_os_process(#state{opts = Opts} = State) ->
    #{worker := Exe, python_path := Path, max_frame_size := Max} = Opts,
    Args = ["--runtime", runtime_dir()]
        ++ lists:append([["--path", Dir] || Dir <- Path])
        ++ ["--max-frame-size", integer_to_list(Max)],
    PortOpts = [{args, Args}, {packet, 4}, binary, exit_status, use_stdio,
                %% Never suspend this process on a full pipe: it must stay
                %% able to route answers, notice exits and run its timers
                %% while the worker is busy.
                {busy_limits_port, disabled}],
    case filelib:is_regular(Exe) of
        false ->
            {error, {no_executable, Exe}};
        true ->
            try open_port({spawn_executable, Exe}, PortOpts) of
                Port ->
                    OsPid = case erlang:port_info(Port, os_pid) of
                                {os_pid, P} -> P;
                                undefined -> undefined
                            end,
                    {ok, State#state{port = Port, os_pid = OsPid, status = starting,
                                     python_version = undefined,
                                     spawned_at = now_ms()}}
            catch
                error:Reason -> {error, {cannot_execute, Exe, Reason}}
            end
    end.

runtime_dir() ->
    case code:priv_dir(pyport) of
        {error, bad_name} -> "python_runtime";
        Priv -> filename:join(Priv, "python_runtime")
    end.

%% The OS process is gone (or was given up on): answer everyone waiting on
%% it, then start the next one or give up.
os_process_died(Detail, #state{status = Status, spawned_at = Spawned} = State0) ->
    State1 = drop_subscriptions(fail_all_pending(Detail, State0)),
    Failures = case Status of
                   up -> 0;
                   _ -> State1#state.start_failures + 1
               end,
    State = State1#state{port = undefined, last_exit = Detail, start_failures = Failures,
                         restarts = State1#state.restarts + 1},
    Uptime = now_ms() - Spawned,
    case Failures >= ?MAX_START_FAILURES of
        true ->
            ?LOG_ERROR("pyport worker ~tp/~b: OS process failed ~b times in a row "
                         "before its hello; giving up: ~tp",
                         [State#state.pool, State#state.slot, Failures, Detail],
                         metadata(State)),
            {stop, {start_failed, Detail}, State};
        false ->
            {Delay, Next} = case Status =:= up andalso Uptime >= ?STABLE_AFTER_MS of
                                true -> {0, ?BACKOFF_MIN_MS};
                                false -> {State#state.backoff, next_backoff(State#state.backoff)}
                            end,
            ?LOG_WARNING("pyport worker ~tp/~b: OS process ~tp exited (~tp) after ~b ms; "
                           "restarting in ~b ms",
                           [State#state.pool, State#state.slot, State#state.os_pid, Detail,
                            Uptime, Delay], metadata(State)),
            State2 = State#state{backoff = Next, os_pid = undefined},
            case Delay of
                0 ->
                    respawn(State2);
                _ ->
                    Timer = erlang:start_timer(Delay, self(), respawn),
                    {noreply, State2#state{status = waiting, start_timer = Timer}}
            end
    end.

%% Only requests already written to the dead process fail; queued ones wait
%% for the next process.
fail_all_pending(Detail, #state{pending = Pending} = State) ->
    Reply = {error, {worker_exited, Detail}},
    maps:foreach(fun(_Id, Entry) -> finish_entry(Entry, Reply, State) end, Pending),
    State#state{pending = #{}}.

respawn(State) ->
    case spawn_os_process(State) of
        {ok, #state{opts = #{start_timeout := Ms}} = State1} ->
            Timer = erlang:start_timer(Ms, self(), hello),
            {noreply, State1#state{start_timer = Timer}};
        {error, Detail} ->
            os_process_died(Detail, State#state{status = starting, spawned_at = now_ms()})
    end.

next_backoff(0) -> ?BACKOFF_MIN_MS;
next_backoff(Ms) -> min(2 * Ms, ?BACKOFF_MAX_MS).

%% Asks the OS process to finish what it has read and exit; kills it if it
%% is still there after the grace period (e.g. stuck in a loop). Answers
%% that arrive meanwhile still reach their callers.
stop_os_process(#state{port = undefined} = State) ->
    State;
stop_os_process(#state{port = Port, os_pid = OsPid} = State) ->
    _ = send_frame(Port, pyport_codec:encode_frame(?SHUTDOWN, 0, [])),
    Deadline = now_ms() + ?SHUTDOWN_GRACE_MS,
    case drain_until_exit(Port, Deadline, State) of
        {exited, State1} ->
            State1#state{port = undefined};
        {timeout, State1} ->
            kill_os_process(OsPid),
            {_, State2} = drain_until_exit(Port, now_ms() + ?SHUTDOWN_GRACE_MS, State1),
            catch port_close(Port),
            State2#state{port = undefined}
    end.

drain_until_exit(Port, Deadline, State) ->
    receive
        {Port, {data, Bin}} ->
            {noreply, State1} = frame(Bin, State),
            drain_until_exit(Port, Deadline, State1);
        {Port, {exit_status, _}} ->
            {exited, State};
        {'EXIT', Port, _} ->
            {exited, State}
    after max(0, Deadline - now_ms()) ->
            {timeout, State}
    end.

kill_port(Port, OsPid) ->
    kill_os_process(OsPid),
    catch port_close(Port),
    ok.

%% Only ever our own child: its pid cannot be reused before we see its exit.
kill_os_process(OsPid) when is_integer(OsPid), OsPid > 1 ->
    _ = os:cmd("kill -KILL " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok;
kill_os_process(_) ->
    ok.

%%%===================================================================
%%% Helpers
%%%===================================================================

info_map(#state{} = S) ->
    #{pool => S#state.pool,
      slot => S#state.slot,
      pid => self(),
      status => S#state.status,
      os_pid => case S#state.status of up -> S#state.os_pid; _ -> undefined end,
      python_version => S#state.python_version,
      capabilities => S#state.capabilities,
      pending => map_size(S#state.pending),
      queued => queue:len(S#state.queue),
      restarts => S#state.restarts,
      last_exit => S#state.last_exit}.

schedule_purge() ->
    _ = erlang:send_after(?PURGE_INTERVAL_MS, self(), purge),
    ok.

expired(infinity, _Now) -> false;
expired(Deadline, Now) -> Deadline < Now.

now_ms() ->
    erlang:monotonic_time(millisecond).

%% Linux signal numbers.
signal_name(1) -> sighup;
signal_name(2) -> sigint;
signal_name(3) -> sigquit;
signal_name(4) -> sigill;
signal_name(5) -> sigtrap;
signal_name(6) -> sigabrt;
signal_name(7) -> sigbus;
signal_name(8) -> sigfpe;
signal_name(9) -> sigkill;
signal_name(10) -> sigusr1;
signal_name(11) -> sigsegv;
signal_name(12) -> sigusr2;
signal_name(13) -> sigpipe;
signal_name(14) -> sigalrm;
signal_name(15) -> sigterm;
signal_name(24) -> sigxcpu;
signal_name(25) -> sigxfsz;
signal_name(N) -> N.
