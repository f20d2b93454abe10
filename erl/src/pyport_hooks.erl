%% @doc Hooks: named handlers (an "app path") that any caller runs by name
%% with an action, arguments and keyword arguments, wherever the handler
%% lives: an Erlang fun or `{M, F}', or Python code registered by a worker
%% (Hornbeam's `hornbeam_hooks' and `hornbeam_erlang.register_hook'; see
%% docs/erlang-integration.md, "Hooks").
%%
%% The registry lives in the node, so a hook a worker registers is reachable
%% from Erlang and from every other worker: calls to it are routed to the
%% worker that holds the handler. A Python registration belongs to the
%% worker's OS process (its port): it ends when that process exits, and a
%% restarted worker registers again if its code does so at start. Several
%% workers may register the same path (each worker of a pool registering in
%% its start-up code): each is then a provider, and a call goes to one of
%% them (the calling worker itself when it is one).
%%
%% Bounds: a worker holds at most `max_per_worker' hooks, runs at most
%% `max_tasks_per_worker' async tasks and `max_streams_per_worker' open
%% streams; a finished task keeps its result `result_ttl' ms for its
%% awaiter; an open stream nobody reads ends after `stream_idle' ms. Paths
%% are UTF-8 text of 1 to 255 bytes without control characters; no atom is
%% made from anything a worker sends. Application environment (defaults):
%% ```
%% {hooks, #{max_per_worker => 100, max_tasks_per_worker => 1000,
%%           max_streams_per_worker => 100, result_ttl => 300000,
%%           stream_idle => 60000}}
%% '''
%%
%% Reads (lookups, execute) go to a protected ETS table directly; this
%% gen_server serialises registrations and owns the tasks and streams.
-module(pyport_hooks).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/0, reg/2, reg_python/1, unreg/1, find/1, all/0,
         execute/4, execute_async/4, await_result/2, stream/4, stream_next/1,
         path/1, limits/0]).
%% For pyport_callback: what a worker's Python code asks.
-export([python_request/3, python_notify/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([handler/0, result/0, next/0]).

-define(HOOKS, pyport_hooks).
-define(TASKS, pyport_hook_tasks).
-define(STREAMS, pyport_hook_streams).
-define(MAX_PATH, 255).
%% The longest wait a `receive ... after' takes (a longer one waits this).
-define(MAX_AFTER, 16#FFFFFFFF).
-define(PY_MODULE, <<"hornbeam_erlang">>).
-define(CALL, 1).
-define(DEFAULT_POOL, default).
-define(DEFAULTS, #{max_per_worker => 100, max_tasks_per_worker => 1000,
                    max_streams_per_worker => 100, result_ttl => 300000,
                    stream_idle => 60000}).

%% A handler as stored: Erlang code, or Python code in the provider
%% workers, or Python code resolved by path in any worker (`reg_python/1').
-type handler() :: {fun_handler, fun((binary(), list(), map()) -> term())}
                 | {mfa, module(), atom()}
                 | python_any
                 | {python, [provider()]}.
-type provider() :: {port(), Owner :: pid(), Pool :: atom(), Slot :: pos_integer()}.
-type result() :: {ok, term()} | {error, term()}.
-type next() :: {value, term()} | done | {error, term()}.

%%%===================================================================
%%% Registration
%%%===================================================================

%% @doc Starts the registry (pyport_sup does).
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Registers an Erlang handler under `Path': a fun of arity 3 or
%% `{Module, Function}' (called as `Module:Function(Action, Args, Kwargs)').
%% Replaces any handler of that path, Python ones included.
-spec reg(term(), fun((binary(), list(), map()) -> term()) | {module(), atom()}) ->
          ok | {error, term()}.
reg(Path, Fun) when is_function(Fun, 3) ->
    change(Path, fun(P) -> {reg, P, {fun_handler, Fun}} end);
reg(Path, {M, F}) when is_atom(M), is_atom(F) ->
    change(Path, fun(P) -> {reg, P, {mfa, M, F}} end);
reg(_Path, Handler) ->
    {error, {invalid_handler, Handler}}.

%% @doc Marks `Path' as a Python hook found by path in any worker: a hook
%% registered there, else `"module:name"' imported.
-spec reg_python(term()) -> ok | {error, term()}.
reg_python(Path) ->
    change(Path, fun(P) -> {reg, P, python_any} end).

%% @doc Removes every handler of `Path' (ok if there is none).
-spec unreg(term()) -> ok | {error, term()}.
unreg(Path) ->
    change(Path, fun(P) -> {unreg, P} end).

%% @doc The handler of `Path'.
-spec find(term()) -> {ok, handler()} | not_found.
find(Path) ->
    case path(Path) of
        {ok, P} ->
            try ets:lookup(?HOOKS, P) of
                [{_, H}] -> {ok, H};
                [] -> not_found
            catch error:badarg -> not_found
            end;
        error ->
            not_found
    end.

%% @doc Every registered path.
-spec all() -> [binary()].
all() ->
    try lists:sort(ets:select(?HOOKS, [{{'$1', '_'}, [], ['$1']}]))
    catch error:badarg -> []
    end.

%% @doc The valid form of a path: UTF-8 text of 1 to 255 bytes, no control
%% characters (an atom or a string becomes that binary).
-spec path(term()) -> {ok, binary()} | error.
path(A) when is_atom(A) -> path(atom_to_binary(A, utf8));
path(L) when is_list(L) ->
    try unicode:characters_to_binary(L) of
        B when is_binary(B) -> path(B);
        _ -> error
    catch error:_ -> error
    end;
path(B) when is_binary(B), byte_size(B) >= 1, byte_size(B) =< ?MAX_PATH ->
    case unicode:characters_to_binary(B) =:= B andalso printable(B) of
        true -> {ok, B};
        false -> error
    end;
path(_) ->
    error.

printable(<<C, _/binary>>) when C < 32; C =:= 127 -> false;
printable(<<_, Rest/binary>>) -> printable(Rest);
printable(<<>>) -> true.

%% @doc The bounds in force.
-spec limits() -> #{atom() => pos_integer()}.
limits() ->
    persistent_term:get({?MODULE, limits}, ?DEFAULTS).

%%%===================================================================
%%% Running hooks (Erlang callers)
%%%===================================================================

%% @doc Runs `Action' of the hook `Path' in the calling process (a Python
%% hook: in the worker that holds it; a path nobody registered: resolved as
%% `"module:name"' by a worker of the `default' pool). An Erlang handler's
%% value is `{ok, Value}'; its exception `{error, Reason}' (an exit
%% `{error, {exit, Reason}}').
-spec execute(term(), term(), list(), map()) -> result().
execute(Path, Action, Args, Kwargs) ->
    case check(Path, Action, Args, Kwargs) of
        {ok, P, A} -> run(target(P, erlang), P, A, Args, Kwargs);
        {error, _} = Error -> Error
    end.

%% @doc Starts {@link execute/4} in a process of its own: `{ok, TaskId}'.
-spec execute_async(term(), term(), list(), map()) -> {ok, binary()} | {error, term()}.
execute_async(Path, Action, Args, Kwargs) ->
    case check(Path, Action, Args, Kwargs) of
        {ok, P, A} -> start_task(P, A, Args, Kwargs, erlang);
        {error, _} = Error -> Error
    end.

%% @doc The result of a task of {@link execute_async/4}, waiting at most
%% `Timeout' ms: the task's `{ok, V}' or `{error, R}'; `{error, timeout}'
%% (the task is then abandoned), `{error, task_not_found}' for an id that
%% is unknown, already awaited or expired.
-spec await_result(term(), timeout()) -> result().
await_result(TaskId, Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    case lookup(?TASKS, TaskId) of
        {ok, Pid, _} ->
            Ref = erlang:monitor(process, Pid),
            Pid ! {await, self(), Ref},
            receive
                {Ref, Result} ->
                    erlang:demonitor(Ref, [flush]),
                    Result;
                {'DOWN', Ref, process, _, _} ->
                    {error, task_not_found}
            after min(Timeout, ?MAX_AFTER) ->         % infinity too: 49 days
                    erlang:demonitor(Ref, [flush]),
                    exit(Pid, kill),
                    receive {Ref, Result} -> Result after 0 -> {error, timeout} end
            end;
        error ->
            {error, task_not_found}
    end;
await_result(_TaskId, Timeout) ->
    {error, {invalid_timeout, Timeout}}.

%% @doc Streams `Action' of `Path': `{ok, Next}', where each `Next()' is
%% `{value, Chunk}', then `done' (or `{error, Reason}'). A Python handler
%% returns a generator (any other value is one chunk); an Erlang handler
%% returns `{ok, Fun/0}' (`stream_from_list/1', `stream_from_fun/1' of
%% {@link hornbeam_hooks}), any other value is one chunk. The stream ends
%% with the calling process, or after `stream_idle' ms without a read.
-spec stream(term(), term(), list(), map()) -> {ok, fun(() -> next())} | {error, term()}.
stream(Path, Action, Args, Kwargs) ->
    case check(Path, Action, Args, Kwargs) of
        {ok, P, A} ->
            case open_stream(target(P, erlang), P, A, Args, Kwargs, self()) of
                {ok, Pid, _Id} -> {ok, fun() -> stream_next(Pid) end};
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc The next chunk of an open stream (its process).
-spec stream_next(pid()) -> next().
stream_next(Pid) ->
    Ref = erlang:monitor(process, Pid),
    Pid ! {next, self(), Ref},
    receive
        {Ref, Next} ->
            erlang:demonitor(Ref, [flush]),
            Next;
        {'DOWN', Ref, process, _, _} ->
            {error, stream_closed}
    end.

%%%===================================================================
%%% Requests of a worker's Python code (through pyport_callback)
%%%===================================================================

%% @doc Serves REQUEST `hook' `[Sub, Args]' for the worker's owner: a reply
%% at once, or a function to run in a callback process (it may wait).
-spec python_request(binary(), list(), map()) ->
          {reply, pyport_callback_result()} | {run, iodata(), fun(() -> pyport_callback_result())}.
python_request(<<"register">>, [Path], Ctx) ->
    {reply, case path(Path) of
                {ok, P} -> registered(gen_call({reg_python, P, provider(Ctx)}), P);
                error -> bad_path(Path)
            end};
python_request(<<"unregister">>, [Path], Ctx) ->
    {reply, case path(Path) of
                {ok, P} -> registered(gen_call({unreg_python, P, provider(Ctx)}), P);
                error -> {ok, none}
            end};
python_request(<<"execute">>, [Path, Action, Args, Kwargs], Ctx) ->
    Caller = {python, provider(Ctx)},
    case check(Path, Action, Args, Kwargs) of
        {ok, P, A} ->
            case target(P, Caller) of
                local ->
                    {reply, {ok, {local}}};
                Target ->
                    {run, ["hook '", P, "' ", A],
                     fun() -> py_result(<<"Execute failed">>, run(Target, P, A, Args, Kwargs)) end}
            end;
        {error, Why} ->
            {reply, py_error(<<"Execute failed">>, Why)}
    end;
python_request(<<"execute_async">>, [Path, Action, Args, Kwargs], Ctx) ->
    {reply, case check(Path, Action, Args, Kwargs) of
                {ok, P, A} ->
                    case start_task(P, A, Args, Kwargs, {python, provider(Ctx)}) of
                        {ok, Id} -> {ok, Id};
                        {error, Why} -> py_error(<<"Execute async failed">>, Why)
                    end;
                {error, Why} ->
                    py_error(<<"Execute async failed">>, Why)
            end};
python_request(<<"await">>, [TaskId, Timeout], _Ctx)
  when is_binary(TaskId), (is_integer(Timeout) andalso Timeout >= 0 orelse Timeout =:= none) ->
    T = case Timeout of none -> infinity; _ -> Timeout end,
    {run, ["await_result(", task_text(TaskId), ")"],
     fun() -> py_result(<<"Await failed">>, await_result(TaskId, T)) end};
python_request(<<"stream_open">>, [Path, Action, Args, Kwargs], Ctx) ->
    Caller = {python, {Port, _, _, _} = provider(Ctx)},
    case check(Path, Action, Args, Kwargs) of
        {ok, P, A} ->
            case target(P, Caller) of
                local ->
                    {reply, {ok, {local}}};
                Target ->
                    {run, ["stream of hook '", P, "' ", A],
                     fun() ->
                             case open_stream(Target, P, A, Args, Kwargs, Port) of
                                 {ok, _Pid, Id} -> {ok, {stream, Id}};
                                 {error, Why} -> py_error(<<"Stream failed">>, Why)
                             end
                     end}
            end;
        {error, Why} ->
            {reply, py_error(<<"Stream failed">>, Why)}
    end;
python_request(<<"stream_next">>, [Id], #{port := Port}) ->
    case lookup(?STREAMS, Id) of
        {ok, Pid, Port} ->
            {run, "stream of a hook",
             fun() ->
                     case stream_next(Pid) of
                         {value, V} -> {ok, {value, V}};
                         done -> {ok, done};
                         {error, Why} -> py_error(<<"Stream error">>, Why)
                     end
             end};
        _ ->
            {reply, py_error(<<"Stream error">>, stream_closed)}
    end;
python_request(Sub, Args, _Ctx) ->
    {reply, {error, <<"ValueError">>,
             io_lib:format("unknown hook request or wrong arguments: ~0tp",
                           [{Sub, length(Args)}], [{chars_limit, 200}]), none}}.

%% @doc Serves NOTIFY `hook' `[Sub, Args]': the worker closes a stream it
%% opened.
-spec python_notify(binary(), list(), map()) -> ok.
python_notify(<<"stream_close">>, [Id], #{port := Port}) ->
    case lookup(?STREAMS, Id) of
        {ok, Pid, Port} -> exit(Pid, kill), ok;
        _ -> ok
    end;
python_notify(_Sub, _Args, _Ctx) ->
    ok.

-type pyport_callback_result() :: {ok, term()} | {error, binary(), unicode:chardata(), term()}.

provider(#{port := Port, meta := #{pyport_pool := Pool, pyport_slot := Slot}}) ->
    {Port, self(), Pool, Slot}.

registered(ok, _P) ->
    {ok, none};
registered({error, {too_many_hooks, Max}}, P) ->
    {error, <<"ErlangError">>,
     io_lib:format("cannot register hook '~ts': this worker holds ~b hooks already "
                   "(hooks max_per_worker)", [P, Max]), {too_many_hooks, Max}};
registered({error, Why}, P) ->
    {error, <<"ErlangError">>, io_lib:format("cannot register hook '~ts': ~0tp", [P, Why]), Why}.

bad_path(Path) ->
    {error, <<"ValueError">>,
     io_lib:format("invalid hook path ~0tp: it must be text of 1 to ~b bytes without control "
                   "characters", [Path, ?MAX_PATH], [{chars_limit, 300}]), none}.

py_result(_What, {ok, V}) -> {ok, {value, V}};
py_result(What, {error, Why}) -> py_error(What, Why).

py_error(What, Why) ->
    {error, <<"ErlangError">>,
     [What, ": " | io_lib:format("~0tp", [Why], [{chars_limit, 1000}])], Why}.

task_text(Id) when byte_size(Id) =< 64 -> ["'", Id, "'"];
task_text(_) -> "a task".

%%%===================================================================
%%% Resolution and running
%%%===================================================================

%% A valid path and action, and arguments of the right types.
check(Path, Action, Args, Kwargs) ->
    case {path(Path), action(Action)} of
        {{ok, P}, {ok, A}} when is_list(Args), is_map(Kwargs) -> {ok, P, A};
        {error, _} -> {error, {invalid_path, Path}};
        {_, error} -> {error, {invalid_action, Action}};
        _ when not is_list(Args) -> {error, {invalid_args, Args}};
        _ -> {error, {invalid_kwargs, Kwargs}}
    end.

action(A) when is_atom(A) -> action(atom_to_binary(A, utf8));
action(A) when is_list(A) ->
    try unicode:characters_to_binary(A) of
        B when is_binary(B) -> action(B);
        _ -> error
    catch error:_ -> error
    end;
action(A) when is_binary(A), byte_size(A) =< ?MAX_PATH -> {ok, A};
action(_) -> error.

%% Where a hook runs for `Caller': Erlang code (in the running process),
%% `local' (in the calling worker: its own registration, or by path), a
%% provider worker's slot, or any worker of the default pool.
target(P, Caller) ->
    case find(P) of
        {ok, {fun_handler, F}} -> {erlang, F};
        {ok, {mfa, M, F}} -> {erlang, fun(A, Args, Kw) -> M:F(A, Args, Kw) end};
        {ok, {python, Providers}} -> python_target(Providers, Caller);
        _ -> python_any(Caller)
    end.

python_target(Providers, {python, {Port, _, _, _}} = Caller) ->
    case lists:keymember(Port, 1, Providers) of
        true -> local;
        false -> pick(Providers, Caller)
    end;
python_target(Providers, Caller) ->
    pick(Providers, Caller).

pick(Providers, Caller) ->
    case [{slot, Pool, Slot} || {Port, _, Pool, Slot} <- Providers,
                                erlang:port_info(Port, id) =/= undefined] of
        [] -> python_any(Caller);
        Alive -> lists:nth(rand:uniform(length(Alive)), Alive)
    end.

python_any(erlang) -> {pool, ?DEFAULT_POOL};
python_any({python, _}) -> local.

%% Runs the hook in this process.
run({erlang, F}, _P, A, Args, Kwargs) ->
    try {ok, F(A, Args, Kwargs)}
    catch
        throw:Reason -> {error, Reason};
        error:Reason -> {error, Reason};
        exit:Reason -> {error, {exit, Reason}}
    end;
run(Target, P, A, Args, Kwargs) ->
    pyport_request:call(Target, ?CALL, py_fields(<<"_run_hook">>, P, A, Args, Kwargs), default).

py_fields(F, P, A, Args, Kwargs) ->
    [?PY_MODULE, F, [P, A, Args, Kwargs], #{}].

%% A task of a worker runs `local' hooks in that worker.
in_caller(local, {python, {_, _, Pool, Slot}}) -> {slot, Pool, Slot};
in_caller(Target, _Caller) -> Target.

%%%===================================================================
%%% Tasks
%%%===================================================================

start_task(P, A, Args, Kwargs, Caller) ->
    Target = in_caller(target(P, Caller), Caller),
    Run = fun() -> run(Target, P, A, Args, Kwargs) end,
    gen_call({start_task, owner_key(Caller), Run}).

owner_key(erlang) -> erlang;
owner_key({python, {Port, _, _, _}}) -> Port.

task(Run, Ttl) ->
    Result = Run(),
    receive
        {await, From, Ref} -> From ! {Ref, Result}
    after Ttl ->
            ok
    end.

%%%===================================================================
%%% Streams
%%%===================================================================

%% Starts the process of a stream, owned by `Owner' (a pid or a port), and
%% waits until its handler has run: `{ok, Pid, Id}' or the handler's error.
%% `Target' is never `local': a worker runs its own hooks' streams itself.
open_stream(Target, P, A, Args, Kwargs, Owner) ->
    Open = fun() -> open(Target, P, A, Args, Kwargs) end,
    case gen_call({start_stream, Owner, Open, self()}) of
        {ok, Pid, Id} ->
            Ref = erlang:monitor(process, Pid),
            receive
                {opened, Pid, ok} ->
                    erlang:demonitor(Ref, [flush]),
                    {ok, Pid, Id};
                {opened, Pid, {error, _} = Error} ->
                    erlang:demonitor(Ref, [flush]),
                    Error;
                {'DOWN', Ref, process, _, Reason} ->
                    {error, {stream_exited, Reason}}
            end;
        {error, _} = Error ->
            Error
    end.

%% In the stream's process: runs the handler; `{ok, Next}' with Next/0, and
%% for a Python stream the fun that cancels it.
open({erlang, F}, P, A, Args, Kwargs) ->
    case run({erlang, F}, P, A, Args, Kwargs) of
        {ok, {ok, Gen}} when is_function(Gen, 0) -> {ok, Gen};
        {ok, {error, _} = Error} -> Error;
        {ok, Value} -> {ok, one_chunk(Value)};
        {error, _} = Error -> Error
    end;
open(Target, P, A, Args, Kwargs) ->
    Timeout = case Target of
                  {slot, Pool, _} -> call_timeout(Pool);
                  {pool, Pool} -> call_timeout(Pool)
              end,
    Fields = py_fields(<<"_hook_stream">>, P, A, Args, Kwargs),
    case pyport_async:stream_start(Target, {?CALL, Fields}, self()) of
        {ok, Ref} ->
            %% A worker that exits ends its streams with {error, {worker_exited, _}}.
            Next = fun() -> py_next(Ref, Timeout) end,
            %% The first item, or the handler's error, before answering.
            case Next() of
                {error, _} = Error -> Error;
                done -> {ok, prefetched(done, Next)};
                First -> {ok, prefetched(First, Next), fun() -> pyport_async:stream_cancel(Ref) end}
            end;
        {error, _} = Error ->
            Error
    end.

py_next(Ref, Timeout) ->
    receive
        {py_stream, Ref, {data, Item}} -> {value, Item};
        {py_stream, Ref, done} -> done;
        {py_stream, Ref, {error, _} = Error} -> Error
    after Timeout ->
            pyport_async:stream_cancel(Ref),
            {error, timeout}
    end.

prefetched(First, Next) ->
    Key = {?MODULE, first},
    put(Key, First),
    fun() ->
            case erase(Key) of
                undefined -> Next();
                Item -> Item
            end
    end.

one_chunk(Value) ->
    Key = {?MODULE, one_chunk},
    put(Key, Value),
    fun() ->
            case erase(Key) of
                undefined -> done;
                V -> {value, V}
            end
    end.

call_timeout(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{call_timeout := T}} -> T;
        _ -> 30000
    end.

%% The stream's process: opens, tells its opener, then serves reads until
%% the end, its owner's exit, or `Idle' ms without a read.
stream_proc(Open, Opener, Owner, Idle) ->
    OwnerRef = erlang:monitor(if is_port(Owner) -> port; true -> process end, Owner),
    case Open() of
        {ok, Next} ->
            Opener ! {opened, self(), ok},
            serve(Next, Idle, OwnerRef);
        {ok, Next, Cancel} ->
            Opener ! {opened, self(), ok},
            %% Ended early (idle, or its reader gone): the producer stops now.
            case serve(Next, Idle, OwnerRef) of
                finished -> ok;
                ended -> Cancel()
            end;
        {error, _} = Error ->
            Opener ! {opened, self(), Error}
    end.

serve(Next, Idle, OwnerRef) ->
    receive
        {next, From, Ref} ->
            Item = try Next()
                   catch Class:Reason -> {error, {Class, Reason}}
                   end,
            From ! {Ref, Item},
            case Item of
                {value, _} -> serve(Next, Idle, OwnerRef);
                _ -> finished
            end;
        {'DOWN', OwnerRef, _, _, _} ->
            ended
    after Idle ->
            ended
    end.

%%%===================================================================
%%% gen_server
%%%===================================================================

-record(st, {limits :: map(),
             %% port => {monitor, paths}: the Python hooks of each worker
             workers = #{} :: #{port() => {reference(), [binary()]}},
             %% task or stream pid => counted key
             procs = #{} :: #{pid() => {tasks | streams, term(), term()}},
             counts = #{} :: #{{tasks | streams, term()} => pos_integer()}}).

%% @private
-spec init([]) -> {ok, #st{}} | {stop, term()}.
init([]) ->
    case limits_from_env(application:get_env(pyport, hooks, #{})) of
        {ok, Limits} ->
            persistent_term:put({?MODULE, limits}, Limits),
            _ = ets:new(?HOOKS, [named_table, protected, set, {read_concurrency, true}]),
            _ = ets:new(?TASKS, [named_table, protected, set, {read_concurrency, true}]),
            _ = ets:new(?STREAMS, [named_table, protected, set, {read_concurrency, true}]),
            {ok, #st{limits = Limits}};
        {error, Reason} ->
            {stop, Reason}
    end.

limits_from_env(Env) when is_map(Env) ->
    maps:fold(fun(K, V, {ok, Acc}) when is_map_key(K, ?DEFAULTS), is_integer(V), V > 0 ->
                      {ok, Acc#{K => V}};
                 (K, V, {ok, _}) when is_map_key(K, ?DEFAULTS) ->
                      {error, {invalid_config, {hooks, K}, V}};
                 (K, _V, {ok, _}) ->
                      {error, {invalid_config, {hooks, unknown_key}, K}};
                 (_, _, Error) ->
                      Error
              end, {ok, ?DEFAULTS}, Env);
limits_from_env(Other) ->
    {error, {invalid_config, hooks, Other}}.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call({reg, P, Handler}, _From, St) ->
    true = ets:insert(?HOOKS, {P, Handler}),
    {reply, ok, forget_path(P, St)};
handle_call({unreg, P}, _From, St) ->
    true = ets:delete(?HOOKS, P),
    {reply, ok, forget_path(P, St)};
handle_call({reg_python, P, {Port, _, _, _} = Provider}, _From,
            #st{workers = Workers, limits = #{max_per_worker := Max}} = St) ->
    {Monitor, Paths} = case Workers of
                           #{Port := W} -> W;
                           #{} -> {undefined, []}
                       end,
    case lists:member(P, Paths) orelse length(Paths) < Max of
        false ->
            {reply, {error, {too_many_hooks, Max}}, St};
        true when Monitor =:= undefined ->
            case erlang:port_info(Port, id) of
                undefined ->
                    {reply, {error, worker_gone}, St};
                _ ->
                    M = erlang:monitor(port, Port),
                    add_provider(P, Provider, Paths, St#st{workers = Workers#{Port => {M, []}}})
            end;
        true ->
            add_provider(P, Provider, Paths, St)
    end;
handle_call({unreg_python, P, {Port, _, _, _}}, _From, St) ->
    {reply, ok, remove_provider(P, Port, St)};
handle_call({start_task, Key, Run}, _From, #st{limits = #{result_ttl := Ttl}} = St) ->
    case admit(tasks, Key, St) of
        ok ->
            Pid = spawn(fun() -> task(Run, Ttl) end),
            Id = <<"task-", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
            true = ets:insert(?TASKS, {Id, Pid, Key}),
            {reply, {ok, Id}, started(Pid, tasks, Key, Id, St)};
        {error, _} = Error ->
            {reply, Error, St}
    end;
handle_call({start_stream, Owner, Open, Opener}, _From, #st{limits = #{stream_idle := Idle}} = St) ->
    Key = if is_port(Owner) -> Owner; true -> erlang end,
    case admit(streams, Key, St) of
        ok ->
            Pid = spawn(fun() -> stream_proc(Open, Opener, Owner, Idle) end),
            Id = erlang:unique_integer([positive]),
            true = ets:insert(?STREAMS, {Id, Pid, Owner}),
            {reply, {ok, Pid, Id}, started(Pid, streams, Key, Id, St)};
        {error, _} = Error ->
            {reply, Error, St}
    end;
handle_call(_Request, _From, St) ->
    {reply, {error, unknown_call}, St}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, St) ->
    {noreply, St}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info({'DOWN', _, port, Port, _}, #st{workers = Workers} = St) ->
    %% The worker's OS process is gone: so are its hooks.
    case Workers of
        #{Port := {_, Paths}} ->
            St1 = lists:foldl(fun(P, Acc) -> remove_provider(P, Port, Acc) end, St, Paths),
            {noreply, St1#st{workers = maps:remove(Port, St1#st.workers)}};
        #{} ->
            {noreply, St}
    end;
handle_info({'DOWN', _, process, Pid, _}, #st{procs = Procs, counts = Counts} = St) ->
    case maps:take(Pid, Procs) of
        {{Kind, Key, Id}, Procs1} ->
            true = ets:delete(case Kind of tasks -> ?TASKS; streams -> ?STREAMS end, Id),
            CKey = {Kind, Key},
            Counts1 = case maps:get(CKey, Counts) of
                          1 -> maps:remove(CKey, Counts);
                          N -> Counts#{CKey => N - 1}
                      end,
            {noreply, St#st{procs = Procs1, counts = Counts1}};
        error ->
            {noreply, St}
    end;
handle_info(_Msg, St) ->
    {noreply, St}.

%%%===================================================================
%%% Internals
%%%===================================================================

change(Path, Request) ->
    case path(Path) of
        {ok, P} -> gen_call(Request(P));
        error -> {error, {invalid_path, Path}}
    end.

gen_call(Request) ->
    try gen_server:call(?MODULE, Request, infinity)
    catch exit:{noproc, _} -> {error, pyport_not_started}
    end.

add_provider(P, {Port, _, _, _} = Provider, Paths, #st{workers = Workers} = St) ->
    Providers = case ets:lookup(?HOOKS, P) of
                    [{_, {python, Ps}}] -> lists:keystore(Port, 1, Ps, Provider);
                    _ -> [Provider]
                end,
    true = ets:insert(?HOOKS, {P, {python, Providers}}),
    %% An Erlang handler it replaced may have been this path's only one.
    {M, _} = maps:get(Port, Workers),
    {reply, ok, St#st{workers = Workers#{Port => {M, lists:usort([P | Paths])}}}}.

remove_provider(P, Port, #st{workers = Workers} = St) ->
    case ets:lookup(?HOOKS, P) of
        [{_, {python, Ps}}] ->
            case lists:keydelete(Port, 1, Ps) of
                [] -> true = ets:delete(?HOOKS, P);
                Rest -> true = ets:insert(?HOOKS, {P, {python, Rest}})
            end;
        _ ->
            ok
    end,
    case Workers of
        #{Port := {M, Paths}} -> St#st{workers = Workers#{Port => {M, lists:delete(P, Paths)}}};
        #{} -> St
    end.

%% An Erlang registration (or removal) of P: no worker provides it any more.
forget_path(P, #st{workers = Workers} = St) ->
    St#st{workers = maps:map(fun(_Port, {M, Paths}) -> {M, lists:delete(P, Paths)} end,
                             Workers)}.

admit(_Kind, erlang, _St) ->
    ok;
admit(Kind, Key, #st{counts = Counts, limits = Limits}) ->
    Max = maps:get(case Kind of
                       tasks -> max_tasks_per_worker;
                       streams -> max_streams_per_worker
                   end, Limits),
    case maps:get({Kind, Key}, Counts, 0) < Max of
        true -> ok;
        false -> {error, {case Kind of tasks -> too_many_tasks; streams -> too_many_streams end,
                          Max}}
    end.

started(Pid, Kind, Key, Id, #st{procs = Procs, counts = Counts} = St) ->
    _ = erlang:monitor(process, Pid),
    CKey = {Kind, Key},
    St#st{procs = Procs#{Pid => {Kind, Key, Id}},
          counts = Counts#{CKey => maps:get(CKey, Counts, 0) + 1}}.

lookup(Tab, Id) ->
    try ets:lookup(Tab, Id) of
        [{_, Pid, Owner}] when is_pid(Pid) -> {ok, Pid, Owner};
        _ -> error
    catch error:badarg -> error
    end.
