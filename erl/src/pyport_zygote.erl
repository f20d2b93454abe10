%% @doc A warm pool's zygote (`warm_start => true', docs/pools.md): one OS
%% process per pool that has started Python, imported the pool's `imports'
%% and run its `init_code', and forks each of the pool's workers
%% (port_worker/zygote.hpp). This gen_server owns the zygote's port.
%%
%% Each worker is still its own Erlang port: {@link open_worker/2} opens
%% `pyport_worker --warm-from Socket', whose OS process hands its stdin and
%% stdout to the zygote, which forks the worker (under a keeper of its own)
%% on them. The zygote's death costs no running worker; the next worker
%% that starts starts a new zygote.
%%
%% The gen_server is started by the first worker that needs it, not by a
%% supervisor: it lives while at least one worker gen_server that used it
%% lives (it monitors them), and while its zygote does. Workers of one pool
%% with the same options share it (a `pg' group, local members only; starts
%% are serialised by a lock on this node).
-module(pyport_zygote).
-behaviour(gen_server).

-export([open_worker/2, ensure/2, os_pid/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-include_lib("kernel/include/logger.hrl").

%% A zygote's READY or ERROR line, at most this long.
-define(MAX_LINE, 65536).

-record(state, {pool :: atom(),
                port :: port() | undefined,
                os_pid :: non_neg_integer() | undefined,
                path :: binary(),
                clients = #{} :: #{pid() => reference()}}).

%%%===================================================================
%%% API
%%%===================================================================

%% @doc Opens a warm worker's port: the pool's zygote (started if there is
%% none) forks the worker on the port's pipes. Same result as
%% {@link pyport_os:open/1}; a zygote that cannot start gives
%% `{error, {warm_start, Why}}'.
-spec open_worker(atom(), pyport_config:pool_opts()) ->
          {ok, port(), non_neg_integer() | undefined} | {error, term()}.
open_worker(Pool, #{worker := Exe} = Opts) ->
    case ensure(Pool, Opts) of
        {ok, Path} ->
            PortOpts = [{args, ["--warm-from", Path]}, stream, binary, exit_status, use_stdio,
                        {busy_limits_port, disabled}],
            try open_port({spawn_executable, Exe}, PortOpts) of
                Port ->
                    OsPid = case erlang:port_info(Port, os_pid) of
                                {os_pid, P} -> P;
                                undefined -> undefined
                            end,
                    ok = pyport_reaper:watch(Port, OsPid),
                    {ok, Port, OsPid}
            catch
                error:Reason -> {error, {cannot_execute, Exe, Reason}}
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc The socket of the pool's zygote, which is started first if there
%% is none; the calling process is its client from now on (it lives at
%% least as long as the caller, or its OS process).
-spec ensure(atom(), pyport_config:pool_opts()) -> {ok, string()} | {error, term()}.
ensure(Pool, Opts) ->
    %% A zygote that just ended may still be listed for a moment.
    ensure(Pool, Opts, 50).

ensure(_Pool, _Opts, 0) ->
    {error, {warm_start, zygote_unavailable}};
ensure(Pool, Opts, Tries) ->
    Group = group(Pool, Opts),
    Client = self(),
    Found = global:trans({?MODULE, Group},
                         fun() ->
                                 case pg:get_local_members(pyport_cluster:scope(), Group) of
                                     [Pid | _] -> {ok, Pid};
                                     [] -> gen_server:start(?MODULE, {Pool, Group, Opts, Client}, [])
                                 end
                         end, [node()]),
    case Found of
        {ok, Pid} ->
            try gen_server:call(Pid, {attach, Client}, infinity) of
                {ok, Path} -> {ok, binary_to_list(Path)}
            catch
                %% It ended meanwhile (its zygote died): start another.
                exit:_ ->
                    timer:sleep(10),
                    ensure(Pool, Opts, Tries - 1)
            end;
        {error, {warm_start, _} = Why} ->
            {error, Why};
        {error, Other} ->
            {error, {warm_start, Other}}
    end.

%% @doc The OS pid of the pool's zygote, if one runs (for tests and
%% operators).
-spec os_pid(atom(), pyport_config:pool_opts()) -> non_neg_integer() | undefined.
os_pid(Pool, Opts) ->
    case pg:get_local_members(pyport_cluster:scope(), group(Pool, Opts)) of
        [Pid | _] ->
            try gen_server:call(Pid, os_pid) catch exit:_ -> undefined end;
        [] ->
            undefined
    end.

%% Workers share a zygote only if they have the same options.
group(Pool, Opts) ->
    {?MODULE, Pool, erlang:phash2(Opts)}.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init({atom(), term(), pyport_config:pool_opts(), pid()}) ->
          {ok, #state{}} | {stop, term()}.
init({Pool, Group, #{worker := Exe, start_timeout := Timeout} = Opts, Client}) ->
    process_flag(trap_exit, true),
    Args = pyport_os:args(Opts) ++ ["--warm-zygote"]
        ++ lists:append([["--preload", binary_to_list(M)] || M <- maps:get(imports, Opts)]),
    PortOpts = [{args, Args}, {line, ?MAX_LINE}, binary, exit_status, use_stdio,
                {env, pyport_os:environment(Opts)}]
        ++ [{cd, Dir} || Dir <- [maps:get(cd, Opts)], Dir =/= undefined],
    try open_port({spawn_executable, Exe}, PortOpts) of
        Port ->
            OsPid = case erlang:port_info(Port, os_pid) of
                        {os_pid, P} -> P;
                        undefined -> undefined
                    end,
            ok = pyport_reaper:watch(Port, OsPid),
            Code = case maps:get(init_code, Opts) of
                       undefined -> <<>>;
                       C -> C
                   end,
            %% A venv is activated before the imports, as in a cold worker
            %% (pyport_preload:first_steps/1).
            Prelude = case maps:get(venv, Opts, undefined) of
                          undefined -> <<>>;
                          Venv -> pyport_preload:venv_src(Venv)
                      end,
            true = port_command(Port, [<<(byte_size(Prelude)):32>>, Prelude,
                                       <<(byte_size(Code)):32>>, Code]),
            case await_ready(Port, erlang:monotonic_time(millisecond) + Timeout) of
                {ok, Path} ->
                    ok = pg:join(pyport_cluster:scope(), Group, self()),
                    State = #state{pool = Pool, port = Port, os_pid = OsPid, path = Path},
                    {ok, monitor_client(Client, State)};
                {error, Why} ->
                    pyport_os:kill(Port),
                    catch port_close(Port),
                    {stop, {warm_start, Why}}
            end
    catch
        error:Reason -> {stop, {warm_start, {cannot_execute, Exe, Reason}}}
    end.

await_ready(Port, Deadline) ->
    receive
        {Port, {data, {eol, <<"READY ", Path/binary>>}}} ->
            {ok, Path};
        {Port, {data, {eol, <<"ERROR ", Why/binary>>}}} ->
            {error, Why};
        {Port, {data, _Other}} ->
            {error, unexpected_output};
        {Port, {exit_status, Status}} ->
            {error, pyport_os:exit_detail(Status)}
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
            {error, timeout}
    end.

monitor_client(Client, #state{clients = Clients} = State) ->
    case Clients of
        #{Client := _} -> State;
        #{} -> State#state{clients = Clients#{Client => erlang:monitor(process, Client)}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({attach, Client}, _From, #state{path = Path} = State) ->
    {reply, {ok, Path}, monitor_client(Client, State)};
handle_call(os_pid, _From, State) ->
    {reply, State#state.os_pid, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, normal, #state{}}.
handle_info({'DOWN', _Ref, process, Client, _}, #state{clients = Clients0} = State) ->
    Clients = maps:remove(Client, Clients0),
    case map_size(Clients) of
        0 -> {stop, normal, State#state{clients = Clients}};   % the pool is gone
        _ -> {noreply, State#state{clients = Clients}}
    end;
handle_info({Port, {exit_status, Status}}, #state{port = Port} = State) ->
    %% Running workers go on; the next one to start starts a new zygote.
    ?LOG_WARNING("pyport pool ~tp: warm_start zygote (OS process ~tp) exited: ~tp",
                 [State#state.pool, State#state.os_pid, pyport_os:exit_detail(Status)],
                 #{domain => [pyport], pyport_pool => State#state.pool}),
    {stop, normal, State#state{port = undefined}};
handle_info({'EXIT', Port, _}, #state{port = Port} = State) ->
    {stop, normal, State#state{port = undefined}};
handle_info(_Info, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{port = Port, path = Path}) ->
    %% Closing its stdin ends the zygote, which removes its socket; a
    %% zygote that died cannot have.
    _ = is_port(Port) andalso (catch port_close(Port)),
    Dir = filename:dirname(Path),
    _ = file:delete(Path),
    _ = file:del_dir(Dir),
    ok.
