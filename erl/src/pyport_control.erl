%% @doc Control requests of the public API (CONTROL frames, PROTOCOL.md):
%% reloading a module in every worker of a pool, memory statistics and
%% garbage collection of one context or of every worker of a pool, the
%% workers' Python version, and tracemalloc in every worker.
-module(pyport_control).

-export([reload/2, ctx_memory_stats/1, ctx_gc/2, each_worker/3, version/1,
         tracemalloc_start/2, tracemalloc_stop/1]).

-define(CONTROL, 11).
%% How long reloading waits for a worker's graceful recycle when the call
%% has no timeout of its own.
-define(RECYCLE_TIMEOUT_MS, 60000).
-define(TRACEMALLOC_TIMEOUT_MS, 30000).

%% @doc Reloads `Module' in every worker of the options' pool, one after
%% another; a module that cannot be re-run (a C extension) recycles its
%% worker gracefully. `ok' or `{error, [{Slot, Reason}]}'.
-spec reload(py:name(), py:opts()) -> ok | {error, term()}.
reload(Module, Opts) ->
    case pyport_args:checked(fun() -> {pyport_args:name(Module), pyport_route:options(Opts)} end) of
        {Name, #{pool := Pool, timeout := Timeout}} when is_atom(Pool) ->
            case pyport:workers(Pool) of
                {ok, Workers} ->
                    Errors = lists:foldr(
                               fun({Slot, Pid}, Acc) ->
                                       case reload_slot(Pool, Slot, Pid, Name, Timeout) of
                                           ok -> Acc;
                                           Error -> [{Slot, Error} | Acc]
                                       end
                               end, [], Workers),
                    case Errors of
                        [] -> ok;
                        _ -> {error, Errors}
                    end;
                {error, _} = Error ->
                    Error
            end;
        {_, #{pool := Pool}} ->
            {error, {invalid_option, pool, Pool}};
        {error, _} = Error ->
            Error
    end.

%% @doc The memory statistics of a context, as erlang_python gives them
%% ({@link pyport_contexts:memory_stats/1}).
-spec ctx_memory_stats(py:context()) -> {ok, #{atom() => term()}} | {error, term()}.
ctx_memory_stats(Ctx) ->
    case ctx_control(Ctx, <<"memory_stats">>, none) of
        {ok, Stats} when is_map(Stats) -> {ok, pyport_contexts:memory_stats(Stats)};
        Other -> Other
    end.

%% @doc Python's garbage collector in a context (`Generation' 0..2 or
%% `none' for all): `{ok, Unreachable}'.
-spec ctx_gc(py:context(), 0..2 | none) -> {ok, non_neg_integer()} | {error, term()}.
ctx_gc(Ctx, Generation) ->
    ctx_control(Ctx, <<"gc">>, Generation).

%% @doc Control `Op' on every worker of the options' pool, concurrently:
%% `{ok, #{Slot => Value | {error, Reason}}}'.
-spec each_worker(binary(), term(), py:opts()) ->
          {ok, #{pos_integer() => term()}} | {error, term()}.
each_worker(Op, Arg, Opts) ->
    case pyport_args:checked(fun() -> pyport_route:options(Opts) end) of
        #{pool := Pool, timeout := Timeout} when is_atom(Pool) ->
            case pyport:workers(Pool) of
                {ok, Workers} ->
                    Handles = [{Slot, pyport_request:start({slot, Pool, Slot}, ?CONTROL,
                                                           [Op, Arg], Timeout)}
                               || {Slot, _} <- Workers],
                    {ok, maps:from_list([{Slot, unwrap(pyport_request:await(H))}
                                         || {Slot, H} <- Handles])};
                {error, _} = Error ->
                    Error
            end;
        #{pool := Pool} ->
            {error, {invalid_option, pool, Pool}};
        {error, _} = Error ->
            Error
    end.

%% @doc The Python version of a worker of `Pool', e.g. `<<"3.11.2">>'.
-spec version(atom()) -> {ok, binary()} | {error, term()}.
version(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case pyport_pool:pick(Info) of
                {ok, _Slot, Pid} ->
                    try pyport_worker:info(Pid) of
                        #{python_version := V} when is_binary(V) -> {ok, V};
                        #{} -> {error, worker_restarting}
                    catch
                        exit:{Reason, _} -> {error, {worker_exited, Reason}}
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc Starts `tracemalloc' (keeping `NFrames' frames) in every worker of
%% `Pool'.
-spec tracemalloc_start(atom(), term()) -> ok | {error, term()}.
tracemalloc_start(Pool, NFrames) when is_integer(NFrames), NFrames > 0 ->
    pyport_preload:everywhere([Pool],
                              iolist_to_binary(["import tracemalloc\ntracemalloc.start(",
                                                integer_to_list(NFrames), ")\n"]),
                              ?TRACEMALLOC_TIMEOUT_MS);
tracemalloc_start(_Pool, NFrames) ->
    {error, {invalid_nframes, NFrames}}.

%% @doc Stops `tracemalloc' in every worker of `Pool'.
-spec tracemalloc_stop(atom()) -> ok | {error, term()}.
tracemalloc_stop(Pool) ->
    pyport_preload:everywhere([Pool], <<"import tracemalloc\ntracemalloc.stop()\n">>,
                              ?TRACEMALLOC_TIMEOUT_MS).

ctx_control(Ctx, Op, Arg) ->
    pyport_args:checked(fun() ->
                                {Pool, Slot} = pyport_contexts:ctx_slot(Ctx),
                                control(Pool, Slot, Op, Arg, default)
                        end).

reload_slot(Pool, Slot, Pid, Name, Timeout) ->
    case control(Pool, Slot, <<"reload">>, Name, Timeout) of
        {ok, <<"needs_restart">>} ->
            recycle(Pid, pyport_request:deadline(recycle_timeout(Timeout)));
        {ok, _ReloadedOrNotLoaded} ->
            ok;
        {error, _} = Error ->
            Error
    end.

recycle_timeout(default) -> ?RECYCLE_TIMEOUT_MS;
recycle_timeout(T) -> T.

%% pyport_worker:recycle/2, with a wait of any length (a gen_server call
%% takes at most 2^32-1 ms: longer ones are waited in pieces).
recycle(Pid, Deadline) ->
    recycle_wait(gen_server:send_request(Pid, recycle), Deadline).

recycle_wait(ReqId, Deadline) ->
    case pyport_request:wait_ms(Deadline) of
        Ms when Ms =:= infinity; Ms < 16#FFFFFFFF ->
            recycle_reply(gen_server:receive_response(ReqId, Ms));
        Ms ->
            case gen_server:wait_response(ReqId, Ms) of
                timeout -> recycle_wait(ReqId, Deadline);
                Reply -> recycle_reply(Reply)
            end
    end.

recycle_reply({reply, Reply}) -> Reply;
recycle_reply({error, {Reason, _ServerRef}}) -> {error, {worker_exited, Reason}};
recycle_reply(timeout) -> {error, timeout}.

unwrap({ok, Value}) -> Value;
unwrap({error, _} = Error) -> Error.

control(Pool, Slot, Op, Arg, Timeout) ->
    pyport_request:call({slot, Pool, Slot}, ?CONTROL, [Op, Arg], Timeout).
