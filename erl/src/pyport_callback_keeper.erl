%% @doc The processes that serve one worker's Python calls into Erlang
%% (`erlang.call', `rpc_call', `erlang.cast', ...; see {@link
%% pyport_callback}): they are counted, watched, and ended when nobody can
%% take their answer any more.
%%
%% One keeper per worker owner, linked to it. The owner starts each
%% callback process (a runner) itself, so that the keeper is never on the
%% path of an answer: {@link run/5} counts it against the pool's
%% `max_callbacks' (an `atomics' counter shared with the keeper) and
%% spawns it. The runner's first act is to link to the keeper and announce
%% itself; it then computes the answer and writes the REPLY to the port.
%% Its announcement and its exit signal come from the same process, so the
%% keeper always learns of a runner before its end. The keeper:
%%
%% <ul>
%% <li>answers a runner that exits without answering (killed, or crashed
%%   outside the function's own error handling) with an error REPLY naming
%%   the exit reason, so Python raises at once;</li>
%% <li>kills a runner when Python gave up on its answer (NOTIFY `cancel'),
%%   when its OS process ends (the port closes: its replies have nowhere to
%%   go) and when the owner ends; a cast's runner has no answer to give and
%%   outlives the port, but not the owner;</li>
%% <li>ends a local `rpc_call' at its timeout (killing its runner).</li>
%% </ul>
-module(pyport_callback_keeper).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/2, run/5, cancel/3, count/1, is_keeper/2, port_closed/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([keeper/0, key/0]).

%% What the owner holds: the keeper, the count of runners, the limit.
-type keeper() :: {pid(), atomics:atomics_ref(), pos_integer()}.
%% A runner that answers REQUEST `Id' on `Port', or a cast (no answer).
-type key() :: {port(), pos_integer()} | {cast, port()}.

-record(runner, {key :: key(),
                 what :: unicode:chardata(),
                 timer :: reference() | undefined}).

-record(st, {count :: atomics:atomics_ref(),
             meta :: map(),
             runners = #{} :: #{pid() => #runner{}},
             by_id = #{} :: #{{port(), pos_integer()} => pid()},
             ports = #{} :: #{port() => reference()},
             %% Cancels that came before their runner announced itself
             %% (runner and owner are different senders), with when.
             early_cancels = #{} :: #{{port(), pos_integer()} => integer()}}).

%% An early cancel whose runner never came (it had ended already) is
%% forgotten after this long.
-define(EARLY_CANCEL_MS, 10000).

%% @doc Starts the keeper of the calling worker owner (linked to it).
-spec start_link(pos_integer(), map()) -> {ok, keeper()}.
start_link(Max, Meta) ->
    Count = atomics:new(1, [{signed, true}]),
    {ok, Pid} = gen_server:start_link(?MODULE, {Count, Meta}, []),
    {ok, {Pid, Count, Max}}.

%% @doc Starts a runner for `Key' (in the owner): `Fun' runs in a new
%% process the keeper watches. `{error, too_many}' past `max_callbacks'
%% (nothing is started).
-spec run(keeper(), key(), unicode:chardata(), timeout(), fun(() -> term())) ->
          ok | {error, too_many}.
run({Keeper, Count, Max}, Key, What, Timeout, Fun) ->
    case atomics:add_get(Count, 1, 1) > Max of
        true ->
            atomics:sub(Count, 1, 1),
            {error, too_many};
        false ->
            _ = spawn(fun() ->
                              %% Linked before any user code runs: the
                              %% keeper's end is the runner's end.
                              link(Keeper),
                              Keeper ! {'$pyport_runner', self(), Key, What, Timeout},
                              Fun()
                      end),
            ok
    end.

%% @doc Python gave up on request `Id' of `Port': its runner is killed.
-spec cancel(keeper(), port(), pos_integer()) -> ok.
cancel({Keeper, _, _}, Port, Id) ->
    gen_server:cast(Keeper, {cancel, Port, Id}).

%% @doc How many runners are alive (or starting): what `max_callbacks'
%% bounds. From the owner's handle or the keeper's pid.
-spec count(keeper() | pid()) -> non_neg_integer().
count({_, Count, _}) ->
    atomics:get(Count, 1);
count(Keeper) when is_pid(Keeper) ->
    gen_server:call(Keeper, count).

%% @doc The OS process behind `Port' ended: its runners are killed, and
%% this returns once they are dead. The owner calls it before it answers
%% the worker's callers `worker_exited', so a runner still waiting on the
%% caller's behalf (a buffer read, a channel receive) cannot take what the
%% caller does next (the keeper's own port monitor comes too late for that).
-spec port_closed(keeper() | undefined, port() | undefined) -> ok.
port_closed({Keeper, _, _}, Port) when is_port(Port) ->
    try gen_server:call(Keeper, {port_closed, Port}, 5000)
    catch exit:_ -> ok          % the keeper is gone: so are its runners
    end;
port_closed(_, _) ->
    ok.

%% @doc Whether `Pid' is this keeper (for the owner's 'EXIT' handling).
-spec is_keeper(pid(), keeper() | undefined) -> boolean().
is_keeper(Pid, {Pid, _, _}) -> true;
is_keeper(_Pid, _) -> false.

%%%===================================================================
%%% gen_server callbacks
%%%===================================================================

%% @private
-spec init({atomics:atomics_ref(), map()}) -> {ok, #st{}}.
init({Count, Meta}) ->
    %% Runners are linked: their end comes as 'EXIT', and the owner's end
    %% (our parent) reaches terminate/2.
    process_flag(trap_exit, true),
    {ok, #st{count = Count, meta = Meta}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call({port_closed, Port}, _From, #st{runners = R} = St) ->
    Pids = [Pid || {Pid, #runner{key = {P, Id}}} <- maps:to_list(R), P =:= Port, is_integer(Id)],
    Mons = [erlang:monitor(process, Pid) || Pid <- Pids],
    St1 = lists:foldl(fun kill/2, St, Pids),
    %% `kill' cannot be trapped: each DOWN comes at once.
    _ = [receive {'DOWN', Mon, process, _, _} -> ok after 1000 -> erlang:demonitor(Mon, [flush]) end
         || Mon <- Mons],
    {reply, ok, St1};
handle_call(count, _From, #st{count = Count} = St) ->
    {reply, atomics:get(Count, 1), St};
handle_call(_Req, _From, St) ->
    {reply, {error, unknown_call}, St}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({cancel, Port, Id}, #st{by_id = ById} = St) ->
    case ById of
        #{{Port, Id} := Pid} ->
            %% No answer: nobody waits for one.
            {noreply, kill(Pid, St)};
        #{} ->
            %% Its runner may not have announced itself yet, or it ended.
            {noreply, early_cancel({Port, Id}, St)}
    end;
handle_cast(_Msg, St) ->
    {noreply, St}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'$pyport_runner', Pid, Key, What, Timeout}, St) ->
    {noreply, started(Pid, Key, What, Timeout, St)};
handle_info({'EXIT', Pid, Reason}, #st{runners = R} = St) ->
    case R of
        #{Pid := Runner} ->
            ended(Runner, Reason, St),
            {noreply, forget(Pid, St)};
        #{} ->
            {noreply, St}       % killed by us already
    end;
handle_info({'DOWN', Mon, port, Port, _}, #st{ports = Ports, runners = R} = St) ->
    %% The OS process is gone: its callbacks' answers have nowhere to go.
    case Ports of
        #{Port := Mon} ->
            Pids = [Pid || {Pid, #runner{key = {P, Id}}} <- maps:to_list(R),
                           P =:= Port, is_integer(Id)],
            St1 = lists:foldl(fun kill/2, St, Pids),
            {noreply, St1#st{ports = maps:remove(Port, Ports)}};
        #{} ->
            {noreply, St}
    end;
handle_info({timeout, _TRef, {deadline, Pid, Ms}}, #st{runners = R} = St) ->
    case R of
        #{Pid := #runner{key = Key, what = What}} ->
            reply_error(Key, {error, <<"TimeoutError">>,
                              io_lib:format("~ts did not answer within ~b ms", [What, Ms]),
                              timeout}),
            {noreply, kill(Pid, St)};
        #{} ->
            {noreply, St}
    end;
handle_info(_Msg, St) ->
    {noreply, St}.

%% @private
-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{runners = R}) ->
    %% The owner is gone: nobody takes any answer. `kill', since user code
    %% in a runner may trap exits.
    _ = [exit(Pid, kill) || Pid <- maps:keys(R)],
    ok.

%%%===================================================================
%%% Internals
%%%===================================================================

started(Pid, {cast, _} = Key, What, _Timeout, #st{runners = R} = St) ->
    St#st{runners = R#{Pid => #runner{key = Key, what = What}}};
started(Pid, {Port, _} = Key, What, Timeout, #st{runners = R, by_id = ById,
                                                   early_cancels = Early} = St) ->
    Runner = #runner{key = Key, what = What},
    St1 = watch_port(Port, St#st{runners = R#{Pid => Runner}}),
    case maps:take(Key, Early) of
        {_, Early1} ->
            %% Python gave up before it started.
            kill(Pid, St1#st{early_cancels = Early1});
        error ->
            Timer = case Timeout of
                        infinity -> undefined;
                        Ms when Ms > 16#FFFFFFFF -> undefined;    % beyond any timer: never
                        Ms -> erlang:start_timer(Ms, self(), {deadline, Pid, Ms})
                    end,
            %% Ids in flight are unique (proto/PROTOCOL.md); a worker that
            %% reuses one can cancel only the latest (all are counted).
            St1#st{runners = R#{Pid => Runner#runner{timer = Timer}}, by_id = ById#{Key => Pid}}
    end.

watch_port(Port, #st{ports = Ports} = St) ->
    case is_map_key(Port, Ports) of
        true -> St;
        false -> St#st{ports = Ports#{Port => erlang:monitor(port, Port)}}
    end.

%% Ends a runner without an answer of its own (unlinked first: its exit
%% signal is not needed).
kill(Pid, St) ->
    unlink(Pid),
    exit(Pid, kill),
    forget(Pid, St).

forget(Pid, #st{runners = R, by_id = ById, count = Count} = St) ->
    case maps:take(Pid, R) of
        {#runner{key = Key, timer = Timer}, R1} ->
            _ = Timer =/= undefined andalso erlang:cancel_timer(Timer),
            atomics:sub(Count, 1, 1),
            ById1 = case ById of
                        #{Key := Pid} -> maps:remove(Key, ById);
                        #{} -> ById
                    end,
            St#st{runners = R1, by_id = ById1};
        error ->
            St
    end.

%% A cancel is kept for a runner still to announce itself: there are no
%% more of those than runners counted but not announced, so a worker that
%% sends cancels for ids nobody serves cannot grow this map. Kept ones
%% whose runner never came (it had ended already) expire.
early_cancel(Key, #st{early_cancels = Early0, count = Count, runners = R} = St) ->
    Old = now_ms() - ?EARLY_CANCEL_MS,
    Early = maps:filter(fun(_, T) -> T > Old end, Early0),
    case map_size(Early) < atomics:get(Count, 1) - map_size(R) of
        true -> St#st{early_cancels = Early#{Key => now_ms()}};
        false -> St#st{early_cancels = Early}
    end.

now_ms() ->
    erlang:monotonic_time(millisecond).

%% A runner ended. One that answered ends `normal'; any other end means
%% its REPLY was not written (or may not have been: a kill just after the
%% write sends a second REPLY, which finds no mailbox in the worker and is
%% dropped there).
ended(_Runner, normal, _St) ->
    ok;
ended(#runner{key = {cast, _}, what = What}, Reason, #st{meta = Meta}) ->
    ?LOG_WARNING("pyport: ~ts exited: ~0tp", [What, small(Reason)], Meta);
ended(#runner{key = Key, what = What}, Reason, _St) ->
    reply_error(Key, {error, <<"ErlangError">>,
                      io_lib:format("the Erlang process running ~ts exited: ~0tp", [What, Reason],
                                    [{chars_limit, 2000}]),
                      {exit, small(Reason)}}).

%% An exit reason for Python: itself when small, else its text (bounded).
small(Reason) ->
    case erts_debug:flat_size(Reason) < 1000 of
        true -> Reason;
        false -> unicode:characters_to_binary(io_lib:format("~0tp", [Reason], [{chars_limit, 2000}]))
    end.

reply_error({cast, _}, _Error) ->
    ok;
reply_error({Port, Id}, Error) ->
    try port_command(Port, pyport_framer:frame(pyport_callback:encode_reply(Id, Error)))
    catch error:badarg -> ok            % the port closed: nobody waits
    end,
    ok.
