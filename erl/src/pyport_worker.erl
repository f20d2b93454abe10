%% @doc The owner of one worker OS process (`pyport_worker', C++ + CPython).
%%
%% The gen_server owns the port and is the supervisor of its OS process:
%%
%% <ul>
%% <li>Requests arrive already encoded by the caller
%%   (`{'$pyport', Alias, Id, Deadline, Frame, Caller}', see {@link pyport_request});
%%   the frame goes to the port and `Id => {Alias, Deadline}' is remembered.
%%   An answer is routed by reading only its frame head; the undecoded rest
%%   goes to the caller's alias, which decodes it on its own scheduler.</li>
%% <li>A request whose caller gave up (its timeout passed) is interrupted:
%%   the worker raises KeyboardInterrupt in it. If the worker has not
%%   answered it within the pool's `kill_after', the OS process is killed
%%   and replaced; meanwhile the slot takes no least-loaded traffic.</li>
%% <li>When the OS process exits, every request in flight is answered
%%   `{error, {worker_exited, Detail}}' at once and a new OS process is
%%   started: at once the first time, then with exponential backoff
%%   (10 ms doubling to 2 s) while it keeps dying within a second. Requests
%%   arriving meanwhile wait in a queue for the new process (those whose
%%   deadline passed are dropped unsent). Five deaths in a row before a
%%   hello stop the gen_server with `{start_failed, Detail}'; the OTP
%%   supervisor's restart intensity then bounds the loop. OTP supervisors
%%   restart without backoff, so they cannot do this job themselves.</li>
%% <li>A new OS process runs the pool's `imports' and `init_code' before it
%%   takes requests; a failure there is a failed start. A sandboxed worker
%%   imports them before its sandbox closes (`--preload', see {@link
%%   pyport_sandbox}); its init code runs confined.</li>
%% <li>A sandboxed worker's private working directory (named in its hello)
%%   is removed here if its OS process died without removing it.</li>
%% <li>Recycling (after `max_requests', above `max_rss', or asked for) is
%%   graceful: the slot leaves least-loaded routing, the requests in flight
%%   finish, the OS process exits and a new one starts; requests routed to
%%   the slot meanwhile wait for it.</li>
%% <li>Process-bound namespaces: a caller registers its namespace here; the
%%   gen_server monitors the caller and frees the namespace in the worker
%%   (`CONTROL drop_namespace') when it exits.</li>
%% <li>Frames are cut from the port's byte stream here ({@link
%%   pyport_framer}): a header above the pool's `max_frame_size', a frame
%%   that does not decode, or a worker writing faster than this process
%%   can read (more than 16 MiB + 2 × max_frame_size unread)
%%   gets the OS process killed and replaced, its requests answered
%%   `{error, {worker_exited, Why}}'.</li>
%% <li>`LOG' frames (the worker's stdout/stderr and Python logging) go to
%%   `logger' with the pool, slot and OS pid as metadata, within the pool's
%%   `log_rate' ({@link pyport_worker_log}).</li>
%% <li>Coroutine tasks (`{'$pyport_task', ...}', see {@link pyport_async}) are
%%   answered with a message `{Tag, Ref, Result}' to the caller's alias, the
%%   result decoded here since the caller may never run our code to decode
%%   it. Streams (`{'$pyport_stream', ...}') deliver `{py_stream, Ref, {data,
%%   Chunk}}', then `done' or `{error, E}', to their consumer, with credit:
%%   the worker sends at most ?STREAM_WINDOW chunks ahead, and credit is
%%   topped up only while the consumer's mailbox holds fewer than that, so a
%%   slow consumer suspends the Python producer instead of filling memory.
%%   A task or stream whose caller gives up is cancelled in the worker with
%%   a CANCEL frame (a coroutine needs no KeyboardInterrupt).</li>
%% </ul>
%%
%% The gen_server's pid stays the same across OS-process restarts, so the
%% pool's routing table only changes when the gen_server itself restarts.
%%
%% This module owns the port and the OS process's life, and routes the
%% worker's frames; the jobs above are done, on its state
%% (pyport_worker.hrl), by {@link pyport_worker_requests} (requests in
%% flight, timeouts, interrupts, answers), {@link pyport_worker_writer}
%% (port writes and batching), {@link pyport_worker_streams}, {@link
%% pyport_worker_pubsub} and {@link pyport_worker_namespaces}.
-module(pyport_worker).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").
-include("pyport_worker.hrl").

-export([start_link/3, info/1, os_pid/1, recycle/2, recycle_async/2, stop_async/1, stream_cancel/2,
         stream_window/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, format_status/1]).
-export([exit_detail/1]).
%% For the modules that do the owner's jobs (pyport_worker_requests and
%% friends): its logger metadata, its callback context, and the steps of
%% its OS process's life they trigger.
-export([metadata/1, callback_context/1, start_drain/2, after_answer/1, internal_answer/3]).


-define(PROTOCOL_VERSION, 1).
%% An OS process that lived this long was healthy: its death does not
%% count as a crash loop.
-define(STABLE_AFTER_MS, 1000).
-define(BACKOFF_MIN_MS, 10).
-define(BACKOFF_MAX_MS, 2000).
-define(MAX_START_FAILURES, 5).
%% How often expired requests are purged from the pending map and queue.
-define(PURGE_INTERVAL_MS, 1000).
%% The RSS of the OS process is read after an answer at most this often.
-define(RSS_CHECK_INTERVAL_MS, 100).
%% After SHUTDOWN and the grace period, how long a killed process may take
%% to be reported gone.
-define(KILL_GRACE_MS, 1000).
%% A worker may be this far (plus two max_frame_size) ahead of this process
%% in bytes written to the channel and not read yet; beyond, it floods.
-define(BACKLOG_MIN_BYTES, 16 * 1024 * 1024).
%% Messages in the mailbox below which the backlog is not even measured.
-define(BACKLOG_CHECK_MSGS, 64).


%%%===================================================================
%%% API
%%%===================================================================

%% @doc Starts the owner of slot `Slot' of pool `Pool'. Returns once the OS
%% process is ready (hello received, init code run), or fails with
%% `{worker_start_failed, Detail}'.
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

%% @doc Replaces the OS process gracefully (see the module doc) and returns
%% once the new one is ready.
-spec recycle(pid(), timeout()) -> ok.
recycle(Pid, Timeout) ->
    gen_server:call(Pid, recycle, Timeout).

%% @doc Replaces the OS process gracefully, without waiting: e.g. after a
%% sandboxed job failed in it (see {@link pyport_job}). Does nothing if the
%% OS process is already being replaced.
-spec recycle_async(pid(), term()) -> ok.
recycle_async(Pid, Reason) ->
    gen_server:cast(Pid, {recycle, Reason}).

%% @doc Starts stopping: the OS process finishes what it has read and
%% exits, and is not replaced. Used to drain every worker of a pool at once
%% before the supervisor stops them one by one.
-spec stop_async(pid()) -> ok.
stop_async(Pid) ->
    gen_server:cast(Pid, stop).

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

%% @doc See {@link pyport_os:exit_detail/1}.
-spec exit_detail(non_neg_integer()) ->
          {exit_status, non_neg_integer()} | {signal, atom() | pos_integer()}.
exit_detail(Status) ->
    pyport_os:exit_detail(Status).

%%%===================================================================
%%% gen_server callbacks
%%%===================================================================

%% @private
-spec init({pyport_config:pool_name(), pos_integer(), pyport_config:pool_opts()}) ->
          {ok, #state{}} | {stop, term()}.
init({Pool, Slot, Opts0}) ->
    %% terminate/2 must run on shutdown: it stops the OS process.
    process_flag(trap_exit, true),
    %% The slot's own environment (pyport_slot_env), for all its OS processes.
    case pyport_slot_env:resolve(maps:get(env, Opts0, []), Slot) of
        {ok, Env} -> init(Pool, Slot, Opts0#{env => Env});
        {error, Why} -> {stop, {worker_start_failed, Why}}
    end.

%% Named init too: pyport:worker_info/1 tells a gen_server starting its
%% first OS process by pyport_worker:init in its stack.
init(Pool, Slot, Opts) ->
    case pyport_pool:info(Pool) of
        {ok, #{tab := Tab} = Info} ->
            pyport_stats:attach(Info, Slot),
            %% Registered at once: requests routed here meanwhile wait in
            %% the mailbox instead of going to the dead pid of a previous
            %% gen_server of this slot. Those sent to it died with it: the
            %% slot's count starts from zero (see pyport_inflight).
            true = ets:insert(Tab, {Slot, self()}),
            pyport_inflight:reset(Info, Slot),
            %% What the worker sends is decoded here under its pool's limits.
            pyport_limits:set_process(maps:get(decode_limits, Info)),
            {ok, Keeper} = pyport_callback_keeper:start_link(
                             maps:get(max_callbacks, Opts,
                                      maps:get(max_callbacks, pyport_config:defaults())),
                             #{domain => [pyport], pyport_pool => Pool, pyport_slot => Slot}),
            State0 = #state{pool = Pool, slot = Slot, opts = Opts, info = Info, keeper = Keeper,
                            log = pyport_worker_log:new(maps:get(log_rate, Opts, default))},
            case first_start(State0) of
                {ok, State} ->
                    pyport_pool:set_available(Info, Slot, true),
                    pyport_cluster:join(Pool),
                    schedule_purge(),
                    %% A restart of a slot the pool is shrinking away from.
                    {ok, leave_if_beyond_target(State#state{first = false})};
                {error, Detail} ->
                    _ = ets:delete_object(Tab, {Slot, self()}),
                    {stop, {worker_start_failed, Detail}}
            end;
        {error, _} = Error ->
            {stop, Error}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) ->
          {reply, term(), #state{}} | {noreply, #state{}}.
handle_call(info, _From, State) ->
    {reply, info_map(State), State};
handle_call(recycle, _From, #state{leaving = Leaving} = State) when Leaving =/= false ->
    %% About to stop: a new OS process would serve nobody.
    {reply, ok, State};
handle_call(recycle, From, #state{recycle_waiters = Waiters} = State) ->
    State1 = State#state{recycle_waiters = [From | Waiters]},
    case State#state.status of
        up -> {noreply, start_drain(requested, State1)};
        %% Already on its way to a new OS process: answer when it is ready.
        _ -> {noreply, State1}
    end;
handle_call({stream_cancel, Id}, _From, #state{pending = Pending} = State) ->
    case maps:take(Id, Pending) of
        {{stream, Consumer, Ref, _, _}, Rest} ->
            pyport_worker_requests:cancel_in_worker(Id, State),
            pyport_worker_requests:count_out(State),
            %% erlang_python's last event of a cancelled stream.
            Consumer ! {py_stream, Ref, {error, <<"cancelled">>}},
            {reply, ok, State#state{pending = Rest}};
        _ ->
            {reply, ok, pyport_worker_requests:drop_queued(Id, State)}
    end;
handle_call({'$pyport_ns_register', Owner, Ns}, _From, State) ->
    {Reply, State1} = pyport_worker_namespaces:register_checked(Owner, Ns, State),
    {reply, Reply, State1};
handle_call('$pyport_interrupt_running', _From, #state{pending = Pending} = State) ->
    %% py:interrupt(Ctx): the calls running on this worker (not its tasks
    %% or streams, which are cancelled instead).
    case [Id || {Id, Entry} <- maps:to_list(Pending), pyport_worker_requests:is_call(Entry)] of
        [] -> {reply, not_running, State};
        Ids -> {reply, ok, lists:foldl(fun pyport_worker_requests:interrupt/2, State, Ids)}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.


%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(stop, #state{status = Status, port = Port} = State) ->
    case Port =/= undefined andalso lists:member(Status, [up, draining, initializing]) of
        true -> _ = pyport_worker_writer:send_frame(Port, pyport_codec:encode_frame(?SHUTDOWN, 0, []));
        false -> ok
    end,
    pyport_pool:set_available(State#state.info, State#state.slot, false),
    {noreply, State#state{status = stopping}};
handle_cast({recycle, Reason}, #state{status = up} = State) ->
    {noreply, start_drain(Reason, State)};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({'$pyport', Alias, Id, Deadline, Frame, Caller}, State) ->
    pyport_payloads:caller(Alias, Caller),
    {noreply, pyport_worker_requests:request(Alias, Id, Deadline, Frame, State)};
handle_info({'$pyport_output', Id, GroupLeader}, State) ->
    pyport_output:expect(Id, GroupLeader),
    {noreply, State};
handle_info({io_reply, _, _}, State) ->
    %% A group leader took a line of pyport_output's: nothing waits for it.
    {noreply, State};
handle_info({'$pyport_cast', Frame}, #state{status = up, port = Port, kill_timers = Timers} = State)
  when map_size(Timers) =:= 0 ->
    pyport_worker_writer:send_request(Port, Frame, maps:get(max_frame_size, State#state.opts)),
    {noreply, pyport_worker_requests:sent(State)};
handle_info({'$pyport_cast', _Frame}, #state{status = stopping} = State) ->
    {noreply, State};
handle_info({'$pyport_cast', Frame}, #state{queue = Q} = State) ->
    {noreply, State#state{queue = queue:in({cast, Frame}, Q)}};
handle_info({'$pyport_msg', Alias, Id, Deadline, Obs, Frame}, State) ->
    Timer = case Deadline of
                infinity -> undefined;
                _ -> erlang:start_timer(Deadline, self(), {reply_deadline, Id}, [{abs, true}])
            end,
    {noreply, pyport_worker_requests:request(Id, {reply_msg, Alias, Deadline, Timer, Obs}, Frame, State)};
handle_info({timeout, Timer, {reply_deadline, Id}}, State) ->
    {noreply, pyport_worker_requests:reply_deadline(Id, Timer, State)};
handle_info({'$pyport_task', Alias, Tag, Ref, Id, Deadline, Frame}, State) ->
    {noreply, pyport_worker_requests:request(Id, {task, Alias, Tag, Ref, Deadline}, Frame, State)};
handle_info({'$pyport_stream', Consumer, Ref, Id, Frame}, State) ->
    {noreply, pyport_worker_requests:request(Id, {stream, Consumer, Ref, ?STREAM_WINDOW, false}, Frame, State)};
handle_info('$pyport_flush', State) ->
    pyport_worker_writer:flush(),
    {noreply, State};
handle_info({stream_recheck, Id}, State) ->
    {noreply, pyport_worker_streams:stream_recheck(Id, State)};
handle_info({pubsub, Topic, Msg}, State) ->
    pyport_worker_pubsub:forward_pubsub(Topic, Msg, State),
    {noreply, State};
handle_info({'$pyport_pending', Id, Probe}, State) ->
    %% An await asks whether request Id can still be answered (see
    %% pyport_async:await/3); silence means yes.
    _ = case pyport_worker_requests:pending_for_caller(Id, State) of
            true -> ok;
            false -> Probe ! {Probe, not_pending}
        end,
    {noreply, State};
handle_info({'$pyport_cancel', Id}, State) ->
    {noreply, pyport_worker_requests:cancel(Id, State)};
handle_info({'$pyport_interrupt', Id}, State) ->
    {noreply, pyport_worker_requests:interrupt_on_request(Id, State)};
handle_info({'$pyport_ns', Owner, Ns}, State) ->
    {noreply, pyport_worker_namespaces:register(Owner, Ns, State)};
handle_info({'$pyport_ns_drop', Ns}, State) ->
    {noreply, pyport_worker_namespaces:drop(Ns, State)};
handle_info({'DOWN', Mon, process, _, _}, State) ->
    {noreply, pyport_worker_namespaces:owner_down(Mon, State)};
handle_info({Port, {data, Bin}}, #state{port = Port} = State) ->
    data(Bin, State);
handle_info({timeout, _Timer, log_note} = Msg, State) ->
    {noreply, State#state{log = pyport_worker_log:note(Msg, metadata(State), State#state.log)}};
handle_info({Port, {exit_status, Status}}, #state{port = Port} = State) ->
    os_process_died(pyport_os:exit_detail(Status), State);
handle_info({'EXIT', Port, Reason}, #state{port = Port} = State) ->
    %% The port closed without an exit status (it normally comes first).
    os_process_died({port_closed, Reason}, State);
handle_info({timeout, Timer, hello}, #state{start_timer = Timer,
                                            opts = #{start_timeout := Ms}} = State) ->
    start_failed({timeout, Ms}, State#state{start_timer = undefined});
handle_info({timeout, Timer, respawn}, #state{start_timer = Timer, status = Status} = State) ->
    case Status of
        stopping -> {noreply, State#state{start_timer = undefined}};
        _ -> respawn(State#state{start_timer = undefined})
    end;
handle_info({timeout, Timer, {kill, Id}}, #state{kill_timers = Timers} = State) ->
    case Timers of
        #{Id := Timer} -> pyport_worker_requests:kill_unresponsive(Id, State);
        #{} -> {noreply, State}
    end;
handle_info({timeout, Timer, drain_timeout}, #state{start_timer = Timer, status = draining} = State) ->
    %% What still runs after shutdown_timeout (a task or stream that never
    %% ends) must not keep the OS process from being recycled: it is
    %% cancelled, which answers it CancelledError (synchronous requests
    %% ignore CANCEL: their callers' timeouts interrupt them).
    ?LOG_INFO("pyport worker ~tp/~b: cancelling ~b requests still running while recycling",
              [State#state.pool, State#state.slot, map_size(State#state.pending)], metadata(State)),
    _ = [pyport_worker_requests:cancel_in_worker(Id, State) || Id <- maps:keys(State#state.pending)],
    {noreply, State#state{start_timer = undefined}};
handle_info({timeout, Timer, recycle_kill}, #state{start_timer = Timer, status = recycling} = State) ->
    %% SHUTDOWN was not honoured in time (e.g. a thread that never ends).
    pyport_os:kill(State#state.port),
    {noreply, State#state{start_timer = undefined}};
handle_info('$pyport_leave', State) ->
    {noreply, leave(State)};
handle_info('$pyport_rejoin', State) ->
    rejoin(State);
handle_info({'$pyport_leave_check', Ref}, #state{leaving = {Ref, _} = Leaving} = State) ->
    Idle = queue:is_empty(State#state.queue) andalso map_size(State#state.internal) =:= 0,
    Checked = pyport_drain:check(Leaving, State#state.info, State#state.slot, {pyport_worker_requests:held(State), Idle}),
    {Overdue, Leaving1} = pyport_drain:overdue(Checked, maps:get(shutdown_timeout, State#state.opts)),
    %% Tasks and streams that outlast the grace are cancelled, as when
    %% recycling (synchronous calls ignore CANCEL: their deadlines end them).
    _ = [pyport_worker_requests:cancel_in_worker(Id, State) || Overdue, Id <- maps:keys(State#state.pending)],
    {noreply, State#state{leaving = Leaving1}};
handle_info({'$pyport_leave_check', _}, State) ->
    {noreply, State};
handle_info(purge, State0) ->
    schedule_purge(),
    State = pyport_worker_requests:purge_expired(State0),
    pyport_output:retain(fun(Id) -> pyport_worker_requests:pending_for_caller(Id, State) end),
    Check = pyport_inflight:check(State#state.info, State#state.slot, pyport_worker_requests:held(State),
                                  State#state.inflight_check),
    {noreply, State#state{inflight_check = Check}};
handle_info({Port, _}, State) when is_port(Port) ->
    %% Data or exit status of a previous OS process of this slot.
    {noreply, State};
handle_info({'EXIT', Pid, Reason}, State) ->
    %% A previous port closing; the parent's exit is handled by gen_server.
    case pyport_callback_keeper:is_keeper(Pid, State#state.keeper) of
        %% Without its keeper no callback of Python's would be watched.
        true -> {stop, {callback_keeper_exited, Reason}, State};
        false -> {noreply, State}
    end;
handle_info({timeout, _Timer, _}, State) ->
    %% A timer that fired just before it was cancelled, or of a previous
    %% OS process.
    {noreply, State};
handle_info(Msg, State) ->
    ?LOG_WARNING("pyport worker ~tp/~b: unexpected message ~tp",
                   [State#state.pool, State#state.slot, Msg], #{domain => [pyport]}),
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(Reason, #state{info = #{tab := Tab}, slot = Slot} = State0) ->
    %% Unregister first so that no new caller picks this worker.
    _ = (catch ets:delete_object(Tab, {Slot, self()})),
    State = stop_os_process(State0),
    remove_workdir(State),
    Detail = case Reason of
                 normal -> shutdown;
                 shutdown -> shutdown;
                 {shutdown, _} -> shutdown;
                 Other -> Other
             end,
    _ = pyport_worker_requests:fail_all(Detail, State),
    [gen_server:reply(From, {error, {worker_exited, Detail}})
     || From <- State#state.recycle_waiters],
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
%%% Frames from the worker
%%%===================================================================

%% Bytes from the port: the frames they complete, in order. A worker that
%% breaks the framing is killed (broken/2); so is one that writes faster
%% than this process reads.
data(_Bin, #state{framer = discard} = State) ->
    {noreply, State};
data(Bin, #state{port = Port, framer = Framer, consumed = Consumed} = State) ->
    case pyport_framer:feed(Bin, Framer) of
        {ok, Frames, Framer1} ->
            case frames(Frames, State#state{framer = Framer1,
                                            consumed = Consumed + byte_size(Bin)}) of
                {noreply, #state{port = Port} = S} -> check_backlog(S);
                Other -> Other
            end;
        {error, Why, Frames} ->
            %% Frames that came whole before the bad header still count.
            case frames(Frames, State#state{framer = discard}) of
                {noreply, #state{port = Port} = S} -> broken(Why, S);
                Other -> Other
            end
    end.

frames([], State) ->
    {noreply, State};
frames([Bin | Rest], #state{port = Port} = State) ->
    case frame(Bin, State) of
        {noreply, #state{port = Port, framer = Framer} = S} when Framer =/= discard ->
            frames(Rest, S);
        Other ->
            %% The OS process was given up on (or the owner stops): what
            %% else it sent is moot.
            Other
    end.

%% The port's driver reads whatever the worker writes and queues it here
%% as messages, with no flow control: a worker writing faster than this
%% process handles frames would grow the mailbox without bound. The bytes
%% the port has read minus those taken here are what waits; measured only
%% once the mailbox is long, since port_info/2 is a round trip.
check_backlog(#state{port = Port, consumed = Consumed,
                     opts = #{max_frame_size := Max}} = State) ->
    case process_info(self(), message_queue_len) of
        {message_queue_len, N} when N > ?BACKLOG_CHECK_MSGS ->
            Limit = ?BACKLOG_MIN_BYTES + 2 * Max,
            case erlang:port_info(Port, input) of
                {input, In} when In - Consumed > Limit ->
                    broken({flooding, #{unread_bytes => In - Consumed, limit => Limit,
                                        messages => N}}, State);
                _ ->
                    {noreply, State}
            end;
        _ ->
            {noreply, State}
    end.

%% The worker broke the channel: its OS process is killed and replaced at
%% once (the port is closed: nothing more it wrote is read), and every
%% request it had is answered `{error, {worker_exited, Why}}'.
broken(Why, #state{status = Status} = State) when Status =:= starting; Status =:= initializing ->
    start_failed(Why, State#state{framer = discard});
broken(Why, State) ->
    ?LOG_ERROR("pyport worker ~tp/~b: killing OS process ~tp: ~tp",
               [State#state.pool, State#state.slot, State#state.os_pid, Why], metadata(State)),
    kill_port(State#state.port, State#state.os_pid),
    os_process_died(Why, State#state{framer = discard, kill_reason = Why}).

frame(Bin, State) ->
    case pyport_codec:decode_frame_head(Bin) of
        {ok, Kind, Id, NFields, Rest} ->
            frame(Kind, Id, NFields, Rest, State);
        {error, Why} ->
            %% Out of step with the worker: nothing after this can be trusted.
            broken(Why, State)
    end.

frame(Kind, Id, 1, Rest, State) when Kind =:= ?RESULT, Id > 0 ->
    pyport_worker_requests:answer(Id, {Kind, Rest}, State);
frame(Kind, Id, 3, Rest, State) when Kind =:= ?ERROR, Id > 0 ->
    pyport_worker_requests:answer(Id, {Kind, Rest}, State);
frame(?STREAM_CHUNK, Id, 1, Rest, State) when Id > 0 ->
    {noreply, pyport_worker_streams:stream_chunk(Id, Rest, State)};
frame(?STREAM_END, Id, 0, _Rest, State) when Id > 0 ->
    pyport_worker_requests:answer(Id, {?STREAM_END, <<>>}, State);
frame(?ERROR, 0, 3, Rest, #state{status = starting} = State) ->
    %% Before the hello: why the process is about to exit, if it says so.
    case pyport_start_error:from_frame(Rest, State#state.opts) of
        {ok, Reason} -> {noreply, State#state{start_error = Reason}};
        error -> log_error_frame(Rest, State)
    end;
frame(?ERROR, 0, 3, Rest, State) ->
    log_error_frame(Rest, State);
frame(?LOG_FRAME, _Id, 2, Rest, #state{log = Log} = State) ->
    {noreply, State#state{log = pyport_worker_log:log_frame(Rest, metadata(State), Log)}};
frame(?REQUEST, Id, 2, Rest, #state{port = Port} = State) when Id > 0 ->
    Ctx = callback_context(State),
    {noreply, case pyport_callback:request(Id, Rest, Ctx) of
                  {reply, Result} ->
                      _ = pyport_worker_writer:send_frame(Port, pyport_callback:reply_frame(Id, Result, Ctx)),
                      State;
                  spawned ->
                      State;
                  {subscribe, Topic, Box} ->
                      _ = pyport_worker_writer:send_frame(Port, pyport_callback:encode_reply(Id, {ok, none})),
                      pyport_worker_pubsub:subscribe(Topic, Box, State);
                  {unsubscribe, Topic, Box} ->
                      _ = pyport_worker_writer:send_frame(Port, pyport_callback:encode_reply(Id, {ok, none})),
                      pyport_worker_pubsub:unsubscribe(Topic, Box, State)
              end};
frame(?NOTIFY, 0, 2, <<16#a3, "log", _/binary>> = Rest, #state{log = Log} = State) ->
    %% A Python logging record ([<<"log">>, ...]): within the same log_rate.
    case pyport_worker_log:admit(byte_size(Rest), Log) of
        {true, Log1} -> notify(Rest, State#state{log = Log1});
        {false, Log1} -> {noreply, State#state{log = Log1}}
    end;
frame(?NOTIFY, 0, 2, <<16#a6, "output", _/binary>> = Rest, #state{log = Log} = State) ->
    %% A line a call printed for its caller's group leader (pyport_output).
    InFlight = fun(Id) -> is_map_key(Id, State#state.pending) end,
    {noreply, State#state{log = pyport_output:notify(Rest, {InFlight, metadata(State)}, Log)}};
frame(?NOTIFY, 0, 2, Rest, State) ->
    notify(Rest, State);
frame(?SCHEDULE, Id, 2, Rest, State) when Id > 0 ->
    case pyport_callback:schedule_check(Rest, callback_context(State)) of
        ok -> pyport_worker_requests:schedule(Id, Rest, State);
        {error, _} = Refused -> pyport_worker_requests:answer(Id, Refused, State)
    end;
frame(?HELLO, 0, 4, Rest, #state{status = starting} = State) ->
    case hello(Rest, State) of
        {ok, State1} -> initialize(State1);
        {error, Detail} -> start_failed(Detail, State)
    end;
frame(?HELLO, 0, 4, _Rest, #state{status = stopping} = State) ->
    %% A process that started as the pool began to stop: terminate/2 stops it.
    {noreply, State};
frame(Kind, Id, NFields, _Rest, State) ->
    %% A protocol violation by the worker. Whoever waits on Id is answered so
    %% that no request is left hanging.
    Why = {unexpected_frame, Kind, Id, NFields},
    Log = pyport_worker_log:report(error, "~tp", [Why], metadata(State), State#state.log),
    pyport_worker_requests:answer(Id, {error, {protocol_error, Why}}, State#state{log = Log}).

notify(Rest, State) ->
    {noreply, case pyport_callback:notify(Rest, callback_context(State)) of
                  ok -> State;
                  {unsubscribe_all, Box} -> pyport_worker_pubsub:unsubscribe_all(Box, State)
              end}.

%% An error that answers no request (e.g. a frame the worker could not
%% read far enough to find its id): logged within the pool's log_rate.
log_error_frame(Rest, #state{log = Log} = State) ->
    {noreply, State#state{log = pyport_worker_log:error_frame(Rest, metadata(State), Log)}}.

%% @private After each answer: the max_rss check, and the end of a drain.
-spec after_answer(#state{}) -> {noreply, #state{}}.
after_answer(#state{status = up, opts = #{max_rss := MaxRss}} = State) when is_integer(MaxRss) ->
    Now = now_ms(),
    case Now - State#state.rss_checked_at >= ?RSS_CHECK_INTERVAL_MS of
        true ->
            State1 = State#state{rss_checked_at = Now},
            case pyport_os:rss_bytes(State#state.os_pid) of
                Rss when is_integer(Rss), Rss > MaxRss ->
                    {noreply, start_drain({max_rss, Rss, MaxRss}, State1)};
                _ ->
                    {noreply, State1}
            end;
        false ->
            {noreply, State}
    end;
after_answer(#state{status = draining} = State) ->
    {noreply, maybe_drained(State)};
after_answer(State) ->
    {noreply, State}.

%% The telemetry event of an OS process ready (pyport_telemetry).
observe_ready(#state{pool = Pool, slot = Slot, os_pid = OsPid, spawned_at = Spawned,
                     python_version = Version}) ->
    pyport_telemetry:worker_ready(Pool, Slot, OsPid, Version, now_ms() - Spawned).

%% @private Logger metadata naming the worker.
-spec metadata(#state{}) -> map().
metadata(#state{pool = Pool, slot = Slot, os_pid = OsPid}) ->
    #{pyport_pool => Pool, pyport_slot => Slot, os_pid => OsPid, domain => [pyport]}.

%% @private What pyport_callback needs to serve Python's requests.
-spec callback_context(#state{}) -> pyport_callback:context().
callback_context(#state{port = Port, info = #{grants := Grants}, keeper = Keeper,
                        opts = #{max_frame_size := Max}} = State) ->
    #{port => Port, meta => metadata(State), grants => Grants, keeper => Keeper,
      max_frame_size => Max}.

%% Python logging set up by py:configure_logging/0,1 applies to every new
%% OS process too.
apply_logging(Port) ->
    case pyport_logging:python_level() of
        undefined ->
            ok;
        Level ->
            Id = erlang:unique_integer([positive]),
            _ = pyport_worker_writer:send_frame(Port, pyport_codec:encode_frame(
                                   ?CAST, Id, [<<"erlang._logging">>, <<"setup_logging">>,
                                               [Level], #{}])),
            ok
    end.

%%%===================================================================
%%% Requests the gen_server makes: init steps, namespace drops
%%%===================================================================

%% @private The answer to a request the owner made itself.
-spec internal_answer(term(), term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
internal_answer({init, _Step}, {?RESULT, _}, State) ->
    init_done(State);
internal_answer({init, Step}, {?ERROR, Rest}, State) ->
    start_failed({init_failed, Step, error_text(Rest)}, State);
internal_answer({init, Step}, {error, _} = Error, State) ->
    start_failed({init_failed, Step, Error}, State);
internal_answer({drop_namespace, _Ns}, _Reply, State) ->
    {noreply, State}.

init_done(#state{internal = Internal} = State) ->
    case lists:any(fun({init, _}) -> true; (_) -> false end, maps:values(Internal)) of
        true -> {noreply, State};
        false -> ready(State)
    end.

error_text(Rest) ->
    case pyport_codec:decode_fields(3, Rest) of
        {ok, [Type, Message, _]} -> {Type, Message};
        {error, _} = Error -> Error
    end.

%%%===================================================================
%%% The OS process
%%%===================================================================

%% The first OS process starts synchronously, so that a pool whose worker
%% cannot start fails to start, with the reason.
first_start(State) ->
    case spawn_os_process(State) of
        {ok, #state{port = Port, opts = #{start_timeout := Ms}} = State1} ->
            case await_ready(Port, now_ms() + Ms, State1) of
                {ok, _} = Ready ->
                    Ready;
                {error, _} = Error ->
                    %% No terminate/2 follows a failed init/1: the payload
                    %% file made at its hello goes now.
                    pyport_payloads:teardown(State1#state.pool, State1#state.slot),
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% Runs the frame handling of a live worker until the OS process is ready
%% or has failed.
await_ready(Port, Deadline, State) ->
    receive
        {Port, {data, Bin}} ->
            case data(Bin, State) of
                {noreply, #state{status = up} = S} -> {ok, S};
                {noreply, #state{status = failed, last_exit = Detail}} -> {error, Detail};
                {noreply, S} -> await_ready(Port, Deadline, S)
            end;
        {Port, {exit_status, Status}} ->
            {error, start_detail(pyport_os:exit_detail(Status), State)};
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

%% After the hello: the pool's imports and init code, then ready.
initialize(#state{opts = #{imports := Imports0, init_code := Code} = Opts} = State0) ->
    State = State0#state{status = initializing},
    Imports = case Opts of
                  #{warm_start := true} -> [];    % done in the zygote (pyport_zygote)
                  #{sandbox := false} -> Imports0;
                  #{} -> []                       % preloaded (pyport_sandbox:args/2)
              end,
    %% Around the pool's own steps: its venv and py_import's paths first,
    %% py_import's imports, an activated venv and py_preload's code last.
    %% A warm pool's own steps ran in its zygote (pyport_zygote).
    Warm = maps:get(warm_start, Opts, false),
    Steps = [S || {Tag, _} = S <- pyport_preload:first_steps(Opts), not (Warm andalso Tag =:= venv)]
        ++ [{{import, M}, <<"import ", M/binary>>} || M <- Imports]
        ++ [{init_code, Code} || Code =/= undefined, not Warm]
        ++ pyport_preload:later_steps(State0#state.pool, Opts)
        ++ pyport_payloads:setup(State0#state.pool, State0#state.slot, Opts),
    case Steps of
        [] ->
            ready(State);
        _ ->
            {noreply, lists:foldl(fun({Step, {control, Op, Arg}}, S) ->
                                          pyport_worker_requests:internal_request(
                                            ?CONTROL, [Op, Arg], {init, Step}, S);
                                     ({Step, Src}, S) ->
                                          pyport_worker_requests:internal_request(?EXEC, [Src, 0], {init, Step}, S)
                                  end, State, Steps)}
    end.

ready(#state{first = true} = State) ->
    %% init/1 publishes the worker.
    observe_ready(State),
    apply_logging(State#state.port),
    pyport_worker_requests:cancel_timer(State#state.start_timer),
    {noreply, State#state{status = up, start_timer = undefined, start_failures = 0}};
ready(State0) ->
    observe_ready(State0),
    apply_logging(State0#state.port),
    pyport_worker_requests:cancel_timer(State0#state.start_timer),
    ?LOG_INFO("pyport worker ~tp/~b: OS process ~b up (Python ~ts)",
                [State0#state.pool, State0#state.slot, State0#state.os_pid,
                 State0#state.python_version], metadata(State0)),
    State = pyport_worker_requests:flush_queue(State0#state{status = up, start_timer = undefined, start_failures = 0}),
    pyport_worker_requests:update_availability(State),
    [gen_server:reply(From, ok) || From <- State#state.recycle_waiters],
    {noreply, State#state{recycle_waiters = []}}.

%% The hello or the init code failed, or never came.
start_failed(Detail, #state{first = true} = State) ->
    kill_port(State#state.port, State#state.os_pid),
    pyport_payloads:teardown(State#state.pool, State#state.slot),
    {noreply, State#state{status = failed, port = undefined, last_exit = Detail}};
start_failed(Detail, State) ->
    kill_port(State#state.port, State#state.os_pid),
    pyport_worker_requests:cancel_timer(State#state.start_timer),
    os_process_died(Detail, State#state{start_timer = undefined}).

spawn_os_process(#state{opts = Opts} = State) ->
    Opened = case Opts of
                 #{warm_start := true} -> pyport_zygote:open_worker(State#state.pool, Opts);
                 #{} -> pyport_os:open(Opts)
             end,
    case Opened of
        {ok, Port, OsPid} ->
            {ok, State#state{port = Port, os_pid = OsPid, status = starting,
                             framer = pyport_framer:new(maps:get(max_frame_size, Opts)),
                             consumed = 0,
                             python_version = undefined, kill_reason = undefined,
                             start_error = undefined,
                             sent_here = 0, answered_here = 0, spawned_at = now_ms(),
                             rss_checked_at = now_ms() - ?RSS_CHECK_INTERVAL_MS}};
        {error, _} = Error ->
            Error
    end.

%% The OS process is gone (or was given up on): answer everyone waiting on
%% it, then start the next one or give up.
os_process_died(Detail, #state{status = stopping} = State) ->
    %% Stopping: no new process; requests it had are answered now.
    remove_workdir(State),
    ok = pyport_callback_keeper:port_closed(State#state.keeper, State#state.port),
    {noreply, (pyport_worker_pubsub:drop_subscriptions(pyport_worker_requests:fail_all_pending(Detail, State)))#state{port = undefined}};
os_process_died(Detail0, #state{status = Status, spawned_at = Spawned} = State0) ->
    Detail = case State0#state.kill_reason of
                 undefined -> start_detail(Detail0, State0);
                 Reason -> Reason
             end,
    %% Its callbacks' runners end before its callers hear of it.
    ok = pyport_callback_keeper:port_closed(State0#state.keeper, State0#state.port),
    State1 = pyport_worker_pubsub:drop_subscriptions(pyport_worker_requests:fail_all_pending(Detail, State0)),
    %% The objects it kept for Erlang died with it (pyport_objects).
    pyport_objects:worker_exited(self()),
    remove_workdir(State1),
    pyport_worker_requests:cancel_timer(State1#state.start_timer),
    WasUp = lists:member(Status, [up, draining, recycling]),
    Failures = case WasUp of
                   true -> 0;
                   false -> State1#state.start_failures + 1
               end,
    State = State1#state{port = undefined, last_exit = Detail, start_failures = Failures,
                         start_timer = undefined, restarts = State1#state.restarts + 1},
    pyport_pool:set_available(State#state.info, State#state.slot, false),
    Uptime = now_ms() - Spawned,
    %% Counted, and a telemetry event (pyport_stats).
    pyport_stats:os_process_ended(State#state.pool, State#state.slot, State#state.os_pid, Uptime,
                                  case Status of
                                      recycling -> {recycled, State#state.recycle_reason};
                                      _ -> {exited, Detail}
                                  end),
    if
        Status =:= recycling, State#state.leaving =/= false ->
            %% Leaving the pool: a new OS process only for requests that
            %% wait for one.
            State3 = State#state{os_pid = undefined, recycles = State#state.recycles + 1},
            case queue:is_empty(State#state.queue) of
                true -> {noreply, State3#state{status = stopping}};
                false -> respawn(State3)
            end;
        Status =:= recycling ->
            ?LOG_INFO("pyport worker ~tp/~b: OS process ~tp recycled (~tp)",
                        [State#state.pool, State#state.slot, State#state.os_pid,
                         State#state.recycle_reason], metadata(State)),
            respawn(State#state{os_pid = undefined, recycles = State#state.recycles + 1});
        Failures >= ?MAX_START_FAILURES ->
            ?LOG_ERROR("pyport worker ~tp/~b: OS process failed ~b times in a row "
                         "before it was ready; giving up: ~tp",
                         [State#state.pool, State#state.slot, Failures, Detail],
                         metadata(State)),
            {stop, {start_failed, Detail}, State};
        true ->
            %% A process that lived a while, that answered requests, or that
            %% the gen_server killed was healthy: it is replaced at once.
            %% Only processes that die before doing any work back off.
            Quick = WasUp andalso
                (Uptime >= ?STABLE_AFTER_MS orelse State0#state.answered_here > 0
                 orelse State0#state.kill_reason =/= undefined),
            {Delay, Next} = case Quick of
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

%% An OS process that died before it was ready: the reason it gave, or
%% the init step it was running (see pyport_start_error).
start_detail(Exit, #state{status = starting, start_error = Reported}) ->
    pyport_start_error:detail(Exit, Reported, undefined);
start_detail(Exit, #state{status = initializing, internal = Internal}) ->
    %% Init steps run in the order sent, which is the order of their ids.
    Steps = lists:sort([{Id, Step} || {Id, {init, Step}} <- maps:to_list(Internal)]),
    pyport_start_error:detail(Exit, undefined, case Steps of
                                                   [{_, Step} | _] -> Step;
                                                   [] -> undefined
                                               end);
start_detail(Exit, _State) ->
    Exit.

respawn(State) ->
    case spawn_os_process(State) of
        {ok, #state{opts = #{start_timeout := Ms}} = State1} ->
            Timer = erlang:start_timer(Ms, self(), hello),
            {noreply, State1#state{start_timer = Timer}};
        {error, {cannot_execute, _, Why} = Detail} when Why =:= emfile; Why =:= enfile;
                                                         Why =:= eagain; Why =:= enomem ->
            %% The node is out of descriptors or memory for a while: not a
            %% failure of the worker, so it does not count towards giving
            %% up. Retried with backoff (2 s at most), so the slot serves
            %% again soon after the resource is back.
            Next = next_backoff(State#state.backoff),
            ?LOG_WARNING("pyport worker ~tp/~b: cannot start an OS process (~tp); "
                         "retrying in ~b ms", [State#state.pool, State#state.slot, Detail, Next],
                         metadata(State)),
            Timer = erlang:start_timer(Next, self(), respawn),
            {noreply, State#state{status = waiting, start_timer = Timer, backoff = Next,
                                  last_exit = Detail}};
        {error, Detail} ->
            os_process_died(Detail, State#state{status = starting, spawned_at = now_ms()})
    end.

next_backoff(0) -> ?BACKOFF_MIN_MS;
next_backoff(Ms) -> min(2 * Ms, ?BACKOFF_MAX_MS).

%% @private Recycling: no new frames for the OS process (they queue), and no
%% least-loaded traffic, until what it runs has finished.
-spec start_drain(term(), #state{}) -> #state{}.
start_drain(Reason, #state{status = up, leaving = false} = State) ->
    ?LOG_INFO("pyport worker ~tp/~b: recycling OS process ~tp (~tp)",
                [State#state.pool, State#state.slot, State#state.os_pid, Reason],
                metadata(State)),
    pyport_pool:set_available(State#state.info, State#state.slot, false),
    #{shutdown_timeout := Grace} = State#state.opts,
    Timer = grace_timer(Grace, drain_timeout),
    maybe_drained(State#state{status = draining, recycle_reason = Reason, start_timer = Timer});
start_drain(_Reason, State) ->
    State.

maybe_drained(#state{status = draining, pending = Pending, internal = Internal} = State)
  when map_size(Pending) =:= 0, map_size(Internal) =:= 0 ->
    pyport_worker_requests:cancel_timer(State#state.start_timer),  % the drain_timeout
    _ = pyport_worker_writer:send_frame(State#state.port, pyport_codec:encode_frame(?SHUTDOWN, 0, [])),
    #{shutdown_timeout := Grace} = State#state.opts,
    Timer = grace_timer(Grace, recycle_kill),
    State#state{status = recycling, start_timer = Timer};
maybe_drained(State) ->
    State.


%% Leaving: see pyport_drain.
leave(#state{leaving = false, info = Info, pool = Pool, slot = Slot} = State) ->
    ?LOG_INFO("pyport worker ~tp/~b: leaving the pool (it shrank)", [Pool, Slot], metadata(State)),
    State#state{leaving = pyport_drain:leave(Info, Pool, Slot)};
leave(State) ->
    State.

rejoin(#state{leaving = false} = State) ->
    {noreply, State};
rejoin(#state{leaving = Leaving, pool = Pool} = State0) ->
    pyport_drain:rejoin(Leaving, Pool),
    State = State0#state{leaving = false},
    case State of
        #state{status = stopping, port = undefined} ->
            %% Its OS process ended in a recycle while leaving.
            respawn(State#state{status = starting});
        _ ->
            pyport_worker_requests:update_availability(State),
            {noreply, State}
    end.

leave_if_beyond_target(#state{info = Info, slot = Slot} = State) ->
    case Slot > pyport_pool:target(Info) of
        true -> leave(State);
        false -> State
    end.

%% Asks the OS process to finish what it has read and exit; kills it if it
%% is still there after the pool's shutdown_timeout (e.g. stuck in a loop).
%% Answers that arrive meanwhile still reach their callers.
stop_os_process(#state{port = undefined} = State) ->
    State;
stop_os_process(#state{port = Port, opts = #{shutdown_timeout := Grace}} = State) ->
    _ = pyport_worker_writer:send_frame(Port, pyport_codec:encode_frame(?SHUTDOWN, 0, [])),
    case drain_until_exit(Port, now_ms() + Grace, State) of
        {exited, State1} ->
            State1#state{port = undefined};
        {timeout, State1} ->
            pyport_os:kill(Port),
            {_, State2} = drain_until_exit(Port, now_ms() + ?KILL_GRACE_MS, State1),
            catch port_close(Port),
            State2#state{port = undefined}
    end.

drain_until_exit(Port, Deadline, State) ->
    receive
        {Port, {data, Bin}} ->
            %% Terminating: a worker that breaks the protocol now is killed
            %% and not replaced (`stopping').
            case state_of(data(Bin, State#state{status = stopping})) of
                #state{port = Port} = State1 -> drain_until_exit(Port, Deadline, State1);
                State1 -> {exited, State1#state{port = Port}}
            end;
        {Port, {exit_status, _}} ->
            {exited, State};
        {'EXIT', Port, _} ->
            {exited, State}
    after wait_ms(Deadline) ->
            %% A deadline beyond what `after' takes is waited for in steps.
            case Deadline - now_ms() of
                Left when Left > 0 -> drain_until_exit(Port, Deadline, State);
                _ -> {timeout, State}
            end
    end.

state_of({noreply, State}) -> State;
state_of({stop, _Reason, State}) -> State.

kill_port(undefined, _OsPid) ->
    ok;
kill_port(Port, _OsPid) ->
    pyport_os:kill(Port),
    catch port_close(Port),
    ok.

%% How long `receive ... after' may wait for a deadline: at most what it
%% accepts (2^32 - 1 ms).
wait_ms(Deadline) ->
    min(max(0, Deadline - now_ms()), 16#FFFFFFFF).

%% A timer for a grace period that may exceed what timers take: one beyond
%% it never fires (undefined), as if infinite.
grace_timer(Ms, Msg) when Ms =< 16#FFFFFFFF ->
    erlang:start_timer(Ms, self(), Msg);
grace_timer(_Ms, _Msg) ->
    undefined.

%%%===================================================================
%%% Helpers
%%%===================================================================

info_map(#state{} = S) ->
    #{pool => S#state.pool,
      slot => S#state.slot,
      pid => self(),
      status => S#state.status,
      os_pid => case S#state.status of
                    Up when Up =:= up; Up =:= draining; Up =:= recycling -> S#state.os_pid;
                    _ -> undefined
                end,
      python_version => S#state.python_version,
      capabilities => S#state.capabilities,
      pending => map_size(S#state.pending),
      queued => queue:len(S#state.queue),
      interrupted => map_size(S#state.kill_timers),
      served => S#state.served,
      restarts => S#state.restarts,
      recycles => S#state.recycles,
      namespaces => map_size(S#state.monitor_by_ns),
      leaving => S#state.leaving =/= false,
      last_exit => S#state.last_exit,
      sandbox => pyport_sandbox:report(S#state.capabilities)}.

%% A dead sandboxed worker's private directory, unless it removed it
%% itself. In another process: a big tree must not hold up requests.
remove_workdir(#state{capabilities = Caps, opts = Opts} = State) ->
    %% The OS process's payload file goes with it (pyport_payloads).
    pyport_payloads:teardown(State#state.pool, State#state.slot),
    case pyport_sandbox:workdir(pyport_sandbox:report(Caps), Opts) of
        undefined ->
            ok;
        Dir ->
            _ = spawn(fun() -> pyport_os:remove_tree(Dir) end),
            ok
    end.

schedule_purge() ->
    _ = erlang:send_after(?PURGE_INTERVAL_MS, self(), purge),
    ok.



now_ms() ->
    erlang:monotonic_time(millisecond).
