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
-module(pyport_worker).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/3, info/1, os_pid/1, recycle/2, recycle_async/2, stop_async/1, stream_cancel/2,
         stream_window/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, format_status/1]).
-export([exit_detail/1]).

%% Frame kinds (proto/PROTOCOL.md).
-define(HELLO, 0).
-define(CAST, 2).
-define(EXEC, 4).
-define(CANCEL, 5).
-define(STREAM_CREDIT, 7).
-define(INTERRUPT, 8).
-define(MESSAGE, 10).
-define(CONTROL, 11).
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
%% Requests held to go out together (send_request/3) fit in this many
%% bytes, and in the pool's max_frame_size.
-define(BATCH_MAX_BYTES, 262144).
-define(HELD, '$pyport_held').
-define(FLUSH_SENT, '$pyport_flush_sent').
-define(STREAM_RECHECK_MS, 10).

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

-type deadline() :: integer() | infinity.
%% A request written to the OS process: a call answered raw to its alias
%% (`abandoned' once its caller gave up), a task answered with a message,
%% or a stream.
-type entry() :: {reference() | abandoned, deadline()}
               | {task, reference(), atom(), term(), deadline()}
               | {stream, pid(), term(), Credit :: non_neg_integer(), Checking :: boolean()}.
-type status() :: starting      % OS process spawned, waiting for its hello
                | initializing  % hello received, imports and init_code running
                | up            % frames flow
                | draining      % to be recycled: in-flight requests finish first
                | recycling     % SHUTDOWN sent, waiting for the exit
                | waiting       % backing off before the next spawn
                | stopping      % the pool stops: no new process
                | failed.       % the first start failed (init/1 only)

-record(state, {
          pool :: pyport_config:pool_name(),
          slot :: pos_integer(),
          opts :: pyport_config:pool_opts(),
          info :: pyport_pool:info(),
          status = starting :: status(),
          %% init/1 starts the first OS process synchronously: its failure
          %% is returned, not retried.
          first = true :: boolean(),
          port :: port() | undefined,
          %% The current port's frames being cut from its bytes
          %% (`discard' once it broke the protocol and is being killed),
          %% and how many bytes of it this process has taken.
          framer :: pyport_framer:state() | discard | undefined,
          consumed = 0 :: non_neg_integer(),
          log :: pyport_worker_log:state(),
          %% OS pid: from the port at spawn, then the one the hello reports.
          os_pid :: non_neg_integer() | undefined,
          python_version :: binary() | undefined,
          capabilities = #{} :: map(),
          spawned_at = 0 :: integer(),                 % monotonic ms
          start_timer :: reference() | undefined,      % hello/init or backoff timer
          %% Requests written to the port (see entry()).
          pending = #{} :: #{pos_integer() => entry()},
          %% Requests the gen_server itself made (init steps, namespace drops).
          internal = #{} :: #{pos_integer() => term()},
          %% INTERRUPT sent: the OS process dies if no answer comes in time.
          kill_timers = #{} :: #{pos_integer() => reference()},
          %% Why the gen_server killed the current OS process, if it did.
          kill_reason :: term(),
          %% Why the current OS process cannot start, as it said before its
          %% hello (see pyport_start_error).
          start_error :: undefined | pyport_start_error:reported(),
          %% Held while the OS process restarts: {call, Alias, Id, Deadline,
          %% Frame}, {req, Id, Entry, Frame} (tasks, streams) or {cast,
          %% Frame}, in arrival order.
          queue = queue:new() :: queue:queue(),
          backoff = 0 :: non_neg_integer(),            % delay of the next quick restart
          start_failures = 0 :: non_neg_integer(),     % deaths in a row before a hello
          restarts = 0 :: non_neg_integer(),
          recycles = 0 :: non_neg_integer(),
          recycle_reason :: term(),
          recycle_waiters = [] :: [gen_server:from()],
          served = 0 :: non_neg_integer(),             % answered, all OS processes
          sent_here = 0 :: non_neg_integer(),          % requests written to this OS process
          answered_here = 0 :: non_neg_integer(),      % and answered by it
          rss_checked_at = 0 :: integer(),
          %% Process-bound namespaces: monitor => namespace, and back.
          ns_by_monitor = #{} :: #{reference() => pos_integer()},
          monitor_by_ns = #{} :: #{pos_integer() => reference()},
          last_exit :: term(),
          %% Python's pub/sub subscriptions: the mailboxes (in the worker)
          %% subscribed to each topic, and the topics of each mailbox. This
          %% process joins a topic's pg group once per subscription.
          subs = #{} :: #{term() => [pos_integer()]},
          box_topics = #{} :: #{pos_integer() => [term()]},
          %% The last check of the slot's in-flight counter (pyport_inflight).
          inflight_check :: pyport_inflight:snapshot(),
          %% Runs, bounds and ends the processes serving Python's calls
          %% into Erlang (pyport_callback_keeper).
          keeper :: pyport_callback_keeper:keeper() | undefined,
          %% Leaving the pool, which shrank below this slot (pyport_drain).
          leaving = false :: false | pyport_drain:leaving()
         }).

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
            cancel_in_worker(Id, State),
            count_out(State),
            %% erlang_python's last event of a cancelled stream.
            Consumer ! {py_stream, Ref, {error, <<"cancelled">>}},
            {reply, ok, State#state{pending = Rest}};
        _ ->
            {reply, ok, drop_queued(Id, State)}
    end;
handle_call({'$pyport_ns_register', Owner, Ns}, _From,
            #state{monitor_by_ns = ByNs, opts = Opts} = State) ->
    %% The pool's max_namespaces bounds the monitors here and the globals
    %% in the worker (see pyport_namespaces).
    Max = maps:get(max_namespaces, Opts, 10000),
    case is_map_key(Ns, ByNs) orelse map_size(ByNs) < Max of
        true -> {reply, ok, register_namespace(Owner, Ns, State)};
        false -> {reply, {error, {too_many_namespaces, Max}}, State}
    end;
handle_call('$pyport_interrupt_running', _From, #state{pending = Pending} = State) ->
    %% py:interrupt(Ctx): the calls running on this worker (not its tasks
    %% or streams, which are cancelled instead).
    case [Id || {Id, {Alias, _}} <- maps:to_list(Pending), is_reference(Alias)] of
        [] -> {reply, not_running, State};
        Ids -> {reply, ok, lists:foldl(fun interrupt/2, State, Ids)}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(stop, #state{status = Status, port = Port} = State) ->
    case Port =/= undefined andalso lists:member(Status, [up, draining, initializing]) of
        true -> _ = send_frame(Port, pyport_codec:encode_frame(?SHUTDOWN, 0, []));
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
handle_info({'$pyport', Alias, Id, Deadline, Frame}, State) ->
    {noreply, request(Alias, Id, Deadline, Frame, State)};
handle_info({'$pyport_output', Id, GroupLeader}, State) ->
    pyport_output:expect(Id, GroupLeader),
    {noreply, State};
handle_info({io_reply, _, _}, State) ->
    %% A group leader took a line of pyport_output's: nothing waits for it.
    {noreply, State};
handle_info({'$pyport_cast', Frame}, #state{status = up, port = Port, kill_timers = Timers} = State)
  when map_size(Timers) =:= 0 ->
    send_request(Port, Frame, State),
    {noreply, sent(State)};
handle_info({'$pyport_cast', _Frame}, #state{status = stopping} = State) ->
    {noreply, State};
handle_info({'$pyport_cast', Frame}, #state{queue = Q} = State) ->
    {noreply, State#state{queue = queue:in({cast, Frame}, Q)}};
handle_info({'$pyport_task', Alias, Tag, Ref, Id, Deadline, Frame}, State) ->
    {noreply, request(Id, {task, Alias, Tag, Ref, Deadline}, Frame, State)};
handle_info({'$pyport_stream', Consumer, Ref, Id, Frame}, State) ->
    {noreply, request(Id, {stream, Consumer, Ref, ?STREAM_WINDOW, false}, Frame, State)};
handle_info('$pyport_flush', State) ->
    erase(?FLUSH_SENT),
    flush_held(),
    {noreply, State};
handle_info({stream_recheck, Id}, State) ->
    {noreply, stream_recheck(Id, State)};
handle_info({pubsub, Topic, Msg}, State) ->
    forward_pubsub(Topic, Msg, State),
    {noreply, State};
handle_info({'$pyport_pending', Id, Probe}, State) ->
    %% An await asks whether request Id can still be answered (see
    %% pyport_async:await/3); silence means yes.
    case pending_for_caller(Id, State) of
        true -> ok;
        false -> Probe ! {Probe, not_pending}
    end,
    {noreply, State};
handle_info({'$pyport_cancel', Id}, State) ->
    {noreply, cancel(Id, State)};
handle_info({'$pyport_interrupt', Id}, State) ->
    {noreply, interrupt_on_request(Id, State)};
handle_info({'$pyport_ns', Owner, Ns}, State) ->
    {noreply, register_namespace(Owner, Ns, State)};
handle_info({'$pyport_ns_drop', Ns}, #state{monitor_by_ns = ByNs} = State) ->
    case maps:take(Ns, ByNs) of
        {Mon, Rest} ->
            erlang:demonitor(Mon, [flush]),
            {noreply, drop_namespace(Ns, State#state{
                                           monitor_by_ns = Rest,
                                           ns_by_monitor = maps:remove(Mon, State#state.ns_by_monitor)})};
        error ->
            {noreply, State}
    end;
handle_info({'DOWN', Mon, process, _, _}, #state{ns_by_monitor = ByMon} = State) ->
    case maps:take(Mon, ByMon) of
        {Ns, Rest} ->
            {noreply, drop_namespace(Ns, State#state{
                                           ns_by_monitor = Rest,
                                           monitor_by_ns = maps:remove(Ns, State#state.monitor_by_ns)})};
        error ->
            {noreply, State}
    end;
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
        #{Id := Timer} -> kill_unresponsive(Id, State);
        #{} -> {noreply, State}
    end;
handle_info({timeout, Timer, drain_timeout}, #state{start_timer = Timer, status = draining} = State) ->
    %% What still runs after shutdown_timeout (a task or stream that never
    %% ends) must not keep the OS process from being recycled: it is
    %% cancelled, which answers it CancelledError (synchronous requests
    %% ignore CANCEL: their callers' timeouts interrupt them).
    ?LOG_INFO("pyport worker ~tp/~b: cancelling ~b requests still running while recycling",
              [State#state.pool, State#state.slot, map_size(State#state.pending)], metadata(State)),
    _ = [cancel_in_worker(Id, State) || Id <- maps:keys(State#state.pending)],
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
    Checked = pyport_drain:check(Leaving, State#state.info, State#state.slot, {held(State), Idle}),
    {Overdue, Leaving1} = pyport_drain:overdue(Checked, maps:get(shutdown_timeout, State#state.opts)),
    %% Tasks and streams that outlast the grace are cancelled, as when
    %% recycling (synchronous calls ignore CANCEL: their deadlines end them).
    _ = [cancel_in_worker(Id, State) || Overdue, Id <- maps:keys(State#state.pending)],
    {noreply, State#state{leaving = Leaving1}};
handle_info({'$pyport_leave_check', _}, State) ->
    {noreply, State};
handle_info(purge, State0) ->
    schedule_purge(),
    State = purge_expired(State0),
    pyport_output:retain(fun(Id) -> pending_for_caller(Id, State) end),
    Check = pyport_inflight:check(State#state.info, State#state.slot, held(State),
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
    _ = fail_all(Detail, State),
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
%%% Requests
%%%===================================================================

request(Alias, _Id, _Deadline, _Frame, #state{status = stopping} = State) ->
    finish(Alias, {error, {worker_exited, shutdown}}, State),
    State;
request(Alias, Id, Deadline, Frame, #state{status = Status} = State) ->
    case expired(Deadline, now_ms()) of
        true ->
            %% The caller has given up already; tell it anyway in case it is
            %% a spawn_call whose await runs longer than the call's timeout.
            finish(Alias, {error, timeout}, State),
            State;
        false when Status =:= up, map_size(State#state.kill_timers) =:= 0 ->
            send_request(State#state.port, Frame, State),
            sent(State#state{pending = maps:put(Id, {Alias, Deadline}, State#state.pending)});
        false ->
            %% Restarting, draining, or stuck in code whose caller gave up:
            %% held until the OS process (this one or the next) takes work.
            State#state{queue = queue:in({call, Alias, Id, Deadline, Frame}, State#state.queue)}
    end.

%% A request went to the OS process: max_requests reached means it takes
%% no more (they queue for the next one) and is recycled once idle.
sent(#state{sent_here = N, opts = #{max_requests := Max}} = State) ->
    State1 = State#state{sent_here = N + 1},
    case is_integer(Max) andalso N + 1 >= Max of
        true -> start_drain({max_requests, Max}, State1);
        false -> State1
    end.

%% A request is finished: answer its caller (unless it gave up) and count
%% it out of the slot.
finish(abandoned, Reply, #state{info = #{counters := C}, slot = Slot} = State) ->
    pyport_payloads:drop(Reply, State#state.pool, Slot),
    counters:sub(C, Slot, 1);
finish(Alias, Reply, #state{info = #{counters := C}, slot = Slot}) ->
    Alias ! {Alias, Reply},
    counters:sub(C, Slot, 1).

%% A task or stream: written at once when the OS process takes work, else
%% queued. An expired task is answered `{error, timeout}' unsent.
request(_Id, Entry, _Frame, #state{status = stopping} = State) ->
    finish_entry(Entry, {error, {worker_exited, shutdown}}, State),
    State;
request(Id, Entry, Frame, #state{status = Status} = State) ->
    case expired(entry_deadline(Entry), now_ms()) of
        true ->
            finish_entry(Entry, {error, timeout}, State),
            State;
        false when Status =:= up, map_size(State#state.kill_timers) =:= 0 ->
            send_request(State#state.port, Frame, State),
            sent(State#state{pending = maps:put(Id, Entry, State#state.pending)});
        false ->
            State#state{queue = queue:in({req, Id, Entry, Frame}, State#state.queue)}
    end.

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
    %% After the message: an await that finds no row finds the message.
    pyport_async:task_finished(Ref).

stream_end({ok, _}) -> done;
stream_end({error, _} = Error) -> Error.

count_out(#state{info = #{counters := C}, slot = Slot}) ->
    counters:sub(C, Slot, 1).

%% The requests held that callers counted in (casts are not), and a figure
%% that grows with every request taken: what pyport_inflight:check/4 needs.
held(#state{pending = Pending, queue = Q, served = Served, sent_here = Sent}) ->
    Queued = length([E || E <- queue:to_list(Q), element(1, E) =/= cast]),
    {map_size(Pending) + Queued, Served + Sent}.

entry_deadline({_Alias, Deadline}) -> Deadline;
entry_deadline({task, _, _, _, Deadline}) -> Deadline;
entry_deadline({stream, _, _, _, _}) -> infinity.

%% The worker cancels the task or stream (it then answers CancelledError,
%% which nobody may be waiting for any more).
cancel_in_worker(Id, #state{port = Port}) when Port =/= undefined ->
    _ = send_frame(Port, pyport_codec:encode_frame(?CANCEL, Id, [])),
    ok;
cancel_in_worker(_Id, _State) ->
    ok.

%% A queued task or stream that is no longer wanted.
drop_queued(Id, #state{queue = Q} = State) ->
    Kept = queue:filter(fun({req, I, _, _}) when I =:= Id -> count_out(State), false;
                           (_) -> true
                        end, Q),
    State#state{queue = Kept}.

%% A closed port raises badarg; its exit status is then already on its way
%% and will answer the request. Held requests go first.
send_frame(Port, Frame) ->
    flush_held(),
    write(Port, Frame).

write(Port, Frame) ->
    try port_command(Port, pyport_framer:frame(Frame))
    catch error:badarg -> false
    end.

%% Requests that arrive together reach the worker in one write, which it
%% reads at once: while more messages wait in the mailbox, a request's
%% frame is held (in the process dictionary: it is not state, only a write
%% put off within this burst of messages). The held frames go out as one
%% BATCH frame once the mailbox is empty (the '$pyport_flush' message sent
%% to self when the first was held), or before any other frame
%% (send_frame/2), so frames always reach the worker in the order they
%% were sent.
send_request(Port, Frame, #state{opts = #{max_frame_size := Max}}) ->
    case process_info(self(), message_queue_len) of
        {message_queue_len, 0} ->
            send_frame(Port, Frame);
        _ ->
            hold(Port, Frame, iolist_size(Frame) + 5, min(Max, ?BATCH_MAX_BYTES) - 8)
    end.

hold(Port, Frame, Size, Limit) ->
    case get(?HELD) of
        {Port, Bytes, Frames} when Bytes + Size =< Limit ->
            put(?HELD, {Port, Bytes + Size, [Frame | Frames]});
        _ when Size > Limit ->
            send_frame(Port, Frame);
        _ ->
            flush_held(),
            put(?HELD, {Port, Size, [Frame]}),
            case get(?FLUSH_SENT) of
                true -> ok;
                _ -> put(?FLUSH_SENT, true), self() ! '$pyport_flush'
            end
    end,
    ok.

flush_held() ->
    case erase(?HELD) of
        undefined -> ok;
        {Port, _, [Frame]} -> write(Port, Frame);
        {Port, _, Frames} -> write(Port, pyport_codec:encode_batch(lists:reverse(Frames)))
    end.

%% Sends what was queued while the OS process restarted (up to what it
%% may take before it is recycled; the rest waits for the next one).
flush_queue(#state{queue = Q} = State) ->
    flush_queue(queue:out(Q), now_ms(), State#state{queue = queue:new()}).

flush_queue({empty, _}, _Now, State) ->
    State;
flush_queue({{value, Item}, Rest}, _Now, #state{status = Status} = State) when Status =/= up ->
    %% max_requests reached: the rest stays queued, in order.
    State#state{queue = queue:join(queue:in_r(Item, Rest), State#state.queue)};
flush_queue({{value, {cast, Frame}}, Rest}, Now, State) ->
    _ = send_frame(State#state.port, Frame),
    flush_queue(queue:out(Rest), Now, sent(State));
flush_queue({{value, {call, Alias, _Id, Deadline, _Frame}}, Rest}, Now, State)
  when is_integer(Deadline), Deadline < Now ->
    finish(Alias, {error, timeout}, State),
    flush_queue(queue:out(Rest), Now, State);
flush_queue({{value, {call, Alias, Id, Deadline, Frame}}, Rest}, Now, State) ->
    _ = send_frame(State#state.port, Frame),
    State1 = State#state{pending = maps:put(Id, {Alias, Deadline}, State#state.pending)},
    flush_queue(queue:out(Rest), Now, sent(State1));
flush_queue({{value, {req, Id, Entry, Frame}}, Rest}, Now, State) ->
    case expired(entry_deadline(Entry), Now) of
        true ->
            finish_entry(Entry, {error, timeout}, State),
            flush_queue(queue:out(Rest), Now, State);
        false ->
            _ = send_frame(State#state.port, Frame),
            State1 = State#state{pending = maps:put(Id, Entry, State#state.pending)},
            flush_queue(queue:out(Rest), Now, sent(State1))
    end.

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
        #{Id := {_Alias, Deadline}} ->
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
interrupt(Id, #state{pending = Pending, kill_timers = Timers, port = Port} = State) ->
    case is_map_key(Id, Pending) andalso not is_map_key(Id, Timers) of
        true ->
            _ = send_frame(Port, pyport_codec:encode_frame(?INTERRUPT, Id, [])),
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
interrupt_on_request(Id, #state{pending = Pending, queue = Q} = State) ->
    case is_map_key(Id, Pending) of
        true ->
            interrupt(Id, State);
        false ->
            {Hit, Kept} = lists:partition(fun({call, _, I, _, _}) -> I =:= Id;
                                             (_) -> false
                                          end, queue:to_list(Q)),
            Message = iolist_to_binary(io_lib:format("request ~b was interrupted before it started",
                                                     [Id])),
            [finish(Alias, {error, {'KeyboardInterrupt', Message}}, State)
             || {call, Alias, _, _, _} <- Hit],
            State#state{queue = queue:from_list(Kept)}
    end.

kill_unresponsive(Id, #state{opts = #{kill_after := Ms}} = State) ->
    ?LOG_WARNING("pyport worker ~tp/~b: request ~b did not stop within ~b ms of its "
                   "interrupt; killing OS process ~tp",
                   [State#state.pool, State#state.slot, Id, Ms, State#state.os_pid],
                   metadata(State)),
    pyport_os:kill(State#state.port),
    {noreply, State#state{kill_reason = {interrupt_timeout, Ms}}}.

%% Deadlines that passed: the caller has stopped waiting (a killed caller
%% could not say so), so the request is abandoned and interrupted.
purge_expired(#state{pending = Pending, queue = Q} = State) ->
    Now = now_ms(),
    Expired = maps:fold(fun(_Id, {abandoned, _}, Acc) ->
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
                           ({req, _, Entry, _}) -> expired(entry_deadline(Entry), Now);
                           ({cast, _}) -> false
                        end, queue:to_list(Q)),
    [finish_queued(Item, {error, timeout}, State1) || Item <- Dropped],
    State1#state{queue = queue:from_list(Kept)}.

finish_queued({call, Alias, _, _, _}, Reply, State) -> finish(Alias, Reply, State);
finish_queued({req, _, Entry, _}, Reply, State) -> finish_entry(Entry, Reply, State);
finish_queued({cast, _}, _Reply, _State) -> ok.

fail_all(Detail, #state{queue = Q} = State0) ->
    State = fail_all_pending(Detail, State0),
    Reply = {error, {worker_exited, Detail}},
    [finish_queued(Item, Reply, State) || Item <- queue:to_list(Q)],
    State#state{queue = queue:new()}.

%% Only requests already written to the dead process fail; queued ones wait
%% for the next process.
fail_all_pending(Detail, #state{pending = Pending, kill_timers = Timers} = State) ->
    Reply = {error, {worker_exited, Detail}},
    maps:foreach(fun(_Id, Entry) -> finish_entry(Entry, Reply, State) end, Pending),
    maps:foreach(fun(_Id, Timer) -> cancel_timer(Timer) end, Timers),
    pyport_output:retain(fun(Id) -> not is_map_key(Id, Pending) end),
    State#state{pending = #{}, kill_timers = #{}, internal = #{}}.

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
    answer(Id, {Kind, Rest}, State);
frame(Kind, Id, 3, Rest, State) when Kind =:= ?ERROR, Id > 0 ->
    answer(Id, {Kind, Rest}, State);
frame(?STREAM_CHUNK, Id, 1, Rest, State) when Id > 0 ->
    {noreply, stream_chunk(Id, Rest, State)};
frame(?STREAM_END, Id, 0, _Rest, State) when Id > 0 ->
    answer(Id, {?STREAM_END, <<>>}, State);
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
                      _ = send_frame(Port, pyport_callback:reply_frame(Id, Result, Ctx)),
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
        ok -> schedule(Id, Rest, State);
        {error, _} = Refused -> answer(Id, Refused, State)
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
    answer(Id, {error, {protocol_error, Why}}, State#state{log = Log}).

notify(Rest, State) ->
    {noreply, case pyport_callback:notify(Rest, callback_context(State)) of
                  ok -> State;
                  {unsubscribe_all, Box} -> unsubscribe_all(Box, State)
              end}.

%% An error that answers no request (e.g. a frame the worker could not
%% read far enough to find its id): logged within the pool's log_rate.
log_error_frame(Rest, #state{log = Log} = State) ->
    {noreply, State#state{log = pyport_worker_log:error_frame(Rest, metadata(State), Log)}}.

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
            after_answer(State#state{pending = Rest, served = State#state.served + 1,
                                     answered_here = State#state.answered_here + 1});
        error ->
            case maps:take(Id, State#state.internal) of
                {Purpose, Rest} ->
                    internal_answer(Purpose, Reply, State#state{internal = Rest});
                error ->
                    %% It answers a cast (e.g. a FrameError): nobody waits for it.
                    ?LOG_DEBUG("pyport worker ~tp/~b: answer to request ~b that nobody waits for",
                               [State#state.pool, State#state.slot, Id], metadata(State)),
                    {noreply, State}
            end
    end.

%% A call answered "continue elsewhere" (erlang.schedule and friends).
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
                {_Alias, _Deadline} ->
                    %% The request is answered: its caller runs the function
                    %% and takes its result.
                    answer(Id, {schedule, Name, Args}, State);
                undefined ->
                    %% A cast (or a caller that gave up): run it for nobody.
                    pyport_callback:schedule_cast(Name, Args, callback_context(State)),
                    {noreply, State}
            end;
        {ok, [<<"py">>, Frame]} when is_binary(Frame) ->
            %% The continuation goes back to the worker behind everything
            %% sent so far; the request stays in flight under its id.
            _ = send_frame(Port, Frame),
            {noreply, State};
        Other ->
            Why = {bad_schedule, Other},
            ?LOG_ERROR("pyport worker ~tp/~b: ~tp", [State#state.pool, State#state.slot, Why],
                       metadata(State)),
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
    finish_entry(Entry, pyport_request:decode_reply(Reply, State#state.pool, State#state.slot),
                 State).

%% After each answer: the max_rss check, and the end of a drain.
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

metadata(#state{pool = Pool, slot = Slot, os_pid = OsPid}) ->
    #{pyport_pool => Pool, pyport_slot => Slot, os_pid => OsPid, domain => [pyport]}.

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

callback_context(#state{port = Port, info = #{grants := Grants}, keeper = Keeper,
                        opts = #{max_frame_size := Max}} = State) ->
    #{port => Port, meta => metadata(State), grants => Grants, keeper => Keeper,
      max_frame_size => Max}.

%%%===================================================================
%%% Pub/sub for Python subscriptions
%%%===================================================================

subscribe(Topic, Box, #state{subs = Subs, box_topics = BoxTopics} = State) ->
    Boxes = maps:get(Topic, Subs, []),
    case lists:member(Box, Boxes) of
        true ->
            State;
        false ->
            ok = pyport_pubsub:subscribe(Topic, self()),
            State#state{subs = Subs#{Topic => [Box | Boxes]},
                        box_topics = BoxTopics#{Box => [Topic | maps:get(Box, BoxTopics, [])]}}
    end.

unsubscribe(Topic, Box, #state{subs = Subs, box_topics = BoxTopics} = State) ->
    Boxes = maps:get(Topic, Subs, []),
    case lists:member(Box, Boxes) of
        false ->
            State;
        true ->
            _ = pyport_pubsub:unsubscribe(Topic, self()),
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
                         [pyport_pubsub:unsubscribe(Topic, self()) || _ <- Boxes]
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
%%% Requests the gen_server makes: init steps, namespace drops
%%%===================================================================

internal_request(Kind, Fields, Purpose, #state{port = Port, internal = Internal} = State) ->
    Id = erlang:unique_integer([positive]),
    _ = send_frame(Port, pyport_codec:encode_frame(Kind, Id, Fields)),
    State#state{internal = Internal#{Id => Purpose}}.

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

%% Frees a namespace in the worker, if the OS process that has it still
%% runs (a new one starts with none).
drop_namespace(Ns, #state{status = Status} = State) when Status =:= up; Status =:= draining ->
    internal_request(?CONTROL, [<<"drop_namespace">>, Ns], {drop_namespace, Ns}, State);
drop_namespace(_Ns, State) ->
    State.

register_namespace(Owner, Ns, #state{monitor_by_ns = ByNs, ns_by_monitor = ByMon} = State) ->
    case is_map_key(Ns, ByNs) of
        true ->
            State;
        false ->
            Mon = erlang:monitor(process, Owner),
            State#state{monitor_by_ns = ByNs#{Ns => Mon}, ns_by_monitor = ByMon#{Mon => Ns}}
    end.

%%%===================================================================
%%% The OS process
%%%===================================================================

%% The first OS process starts synchronously, so that a pool whose worker
%% cannot start fails to start, with the reason.
first_start(State) ->
    case spawn_os_process(State) of
        {ok, #state{port = Port, opts = #{start_timeout := Ms}} = State1} ->
            await_ready(Port, now_ms() + Ms, State1);
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
                                          internal_request(?CONTROL, [Op, Arg], {init, Step}, S);
                                     ({Step, Src}, S) ->
                                          internal_request(?EXEC, [Src, 0], {init, Step}, S)
                                  end, State, Steps)}
    end.

ready(#state{first = true} = State) ->
    %% init/1 publishes the worker.
    observe_ready(State),
    apply_logging(State#state.port),
    cancel_timer(State#state.start_timer),
    {noreply, State#state{status = up, start_timer = undefined, start_failures = 0}};
ready(State0) ->
    observe_ready(State0),
    apply_logging(State0#state.port),
    cancel_timer(State0#state.start_timer),
    ?LOG_INFO("pyport worker ~tp/~b: OS process ~b up (Python ~ts)",
                [State0#state.pool, State0#state.slot, State0#state.os_pid,
                 State0#state.python_version], metadata(State0)),
    State = flush_queue(State0#state{status = up, start_timer = undefined, start_failures = 0}),
    update_availability(State),
    [gen_server:reply(From, ok) || From <- State#state.recycle_waiters],
    {noreply, State#state{recycle_waiters = []}}.

%% The hello or the init code failed, or never came.
start_failed(Detail, #state{first = true} = State) ->
    kill_port(State#state.port, State#state.os_pid),
    pyport_payloads:teardown(State#state.pool, State#state.slot),
    {noreply, State#state{status = failed, port = undefined, last_exit = Detail}};
start_failed(Detail, State) ->
    kill_port(State#state.port, State#state.os_pid),
    cancel_timer(State#state.start_timer),
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
    {noreply, (drop_subscriptions(fail_all_pending(Detail, State)))#state{port = undefined}};
os_process_died(Detail0, #state{status = Status, spawned_at = Spawned} = State0) ->
    Detail = case State0#state.kill_reason of
                 undefined -> start_detail(Detail0, State0);
                 Reason -> Reason
             end,
    State1 = drop_subscriptions(fail_all_pending(Detail, State0)),
    %% The objects it kept for Erlang died with it (pyport_objects).
    pyport_objects:worker_exited(self()),
    remove_workdir(State1),
    cancel_timer(State1#state.start_timer),
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

%% Recycling: no new frames for the OS process (they queue), and no
%% least-loaded traffic, until what it runs has finished.
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
    cancel_timer(State#state.start_timer),  % the drain_timeout
    _ = send_frame(State#state.port, pyport_codec:encode_frame(?SHUTDOWN, 0, [])),
    #{shutdown_timeout := Grace} = State#state.opts,
    Timer = grace_timer(Grace, recycle_kill),
    State#state{status = recycling, start_timer = Timer};
maybe_drained(State) ->
    State.

%% Least-loaded routing takes the slot while it is up and not stuck in a
%% request its caller gave up on.
update_availability(#state{status = Status, kill_timers = Timers, info = Info, slot = Slot,
                           leaving = Leaving}) ->
    pyport_pool:set_available(Info, Slot, Status =:= up andalso map_size(Timers) =:= 0
                              andalso Leaving =:= false).

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
            update_availability(State),
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
    _ = send_frame(Port, pyport_codec:encode_frame(?SHUTDOWN, 0, [])),
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

cancel_timer(undefined) -> ok;
cancel_timer(Timer) -> _ = erlang:cancel_timer(Timer, [{async, true}, {info, false}]), ok.

expired(infinity, _Now) -> false;
expired(Deadline, Now) -> Deadline < Now.

now_ms() ->
    erlang:monotonic_time(millisecond).
