%% @doc Supervisor of one pool: its `pyport_pool' (routing table) first,
%% then one `pyport_worker' per slot.
%%
%% `rest_for_one': the workers register in the pool's ETS table, which dies
%% with `pyport_pool', so they must restart after it. A worker gen_server
%% only exits when its OS process cannot be started at all (it restarts the
%% OS process itself), so the restart of the workers after it is rare.
-module(pyport_pool_sup).
-behaviour(supervisor).

-export([start_link/2, init/1]).

%% Beyond the pool's shutdown_timeout (the OS process finishing its
%% requests), the time the worker takes to kill it and see it gone.
-define(KILL_MARGIN_MS, 2000).

%% @doc Starts the pool `Name' with validated options.
-spec start_link(pyport_config:pool_name(), pyport_config:pool_opts()) ->
          supervisor:startlink_ret().
start_link(Name, Opts) ->
    supervisor:start_link(?MODULE, {Name, Opts}).

%% @private
-spec init({pyport_config:pool_name(), pyport_config:pool_opts()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Name, #{size := Size, shutdown_timeout := Grace} = Opts}) ->
    Flags = #{strategy => rest_for_one, intensity => 5, period => 10},
    Pool = #{id => pool,
             start => {pyport_pool, start_link, [Name, Opts]},
             shutdown => 5000},
    Workers = [#{id => {worker, Slot},
                 start => {pyport_worker, start_link, [Name, Slot, Opts]},
                 shutdown => Grace + ?KILL_MARGIN_MS}
               || Slot <- lists:seq(1, Size)],
    {ok, {Flags, [Pool | Workers]}}.
