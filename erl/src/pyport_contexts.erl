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
%% This gen_server owns the tables (and `pyport_tasks', see {@link
%% pyport_async}), hands out the names of dedicated
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

-export([start_link/0, context_pid/2, contexts/1, resolve/1, add_dedicated/1, start_pool/2,
         interrupt/1, memory_stats/1, start_loop/2, stop_loop/1, loop_running/1,
         register_pool/2, unregister_pool/1, lookup_pool/2, list_pool_registrations/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).
%% The contexts of py and py_context_router (section at the end).
-export([ctx_slot/1, ctx_target/1, check/1, context/2, caller_context/1, scheduler_context/1,
         pool_size/1, started/1, stop/1]).

-include("pyport_ctx.hrl").

-define(TAB, pyport_contexts).
-define(ROUTES, pyport_pool_routes).
-define(DEFAULT_MAX_CONTEXTS, 256).
%% Context pids kept per slot (its current gen_server and earlier ones).
-define(KEEP, 4).

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

%% @doc The context pids of a pool, by slot order.
-spec contexts(atom()) -> {ok, [pid()]} | {error, term()}.
contexts(Pool) ->
    case pyport:workers(Pool) of
        {ok, Workers} ->
            [remember(Pid, Pool, Slot) || {Slot, Pid} <- Workers],
            {ok, [Pid || {_, Pid} <- Workers]};
        {error, _} = Error ->
            Error
    end.

%% @doc Starts pool `Pool' with `Size' workers (`default': the pool's
%% configured size, else the number of schedulers) unless it runs; its
%% context pids, or `{error, {context_start_failed, Pool, Size, Reason}}'.
-spec start_pool(atom(), pos_integer() | default) -> {ok, [pid()]} | {error, term()}.
start_pool(Pool, Size) ->
    case pyport_pool:info(Pool) of
        {ok, _} ->
            contexts(Pool);
        {error, _} ->
            Configured = case pyport_config:pools() of
                             {ok, #{Pool := Opts}} -> Opts;
                             _ -> #{}
                         end,
            Opts1 = case Size of
                        default -> Configured;
                        N when is_integer(N), N > 0 -> Configured#{size => N};
                        Bad -> Configured#{size => Bad}
                    end,
            %% The options of a configured pool are validated ones: only
            %% the keys given by hand are checked again.
            case pyport:start_pool(Pool, maps:with(user_keys(Opts1), Opts1)) of
                {ok, _} ->
                    contexts(Pool);
                {error, {already_started, _}} ->
                    contexts(Pool);
                {error, {pool_start_failed, _, Reason}} ->
                    {error, {context_start_failed, Pool, Size, Reason}};
                {error, Reason} ->
                    {error, {context_start_failed, Pool, Size, Reason}}
            end
    end.

user_keys(Opts) ->
    Defaults = pyport_config:defaults(),
    [K || {K, V} <- maps:to_list(Opts), maps:get(K, Defaults, make_ref()) =/= V].

%% @doc Raises KeyboardInterrupt in the calls a context runs now: `ok', or
%% `not_running'.
-spec interrupt(pid() | term()) -> ok | not_running | {error, term()}.
interrupt(Ctx) ->
    try ctx_slot(Ctx) of
        {Pool, N} ->
            case current_worker(Pool, N) of
                {ok, Worker} ->
                    try gen_server:call(Worker, '$pyport_interrupt_running', 5000)
                    catch exit:_ -> not_running
                    end;
                _ ->
                    not_running
            end
    catch
        throw:{error, _} -> not_running
    end.

%% @doc A worker's memory statistics in erlang_python's shape: atom keys,
%% `gc_count' and `gc_threshold' as tuples.
-spec memory_stats(map()) -> #{atom() => term()}.
memory_stats(Stats) ->
    maps:fold(fun(K, V, Acc) ->
                      case stat_key(K) of
                          undefined -> Acc;
                          Key when is_list(V), (Key =:= gc_count orelse Key =:= gc_threshold) ->
                              Acc#{Key => list_to_tuple(V)};
                          Key ->
                              Acc#{Key => V}
                      end
              end, #{}, Stats).

stat_key(<<"gc_stats">>) -> gc_stats;
stat_key(<<"gc_count">>) -> gc_count;
stat_key(<<"gc_threshold">>) -> gc_threshold;
stat_key(<<"traced_memory_current">>) -> traced_memory_current;
stat_key(<<"traced_memory_peak">>) -> traced_memory_peak;
stat_key(<<"rss_bytes">>) -> rss_bytes;
stat_key(<<"max_rss_bytes">>) -> max_rss_bytes;
stat_key(<<"gc_enabled">>) -> gc_enabled;
stat_key(<<"namespaces">>) -> namespaces;
stat_key(_) -> undefined.

%% @doc The pool and slot a context pid stands for. A context whose process
%% is gone is `{error, {context_died, Reason}}'.
-spec resolve(pid()) -> {ok, atom(), pos_integer()} | {error, term()}.
resolve(Pid) when is_pid(Pid) ->
    case ets:lookup(?TAB, Pid) of
        [{Pid, Pool, Slot, worker, _Seq}] ->
            %% A slot's context outlives a restart of its gen_server, as the
            %% slot's other routes do (a slot a shrunk pool no longer has is
            %% `{no_worker, Pool, Slot}'); it ends with its pool.
            case pyport_pool:info(Pool) of
                {ok, _} -> {ok, Pool, Slot};
                {error, _} -> {error, {context_died, noproc}}
            end;
        [{Pid, Pool, Slot, dedicated, _}] ->
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

%% @doc Marks the event loop of context `Ctx' as started for `Owner'
%% (py_context:start_loop/1,2). Every worker's loop runs all the time; this
%% keeps erlang_python's protocol: one owner at a time, told `{py_loop_exit,
%% Ctx, {ok, <<"stopped">>}}' by {@link stop_loop/1}, and the mark goes
%% when the owner exits.
-spec start_loop(pid(), pid()) -> ok | {error, already_running}.
start_loop(Ctx, Owner) ->
    gen_server:call(?MODULE, {start_loop, Ctx, Owner}).

%% @doc Ends the mark of {@link start_loop/2}: `ok' (the owner is told) or
%% `{error, no_loop}'.
-spec stop_loop(pid()) -> ok | {error, no_loop}.
stop_loop(Ctx) ->
    gen_server:call(?MODULE, {stop_loop, Ctx}).

%% @doc Whether {@link start_loop/2} marked `Ctx'.
-spec loop_running(pid()) -> boolean().
loop_running(Ctx) ->
    gen_server:call(?MODULE, {loop_running, Ctx}).

%% @doc Routes context-less calls of `Module' (or of `{Module, Function}')
%% to `Pool'.
-spec register_pool(atom(), name() | {name(), name()}) -> ok.
register_pool(Pool, {Module, Function} = Key) when is_atom(Pool) ->
    true = ets:insert(?ROUTES, {{key(Module), key(Function)}, Pool, Key}),
    ok;
register_pool(Pool, Module) when is_atom(Pool) ->
    true = ets:insert(?ROUTES, {{key(Module), '_'}, Pool, {Module, '_'}}),
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
        N when is_integer(N), N > 0 ->
            M = key(Module),
            case ets:lookup(?ROUTES, {M, key(Function)}) of
                [{_, Pool, _}] ->
                    Pool;
                [] ->
                    case ets:lookup(?ROUTES, {M, '_'}) of
                        [{_, Pool, _}] -> Pool;
                        [] -> default
                    end
            end;
        _ ->
            default
    end.

%% @doc Every registration: `[{{Module, Function | '_'}, Pool}]', names as
%% they were registered.
-spec list_pool_registrations() -> [{{name(), name() | '_'}, atom()}].
list_pool_registrations() ->
    [{Key, Pool} || {_, Pool, Key} <- ets:tab2list(?ROUTES)].

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init([]) -> {ok, map()}.
init([]) ->
    _ = ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]),
    _ = ets:new(?ROUTES, [named_table, public, set, {read_concurrency, true}]),
    %% Tasks in flight (pyport_async): written by every caller.
    _ = ets:new(pyport_tasks, [named_table, public, set, {write_concurrency, true}]),
    Max = case application:get_env(pyport, max_contexts, ?DEFAULT_MAX_CONTEXTS) of
              N when is_integer(N), N > 0, N =< 65536 -> N;
              _ -> ?DEFAULT_MAX_CONTEXTS
          end,
    {ok, #{free => lists:seq(1, Max), max => Max, owners => #{}, loops => #{}}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({add_dedicated, Pid}, _From, #{free := [N | Free], owners := Owners} = State) ->
    Name = list_to_atom("pyport_context_" ++ integer_to_list(N)),
    Mon = erlang:monitor(process, Pid),
    true = ets:insert(?TAB, {Pid, Name, 1, dedicated, 0}),
    {reply, {ok, Name}, State#{free := Free, owners := Owners#{Mon => {Pid, N, Name}}}};
handle_call({add_dedicated, _Pid}, _From, #{free := [], max := Max} = State) ->
    {reply, {error, {too_many_contexts, Max}}, State};
handle_call({start_loop, Ctx, Owner}, _From, #{loops := Loops} = State) ->
    case is_map_key(Ctx, Loops) of
        true ->
            {reply, {error, already_running}, State};
        false ->
            Mon = erlang:monitor(process, Owner),
            {reply, ok, State#{loops := Loops#{Ctx => {Owner, Mon}}}}
    end;
handle_call({stop_loop, Ctx}, _From, #{loops := Loops} = State) ->
    case maps:take(Ctx, Loops) of
        {{Owner, Mon}, Rest} ->
            erlang:demonitor(Mon, [flush]),
            Owner ! {py_loop_exit, Ctx, {ok, <<"stopped">>}},
            {reply, ok, State#{loops := Rest}};
        error ->
            {reply, {error, no_loop}, State}
    end;
handle_call({loop_running, Ctx}, _From, #{loops := Loops} = State) ->
    {reply, is_map_key(Ctx, Loops), State};
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
            {noreply, State#{owners := Rest, free := [N | Free], loops := forget_loop(Pid, State)}};
        error ->
            %% A loop owner that exited: its loop mark goes.
            Loops = maps:filter(fun(_Ctx, {_Owner, M}) -> M =/= Mon end, maps:get(loops, State)),
            {noreply, State#{loops := Loops}}
    end;
handle_info(_Msg, State) ->
    {noreply, State}.

%%%===================================================================
%%% Internals
%%%===================================================================

forget_loop(Ctx, #{loops := Loops}) ->
    case maps:take(Ctx, Loops) of
        {{_Owner, Mon}, Rest} -> erlang:demonitor(Mon, [flush]), Rest;
        error -> Loops
    end.

%% A slot keeps the rows of its last few gen_servers (a context pid stays
%% usable across a restart of its gen_server); older ones go, so the table
%% stays bounded by the slots.
remember(Pid, Pool, Slot) ->
    case ets:lookup(?TAB, Pid) of
        [_] ->
            ok;
        [] ->
            Old = lists:sort([{Seq, P} || [P, Seq] <- ets:match(?TAB, {'$1', Pool, Slot, worker, '$2'})]),
            [true = ets:delete(?TAB, P) || {_, P} <- lists:sublist(Old, max(0, length(Old) - ?KEEP + 1))],
            true = ets:insert(?TAB, {Pid, Pool, Slot, worker,
                                     erlang:unique_integer([monotonic])}),
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
key(L) when is_list(L) ->
    case unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> erlang:error({invalid_name, L})
    end.

%% ---- contexts of the compatibility API (py, py_context, py_context_router) ----

%% @doc The pool and slot of a context; throws `{error, Reason}' for a dead
%% or unknown one (`context_died', `not_a_context', `invalid_context').
-spec ctx_slot(term()) -> {atom(), pos_integer()}.
ctx_slot(#pyport_ctx{pool = Pool, slot = Slot}) ->
    {Pool, Slot};
ctx_slot(Pid) when is_pid(Pid) ->
    case resolve(Pid) of
        {ok, Pool, Slot} -> {Pool, Slot};
        {error, _} = Error -> throw(Error)
    end;
ctx_slot(Other) ->
    throw({error, {invalid_context, Other}}).

%% @doc The route to a context's slot: `{ok, {slot, Pool, Slot}}' or
%% `{error, Reason}'.
-spec ctx_target(pid()) -> {ok, pyport_request:target()} | {error, term()}.
ctx_target(Ctx) ->
    case resolve(Ctx) of
        {ok, Pool, Slot} -> {ok, {slot, Pool, Slot}};
        {error, _} = Error -> Error
    end.

%% @doc `ok' if `Ctx' is a live context, else `{error, Reason}'.
-spec check(pid()) -> ok | {error, term()}.
check(Ctx) ->
    case resolve(Ctx) of
        {ok, _, _} -> ok;
        {error, _} = Error -> Error
    end.

%% @doc Context `N' (1-based) of `Pool'; raises `{bad_context, N, {pool_size,
%% Size}}' past the pool's size, or why the pool has no such worker.
-spec context(atom(), pos_integer()) -> pid().
context(Pool, N) when is_atom(Pool), is_integer(N), N >= 1 ->
    case pool_size(Pool) of
        Size when N =< Size -> raise_error(context_pid(Pool, N));
        Size -> erlang:error({bad_context, N, {pool_size, Size}})
    end.

%% @doc The calling process's context of `Pool': the worker it is bound to,
%% else one chosen by its pid (the same every time).
-spec caller_context(atom()) -> pid().
caller_context(Pool) ->
    Slot = case pyport_affinity:bound_slot(Pool) of
               undefined -> erlang:phash2(self(), pool_size(Pool)) + 1;
               Bound -> Bound
           end,
    raise_error(context_pid(Pool, Slot)).

%% @doc The calling process's context of `Pool', chosen on first use by
%% scheduler (as erlang_python's router) and kept: the process is bound to
%% it.
-spec scheduler_context(atom()) -> pid().
scheduler_context(Pool) ->
    Slot = case pyport_affinity:bound_slot(Pool) of
               undefined ->
                   Size = case pyport_pool:info(Pool) of
                              {ok, #{size := S0}} -> S0;
                              {error, _} -> 0
                          end,
                   Size > 0 orelse erlang:error({no_pool, Pool}),
                   S = (erlang:system_info(scheduler_id) - 1) rem Size + 1,
                   ok = pyport_affinity:bind(Pool, S),
                   S;
               S ->
                   S
           end,
    context(Pool, Slot).

%% @doc How many contexts (workers) `Pool' has; raises why it has none.
-spec pool_size(atom()) -> pos_integer().
pool_size(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{size := Size}} -> Size;
        {error, Reason} -> erlang:error(Reason)
    end.

%% @doc Whether pool `Pool' runs.
-spec started(atom()) -> boolean().
started(Pool) ->
    element(1, pyport_pool:info(Pool)) =:= ok.

%% @doc Stops pool `Pool' (if it runs): `ok'.
-spec stop(atom()) -> ok.
stop(Pool) ->
    _ = pyport:stop_pool(Pool),
    ok.

raise_error({ok, Pid}) -> Pid;
raise_error({error, Reason}) -> erlang:error(Reason).
