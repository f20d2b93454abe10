%% @doc The worker gen_servers of one pool, one per slot, each restarted
%% alone (`one_for_one'): a gen_server that dies costs the calls of its
%% own slot only, never those of its neighbours. Below `pyport_pool_sup',
%% after the pool's routing owner, so that a new routing table gets new
%% workers too.
-module(pyport_workers_sup).
-behaviour(supervisor).

-export([start_link/2, init/1]).

%% Beyond the pool's shutdown_timeout, how long a worker's terminate/2 may
%% take (SHUTDOWN, then the kill) before its supervisor kills it.
-define(KILL_MARGIN_MS, 2000).

-spec start_link(pyport_config:pool_name(), pyport_config:pool_opts()) ->
          supervisor:startlink_ret().
start_link(Name, Opts) ->
    supervisor:start_link(?MODULE, {Name, Opts}).

-spec init({pyport_config:pool_name(), pyport_config:pool_opts()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Name, #{size := Size, shutdown_timeout := Grace} = Opts}) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    Workers = [#{id => {worker, Slot},
                 start => {pyport_worker, start_link, [Name, Slot, Opts]},
                 shutdown => Grace + ?KILL_MARGIN_MS}
               || Slot <- lists:seq(1, Size)],
    {ok, {Flags, Workers}}.
