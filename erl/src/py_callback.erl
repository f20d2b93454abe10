%% @doc erlang_python's `py_callback': the registry of Erlang functions
%% Python calls with `erlang.call' (and `erlang.<name>'). A thin facade
%% over {@link pyport_registry} (not {@link pyport_callback}, which serves
%% a worker's requests).
-module(py_callback).

-export([register/2, unregister/1, lookup/1, execute/2]).

-type name() :: atom() | binary() | string().

%% @doc Registers `Fun/1' or `{M, F}' (called with Python's arguments as
%% one list) under `Name'.
-spec register(name(), fun(([term()]) -> term()) | {module(), atom()}) -> ok | {error, term()}.
register(Name, {M, F}) ->
    pyport_registry:register(Name, M, F);
register(Name, Fun) ->
    pyport_registry:register(Name, Fun).

-spec unregister(name()) -> ok | {error, term()}.
unregister(Name) ->
    pyport_registry:unregister(Name).

%% @doc `{ok, Fun | {M, F}}' or `{error, not_found}'.
-spec lookup(name()) -> {ok, fun(([term()]) -> term()) | {module(), atom()}} | {error, not_found}.
lookup(Name) ->
    case pyport_registry:lookup(Name) of
        {ok, Callable} -> {ok, Callable};
        error -> {error, not_found}
    end.

%% @doc Runs the function registered as `Name' with `Args' in the caller:
%% `{ok, Result}', `{error, {not_found, NameBin}}', or `{error, {Class,
%% Reason, Stack}}' when it raised.
-spec execute(name(), [term()]) ->
          {ok, term()} | {error, {not_found, binary()} | {atom(), term(), list()}}.
execute(Name, Args) ->
    case pyport_registry:lookup(Name) of
        {ok, {M, F}} -> run(fun() -> M:F(Args) end);
        {ok, Fun} -> run(fun() -> Fun(Args) end);
        error ->
            {error, {not_found, case pyport_registry:call(Name, Args) of
                                    {error, {unknown_function, N}} -> N;
                                    _ -> iolist_to_binary(io_lib:format("~tp", [Name]))
                                end}}
    end.

run(Fun) ->
    try {ok, Fun()}
    catch Class:Reason:Stack -> {error, {Class, Reason, Stack}}
    end.
