%% @doc Starts the HTTP pools of the `http' application environment
%% (`{pyport, [{http, #{Name => Opts}}]}' in sys.config, docs/http.md) when
%% pyport starts, and stops them (draining) when it stops.
%%
%% A child of pyport_sup after pyport_pools_sup: an HTTP pool that cannot
%% start fails pyport's start with `{http, Name, Reason}'.
-module(pyport_http_boot).
-behaviour(gen_server).

-export([start_link/0]).
-export([init/1, handle_call/3, handle_cast/2, terminate/2]).

%% @doc Starts every configured HTTP pool, in name order.
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    case application:get_env(pyport, http) of
        undefined -> ignore;
        {ok, Http} when is_map(Http), map_size(Http) =:= 0 -> ignore;
        {ok, Http} when is_map(Http) -> gen_server:start_link(?MODULE, Http, []);
        {ok, Other} -> {error, {invalid_config, http, Other}}
    end.

%% @private
-spec init(#{atom() => map()}) -> {ok, [atom()]} | {stop, {http, atom(), term()}}.
init(Http) ->
    process_flag(trap_exit, true),
    start_all(lists:sort(maps:to_list(Http)), []).

start_all([], Started) ->
    {ok, lists:reverse(Started)};
start_all([{Name, Opts} | Rest], Started) ->
    %% After a restart of the tree (rest_for_one) the old pools are gone
    %% with their supervisor: forget them before starting again.
    _ = pyport_http:stop(Name),
    case pyport_http:start(Name, Opts) of
        {ok, _} ->
            start_all(Rest, [Name | Started]);
        {error, Reason} ->
            _ = [pyport_http:stop(N) || N <- Started],
            {stop, {http, Name, Reason}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), [atom()]) -> {reply, {error, unknown_call}, [atom()]}.
handle_call(_Request, _From, Names) ->
    {reply, {error, unknown_call}, Names}.

%% @private
-spec handle_cast(term(), [atom()]) -> {noreply, [atom()]}.
handle_cast(_Msg, Names) ->
    {noreply, Names}.

%% @private
-spec terminate(term(), [atom()]) -> ok.
terminate(_Reason, Names) ->
    _ = [pyport_http:stop(N) || N <- Names],
    ok.
