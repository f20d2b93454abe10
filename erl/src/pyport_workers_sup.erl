%% @doc The worker gen_servers of one pool, one per slot, each restarted
%% alone (`one_for_one'): a gen_server that dies costs the calls of its
%% own slot only, never those of its neighbours. Below `pyport_pool_sup',
%% after the pool's routing owner, so that a new routing table gets new
%% workers too.
%%
%% It starts as many workers as the pool's current target size (the
%% configured `size' when the pool starts; what a resize made it when
%% this supervisor restarts alone), and tells the routing owner its pid,
%% which adds and removes workers as the pool is resized
%% ({@link pyport_resize}).
-module(pyport_workers_sup).
-behaviour(supervisor).

-export([start_link/2, init/1, child_spec/2]).

%% Beyond the pool's shutdown_timeout, how long a worker's terminate/2 may
%% take (SHUTDOWN, then the kill) before its supervisor kills it.
-define(KILL_MARGIN_MS, 2000).

-spec start_link(pyport_config:pool_name(), pyport_config:pool_opts()) ->
          supervisor:startlink_ret().
start_link(Name, Opts) ->
    supervisor:start_link(?MODULE, {Name, Opts}).

-spec init({pyport_config:pool_name(), pyport_config:pool_opts()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Name, #{size := Size0} = Opts}) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    Size = case pyport_pool:info(Name) of
               {ok, Info} ->
                   pyport_resize:workers_sup_started(Info, self()),
                   pyport_pool:target(Info);
               {error, _} ->
                   Size0
           end,
    {ok, {Flags, [spec(Name, Slot, Opts) || Slot <- lists:seq(1, Size)]}}.

%% @doc The child of slot `Slot' of the pool of `Info'.
-spec child_spec(pyport_pool:info(), pos_integer()) -> supervisor:child_spec().
child_spec(#{name := Name, opts := Opts}, Slot) ->
    spec(Name, Slot, Opts).

spec(Name, Slot, #{shutdown_timeout := Grace} = Opts) ->
    #{id => {worker, Slot},
      start => {pyport_worker, start_link, [Name, Slot, Opts]},
      shutdown => Grace + ?KILL_MARGIN_MS}.
