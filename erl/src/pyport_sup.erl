%% @doc The top supervisor of pyport.
%%
%% Children, in start order (rest_for_one: a child's restart restarts
%% those after it, which rely on it): `pyport_reaper' (ends the OS process
%% tree of every worker whose port closes; first, so that no worker runs
%% unwatched), `pyport_state' (the shared state and
%% traces tables), `pyport_registry' (Erlang functions Python may call),
%% `pyport_hooks' (hooks by app path, see {@link pyport_hooks}),
%% `pyport_objects' (handles of Python objects kept in workers: their
%% owners and workers; its restart restarts the pools, whose workers hold
%% the objects), the
%% `pg' scope `pyport' (cluster-wide pool membership and pub/sub topics),
%% `pyport_pools_sup' (every pool), then `pyport_handles' (channels, buffers
%% and shared dicts by token; a worker asking for an unknown token while it
%% restarts gets an error), last `pyport_http_boot' (the HTTP pools of the
%% `http' environment, docs/http.md). The supervisor process owns the
%% table of requests in flight to other nodes (see {@link pyport_cluster}).
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
    ok = pyport_payloads:init_table(),
    Flags = #{strategy => rest_for_one, intensity => 3, period => 10},
    Reaper = #{id => pyport_reaper, start => {pyport_reaper, start_link, []}},
    State = #{id => pyport_state, start => {pyport_state, start_link, []}},
    Registry = #{id => pyport_registry, start => {pyport_registry, start_link, []}},
    Hooks = #{id => pyport_hooks, start => {pyport_hooks, start_link, []}},
    Objects = #{id => pyport_objects, start => {pyport_objects, start_link, []}},
    %% Channels, buffers and shared dicts Python reaches by token. Last:
    %% nothing depends on it at start, and its restart restarts nothing.
    Handles = #{id => pyport_handles, start => {pyport_handles, start_link, []}},
    Pg = #{id => pg,
           start => {pg, start_link, [pyport_cluster:scope()]}},
    PoolsSup = #{id => pyport_pools_sup,
                 start => {pyport_pools_sup, start_link, [Pools]},
                 type => supervisor,
                 shutdown => infinity},
    %% Context pids, pool registrations and tasks in flight (erlang_python's
    %% contexts, pyport_contexts); it stops dedicated contexts' pools, so it
    %% goes after the pools.
    Contexts = #{id => pyport_contexts, start => {pyport_contexts, start_link, []}},
    %% The `http' environment's HTTP pools (pyport_http_boot), after the pools.
    HttpBoot = #{id => pyport_http_boot, start => {pyport_http_boot, start_link, []},
                 shutdown => 15000},
    {ok, {Flags, [Reaper, State, Registry, Hooks, Objects, Pg, PoolsSup, Contexts, Handles,
                  HttpBoot]}}.
