%% @doc The processes that serve one worker's Python calls into Erlang
%% (`erlang.call', `rpc_call', `erlang.cast', ...; see {@link
%% pyport_callback}): they are started here, counted, and ended when nobody
%% can take their answer any more.
%%
%% One keeper per worker owner, linked to it. For each callback that runs
%% Erlang code it starts a linked process (a runner), which computes the
%% answer and writes the REPLY to the port itself. The keeper:
%%
%% <ul>
%% <li>bounds the runners of its worker to the pool's `max_callbacks': past
%%   it a request is answered with an error at once, a cast is dropped
%%   with a log line;</li>
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

-export([start_link/2, run/2, cancel/3, count/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([job/0]).

%% A callback to run. `reply': the REPLY `id' goes to `port'; `cast': no
%% answer. `what' names it in errors ("erlang.call('f')").
-type job() :: #{kind := reply | cast,
                 port := port(),
                 id := non_neg_integer(),
                 what := unicode:chardata(),
                 run := fun(() -> term()),
                 timeout => timeout()}.

-record(runner, {key :: {port(), pos_integer()} | cast,
                 what :: unicode:chardata(),
                 timer :: reference() | undefined}).

-record(st, {max :: pos_integer(),
             meta :: map(),
             runners = #{} :: #{pid() => #runner{}},
             by_id = #{} :: #{{port(), pos_integer()} => pid()},
             ports = #{} :: #{port() => reference()}}).

%% @doc Starts the keeper of the calling worker owner (linked to it).
-spec start_link(pos_integer(), map()) -> {ok, pid()}.
start_link(Max, Meta) ->
    gen_server:start_link(?MODULE, {Max, Meta}, []).

%% @doc Runs a callback (asynchronously: the answer, or its error, goes to
%% the port).
-spec run(pid(), job()) -> ok.
run(Keeper, Job) ->
    gen_server:cast(Keeper, {run, Job}).

%% @doc Python gave up on request `Id' of `Port': its runner is killed.
-spec cancel(pid(), port(), pos_integer()) -> ok.
cancel(Keeper, Port, Id) ->
    gen_server:cast(Keeper, {cancel, Port, Id}).

%% @doc How many runners are alive.
-spec count(pid()) -> non_neg_integer().
count(Keeper) ->
    gen_server:call(Keeper, count).

%%%===================================================================
%%% gen_server callbacks
%%%===================================================================

%% @private
-spec init({pos_integer(), map()}) -> {ok, #st{}}.
init({Max, Meta}) ->
    %% Runners are linked: their end comes as 'EXIT', and the owner's end
    %% (our parent) reaches terminate/2.
    process_flag(trap_exit, true),
    {ok, #st{max = Max, meta = Meta}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(count, _From, #st{runners = R} = St) ->
    {reply, map_size(R), St};
handle_call(_Req, _From, St) ->
    {reply, {error, unknown_call}, St}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast({run, Job}, St) ->
    {noreply, start(Job, St)};
handle_cast({cancel, Port, Id}, #st{by_id = ById} = St) ->
    case ById of
        #{{Port, Id} := Pid} ->
            %% No answer: nobody waits for one.
            unlink(Pid),
            exit(Pid, kill),
            {noreply, forget(Pid, St)};
        #{} ->
            {noreply, St}
    end;
handle_cast(_Msg, St) ->
    {noreply, St}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'EXIT', Pid, Reason}, #st{runners = R} = St) ->
    case R of
        #{Pid := Runner} ->
            ended(Runner, Reason, St),
            {noreply, forget(Pid, St)};
        #{} ->
            {noreply, St}       % cancelled or timed out already
    end;
handle_info({'DOWN', Mon, port, Port, _}, #st{ports = Ports, by_id = ById} = St) ->
    %% The OS process is gone: its callbacks' answers have nowhere to go.
    case Ports of
        #{Port := Mon} ->
            Pids = [Pid || {{P, _}, Pid} <- maps:to_list(ById), P =:= Port],
            [begin unlink(Pid), exit(Pid, kill) end || Pid <- Pids],
            St1 = lists:foldl(fun forget/2, St, Pids),
            {noreply, St1#st{ports = maps:remove(Port, Ports)}};
        #{} ->
            {noreply, St}
    end;
handle_info({timeout, _TRef, {deadline, Pid, Ms}}, #st{runners = R} = St) ->
    case R of
        #{Pid := #runner{key = Key, what = What}} ->
            unlink(Pid),
            exit(Pid, kill),
            reply_error(Key, {error, <<"TimeoutError">>,
                              io_lib:format("~ts did not answer within ~b ms", [What, Ms]),
                              timeout}),
            {noreply, forget(Pid, St)};
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

start(#{kind := Kind, port := Port, id := Id, what := What} = Job,
      #st{max = Max, runners = R, by_id = ById} = St) ->
    Key = case Kind of
              reply -> {Port, Id};
              cast -> cast
          end,
    if
        map_size(R) >= Max ->
            refuse(Key, What, {error, <<"ErlangError">>,
                               io_lib:format("~ts refused: this worker has ~b Erlang callback "
                                             "processes running already (max_callbacks)",
                                             [What, Max]),
                               {too_many_callbacks, Max}}, St),
            St;
        Key =/= cast andalso is_map_key(Key, ById) ->
            %% Ids in flight are unique (proto/PROTOCOL.md): a worker that
            %% reuses one gets no second process for it.
            refuse(Key, What, {error, <<"ValueError">>,
                               io_lib:format("request id ~b is already in flight", [Id]),
                               {duplicate_id, Id}}, St),
            St;
        true ->
            Pid = spawn_link(maps:get(run, Job)),
            Timer = case maps:get(timeout, Job, infinity) of
                        infinity -> undefined;
                        Ms when Ms > 16#FFFFFFFF -> undefined;    % beyond any timer: never
                        Ms -> erlang:start_timer(Ms, self(), {deadline, Pid, Ms})
                    end,
            St1 = St#st{runners = R#{Pid => #runner{key = Key, what = What, timer = Timer}}},
            case Key of
                cast -> St1;
                _ -> watch_port(Port, St1#st{by_id = ById#{Key => Pid}})
            end
    end.

refuse(cast, What, {error, _, Message, _}, #st{meta = Meta}) ->
    ?LOG_WARNING("pyport: ~ts; dropped (~ts)", [Message, What], Meta);
refuse(Key, _What, Error, _St) ->
    reply_error(Key, Error).

watch_port(Port, #st{ports = Ports} = St) ->
    case is_map_key(Port, Ports) of
        true -> St;
        false -> St#st{ports = Ports#{Port => erlang:monitor(port, Port)}}
    end.

forget(Pid, #st{runners = R, by_id = ById} = St) ->
    case maps:take(Pid, R) of
        {#runner{key = Key, timer = Timer}, R1} ->
            _ = Timer =/= undefined andalso erlang:cancel_timer(Timer),
            St#st{runners = R1, by_id = maps:remove(Key, ById)};
        error ->
            St
    end.

%% A runner ended. One that answered ends `normal'; any other end means
%% its REPLY was not written (or may not have been: a kill just after the
%% write sends a second REPLY, which finds no mailbox in the worker and is
%% dropped there).
ended(_Runner, normal, _St) ->
    ok;
ended(#runner{key = cast, what = What}, Reason, #st{meta = Meta}) ->
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

reply_error(cast, _Error) ->
    ok;
reply_error({Port, Id}, Error) ->
    try port_command(Port, pyport_callback:encode_reply(Id, Error))
    catch error:badarg -> ok            % the port closed: nobody waits
    end,
    ok.
