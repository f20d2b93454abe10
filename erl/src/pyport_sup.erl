%% @doc The top supervisor of pyport.
%%
%% Children: `pyport_pools_sup' (every pool). The function registry, the
%% shared state table and the pg scope join here later, before the pools,
%% so that workers can rely on them.
-module(pyport_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

%% @doc Starts the tree with the given validated pools.
-spec start_link(#{pyport_config:pool_name() => pyport_config:pool_opts()}) ->
          supervisor:startlink_ret().
start_link(Pools) ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, Pools).

%% @private
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Pools) ->
    Flags = #{strategy => one_for_one, intensity => 3, period => 10},
    PoolsSup = #{id => pyport_pools_sup,
                 start => {pyport_pools_sup, start_link, [Pools]},
                 type => supervisor,
                 shutdown => infinity},
    {ok, {Flags, [PoolsSup]}}.
