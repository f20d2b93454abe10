%% @doc Ends worker OS processes whose port owner is gone, and kills them
%% on request, without the node opening a descriptor or running a shell.
%%
%% At startup it opens one helper port, `pyport_worker --reaper' (see
%% port_worker/reaper.hpp), and keeps it. Every worker port is registered
%% here right after it is opened ({@link watch/2}): the helper then takes a
%% pidfd of the port's OS process (the worker's keeper), so a later kill
%% can never reach another process that reused the pid. The port is
%% monitored: when it closes, however that happens (its owner killed,
%% `port_close', the OS process exited), the helper signals the keeper,
%% which kills the worker and everything it started. A keeper that has
%% exited already is not affected.
%%
%% A kill is a line written to the helper's port: it works with the node
%% out of file descriptors, and takes no process of the caller's.
-module(pyport_reaper).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/0, watch/2, kill/1, kill_os_pid/1, watched/0, helper_os_pid/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% A helper that dies sooner than this after it started is not restarted
%% here: the reaper exits and its supervisor takes over.
-define(MIN_HELPER_LIFE_MS, 1000).

-record(state, {
          helper :: port() | undefined,
          next_id = 1 :: pos_integer(),
          %% Watched ports: their helper id and monitor.
          ports = #{} :: #{port() => {pos_integer(), reference()}},
          %% When the helper was last started (monotonic ms).
          started_at = 0 :: integer()
         }).

%% @doc Starts the reaper and its helper port.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Watches a worker port whose OS process is `OsPid': once the port
%% closes, that process tree is ended. Asynchronous; a no-op while the
%% reaper is not running.
-spec watch(port(), non_neg_integer() | undefined) -> ok.
watch(Port, OsPid) when is_port(Port), is_integer(OsPid), OsPid > 1 ->
    gen_server:cast(?MODULE, {watch, Port, OsPid});
watch(_Port, _OsPid) ->
    ok.

%% @doc Kills the OS process tree of a watched port now (its keeper ends
%% the worker and all it started; the port then reports the exit status).
%% Asynchronous.
-spec kill(port()) -> ok.
kill(Port) when is_port(Port) ->
    gen_server:cast(?MODULE, {kill, Port}).

%% @doc Sends SIGKILL to an OS pid, with no guard against reuse of the pid:
%% for tests and operators that name a process they know is alive.
-spec kill_os_pid(pos_integer()) -> ok.
kill_os_pid(OsPid) when is_integer(OsPid), OsPid > 1 ->
    gen_server:cast(?MODULE, {kill_os_pid, OsPid}).

%% @doc How many ports are watched (for tests and introspection).
-spec watched() -> non_neg_integer().
watched() ->
    gen_server:call(?MODULE, watched).

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    {ok, #state{helper = open_helper(), started_at = now_ms()}}.

%% @doc The OS pid of the helper (for tests), or undefined.
-spec helper_os_pid() -> non_neg_integer() | undefined.
helper_os_pid() ->
    gen_server:call(?MODULE, helper_os_pid).

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(watched, _From, #state{ports = Ports} = State) ->
    {reply, map_size(Ports), State};
handle_call(helper_os_pid, _From, #state{helper = Helper} = State) ->
    OsPid = case Helper =/= undefined andalso erlang:port_info(Helper, os_pid) of
                {os_pid, P} -> P;
                _ -> undefined
            end,
    {reply, OsPid, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({watch, Port, OsPid}, #state{ports = Ports, next_id = Id} = State) ->
    case maps:is_key(Port, Ports) orelse erlang:port_info(Port, id) =:= undefined of
        true ->
            %% Closed already: its owner closed it, or the process exited.
            %% Not watched, so that a pid reused since is never signalled
            %% (the worker, seeing end of input, ends itself).
            {noreply, State};
        false ->
            Mon = erlang:monitor(port, Port),
            command(State, ["w ", integer_to_list(Id), $\s, integer_to_list(OsPid), $\n]),
            {noreply, State#state{next_id = Id + 1, ports = Ports#{Port => {Id, Mon}}}}
    end;
handle_cast({kill, Port}, #state{helper = undefined} = State) ->
    %% No helper: closing the port ends the worker all the same, only
    %% later (at end of input it interrupts what runs, and kills itself
    %% 1 s after if that was not enough; its keeper ends the rest).
    _ = (catch erlang:port_close(Port)),
    {noreply, State};
handle_cast({kill, Port}, #state{ports = Ports} = State) ->
    case maps:take(Port, Ports) of
        {{Id, Mon}, Rest} ->
            erlang:demonitor(Mon, [flush]),
            command(State, ["k ", integer_to_list(Id), $\n]),
            {noreply, State#state{ports = Rest}};
        error ->
            {noreply, State}
    end;
handle_cast({kill_os_pid, OsPid}, #state{next_id = Id} = State) ->
    %% Watched and killed at once, under an id of its own.
    command(State, ["w ", integer_to_list(Id), $\s, integer_to_list(OsPid), "\nx ",
                    integer_to_list(Id), $\n]),
    {noreply, State#state{next_id = Id + 1}};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({'DOWN', _Mon, port, Port, _}, #state{ports = Ports} = State) ->
    case maps:take(Port, Ports) of
        {{Id, _}, Rest} ->
            %% Harmless if the process exited: the pidfd still names it.
            command(State, ["k ", integer_to_list(Id), $\n]),
            {noreply, State#state{ports = Rest}};
        error ->
            {noreply, State}
    end;
handle_info({Helper, {exit_status, Status}}, #state{helper = Helper, started_at = At} = State) ->
    case now_ms() - At < ?MIN_HELPER_LIFE_MS of
        true -> {stop, {reaper_helper_exited, Status}, State#state{helper = undefined}};
        false -> helper_exited(Status, State)
    end;
handle_info({Helper, {data, _}}, #state{helper = Helper} = State) ->
    {noreply, State};
handle_info(_Msg, State) ->
    {noreply, State}.

helper_exited(Status, #state{ports = Ports} = State0) ->
    %% Killed from outside: a new helper watches the same ports (each with
    %% a new pidfd; the ports are still open, so their processes are ours).
    ?LOG_WARNING("pyport: the reaper helper exited (status ~b); restarting it",
                 [Status], #{domain => [pyport]}),
    State = State0#state{helper = open_helper(), started_at = now_ms()},
    maps:foreach(fun(Port, {Id, _}) ->
                         case erlang:port_info(Port, os_pid) of
                             {os_pid, OsPid} when is_integer(OsPid) ->
                                 command(State, ["w ", integer_to_list(Id), $\s,
                                                 integer_to_list(OsPid), $\n]);
                             _ ->
                                 ok
                         end
                 end, Ports),
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    ok.

command(#state{helper = undefined}, _Line) ->
    ok;
command(#state{helper = Helper}, Line) ->
    %% The helper reads what it is sent before it could fill a pipe.
    _ = (catch port_command(Helper, Line)),
    ok.

open_helper() ->
    Exe = helper_executable(),
    try open_port({spawn_executable, Exe}, [{args, ["--reaper"]}, exit_status, use_stdio, binary])
    catch error:Reason ->
            %% Workers still end when their port closes (they interrupt what
            %% runs and kill themselves after a grace period), only later.
            ?LOG_ERROR("pyport: cannot start the reaper helper ~ts: ~tp; "
                       "workers are stopped by closing their ports",
                       [Exe, Reason], #{domain => [pyport]}),
            undefined
    end.

now_ms() ->
    erlang:monotonic_time(millisecond).

helper_executable() ->
    case code:priv_dir(pyport) of
        {error, bad_name} -> "pyport_worker";
        Priv -> filename:join(Priv, "pyport_worker")
    end.
