%% @doc The top supervisor of pyport.
%%
%% Children, in start order: `pyport_registry' (Erlang functions Python may
%% call), `pyport_state' (the shared state and traces tables), the `pg'
%% scope `pyport' (pub/sub topics), then `pyport_pools_sup' (every pool), so
%% that workers can rely on the others.
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
    Registry = #{id => pyport_registry, start => {pyport_registry, start_link, []}},
    State = #{id => pyport_state, start => {pyport_state, start_link, []}},
    PubSub = #{id => pyport_pg, start => {pg, start_link, [pyport]}},
    PoolsSup = #{id => pyport_pools_sup,
                 start => {pyport_pools_sup, start_link, [Pools]},
                 type => supervisor,
                 shutdown => infinity},
    {ok, {Flags, [Registry, State, PubSub, PoolsSup]}}.
