%% @doc The top supervisor of pyport.
%%
%% Children, in start order: `pyport_registry' (Erlang functions Python may
%% call), `pyport_state' (the shared state and traces tables), the `pg'
%% scope `pyport' (pub/sub topics and cluster-wide pool membership), then
%% `pyport_pools_sup' (every pool), so that workers can rely on the others.
%% The supervisor process owns the table of requests in flight to other
%% nodes (see {@link pyport_cluster}).
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
    ok = pyport_cluster:inflight_table(),
    Flags = #{strategy => rest_for_one, intensity => 3, period => 10},
    Registry = #{id => pyport_registry, start => {pyport_registry, start_link, []}},
    State = #{id => pyport_state, start => {pyport_state, start_link, []}},
    Pg = #{id => pg,
           start => {pg, start_link, [pyport_cluster:scope()]}},
    PoolsSup = #{id => pyport_pools_sup,
                 start => {pyport_pools_sup, start_link, [Pools]},
                 type => supervisor,
                 shutdown => infinity},
    {ok, {Flags, [Registry, State, Pg, PoolsSup]}}.
