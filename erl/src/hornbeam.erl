%% @doc Hornbeam's `hornbeam' module on pyport: a thin facade. Each function
%% maps to the pyport module that does the work (see docs/migration.md,
%% "Hornbeam").
-module(hornbeam).

%%%===================================================================
%%% Registered functions (Python's hornbeam_erlang.call / cast)
%%%===================================================================

-export([register_function/2, register_function/3, unregister_function/1]).

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
