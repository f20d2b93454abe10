%% @doc The pyport application: checks the configuration, then starts the
%% supervision tree with every configured pool.
-module(pyport_app).
-behaviour(application).

-include_lib("kernel/include/logger.hrl").

-export([start/2, prep_stop/1, stop/1]).

%% @doc Starts pyport; a bad configuration fails the start with the reason
%% from {@link pyport_config}.
-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    ok = pyport_log_domain:install(),
    case config() of
        {ok, Pools} ->
            %% The shipped worker must run here (pyport_preflight).
            case pyport_preflight:check() of
                ok -> pyport_sup:start_link(Pools);
                {error, _} = Error -> Error
            end;
        {error, Reason} = Error ->
            ?LOG_ERROR("pyport: invalid configuration: ~tp", [Reason],
                         #{domain => [pyport]}),
            Error
    end.

config() ->
    check([fun pyport_config:pools/0,
           fun() -> ok_or_error(pyport_config:max_state_entries()) end,
           fun() -> ok_or_error(pyport_config:event_loops()) end,
           fun() -> ok_or_error(pyport_config:max_new_atoms()) end], undefined).

%% Runs the checks in order: the first error, else the pools.
check([], Pools) ->
    {ok, Pools};
check([Check | Rest], Pools) ->
    case Check() of
        {ok, P} when is_map(P) -> check(Rest, P);
        ok -> check(Rest, Pools);
        {error, _} = Error -> Error
    end.

ok_or_error({ok, _}) -> ok;
ok_or_error(ok) -> ok;
ok_or_error({error, _} = Error) -> Error.

%% @doc Before the tree stops: every worker of every pool starts draining at
%% once (finishing what it has read), so stopping takes one
%% `shutdown_timeout' at most, not one per worker.
-spec prep_stop(term()) -> term().
prep_stop(State) ->
    [pyport_pools_sup:drain(Pool) || Pool <- pyport_pools_sup:pool_names()],
    State.

%% @doc Called after the supervision tree has stopped.
-spec stop(term()) -> ok.
stop(_State) ->
    pyport_log_domain:remove().
