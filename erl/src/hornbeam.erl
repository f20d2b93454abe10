%% @doc Hornbeam's `hornbeam' module on pyport: a thin facade. Each function
%% maps to the pyport module that does the work (see docs/migration.md,
%% "Hornbeam").
-module(hornbeam).

%%%===================================================================
%%% Registered functions (Python's hornbeam_erlang.call / cast)
%%%===================================================================

-export([register_function/2, register_function/3, unregister_function/1]).
%% HTTP serving (below).
-export([start/1, start/2, stop/0]).

%% @doc Makes `Fun' callable from Python as `Name': `call("add", 1, 2)' runs
%% `Fun([1, 2])'. Replaces an earlier function of that name.
-spec register_function(pyport_registry:name(), fun(([term()]) -> term())) ->
          ok | {error, term()}.
register_function(Name, Fun) ->
    pyport_registry:register(Name, Fun).

%% @doc Makes `Module:Function(Args)' callable from Python as `Name'.
-spec register_function(pyport_registry:name(), module(), atom()) -> ok | {error, term()}.
register_function(Name, Module, Function) ->
    pyport_registry:register(Name, Module, Function).

%% @doc Python can no longer call `Name' (ok if nothing is registered).
-spec unregister_function(pyport_registry:name()) -> ok | {error, term()}.
unregister_function(Name) ->
    pyport_registry:unregister(Name).

%%%===================================================================
%%% HTTP serving (pyport_http_hornbeam, docs/http.md "Hornbeam")
%%%===================================================================

%% @doc `start(AppSpec, #{})'.
-spec start(string() | binary() | map()) -> {ok, pid()} | {error, term()}.
start(AppSpec) ->
    start(AppSpec, #{}).

%% @doc Serves `AppSpec' (`"module:callable"') with Hornbeam's options.
-spec start(string() | binary() | map(), map()) -> {ok, pid()} | {error, term()}.
start(AppSpec, Opts) ->
    pyport_http_hornbeam:start(AppSpec, Opts).

%% @doc Stops what start/1,2 started.
-spec stop() -> ok | {error, term()}.
stop() ->
    pyport_http_hornbeam:stop().
