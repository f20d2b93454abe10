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
    case config() of
        {ok, Pools} ->
            pyport_sup:start_link(Pools);
        {error, Reason} = Error ->
            ?LOG_ERROR("pyport: invalid configuration: ~tp", [Reason],
                         #{domain => [pyport]}),
            Error
    end.

config() ->
    case pyport_config:pools() of
        {ok, Pools} ->
            case pyport_config:max_state_entries() of
                {ok, _} -> {ok, Pools};
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

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
    ok.
