%% @doc Supervisor of all pools: one `pyport_pool_sup' child per pool.
%%
%% The configured pools start with it; {@link pyport:start_pool/2} adds
%% more at run time. A pool is `transient': when its own supervisor gives up
%% (restart intensity reached, e.g. a worker executable that no longer
%% starts) it exits with `shutdown' and is not restarted, so one broken pool
%% is logged and removed instead of taking every other pool down with it.
-module(pyport_pools_sup).
-behaviour(supervisor).

-export([start_link/1, init/1, start_pool/2, stop_pool/1, pool_names/0, drain/1]).

%% @doc Starts the supervisor and every pool in `Pools' (already validated).
-spec start_link(#{pyport_config:pool_name() => pyport_config:pool_opts()}) ->
          supervisor:startlink_ret().
start_link(Pools) ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, Pools).

%% @doc Starts one more pool (options already validated).
-spec start_pool(pyport_config:pool_name(), pyport_config:pool_opts()) ->
          {ok, pid()} | {error, term()}.
start_pool(Name, Opts) ->
    case supervisor:start_child(?MODULE, child_spec(Name, Opts)) of
        {ok, Pid} ->
            {ok, Pid};
        {error, {already_started, _}} ->
            {error, {already_started, Name}};
        {error, already_present} ->
            %% A pool that gave up earlier: replace it, with the new options.
            _ = supervisor:delete_child(?MODULE, {pool, Name}),
            start_pool(Name, Opts);
        {error, Reason} ->
            {error, {pool_start_failed, Name, start_failure(Reason)}}
    end.

%% Why the child that failed first failed, through the nested supervisors
%% (pool supervisor, workers' supervisor, worker).
start_failure({{shutdown, {failed_to_start_child, _, Reason}}, _}) -> start_failure(Reason);
start_failure({shutdown, {failed_to_start_child, _, Reason}}) -> start_failure(Reason);
start_failure(Reason) -> Reason.

%% @doc Stops a pool: its workers finish what they have read, then exit.
-spec stop_pool(pyport_config:pool_name()) -> ok | {error, {no_pool, term()}}.
stop_pool(Name) ->
    drain(Name),
    case supervisor:terminate_child(?MODULE, {pool, Name}) of
        ok ->
            _ = supervisor:delete_child(?MODULE, {pool, Name}),
            ok;
        {error, not_found} ->
            {error, {no_pool, Name}}
    end.

%% @doc Asks every worker of a pool to finish what it has read and stop,
%% all at once; the supervisor then stops them one by one.
-spec drain(pyport_config:pool_name()) -> ok.
drain(Name) ->
    case pyport:workers(Name) of
        {ok, Workers} -> lists:foreach(fun({_, Pid}) -> pyport_worker:stop_async(Pid) end, Workers);
        {error, _} -> ok
    end.

%% @doc The names of the pools this supervisor knows (running or not).
-spec pool_names() -> [pyport_config:pool_name()].
pool_names() ->
    [Name || {{pool, Name}, _, _, _} <- supervisor:which_children(?MODULE)].

%% @private
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Pools) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    Children = [child_spec(Name, Opts) || {Name, Opts} <- lists:sort(maps:to_list(Pools))],
    {ok, {Flags, Children}}.

child_spec(Name, Opts) ->
    #{id => {pool, Name},
      start => {pyport_pool_sup, start_link, [Name, Opts]},
      restart => transient,
      type => supervisor,
      shutdown => infinity}.
