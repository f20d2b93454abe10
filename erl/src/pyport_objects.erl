%% @doc Python objects kept in a worker for an Erlang process (handles), and
%% the per-call conversion options (`return', `str_fallback', `numpy',
%% `traceback').
%%
%% A call with `#{return => ref}' answers `{ok, Handle}': the value stays
%% in the worker, under an id this node chose (unique for the node's life),
%% and `Handle' names it. The node, not the worker, is the authority on
%% handles: this server's table maps each id to its owner (the calling
%% process) and its worker, and every request that carries a handle is
%% checked against it before it is sent:
%% <ul>
%% <li>only the owner may use or release it (`{error, {not_owner, H}}');</li>
%% <li>a released handle, or one whose owner exited, is gone
%%   (`{error, {stale_ref, H}}');</li>
%% <li>the request goes to the worker that holds the object, whatever
%%   the call's own routing says (handles of two workers in one request:
%%   `{error, {refs_on_different_workers, H1, H2}}');</li>
%% <li>a worker whose OS process restarted holds none of its objects: the
%%   call answers `{error, {stale_ref, H}}' and the handle is dropped.</li>
%% </ul>
%% A term that merely looks like a handle (made by hand, or sent by a
%% worker) reaches nothing: its id must be in this table, owned by the
%% caller. At most `max_objects' (pool option, default 10000) handles live
%% per worker: past it `{error, {too_many_objects, Max}}'. When the owner
%% exits, its objects are released in their workers.
-module(pyport_objects).
-behaviour(gen_server).

-export([start_link/0, is_ref/1, call/5, check_option/2, release/1, count/1, info/1,
         ndarray_tag/0]).
%% For pyport_request and pyport_codec: handles found while encoding.
-export([collecting/1, encode_ref/1, target/2]).
%% For pyport_worker: its OS process exited.
-export([worker_exited/1]).
%% py's object functions (section at the end).
-export([call_method/4, getattr/2, to_term/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([ref/0]).

-define(TAB, ?MODULE).
-define(TAG, '$pyport_object').
-define(WITH, 13).
-define(CALL, 1).
-define(DEFAULT_MAX_OBJECTS, 10000).
%% Process dictionary: the handles encoded while a request is prepared.
-define(COLLECT, '$pyport_object_refs').

%% `{?TAG, Id, Pool, Slot, WorkerPid, OsPid}': OsPid is the worker OS
%% process that stored it (its incarnation, for information: the check is
%% the worker's own table, as ids are never reused).
-opaque ref() :: {'$pyport_object', pos_integer(), atom(), pos_integer(), pid(), integer()}.

%%%===================================================================
%%% API
%%%===================================================================

%% @private
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Whether `Term' has the shape of a handle (it may still be released
%% or someone else's).
-spec is_ref(term()) -> boolean().
is_ref({?TAG, Id, Pool, Slot, Pid, _}) ->
    is_integer(Id) andalso is_atom(Pool) andalso is_integer(Slot) andalso is_pid(Pid);
is_ref(_) ->
    false.

%% @doc Checks one conversion option of a call or eval (see {@link call/5}).
-spec check_option(atom(), term()) -> ok.
check_option(return, V) when V =:= term; V =:= ref -> ok;
check_option(str_fallback, V) when is_boolean(V) -> ok;
check_option(numpy, V) when V =:= bytes; V =:= array; V =:= list -> ok;
check_option(traceback, V) when is_boolean(V) -> ok;
check_option(K, V) -> throw({error, {invalid_option, K, V}}).

%% @doc A CALL or EVAL with the options of py:call/eval: `return' (`term',
%% the default, or `ref': a handle), `str_fallback' (default: the pool's),
%% `numpy' (`bytes', the default, `array' or `list'), `traceback' (errors
%% as `{error, {Type, Message, Traceback}}').
-spec call(pyport_request:target(), pos_integer(), [term()], timeout() | default, map()) ->
          pyport_request:result().
call(Target, Kind, Fields, Timeout, Opts) when is_map(Opts) ->
    With = with_options(Target, Opts),
    Extra = #{traceback => maps:get(traceback, Opts, false)},
    Result = case maps:get(return, Opts, term) of
                 ref -> keep(Target, Kind, Fields, Timeout, With, Extra);
                 term when With =:= #{} -> pyport_request:call(Target, Kind, Fields, Timeout, Extra);
                 term -> pyport_request:call(Target, {?WITH, With, Kind}, Fields, Timeout, Extra)
             end,
    stale(Result, Fields);
call(Target, Kind, Fields, Timeout, _Opts) ->
    stale(pyport_request:call(Target, Kind, Fields, Timeout), Fields).

%% @private Runs `Encode' noting the handles it encodes: `{Result,
%% Handles}'. Only then does a handle that may not be used raise
%% `error({pyport_object, Reason})' in the encoder; elsewhere it is an
%% unsupported term.
-spec collecting(fun(() -> Result)) -> {Result, [ref()]}.
collecting(Encode) ->
    put(?COLLECT, []),
    try Encode() of
        Result -> {Result, get(?COLLECT)}
    after
        erase(?COLLECT)
    end.

%% @private Where a request carrying `Refs' (checked by encode_ref/1) must
%% go: `Target' when none, else the worker that holds them.
-spec target(pyport_request:target(), [ref()]) ->
          {ok, pyport_request:target()} | {error, term()}.
target(Target, []) ->
    {ok, Target};
target(_Target, Refs) ->
    route_refs(Refs, none).

%% @doc Releases a handle: its object is dropped in the worker. Only the
%% owner may; releasing twice is `ok'.
-spec release(ref()) -> ok | {error, {not_owner, ref()}}.
release({?TAG, Id, _, _, _, _} = H) when is_integer(Id) ->
    case lookup(Id) of
        {ok, Owner, _, _, _} when Owner =/= self() -> {error, {not_owner, H}};
        {ok, _, _, _, _} -> gen_server:call(?MODULE, {release, Id});
        none -> ok
    end.

%% @private The id an ext 6 carries, for pyport_codec: only the owner's
%% live handles encode. While collecting (a request being prepared) a
%% refusal says why; elsewhere the term is just not encodable.
-spec encode_ref(term()) -> {ok, pos_integer()} | error.
encode_ref({?TAG, Id, _, _, _, _} = H) when is_integer(Id) ->
    Self = self(),
    Verdict = case lookup(Id) of
                  {ok, Self, _, _, _} -> ok;
                  {ok, _, _, _, _} -> {not_owner, H};
                  none -> {stale_ref, H}
              end,
    case {Verdict, get(?COLLECT)} of
        {ok, undefined} -> {ok, Id};
        {ok, Refs} -> put(?COLLECT, [H | Refs]), {ok, Id};
        {_, undefined} -> error;
        {Reason, _} -> error({pyport_object, Reason})
    end;
encode_ref(_) ->
    error.

%% @private The OS process of the worker `Pid' exited: its objects are
%% gone, their handles are stale (and no longer count against the cap).
-spec worker_exited(pid()) -> ok.
worker_exited(Pid) ->
    gen_server:cast(?MODULE, {worker_gone, Pid, exited}).

%% @doc How many handles live for the worker `Pid' (a pool's gen_server).
-spec count(pid()) -> non_neg_integer().
count(Pid) ->
    gen_server:call(?MODULE, {count, Pid}).

%% @doc Worker, pool, slot and owner of a live handle.
-spec info(ref()) -> {ok, map()} | {error, {stale_ref, ref()}}.
info({?TAG, Id, _, _, _, OsPid} = H) ->
    case lookup(Id) of
        {ok, Owner, Pid, Pool, Slot} ->
            {ok, #{owner => Owner, worker => Pid, pool => Pool, slot => Slot, os_pid => OsPid}};
        none ->
            {error, {stale_ref, H}}
    end.

%% @doc The atom that tags a numpy array in the `array' form, `{ndarray,
%% Shape, Dtype, Bytes}': named here so that it exists in every node
%% running pyport and decoding it never costs the atom budget.
-spec ndarray_tag() -> ndarray.
ndarray_tag() ->
    ndarray.

%%%===================================================================
%%% The calling side
%%%===================================================================

keep({node, Node, _}, _Kind, _Fields, _Timeout, _With, _Extra) when Node =/= node() ->
    %% The handle table is this node's: a handle is made for a local worker.
    {error, {invalid_option, return, ref}};
keep({cluster, _}, _Kind, _Fields, _Timeout, _With, _Extra) ->
    {error, {invalid_option, return, ref}};
keep(Target, Kind, Fields, Timeout, With, Extra) ->
    Id = erlang:unique_integer([positive]),
    Self = self(),
    Reserve = fun(Pid, Pool, Slot) ->
                      put({?MODULE, Id}, {Pool, Slot}),
                      gen_server:call(?MODULE, {reserve, Id, Self, Pid, Pool, Slot,
                                                max_objects(Pool)})
              end,
    case pyport_request:call(Target, {?WITH, With#{<<"keep">> => Id}, Kind}, Fields, Timeout,
                             Extra#{before_send => Reserve}) of
        {ok, [Id, OsPid]} when is_integer(OsPid) ->
            Where = erase({?MODULE, Id}),
            case lookup(Id) of
                {ok, _, Pid, Pool, Slot} ->
                    {ok, {?TAG, Id, Pool, Slot, Pid, OsPid}};
                none ->
                    %% The worker restarted while the request was on its
                    %% way (its handles were dropped): the new process has
                    %% it, nobody may use it, so it goes.
                    {Pool, Slot} = Where,
                    _ = pyport_request:cast({slot, Pool, Slot}, release_fields([Id])),
                    {error, {stale_ref, Id}}
            end;
        {ok, Other} ->
            _ = erase({?MODULE, Id}),
            forget(Id),
            {error, {protocol_error, {bad_keep_answer, Other}}};
        {error, _} = Error ->
            %% Nothing kept (or kept after the caller gave up): released.
            _ = erase({?MODULE, Id}),
            forget(Id),
            Error
    end.

release_fields(Ids) ->
    [<<"erlang._objects">>, <<"release">>, Ids, #{}].

forget(Id) ->
    case lookup(Id) of
        {ok, _, _, _, _} -> gen_server:call(?MODULE, {release, Id});
        none -> ok
    end.

max_objects(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{opts := Opts}} -> maps:get(max_objects, Opts, ?DEFAULT_MAX_OBJECTS);
        {error, _} -> ?DEFAULT_MAX_OBJECTS
    end.

%% The WITH options (PROTOCOL.md) a call's options and its pool ask for.
with_options(Target, Opts) ->
    Fallback = case Opts of
                   #{str_fallback := F} -> F;
                   #{} -> pool_str_fallback(Target)
               end,
    W1 = case Fallback of
             true -> #{<<"str_fallback">> => true};
             false -> #{}
         end,
    case maps:get(numpy, Opts, bytes) of
        bytes -> W1;
        Mode -> W1#{<<"numpy">> => atom_to_binary(Mode)}
    end.

pool_str_fallback(Target) ->
    case pool_of(Target) of
        none ->
            false;
        Pool ->
            case pyport_pool:info(Pool) of
                {ok, #{opts := Opts}} -> maps:get(str_fallback, Opts, false);
                {error, _} -> false
            end
    end.

pool_of({pool, P}) when is_atom(P) -> P;
pool_of({slot, P, _}) -> P;
pool_of({shard, P, _}) -> P;
pool_of(_) -> none.

%% A worker that lost an object (it restarted) answers StaleRefError naming
%% the id: the handle is dropped here and the caller gets stale_ref.
stale({error, {'StaleRefError', Message}} = Error, Fields) when is_binary(Message) ->
    case [H || {?TAG, Id, _, _, _, _} = H <- refs(Fields, []),
               binary:match(Message, <<"object ", (integer_to_binary(Id))/binary, " ">>)
                   =/= nomatch] of
        [{?TAG, Id, _, _, _, _} = H | _] ->
            forget(Id),
            {error, {stale_ref, H}};
        [] ->
            Error
    end;
stale(Result, _Fields) ->
    Result.

%% Every handle-shaped term in the fields, however deep.
refs({?TAG, _, _, _, _, _} = H, Acc) ->
    case is_ref(H) of
        true -> [H | Acc];
        false -> refs(tuple_to_list(H), Acc)
    end;
refs([H | T], Acc) -> refs(T, refs(H, Acc));
refs(T, Acc) when is_tuple(T) -> refs(tuple_to_list(T), Acc);
refs(M, Acc) when is_map(M) -> maps:fold(fun(K, V, A) -> refs(V, refs(K, A)) end, Acc, M);
refs(_, Acc) -> Acc.

route_refs([], {Pid, Pool, Slot, H}) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case pyport_pool:worker(Info, Slot) of
                {ok, Pid} -> {ok, {slot, Pool, Slot}};
                _ -> stale_now(Pid, H)
            end;
        {error, _} ->
            stale_now(Pid, H)
    end;
route_refs([{?TAG, Id, _, _, _, _} = H | T], Seen) ->
    case lookup(Id) of
        none ->
            {error, {stale_ref, H}};
        {ok, _, Pid, Pool, Slot} ->
            case Seen of
                none -> route_refs(T, {Pid, Pool, Slot, H});
                {Pid, _, _, _} -> route_refs(T, Seen);
                {_, _, _, H1} -> {error, {refs_on_different_workers, H1, H}}
            end
    end.

%% The worker's gen_server is gone (its pool restarted it): every handle
%% of it is stale.
stale_now(Pid, H) ->
    gen_server:cast(?MODULE, {worker_gone, Pid, gone}),
    {error, {stale_ref, H}}.

lookup(Id) ->
    try ets:lookup(?TAB, Id) of
        [{Id, Owner, Pid, Pool, Slot}] -> {ok, Owner, Pid, Pool, Slot};
        [] -> none
    catch
        error:badarg -> none  % pyport not running
    end.

%%%===================================================================
%%% The server: the table, the owners' monitors, the counts
%%%===================================================================

%% State: owners => #{Owner => {Monitor, #{Id => true}}}, counts => #{WorkerPid => N}.

%% @private
-spec init([]) -> {ok, map()}.
init([]) ->
    ?TAB = ets:new(?TAB, [named_table, protected, set, {read_concurrency, true}]),
    {ok, #{owners => #{}, counts => #{}}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({reserve, Id, Owner, Pid, Pool, Slot, Max}, _From, #{owners := Os, counts := Cs} = S) ->
    case maps:get(Pid, Cs, 0) of
        N when N >= Max ->
            {reply, {error, {too_many_objects, Max}}, S};
        N ->
            true = ets:insert_new(?TAB, {Id, Owner, Pid, Pool, Slot}),
            {Mon, Ids} = case Os of
                             #{Owner := Known} -> Known;
                             #{} -> {erlang:monitor(process, Owner), #{}}
                         end,
            {reply, ok, S#{owners := Os#{Owner => {Mon, Ids#{Id => true}}},
                           counts := Cs#{Pid => N + 1}}}
    end;
handle_call({release, Id}, _From, S) ->
    {reply, ok, drop([Id], true, S)};
handle_call({count, Pid}, _From, #{counts := Cs} = S) ->
    {reply, maps:get(Pid, Cs, 0), S};
handle_call(_Msg, _From, S) ->
    {reply, {error, unknown_request}, S}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast({worker_gone, Pid, Why}, S) ->
    Ids = ets:select(?TAB, [{{'$1', '_', Pid, '_', '_'}, [], ['$1']}]),
    %% An OS process that exited took its objects along: nothing to tell.
    {noreply, drop(Ids, Why =/= exited, S)};
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'DOWN', Mon, process, Owner, _}, #{owners := Os} = S) ->
    case Os of
        #{Owner := {Mon, Ids}} -> {noreply, drop(maps:keys(Ids), true, S)};
        #{} -> {noreply, S}
    end;
handle_info(_Msg, S) ->
    {noreply, S}.

%% Forgets the ids and tells each worker to drop its objects (one CAST per
%% worker: no answer, nothing waits).
drop(Ids, Tell, S0) ->
    {ByWorker, S} = lists:foldl(fun drop_one/2, {#{}, S0}, Ids),
    Tell andalso maps:foreach(fun({Pool, Slot, _Pid}, Dropped) ->
                                      _ = pyport_request:cast({slot, Pool, Slot},
                                                              release_fields(Dropped))
                              end, ByWorker),
    S.

drop_one(Id, {ByWorker, #{owners := Os, counts := Cs} = S}) ->
    case ets:take(?TAB, Id) of
        [{Id, Owner, Pid, Pool, Slot}] ->
            Os1 = case Os of
                      #{Owner := {Mon, Ids}} when map_size(Ids) =:= 1 ->
                          erlang:demonitor(Mon, [flush]),
                          maps:remove(Owner, Os);
                      #{Owner := {Mon, Ids}} ->
                          Os#{Owner := {Mon, maps:remove(Id, Ids)}};
                      #{} ->
                          Os
                  end,
            Cs1 = case maps:get(Pid, Cs, 1) of
                      1 -> maps:remove(Pid, Cs);
                      N -> Cs#{Pid := N - 1}
                  end,
            Key = {Pool, Slot, Pid},
            {ByWorker#{Key => [Id | maps:get(Key, ByWorker, [])]},
             S#{owners := Os1, counts := Cs1}};
        [] ->
            {ByWorker, S}
    end.

%% ---- py's object functions: calls on a kept object ----

%% @doc `Obj.Method(*Args)' in the worker that holds `Obj'; options
%% `kwargs' and those of `py:call/5'.
-spec call_method(ref(), py:name(), [term()], map()) -> {ok, term()} | {error, term()}.
call_method(Ref, Method, Args, Opts) when is_list(Args), is_map(Opts) ->
    with_name(Method, fun(M) ->
                              pyport_call:call(<<"erlang._objects">>, <<"call_method">>,
                                               [Ref, M | Args], maps:get(kwargs, Opts, #{}),
                                               maps:remove(kwargs, Opts))
                      end).

%% @doc `getattr(Obj, Name)', converted.
-spec getattr(ref(), py:name()) -> {ok, term()} | {error, term()}.
getattr(Ref, Name) ->
    with_name(Name, fun(N) -> pyport_call:call(builtins, getattr, [Ref, N], #{}, #{}) end).

%% @doc The object itself, converted to a term.
-spec to_term(ref()) -> {ok, term()} | {error, term()}.
to_term(Ref) ->
    pyport_call:call(<<"erlang._objects">>, <<"identity">>, [Ref], #{}, #{}).

with_name(Name, Fun) ->
    pyport_args:checked(fun() -> Fun(pyport_args:name(Name)) end).
