%% @doc The caller's side of a request: routing, encoding, sending and
%% waiting, all in the calling process.
%%
%% No central process is involved: the caller reads the pool's routing data
%% (see {@link pyport_pool}), encodes the whole frame itself and sends it
%% to the chosen worker with a one-shot reply alias. The answer comes back
%% to the alias undecoded and is decoded here, so encoding and decoding run
%% on the callers' schedulers, not in the worker's gen_server. The caller
%% monitors the worker's gen_server only once an answer is slow to come.
%%
%% On a timeout the alias is deactivated: an answer that comes later is
%% dropped by the runtime and never reaches the caller's mailbox. The
%% worker is told, so it interrupts the Python code (see {@link
%% pyport_worker}).
%%
%% A handle from {@link start/4} is awaited once, by the process that
%% started it: another process gets `{error, not_owner}' (and the call goes
%% on), a second await `{error, already_awaited}', both at once. Waits of
%% any length work, also beyond the 2^32-1 ms a `receive ... after' takes.
%%
%% Targets on another node run there (see {@link pyport_cluster}).
-module(pyport_request).

-include_lib("kernel/include/logger.hrl").

-export([call/4, call/5, start/4, start_failed/1, await/1, await/2, interrupt/1, cast/2, abandon/4]).
-export([send/3, decode_reply/3]).
-export([builtin_exception_types/0]).
-export([deadline/1, wait_ms/1]).
-export([start_message/4, observe/5]).

-export_type([target/0, handle/0, result/0]).

-type iovec() :: erlang:iovec().
-type where() :: #{pool := pyport_config:pool_name(), slot := pos_integer(),
                   call_timeout := timeout(), output := logger | caller}.

%% Frame kinds (proto/PROTOCOL.md).
-define(CALL, 1).
-define(CAST, 2).
-define(EVAL, 3).
-define(EXEC, 4).
-define(RESULT, 16).
-define(ERROR, 17).

%% How long a caller waits for an answer before it monitors the worker's
%% owner (see await/2).
-define(UNWATCHED_MS, 10).
%% The longest single `receive ... after'; longer waits are cut in such
%% pieces.
-define(MAX_AFTER_MS, 16#FFFFFFFF).
%% Frame kind WITH (a request with options) and the process dictionary
%% mark of a call that wants tracebacks in its errors (call/5).
-define(WITH, 13).
-define(TRACEBACK, '$pyport_traceback').
%% Set while a call is sent again with its payloads in the frame.
-define(NO_OFFLOAD, '$pyport_no_offload').

%% Where a request goes: the least-loaded worker of a pool, one slot, the
%% slot of a shard key; on another node, or on the least-loaded node of a
%% pool in the cluster.
-type local_target() :: {pool, pyport_config:pool_name()}
                      | {slot, pyport_config:pool_name(), pos_integer()}
                      | {shard, pyport_config:pool_name(), term()}.
-type target() :: local_target()
                | {node, node(), local_target()}
                | {cluster, pyport_config:pool_name()}
                %% A call's own `output' option (pyport_output).
                | {output, logger | caller, target()}.
-type deadline() :: integer() | infinity.
%% A request in flight (from {@link start/4}) or one that failed before it
%% could be sent.
-opaque handle() :: {pyport_call, reference(), deadline(), pyport_config:pool_name(),
                     pos_integer(), pid(), pos_integer(), Owner :: pid()}
                  | pyport_cluster:handle()
                  | {pyport_call_failed, term()}.
-type result() :: {ok, term()} | {error, term()}.

%% @doc Sends a request and waits for its answer. `Timeout' `default' means
%% the pool's `call_timeout'.
-spec call(target(), pos_integer(), [term()], timeout() | default) -> result().
call(Target, Kind, Fields, Timeout) ->
    call(Target, Kind, Fields, Timeout, #{}).

%% @doc {@link call/4} with extras (pyport_objects): `before_send', a fun
%% `(WorkerPid, Pool, Slot) -> ok | {error, _}' run once the worker is
%% chosen and before the frame goes (an error stops it); `traceback',
%% errors as `{error, {Type, Message, Traceback}}'. `Kind' may be `{13,
%% Options, InnerKind}': the request wrapped in a WITH frame (PROTOCOL.md).
-spec call(target(), pos_integer() | {pos_integer(), map(), pos_integer()}, [term()],
           timeout() | default, map()) -> result().
call({output, _, _} = Target, Kind, Fields, Timeout, Extra) ->
    case output_target(Target) of
        {output, _, _} = Local -> call_local(Local, Kind, Fields, Timeout, Extra);
        Other -> call(Other, Kind, Fields, Timeout, Extra)
    end;
call({node, Node, Target}, Kind, Fields, Timeout, _Extra) when Node =/= node() ->
    pyport_cluster:call(Node, Target, Kind, Fields, Timeout);
call({cluster, Pool}, Kind, Fields, Timeout, Extra) ->
    case pyport_cluster:pick_node(Pool) of
        {ok, Node} -> call({node, Node, {pool, Pool}}, Kind, Fields, Timeout, Extra);
        {error, _} = Error -> Error
    end;
call({node, _Local, Target}, Kind, Fields, Timeout, Extra) ->
    call(Target, Kind, Fields, Timeout, Extra);
call(Target, Kind, Fields, Timeout, Extra) ->
    call_local(Target, Kind, Fields, Timeout, Extra).

call_local(Target, Kind, Fields, Timeout, Extra) ->
    Result = call_local1(Target, Kind, Fields, Timeout, Extra),
    case pyport_payloads:is_lost(Result) of
        true ->
            %% Its payloads went to the file of an OS process that was
            %% replaced before the request was sent (pyport_payloads): once
            %% more, with them in the frame.
            put(?NO_OFFLOAD, true),
            try call_local1(Target, Kind, Fields, Timeout, Extra) after erase(?NO_OFFLOAD) end;
        false ->
            Result
    end.

call_local1(Target, Kind, Fields, Timeout, Extra) ->
    %% The handle never leaves this function: no owner or await checks.
    Start = erlang:monotonic_time(),
    case start_untracked(Target, Kind, Fields, Timeout, Start, maps:get(before_send, Extra, none)) of
        {pyport_call_failed, Reason} ->
            {error, Reason};
        {pyport_call, _, Deadline, Pool, Slot, _, _, _} = Handle ->
            Result = case maps:get(traceback, Extra, false) of
                         true ->
                             put(?TRACEBACK, true),
                             try wait(Handle, remaining(Deadline)) after erase(?TRACEBACK) end;
                         false ->
                             wait(Handle, remaining(Deadline))
                     end,
            observed(Pool, Slot, what(Kind, Fields), Start, Result)
    end.

%% What a request is, for stats and telemetry: user code (call, eval,
%% exec) is observed; CONTROL (py:gc, memory stats ...) is not.
what({?WITH, _Options, Kind}, Fields) -> what(Kind, Fields);
what(Kind, [Module, Function | _]) when Kind =:= ?CALL -> {Kind, [Module, Function]};
what(Kind, _Fields) when Kind =:= ?EVAL; Kind =:= ?EXEC -> {Kind, []};
what(_Kind, _Fields) -> none.

%% Counts a finished request (pyport_stats) and emits its telemetry stop
%% or exception event; returns its result.
observed(_Pool, _Slot, none, _Start, Result) ->
    Result;
observed(Pool, Slot, {Kind, Fields}, Start, Result) ->
    pyport_stats:call_done(Pool, Slot, Result, erlang:monotonic_time() - Start),
    pyport_telemetry:call_stop(Pool, Slot, Kind, Fields, Start, Result),
    Result.

%% @doc Gives up on a request another process started and can no longer
%% await (py:spawn_call's helper, stopped): the worker interrupts it, and it
%% is counted as a timeout.
-spec abandon(handle(), pos_integer(), [term()], integer()) -> ok.
abandon({pyport_call, _, _, Pool, Slot, Pid, Id, _}, Kind, Fields, Start) ->
    Pid ! {'$pyport_cancel', Id},
    _ = observed(Pool, Slot, what(Kind, Fields), Start, {error, timeout}),
    ok;
abandon(_Handle, _Kind, _Fields, _Start) ->
    ok.

%% @doc Sends a request and returns at once; {@link await/1} or {@link await/2} collects the
%% answer, once, in the same process.
-spec start(target(), pos_integer(), [term()], timeout() | default) -> handle().
start(Target, Kind, Fields, Timeout) ->
    Start = erlang:monotonic_time(),
    Handle = start_untracked(Target, Kind, Fields, Timeout, Start, none),
    case handle_key(Handle) of
        none -> ok;
        %% What await/1,2 needs to count the call when it ends.
        Key -> put(Key, {pending, what(Kind, Fields), Start})
    end,
    Handle.

%% `BeforeSend': see call/5.
start_untracked({output, _, _} = Target0, Kind, Fields, Timeout, Start, BeforeSend) ->
    case output_target(Target0) of
        {output, _, _} = Local -> start_local(Local, Kind, Fields, Timeout, Start, BeforeSend);
        Other -> start_untracked(Other, Kind, Fields, Timeout, Start, BeforeSend)
    end;
start_untracked({node, Node, Target}, Kind, Fields, Timeout, _Start, _BeforeSend)
  when Node =/= node() ->
    pyport_cluster:start(Node, Target, Kind, Fields, Timeout);
start_untracked({node, _Local, Target}, Kind, Fields, Timeout, Start, BeforeSend) ->
    start_untracked(Target, Kind, Fields, Timeout, Start, BeforeSend);
start_untracked({cluster, Pool}, Kind, Fields, Timeout, Start, BeforeSend) ->
    case pyport_cluster:pick_node(Pool) of
        {ok, Node} ->
            start_untracked({node, Node, {pool, Pool}}, Kind, Fields, Timeout, Start, BeforeSend);
        {error, Reason} ->
            {pyport_call_failed, Reason}
    end;
start_untracked(Target, Kind, Fields, Timeout, Start, BeforeSend) ->
    start_local(Target, Kind, Fields, Timeout, Start, BeforeSend).

start_local(Target0, Kind, Fields, Timeout0, Start, BeforeSend) ->
    {Output, Target} = output_of(Target0),
    Sent = send(Target, {Kind, Fields},
                fun(Pid, Id, Frame, #{pool := Pool, slot := Slot} = Where) ->
                        case before_send(BeforeSend, Pid, Pool, Slot) of
                            ok -> send_call(Pid, Id, Frame, Where, Timeout0, what(Kind, Fields), Start);
                            {error, _} = Error -> Error
                        end
                end, Output),
    case Sent of
        {error, Reason} -> {pyport_call_failed, Reason};
        Handle -> Handle
    end.

before_send(none, _Pid, _Pool, _Slot) -> ok;
before_send(Fun, Pid, Pool, Slot) -> Fun(Pid, Pool, Slot).

send_call(Pid, Id, Frame, #{pool := Pool, slot := Slot, call_timeout := CallTimeout} = Where,
          Timeout0, What, Start) ->
    Timeout = case Timeout0 of
                  default -> CallTimeout;
                  _ -> Timeout0
              end,
    Deadline = deadline(Timeout),
    %% A one-shot alias, not yet a monitor: see await/2.
    Alias = erlang:alias([reply]),
    _ = case Where of
            #{output := caller} ->
                %% Ahead of the request: the owner knows where its first
                %% line goes.
                Pid ! {'$pyport_output', Id, group_leader()};
            #{} ->
                ok
        end,
    %% self(): the process that decodes the answer (pyport_payloads:bind/2).
    Pid ! {'$pyport', Alias, Id, Deadline, Frame, self()},
    case What of
        none -> ok;
        {K, F} -> pyport_telemetry:call_start(Pool, Slot, K, F, Start)
    end,
    {pyport_call, Alias, Deadline, Pool, Slot, Pid, Id, self()}.

%% @doc Sends a CALL whose answer the worker's gen_server decodes and sends
%% to the caller as the message `{py_response, Ref, Result}' (erlang_python's
%% `spawn_call' shape), `Ref' being a one-shot alias of the caller: no
%% process stands between the caller and the worker. The gen_server answers
%% `{error, timeout}' at the deadline itself and counts the call when it
%% ends. `remote' for a target on another node (the caller must wait there
%% for it).
-spec start_message(target(), [term()], timeout() | default,
                    fun((reference(), pid(), pos_integer(), deadline(), term()) -> ok)) ->
          {ok, reference()} | remote | {error, term()}.
start_message({output, _, _} = Target0, Fields, Timeout, Registered) ->
    case output_target(Target0) of
        {output, Output, Local} -> start_message(Local, Output, Fields, Timeout, Registered);
        Other -> start_message(Other, Fields, Timeout, Registered)
    end;
start_message({node, Node, _}, _Fields, _Timeout, _Registered) when Node =/= node() ->
    remote;
start_message({node, _Local, Target}, Fields, Timeout, Registered) ->
    start_message(Target, Fields, Timeout, Registered);
start_message({cluster, _}, _Fields, _Timeout, _Registered) ->
    remote;
start_message(Target, Fields, Timeout, Registered) ->
    start_message(Target, default, Fields, Timeout, Registered).

start_message(Target, Output, Fields, Timeout0, Registered) ->
    Start = erlang:monotonic_time(),
    What = what(?CALL, Fields),
    send(Target, {?CALL, Fields},
         fun(Pid, Id, Frame, #{pool := Pool, slot := Slot, call_timeout := CallTimeout} = Where) ->
                 Deadline = deadline(case Timeout0 of
                                         default -> CallTimeout;
                                         _ -> Timeout0
                                     end),
                 Alias = erlang:alias([reply]),
                 %% Known before the gen_server can answer (and forget it).
                 ok = Registered(Alias, Pid, Id, Deadline, {Pool, Slot, What, Start}),
                 _ = case Where of
                         #{output := caller} -> Pid ! {'$pyport_output', Id, group_leader()};
                         #{} -> ok
                     end,
                 Pid ! {'$pyport_msg', Alias, Id, Deadline, {What, Start}, Frame},
                 {K, F} = What,
                 pyport_telemetry:call_start(Pool, Slot, K, F, Start),
                 {ok, Alias}
         end, Output).

%% @doc Counts a finished call (pyport_stats) and emits its telemetry stop
%% or exception event: for the worker's gen_server, which ends the calls
%% of {@link start_message/4}.
-spec observe(atom(), pos_integer(), {pos_integer(), [term()]} | none, integer(), result()) ->
          result().
observe(Pool, Slot, What, Start, Result) ->
    observed(Pool, Slot, What, Start, Result).

%% A call's own `output' option, if it has one (`default': the pool's).
output_of({output, Output, Target}) -> {Output, Target};
output_of(Target) -> {default, Target}.

%% The `output' option stays with a target on this node only: a worker of
%% another node has no way to this caller's group leader.
output_target({output, Output, {node, Node, Target}}) when Node =:= node() ->
    output_target({output, Output, Target});
output_target({output, _, {Local, _}} = Target) when Local =:= pool -> Target;
output_target({output, _, {Local, _, _}} = Target) when Local =:= slot; Local =:= shard -> Target;
output_target({output, _, Target}) -> Target.

%% Counts the request into its slot (the worker counts it out when it is
%% finished), unless the slot is at the pool's max_inflight. Counting first
%% and checking after means concurrent callers never overshoot the limit.
admit(#{counters := C, max_inflight := infinity}, Slot) ->
    counters:add(C, Slot, 1);
admit(#{counters := C, max_inflight := Max, name := Pool}, Slot) ->
    counters:add(C, Slot, 1),
    case counters:get(C, Slot) > Max of
        true ->
            counters:sub(C, Slot, 1),
            pyport_stats:rejected(Pool, Slot, overloaded),
            {error, overloaded};
        false ->
            ok
    end.

%% @doc A handle for a request that could not be sent: awaiting it gives
%% `{error, Reason}'.
-spec start_failed(term()) -> handle().
start_failed(Reason) ->
    {pyport_call_failed, Reason}.

%% @doc Waits for the answer until the request's own deadline.
-spec await(handle()) -> result().
await({pyport_call, _, Deadline, Pool, Slot, _, _, _} = Handle) ->
    claimed(Handle, fun(What, Start) ->
                            observed(Pool, Slot, What, Start, wait(Handle, remaining(Deadline)))
                    end);
await({pyport_remote, _, _, _, _} = Handle) ->
    claimed(Handle, fun(_, _) -> pyport_cluster:await(Handle, deadline) end);
await({pyport_call_failed, Reason}) ->
    {error, Reason}.

%% @doc Waits at most `Timeout' ms for the answer. After `{error, timeout}'
%% the request is abandoned: its answer can no longer arrive, and the
%% worker interrupts it.
-spec await(handle(), timeout()) -> result().
await({pyport_call, _, _, Pool, Slot, _, _, _} = Handle, Timeout) ->
    claimed(Handle, fun(What, Start) ->
                            observed(Pool, Slot, What, Start, wait(Handle, Timeout))
                    end);
await({pyport_remote, _, _, _, _} = Handle, Timeout) ->
    claimed(Handle, fun(_, _) -> pyport_cluster:await(Handle, Timeout) end);
await({pyport_call_failed, Reason}, _Timeout) ->
    {error, Reason}.

%% A handle is awaited by its owner, once: the mark start/4 left in the
%% owner's process dictionary goes with the first await.
claimed(Handle, Wait) ->
    case claim(handle_owner(Handle), handle_key(Handle)) of
        {ok, What, Start} -> Wait(What, Start);
        {error, _} = Error -> Error
    end.

%% The calling process must be `Owner'; it takes the process dictionary
%% mark `Key'.
claim(Owner, _Key) when Owner =/= self() ->
    {error, not_owner};
claim(_Owner, Key) ->
    case erase(Key) of
        {pending, What, Start} -> {ok, What, Start};
        undefined -> {error, already_awaited}
    end.

handle_owner({pyport_call, _, _, _, _, _, _, Owner}) -> Owner;
handle_owner({pyport_remote, _, _, _, Owner}) -> Owner.

handle_key({pyport_call, Alias, _, _, _, _, _, _}) -> {?MODULE, Alias};
handle_key({pyport_remote, ReqId, _, _, _}) -> {?MODULE, ReqId};
handle_key({pyport_call_failed, _}) -> none.

remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - now_ms()).

wait({pyport_call, Alias, _Deadline, Pool, Slot, _Pid, _Id, _Owner} = Handle, Timeout) ->
    %% Most answers come before the owner is watched at all: monitoring it
    %% at once would cost the owner a monitor and a demonitor signal per
    %% request. An owner that died meanwhile is noticed all the same, as a
    %% monitor of a dead process fires at once.
    Unwatched = case Timeout of
                    infinity -> ?UNWATCHED_MS;
                    _ -> min(Timeout, ?UNWATCHED_MS)
                end,
    receive
        {Alias, Reply} ->
            reply(Reply, Pool, Slot)
    after Unwatched ->
            watched(Handle, deadline(remaining_after(Timeout, Unwatched)))
    end.

remaining_after(infinity, _) -> infinity;
remaining_after(Timeout, Waited) -> Timeout - Waited.

watched({pyport_call, _, _, _, _, Pid, _, _} = Handle, Deadline) ->
    watched(Handle, erlang:monitor(process, Pid), Deadline).

watched({pyport_call, Alias, _, Pool, Slot, Pid, Id, _} = Handle, Monitor, Deadline) ->
    receive
        {Alias, Reply} ->
            erlang:demonitor(Monitor, [flush]),
            reply(Reply, Pool, Slot);
        {'DOWN', Monitor, process, _, Reason} ->
            erlang:unalias(Alias),
            {error, {worker_exited, Reason}}
    after wait_ms(Deadline) ->
            case remaining(Deadline) of
                0 ->
                    %% Once the alias is gone a later answer is dropped by
                    %% the runtime; one that arrived just before is still an
                    %% answer.
                    erlang:unalias(Alias),
                    erlang:demonitor(Monitor, [flush]),
                    receive
                        {Alias, Reply} -> reply(Reply, Pool, Slot)
                    after 0 ->
                            Pid ! {'$pyport_cancel', Id},
                            {error, timeout}
                    end;
                _ ->
                    %% A wait longer than one `after' can be.
                    watched(Handle, Monitor, Deadline)
            end
    end.

%% @doc The `after' value of a wait until `Deadline' (monotonic ms): never
%% more than a `receive' takes; the waiter checks the deadline again when
%% it passes.
-spec wait_ms(deadline()) -> timeout().
wait_ms(infinity) -> infinity;
wait_ms(Deadline) -> min(?MAX_AFTER_MS, max(0, Deadline - now_ms())).

%% @doc Asks the worker running a request to raise KeyboardInterrupt in it.
%% The request then answers (usually with a KeyboardInterrupt error),
%% or, if the Python code cannot be interrupted, the worker is killed after
%% the pool's `kill_after' and the answer is `{error, {worker_exited,
%% {interrupt_timeout, Ms}}}'. A request that has finished is not affected.
-spec interrupt(handle()) -> ok | {error, not_local}.
interrupt({pyport_call, _Alias, _Deadline, _Pool, _Slot, Pid, Id, _Owner}) ->
    Pid ! {'$pyport_interrupt', Id},
    ok;
interrupt({pyport_call_failed, _}) ->
    ok;
interrupt({pyport_remote, _, _, _, _}) ->
    {error, not_local}.

%% @doc Sends a call whose answer nobody waits for (kind CAST). It still
%% carries a fresh id: the worker refuses id 0 for it, and an error about
%% the frame itself then names the id (the owner drops it, as nobody waits).
-spec cast(target(), [term()]) -> ok | {error, term()}.
cast({output, _Output, Target}, Fields) ->
    %% Nobody waits for a cast: its output goes to the log.
    cast(Target, Fields);
cast({node, Node, Target}, Fields) when Node =/= node() ->
    pyport_cluster:cast(Node, Target, Fields);
cast({node, _Local, Target}, Fields) ->
    cast(Target, Fields);
cast({cluster, Pool}, Fields) ->
    case pyport_cluster:pick_node(Pool) of
        {ok, Node} -> cast({node, Node, {pool, Pool}}, Fields);
        {error, _} = Error -> Error
    end;
cast(Target0, Fields) ->
    case prepare(Target0, ?CAST, erlang:unique_integer([positive]), Fields, logger) of
        {ok, Target, _Pool, Info, Frame, _} ->
            case route(Target, Info) of
                {ok, _Slot, Pid} ->
                    Pid ! {'$pyport_cast', Frame},
                    ok;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%%%===================================================================
%%% Internals
%%%===================================================================

%% Encodes the frame and checks its size against the pool's limit. A
%% request whose fields hold object handles goes to their worker: the
%% encoder checks each handle (the caller owns it, it is live) and names
%% it, and the target becomes that worker (pyport_objects), at no cost to
%% requests without handles. `Output0': the call's own output option.
prepare(Target0, Kind0, Id, Fields0, Output0) ->
    prepare(Target0, Kind0, Id, Fields0, Output0, false).

prepare(Target0, Kind0, Id, Fields0, Output0, Offload) ->
    Pool0 = pool_of(Target0),
    case pyport_pool:info(Pool0) of
        {ok, #{opts := Opts} = Info0} ->
            _ = Offload andalso pyport_payloads:encoding(Opts) =:= ok,
            Output = case Output0 of
                         _ when Kind0 =/= ?CALL -> logger;     % eval, exec, control
                         default -> maps:get(output, Opts, logger);
                         _ -> Output0
                     end,
            {Kind, Fields} = case Output of
                                 caller -> pyport_output:call_fields(Id, Kind0, Fields0);
                                 logger -> {Kind0, Fields0}
                             end,
            try pyport_objects:collecting(fun() -> encode_frame(Kind, Id, Fields) end) of
                {Iodata, Refs} ->
                    Sized = case pyport_objects:target(Target0, Refs) of
                                {ok, Target0} -> sized(Target0, Pool0, Info0, Iodata);
                                {ok, Target} -> sized_in(Target, Iodata);
                                {error, _} = Refused -> Refused
                            end,
                    case Sized of
                        {ok, T, Pool, Info, Frame} -> {ok, T, Pool, Info, Frame, Output};
                        {error, _} = Error -> Error
                    end
            catch
                error:{unsupported_term, T} -> {error, {unsupported_term, T}};
                error:{pyport_object, Reason} -> {error, Reason}
            end;
        {error, _} = Error ->
            Error
    end.

sized_in(Target, Iodata) ->
    Pool = pool_of(Target),
    case pyport_pool:info(Pool) of
        {ok, Info} -> sized(Target, Pool, Info, Iodata);
        {error, _} = Error -> Error
    end.

sized(Target, Pool, #{max_frame_size := Max} = Info, Iodata) ->
    %% A few binaries instead of a deep iolist: the message to the port
    %% owner and the port write copy only small parts, while large binaries
    %% stay shared by reference.
    Frame = erlang:iolist_to_iovec(Iodata),
    case iolist_size(Frame) of
        Size when Size > Max -> {error, {frame_too_large, Size, Max}};
        _ -> {ok, Target, Pool, Info, Frame}
    end.

%% A request wrapped with options is a WITH frame around the whole request.
encode_frame({?WITH, Options, Kind}, Id, Fields) ->
    pyport_codec:encode_with(Id, Options, pyport_codec:encode_frame(Kind, Id, Fields));
encode_frame(Kind, Id, Fields) ->
    pyport_codec:encode_frame(Kind, Id, Fields).

pool_of({pool, Pool}) -> Pool;
pool_of({slot, Pool, _}) -> Pool;
pool_of({shard, Pool, _}) -> Pool.

route({pool, _}, #{elastic := true} = Info) ->
    %% An elastic pool's ties go to its lowest slots (pyport_pool:pick/1).
    pyport_pool:pick(Info);
route({pool, Pool}, #{counters := C, unavailable := U, size := Size} = Info) ->
    %% A caller whose worker of the last call has nothing in flight, and
    %% takes least-loaded calls, goes there again: nothing is less loaded,
    %% and a worker that has just answered answers the next request
    %% sooner (its thread, its CPU and the owner's scheduler are awake).
    case get({?MODULE, last_slot, Pool}) of
        Slot when is_integer(Slot), Slot =< Size ->
            case counters:get(C, Slot) =:= 0 andalso atomics:get(U, Slot) =:= 0
                andalso pyport_pool:worker(Info, Slot) of
                {ok, Pid} -> {ok, Slot, Pid};
                _ -> remember_slot(Pool, pyport_pool:pick(Info))
            end;
        _ ->
            remember_slot(Pool, pyport_pool:pick(Info))
    end;
route({slot, Pool, Slot}, Info) ->
    case pyport_pool:worker(Info, Slot) of
        {ok, Pid} -> {ok, Slot, Pid};
        error -> {error, {no_worker, Pool, Slot}}
    end;
route({shard, Pool, Key}, #{size := Size} = Info) ->
    route({slot, Pool, pyport_pool:shard_slot(Key, Size)}, Info).

%% At most one entry per pool name (an atom) in a caller's dictionary.
remember_slot(Pool, {ok, Slot, _} = Picked) ->
    put({?MODULE, last_slot, Pool}, Slot),
    Picked;
remember_slot(_Pool, Error) ->
    Error.

%% @doc Routes and encodes a request, counts it in (the worker's gen_server
%% counts it out when it is finished; `{error, overloaded}' at the pool's
%% `max_inflight'), then hands it to `Send(Pid, Id,
%% Frame, Where)', which sends the gen_server the message it needs; `Where'
%% holds the `pool', the `slot' and the pool's `call_timeout'. Returns what
%% `Send' returned, or `{error, Reason}' if it could not be sent.
-spec send(target(), {pos_integer(), [term()]},
           fun((pid(), pos_integer(), iovec(), where()) -> Result)) ->
          Result | {error, term()}.
send({output, _Output, Target}, Request, Send) ->
    %% Tasks and streams answer through their owner: their output is logged.
    send(Target, Request, Send, logger);
send(Target, Request, Send) ->
    send(Target, Request, Send, logger).

%% `Output': the call's own output option, `default' for the pool's.
send(Target, {Kind, Fields}, Send, Output0) ->
    Id = erlang:unique_integer([positive]),
    %% Big binaries of a call or an eval may go off the pipe (pyport_payloads).
    Offload = (Kind =:= ?CALL orelse Kind =:= ?EVAL) andalso get(?NO_OFFLOAD) =:= undefined,
    Result = case prepare(Target, Kind, Id, Fields, Output0, Offload) of
        {ok, Target1, Pool, Info, Frame0, Output} ->
            case route(Target1, Info) of
                {ok, Slot, Pid} ->
                    case admit(Info, Slot) of
                        ok ->
                            case placed(Info, Slot, Id, Frame0,
                                        fun() -> prepare(Target, Kind, Id, Fields, Output0, false) end) of
                                {ok, Frame} ->
                                    case Send(Pid, Id, Frame,
                                              #{pool => Pool, slot => Slot, output => Output,
                                                call_timeout => maps:get(call_timeout, Info)}) of
                                        {error, _} = NotSent ->
                                            %% Not sent: the worker will not count it out.
                                            #{counters := C} = Info,
                                            counters:sub(C, Slot, 1),
                                            pyport_payloads:unplace(Pool, Slot, Id),
                                            NotSent;
                                        Sent ->
                                            Sent
                                    end;
                                {error, _} = NotPlaced ->
                                    #{counters := C} = Info,
                                    counters:sub(C, Slot, 1),
                                    NotPlaced
                            end;
                        {error, _} = Error ->
                            Error
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end,
    pyport_payloads:cancel(),
    Result.

%% The frame with its big binaries in the worker's payload file, or (none
%% free) encoded again with them inside.
placed(Info, Slot, Id, Frame, Again) ->
    case pyport_payloads:place(Info, Slot, Id, Frame) of
        {ok, _} = Placed ->
            Placed;
        inline ->
            case Again() of
                {ok, _, _, _, Inline, _} -> {ok, Inline};
                {error, _} = Error -> Error
            end
    end.

%% @doc Decodes an answer the worker's gen_server forwarded undecoded:
%% `{Kind, Rest}' of a RESULT or ERROR frame.
-spec decode_reply({pos_integer(), binary()} | {pos_integer(), binary(), term()} | {error, term()},
                   atom(), pos_integer()) ->
          result().
decode_reply(Reply, Pool, Slot) ->
    reply(Reply, Pool, Slot).

reply({?RESULT, Rest}, Pool, Slot) ->
    reply({?RESULT, Rest, none}, Pool, Slot);
reply({?RESULT, Rest, Payloads}, Pool, _Slot) ->
    %% Payloads: the payload file of the OS process that answered
    %% (pyport_payloads:bind/1), if it has one.
    Limits = case Payloads of
                 none -> pyport_pool:decode_limits(Pool);
                 _ -> pyport_payloads:limits(Payloads, pyport_pool:decode_limits(Pool))
             end,
    case pyport_codec:decode_fields(1, Rest, Limits) of
        {ok, [Value]} -> {ok, Value};
        {error, _} = Error -> Error
    end;
reply({?ERROR, Rest}, Pool, Slot) ->
    Limits = pyport_pool:decode_limits(Pool),
    case pyport_codec:decode_fields(3, Rest, Limits) of
        {ok, [<<"FrameTooLarge">>, Message, _]} ->
            {error, {frame_too_large, Message}};
        {ok, [<<"FrameError">>, Message, _]} ->
            {error, {frame_error, Message}};
        {ok, [Type, Message, Traceback]} when is_binary(Type) ->
            %% Always in the log; in the error too when the call asked
            %% (call/5, `traceback').
            ?LOG_NOTICE("Python ~ts: ~ts~n~ts", [Type, Message, Traceback],
                        #{pyport_pool => Pool, pyport_slot => Slot,
                          python_traceback => Traceback, domain => [pyport, python]}),
            TypeTerm = pyport_atoms:exception_type(Type, maps:get(atoms, Limits)),
            case get(?TRACEBACK) of
                true -> {error, {TypeTerm, Message, Traceback}};
                _ -> {error, {TypeTerm, Message}}
            end;
        {ok, Fields} ->
            {error, {protocol_error, {bad_error_frame, Fields}}};
        {error, _} = Error ->
            Error
    end;
reply({schedule, Name, Args}, _Pool, _Slot) ->
    %% The call ended with erlang.schedule(Name, *Args): its result is the
    %% registered function's, run here, in the caller.
    pyport_callback:schedule_erlang(Name, Args);
reply({error, _} = Error, _Pool, _Slot) ->
    Error.

%% @doc Exception type names that arrive as atoms in any node running
%% pyport: every Python builtin exception (3.11) and a few common ones of
%% the standard library (json, subprocess, asyncio, io, decimal, pickle),
%% and those of the erlang package.
%% Listing them here makes the atoms exist as soon as this module is
%% loaded, which is before any answer is decoded.
-spec builtin_exception_types() -> [atom()].
builtin_exception_types() ->
    ['ArithmeticError', 'AssertionError', 'AttributeError', 'BaseException',
     'BaseExceptionGroup', 'BlockingIOError', 'BrokenPipeError', 'BufferError',
     'BytesWarning', 'ChildProcessError', 'ConnectionAbortedError',
     'ConnectionError', 'ConnectionRefusedError', 'ConnectionResetError',
     'DeprecationWarning', 'EOFError', 'EncodingWarning', 'EnvironmentError',
     'Exception', 'ExceptionGroup', 'FileExistsError', 'FileNotFoundError',
     'FloatingPointError', 'FutureWarning', 'GeneratorExit', 'IOError',
     'ImportError', 'ImportWarning', 'IndentationError', 'IndexError',
     'InterruptedError', 'IsADirectoryError', 'KeyError', 'KeyboardInterrupt',
     'LookupError', 'MemoryError', 'ModuleNotFoundError', 'NameError',
     'NotADirectoryError', 'NotImplementedError', 'OSError', 'OverflowError',
     'PendingDeprecationWarning', 'PermissionError', 'ProcessLookupError',
     'RecursionError', 'ReferenceError', 'ResourceWarning', 'RuntimeError',
     'RuntimeWarning', 'StopAsyncIteration', 'StopIteration', 'SyntaxError',
     'SyntaxWarning', 'SystemError', 'SystemExit', 'TabError', 'TimeoutError',
     'TypeError', 'UnboundLocalError', 'UnicodeDecodeError',
     'UnicodeEncodeError', 'UnicodeError', 'UnicodeTranslateError',
     'UnicodeWarning', 'UserWarning', 'ValueError', 'Warning',
     'ZeroDivisionError', 'JSONDecodeError', 'CalledProcessError',
     'TimeoutExpired', 'CancelledError', 'InvalidStateError',
     'IncompleteReadError', 'UnsupportedOperation', 'InvalidOperation',
     'DivisionByZero', 'PicklingError', 'UnpicklingError',
     %% The erlang package's own (docs/erlang-integration.md).
     'ErlangError', 'UnknownFunctionError', 'ProcessError', 'RpcTimeoutError',
     'NodeDownError', 'StateFullError'].

%% @doc The monotonic time (ms) `Timeout' ms from now.
-spec deadline(timeout()) -> deadline().
deadline(infinity) -> infinity;
deadline(Timeout) -> now_ms() + Timeout.

now_ms() ->
    erlang:monotonic_time(millisecond).
