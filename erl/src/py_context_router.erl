%% @doc erlang_python's `py_context_router' over pyport pools: a pool is a
%% set of contexts (its workers' pids), a process is routed to one of them
%% and keeps it, and modules or functions can be registered to a pool.
%%
%% ```
%% {ok, _} = py_context_router:start_pool(io, 2),
%% ok = py_context_router:register_pool(io, requests),
%% Ctx = py_context_router:get_context(io),
%% {ok, _} = py:call(Ctx, os, getpid, []).
%% '''
-module(py_context_router).

-export([start/0, start/1, stop/0, is_started/0,
         get_context/0, get_context/1, bind_context/1, bind_context/2,
         unbind_context/0, unbind_context/1, num_contexts/0, num_contexts/1,
         contexts/0, contexts/1, start_pool/2, start_pool/3, stop_pool/1, pool_started/1,
         register_pool/2, register_pool/3, unregister_pool/1, unregister_pool/2,
         lookup_pool/2, list_pool_registrations/0]).

-define(DEFAULT, default).

%% @doc Starts pool `default' (see {@link start_pool/2}).
-spec start() -> {ok, [pid()]} | {error, term()}.
start() ->
    start(#{}).

%% @doc Starts pool `default' with `contexts' workers (`mode' accepted:
%% every worker is an interpreter of its own).
-spec start(#{contexts => pos_integer(), mode => worker | owngil}) ->
          {ok, [pid()]} | {error, term()}.
start(Opts) when is_map(Opts) ->
    py:start_contexts(Opts).

%% @doc Stops pool `default': `ok'.
-spec stop() -> ok.
stop() ->
    py:stop_contexts().

%% @doc Whether pool `default' runs.
-spec is_started() -> boolean().
is_started() ->
    py:contexts_started().

%% @doc The calling process's context of pool `default'.
-spec get_context() -> pid().
get_context() ->
    get_context(?DEFAULT).

%% @doc `get_context(N)': context `N' of pool `default'; `get_context(Pool)':
%% the calling process's context of `Pool', chosen on first use (by
%% scheduler, as erlang_python) and kept: the process is bound to it, so its
%% context-less calls on that pool go there too.
-spec get_context(pos_integer() | atom()) -> pid().
get_context(N) when is_integer(N) ->
    py:context(N);
get_context(Pool) when is_atom(Pool) ->
    pyport_contexts:scheduler_context(Pool).

%% @doc The calling process uses `Ctx' for its pool from now on: `ok'.
-spec bind_context(pid()) -> ok.
bind_context(Ctx) ->
    {Pool, Slot} = py:context_slot(Ctx),
    pyport_affinity:bind(Pool, Slot).

%% @doc {@link bind_context/1} for pool `Pool'.
-spec bind_context(atom(), pid()) -> ok.
bind_context(Pool, Ctx) ->
    case py:context_slot(Ctx) of
        {Pool, Slot} -> pyport_affinity:bind(Pool, Slot);
        {Other, _} -> erlang:error({context_of_other_pool, Other})
    end.

%% @doc Ends the binding to pool `default' (the process's namespace stays).
-spec unbind_context() -> ok.
unbind_context() ->
    unbind_context(?DEFAULT).

%% @doc Ends the binding to `Pool'.
-spec unbind_context(atom()) -> ok.
unbind_context(Pool) ->
    pyport_affinity:unbind_keep_namespace(Pool).

%% @doc Contexts of pool `default' (0 if it does not run).
-spec num_contexts() -> non_neg_integer().
num_contexts() ->
    num_contexts(?DEFAULT).

%% @doc Contexts of `Pool' (0 if it does not run).
-spec num_contexts(atom()) -> non_neg_integer().
num_contexts(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{size := Size}} -> Size;
        {error, _} -> 0
    end.

%% @doc The context pids of pool `default'.
-spec contexts() -> [pid()].
contexts() ->
    contexts(?DEFAULT).

%% @doc The context pids of `Pool' (`[]' if it does not run).
-spec contexts(atom()) -> [pid()].
contexts(Pool) ->
    case pyport_contexts:contexts(Pool) of
        {ok, Pids} -> Pids;
        {error, _} -> []
    end.

%% @doc Starts pool `Pool' of `Size' workers unless it runs: `{ok,
%% Contexts}' or `{error, {context_start_failed, Pool, Size, Reason}}'.
-spec start_pool(atom(), pos_integer()) -> {ok, [pid()]} | {error, term()}.
start_pool(Pool, Size) ->
    start_pool(Pool, Size, worker).

%% @doc {@link start_pool/2}; `Mode' `worker' or `owngil' (the same here).
-spec start_pool(atom(), pos_integer(), worker | owngil) -> {ok, [pid()]} | {error, term()}.
start_pool(Pool, Size, Mode) when is_atom(Pool), Mode =:= worker orelse Mode =:= owngil ->
    pyport_contexts:start_pool(Pool, Size).

%% @doc Stops pool `Pool': `ok'.
-spec stop_pool(atom()) -> ok.
stop_pool(Pool) ->
    pyport_contexts:stop(Pool).

%% @doc Whether pool `Pool' runs.
-spec pool_started(atom()) -> boolean().
pool_started(Pool) ->
    pyport_contexts:started(Pool).

%% @doc Context-less calls of `Module' go to `Pool'.
-spec register_pool(atom(), atom()) -> ok.
register_pool(Pool, Module) when is_atom(Pool), is_atom(Module) ->
    py:register_pool(Pool, Module).

%% @doc Context-less calls of `Module:Function' go to `Pool' (this wins
%% over the module's registration).
-spec register_pool(atom(), atom(), atom()) -> ok.
register_pool(Pool, Module, Function) when is_atom(Pool), is_atom(Module), is_atom(Function) ->
    py:register_pool(Pool, {Module, Function}).

%% @doc Removes a module's registration.
-spec unregister_pool(atom()) -> ok.
unregister_pool(Module) when is_atom(Module) ->
    py:unregister_pool(Module).

%% @doc Removes a function's registration.
-spec unregister_pool(atom(), atom()) -> ok.
unregister_pool(Module, Function) when is_atom(Module), is_atom(Function) ->
    py:unregister_pool({Module, Function}).

%% @doc The pool a context-less call of `Module:Function' goes to
%% (`default' if none is registered).
-spec lookup_pool(atom(), atom()) -> atom().
lookup_pool(Module, Function) when is_atom(Module), is_atom(Function) ->
    pyport_contexts:lookup_pool(Module, Function).

%% @doc Every registration: `[{{Module, Function | '_'}, Pool}]'.
-spec list_pool_registrations() -> [{{atom(), atom()}, atom()}].
list_pool_registrations() ->
    pyport_contexts:list_pool_registrations().
