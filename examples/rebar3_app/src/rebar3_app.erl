%% @doc The example's API: Python from this application's priv/python and
%% from the standard library, through pyport.
-module(rebar3_app).

-export([greet/1, mean/1, check/0, main/0]).

%% @doc greeting.hello(Name), from priv/python/greeting.py.
-spec greet(binary()) -> {ok, binary()} | {error, term()}.
greet(Name) ->
    py:call(greeting, hello, [Name]).

%% @doc statistics.mean(Numbers), from Python's standard library.
-spec mean([number()]) -> {ok, float()} | {error, term()}.
mean(Numbers) ->
    py:call(statistics, mean, [Numbers]).

%% @doc What the tests expect of a running node: `ok' or the first mismatch.
-spec check() -> ok | {mismatch, term()}.
check() ->
    case {greet(<<"release">>), mean([1, 2, 3, 4])} of
        {{ok, <<"Hello, release, from Python">>}, {ok, 2.5}} -> ok;
        Other -> {mismatch, Other}
    end.

%% @doc Start, call, stop; halts with status 0 when every step worked.
-spec main() -> no_return().
main() ->
    Status = try
                 {ok, _} = application:ensure_all_started(rebar3_app),
                 ok = check(),
                 ok = application:stop(rebar3_app),
                 ok = application:stop(pyport),
                 io:format("rebar3_app: start, call, stop: ok~n"),
                 0
             catch Class:Reason:Stack ->
                 io:format("rebar3_app: ~p:~p~n~p~n", [Class, Reason, Stack]),
                 1
             end,
    erlang:halt(Status).
