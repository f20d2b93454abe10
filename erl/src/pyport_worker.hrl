%% The state of a worker's port owner (pyport_worker), shared with the
%% modules that do its jobs: request bookkeeping (pyport_worker_requests),
%% streams (pyport_worker_streams), Python's subscriptions
%% (pyport_worker_pubsub), process-bound namespaces
%% (pyport_worker_namespaces).

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

%% Chunks a stream may have in flight (credit granted, not yet delivered).
-define(STREAM_WINDOW, 64).

-type deadline() :: integer() | infinity.
%% A request written to the OS process: a call answered raw to its alias
%% (`abandoned' once its caller gave up), a task answered with a message,
%% or a stream.
-type entry() :: {reference() | abandoned, deadline()}
               | {task, reference(), atom(), term(), deadline()}
               %% py:spawn_call: answered decoded as {py_response, Alias,
               %% Result}, at its deadline by its timer, counted here.
               | {reply_msg, reference(), deadline(), reference() | undefined, term()}
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
          inflight_check :: pyport_inflight:snapshot() | undefined,
          %% Runs, bounds and ends the processes serving Python's calls
          %% into Erlang (pyport_callback_keeper).
          keeper :: pyport_callback_keeper:keeper() | undefined,
          %% Leaving the pool, which shrank below this slot (pyport_drain).
          leaving = false :: false | pyport_drain:leaving()
         }).
