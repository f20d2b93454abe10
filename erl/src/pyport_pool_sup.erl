%% @doc Supervisor of one pool: its `pyport_pool' (routing table) first,
%% then `pyport_workers_sup' with one `pyport_worker' per slot.
%%
%% `rest_for_one': the workers register in the pool's ETS table, which dies
%% with `pyport_pool', so they must restart after it. The workers' own
%% supervisor is `one_for_one': one worker's gen_server that dies restarts
%% alone.
-module(pyport_pool_sup).
-behaviour(supervisor).

-export([start_link/2, init/1]).

%% @doc Starts the pool `Name' with validated options.
-spec start_link(pyport_config:pool_name(), pyport_config:pool_opts()) ->
          supervisor:startlink_ret().
start_link(Name, Opts) ->
    supervisor:start_link(?MODULE, {Name, Opts}).

%% @private
-spec init({pyport_config:pool_name(), pyport_config:pool_opts()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Name, Opts}) ->
    Flags = #{strategy => rest_for_one, intensity => 5, period => 10},
    Pool = #{id => pool,
             start => {pyport_pool, start_link, [Name, Opts, self()]},
             shutdown => 5000},
    Workers = #{id => workers,
                start => {pyport_workers_sup, start_link, [Name, Opts]},
                type => supervisor,
                shutdown => infinity},
    {ok, {Flags, [Pool, Workers]}}.
