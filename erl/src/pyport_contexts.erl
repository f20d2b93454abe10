%% @doc Contexts as erlang_python has them: pids that name one Python
%% interpreter, and named pools chosen by module or function.
%%
%% A context pid is either a worker's gen_server (a slot of a pool; its pid
%% stays the same across OS-process restarts) or a dedicated context, a
%% {@link pyport_context} process owning a pool of one worker of its own. The
%% ETS table `pyport_contexts' maps a context pid to its pool and slot, so
%% a call through a context reads one row and needs no central process. A
%% pid enters the table when pyport hands it out (`py:context/0,1',
%% `py:start_contexts/0,1', `py_context_router', `py_context:new/1'); one
%% found by its pool and slot later is added then.
%%
%% This gen_server owns the tables, hands out the names of dedicated
%% contexts' pools from a bounded set (`pyport_context_1' ...
%% `pyport_context_<max_contexts>', app env `max_contexts', default 256,
%% so no path creates atoms without a bound), and monitors every dedicated
%% context: when one dies, however it dies, its pool is stopped and its name
%% freed.
%%
%% Pool registrations (`py:register_pool/2'): `{Module, Function}' or
%% `Module' to a pool name; a context-less `py:call' of that module or
%% function goes there (a function's registration wins over its module's).
-module(pyport_contexts).
-behaviour(gen_server).

-export([start_link/0, context_pid/2, resolve/1, add_dedicated/1,
         register_pool/2, unregister_pool/1, lookup_pool/2, list_pool_registrations/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(TAB, pyport_contexts).
-define(ROUTES, pyport_pool_routes).
-define(DEFAULT_MAX_CONTEXTS, 256).

-type name() :: atom() | binary() | string().

%% @private
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The context pid of slot `Slot' of `Pool' (its worker's gen_server).
-spec context_pid(atom(), pos_integer()) -> {ok, pid()} | {error, term()}.
context_pid(Pool, Slot) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case pyport_pool:worker(Info, Slot) of
                {ok, Pid} ->
                    remember(Pid, Pool, Slot),
                    {ok, Pid};
                error ->
                    {error, {no_worker, Pool, Slot}}
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc The pool and slot a context pid stands for. A context whose process
%% is gone is `{error, {context_died, Reason}}'.
-spec resolve(pid()) -> {ok, atom(), pos_integer()} | {error, term()}.
resolve(Pid) when is_pid(Pid) ->
    case ets:lookup(?TAB, Pid) of
        [{Pid, Pool, Slot, worker}] ->
            case current_worker(Pool, Slot) of
                {ok, Pid} -> {ok, Pool, Slot};
                _ -> {error, {context_died, noproc}}
            end;
        [{Pid, Pool, Slot, dedicated}] ->
            {ok, Pool, Slot};
        [] ->
            find(Pid)
    end.

%% @doc Registers a dedicated context: `Pid' owns pool `Pool' (one slot).
%% Called by {@link pyport_context} before its pool starts; returns the
%% pool name to use.
-spec add_dedicated(pid()) -> {ok, atom()} | {error, term()}.
add_dedicated(Pid) ->
    gen_server:call(?MODULE, {add_dedicated, Pid}).

%% @doc Routes context-less calls of `Module' (or of `{Module, Function}')
%% to `Pool'.
-spec register_pool(atom(), name() | {name(), name()}) -> ok.
register_pool(Pool, {Module, Function}) when is_atom(Pool) ->
    true = ets:insert(?ROUTES, {{key(Module), key(Function)}, Pool}),
    ok;
register_pool(Pool, Module) when is_atom(Pool) ->
    true = ets:insert(?ROUTES, {{key(Module), '_'}, Pool}),
    ok.

%% @doc Removes a registration made by {@link register_pool/2}.
-spec unregister_pool(name() | {name(), name()}) -> ok.
unregister_pool({Module, Function}) ->
    true = ets:delete(?ROUTES, {key(Module), key(Function)}),
    ok;
unregister_pool(Module) ->
    true = ets:delete(?ROUTES, {key(Module), '_'}),
    ok.

%% @doc The pool a context-less call of `Module.Function' goes to:
%% the function's registration, else the module's, else `default'.
-spec lookup_pool(name(), name()) -> atom().
lookup_pool(Module, Function) ->
    case ets:info(?ROUTES, size) of
        0 ->
            default;
        undefined ->
            default;
        _ ->
            M = key(Module),
            case ets:lookup(?ROUTES, {M, key(Function)}) of
                [{_, Pool}] ->
                    Pool;
                [] ->
                    case ets:lookup(?ROUTES, {M, '_'}) of
                        [{_, Pool}] -> Pool;
                        [] -> default
                    end
            end
    end.

%% @doc Every registration: `[{{Module, Function | '_'}, Pool}]', names as
%% binaries.
-spec list_pool_registrations() -> [{{binary(), binary() | '_'}, atom()}].
list_pool_registrations() ->
    ets:tab2list(?ROUTES).

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init([]) -> {ok, map()}.
init([]) ->
    _ = ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]),
    _ = ets:new(?ROUTES, [named_table, public, set, {read_concurrency, true}]),
    Max = case application:get_env(pyport, max_contexts, ?DEFAULT_MAX_CONTEXTS) of
              N when is_integer(N), N > 0, N =< 65536 -> N;
              _ -> ?DEFAULT_MAX_CONTEXTS
          end,
    {ok, #{free => lists:seq(1, Max), max => Max, owners => #{}}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({add_dedicated, Pid}, _From, #{free := [N | Free], owners := Owners} = State) ->
    Name = list_to_atom("pyport_context_" ++ integer_to_list(N)),
    Mon = erlang:monitor(process, Pid),
    true = ets:insert(?TAB, {Pid, Name, 1, dedicated}),
    {reply, {ok, Name}, State#{free := Free, owners := Owners#{Mon => {Pid, N, Name}}}};
handle_call({add_dedicated, _Pid}, _From, #{free := [], max := Max} = State) ->
    {reply, {error, {too_many_contexts, Max}}, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'DOWN', Mon, process, _, _}, #{owners := Owners, free := Free} = State) ->
    case maps:take(Mon, Owners) of
        {{Pid, N, Name}, Rest} ->
            %% However the context died, its worker goes with it.
            _ = pyport:stop_pool(Name),
            true = ets:delete(?TAB, Pid),
            {noreply, State#{owners := Rest, free := [N | Free]}};
        error ->
            {noreply, State}
    end;
handle_info(_Msg, State) ->
    {noreply, State}.

%%%===================================================================
%%% Internals
%%%===================================================================

%% One row per slot: a restarted gen_server's row replaces the old one.
remember(Pid, Pool, Slot) ->
    case ets:lookup(?TAB, Pid) of
        [_] ->
            ok;
        [] ->
            _ = ets:match_delete(?TAB, {'_', Pool, Slot, worker}),
            true = ets:insert(?TAB, {Pid, Pool, Slot, worker}),
            ok
    end.

current_worker(Pool, Slot) ->
    case pyport_pool:info(Pool) of
        {ok, Info} -> pyport_pool:worker(Info, Slot);
        {error, _} = Error -> Error
    end.

%% A pid not handed out by pyport: a worker's gen_server of some pool, or
%% no context at all.
find(Pid) ->
    Found = [{Pool, Slot} || Pool <- pyport:pools(),
                             {ok, Workers} <- [pyport:workers(Pool)],
                             {Slot, P} <- Workers, P =:= Pid],
    case Found of
        [{Pool, Slot} | _] ->
            remember(Pid, Pool, Slot),
            {ok, Pool, Slot};
        [] when node(Pid) =/= node() ->
            {error, {not_a_context, Pid}};
        [] ->
            case is_process_alive(Pid) of
                true -> {error, {not_a_context, Pid}};
                false -> {error, {context_died, noproc}}
            end
    end.

key(A) when is_atom(A) -> atom_to_binary(A, utf8);
key(B) when is_binary(B) -> B;
key(L) when is_list(L) -> unicode:characters_to_binary(L).
