%% @doc What a worker's Python code asks of Erlang (proto/PROTOCOL.md:
%% REQUEST, NOTIFY, SCHEDULE), served for the worker's port owner.
%%
%% The owner must never block on Python's behalf, since it routes every
%% answer of its worker. Requests that only touch ETS, `pg' or a local
%% message (state, publish, send, whereis, lookups) are answered inline;
%% anything that runs user code or may wait (registered functions, RPC)
%% runs in a process of its own, which writes the REPLY to the port itself
%% (any process may write to a port). Those processes are started, bounded
%% and ended by the worker's {@link pyport_callback_keeper}.
%%
%% The worker is not trusted: before anything is served, the pool's
%% {@link pyport_grants} decide whether the operation is granted.
-module(pyport_callback).

-include_lib("kernel/include/logger.hrl").

-export([request/3, notify/2, schedule_check/2, schedule_cast/3, schedule_erlang/2,
         encode_reply/2, reply_frame/3]).
-export([caller/0]).

-export_type([context/0, action/0]).

-define(REPLY, 9).

%% What the owner passes in: its port, logger metadata naming the worker,
%% the pool's grants, the worker's callback keeper and the largest frame the
%% worker reads.
-type context() :: #{port := port(), meta := map(), grants := pyport_grants:grants(),
                     keeper := pyport_callback_keeper:keeper(),
                     max_frame_size := pos_integer()}.
-type result() :: {ok, term()} | {error, binary(), unicode:chardata(), term()}.
%% What the owner must do for a request.
-type action() :: {reply, result()}
                | {subscribe | unsubscribe, Topic :: term(), Mailbox :: pos_integer()}
                | spawned.

%% @doc Serves `[19, Id, Op, Args]'.
-spec request(pos_integer(), binary(), context()) -> action().
request(Id, Rest, Ctx) ->
    case pyport_codec:decode_fields(2, Rest) of
        {ok, [Op, Args]} when is_binary(Op), is_list(Args) ->
            Grants = maps:get(grants, Ctx),
            case pyport_grants:request(Op, Args, Grants) of
                ok ->
                    op(Op, Args, Id, Ctx);
                Refusal ->
                    pyport_grants:refused(Grants, request),
                    {reply, pyport_grants:error_reply(Grants, Refusal)}
            end;
        {ok, Fields} ->
            {reply, bad_request(<<"REQUEST needs an operation and a list of arguments">>, Fields)};
        {error, Why} ->
            {reply, bad_request(<<"undecodable REQUEST">>, Why)}
    end.

op(<<"call">>, [Name, Args], Id, Ctx) when is_list(Args) ->
    Caller = caller_of(Ctx),
    in_process(Id, Ctx, ["erlang.call(", quoted(Name), ")"], infinity,
               fun() ->
                       put('$pyport_caller', Caller),
                       call_result(pyport_registry:call(Name, Args))
               end);
op(<<"registered">>, [Name], _Id, #{grants := Grants}) ->
    %% A function the pool is not granted is not there for it.
    {reply, {ok, pyport_grants:function(Name, Grants) =:= ok
                 andalso pyport_registry:is_registered(Name)}};
op(<<"state_get">>, [Key], _Id, _Ctx) ->
    {reply, case pyport_state:fetch(Key) of
                {ok, V} -> {ok, V};
                {error, not_found} -> {ok, none}
            end};
op(<<"state_set">>, [Key, Value], _Id, _Ctx) ->
    {reply, state_result(pyport_state:store(Key, Value), Key)};
op(<<"state_delete">>, [Key], _Id, _Ctx) ->
    {reply, state_result(pyport_state:remove(Key), Key)};
op(<<"state_incr">>, [Key, N], _Id, _Ctx) when is_integer(N) ->
    {reply, state_result(pyport_state:incr(Key, N), Key)};
op(<<"state_get_multi">>, [Keys], _Id, _Ctx) when is_list(Keys) ->
    {reply, {ok, pyport_state:get_multi(Keys)}};
op(<<"state_keys">>, [Prefix], _Id, _Ctx) when is_binary(Prefix) ->
    {reply, {ok, pyport_state:keys(Prefix)}};
op(<<"state_keys">>, [none], _Id, _Ctx) ->
    %% Hornbeam's state_keys(None): every key, of any type.
    {reply, {ok, pyport_state:keys()}};
op(<<"state_clear">>, [], _Id, _Ctx) ->
    {reply, state_result(pyport_state:clear(), all)};
op(<<"publish">>, [Topic, Msg], _Id, _Ctx) ->
    {reply, {ok, pyport_pubsub:publish(Topic, Msg)}};
op(<<"publish">>, [Topic, Msg, <<"as_given">>], _Id, _Ctx) ->
    %% Hornbeam's publish: the topic is not normalised (an atom stays one).
    {reply, {ok, pyport_pubsub:broadcast(Topic, Msg)}};
op(<<"hook">>, [Sub, HookArgs], Id, Ctx) when is_binary(Sub), is_list(HookArgs) ->
    case pyport_hooks:python_request(Sub, HookArgs, Ctx) of
        {run, What, Fun} -> in_process(Id, Ctx, What, infinity, Fun);
        {reply, _} = Reply -> Reply
    end;
op(<<"subscribe">>, [Topic, Box], _Id, _Ctx) when is_integer(Box), Box > 0 ->
    {subscribe, pyport_pubsub:topic(Topic), Box};
op(<<"unsubscribe">>, [Topic, Box], _Id, _Ctx) when is_integer(Box), Box > 0 ->
    {unsubscribe, pyport_pubsub:topic(Topic), Box};
op(<<"send">>, [Dest, Msg], _Id, _Ctx) ->
    {reply, send(Dest, Msg)};
op(<<"whereis">>, [Name], _Id, _Ctx) ->
    {reply, {ok, case existing_atom(Name) of
                     {ok, A} -> whereis_or_none(A);
                     error -> none
                 end}};
op(<<"node">>, [], _Id, _Ctx) ->
    {reply, {ok, node()}};
op(<<"nodes">>, [], _Id, _Ctx) ->
    {reply, {ok, nodes()}};
op(<<"rpc_call">>, [Node, M, F, Args, Timeout0], Id, Ctx)
  when is_list(Args), is_integer(Timeout0), Timeout0 >= 0; is_list(Args), Timeout0 =:= none ->
    Timeout = case Timeout0 of none -> infinity; _ -> Timeout0 end,
    case rpc_target(Node, M, F) of
        {ok, N, Mod, Fun} when N =:= node() ->
            %% Run in the runner itself (erpc would start a process of its
            %% own for a timeout, which outlives a killed runner); the
            %% keeper ends it at its timeout.
            in_process(Id, Ctx, rpc_what(<<"rpc_call">>, N, Mod, Fun), Timeout,
                       fun() -> rpc_result(N, Mod, Fun, Args, infinity) end);
        {ok, N, Mod, Fun} ->
            in_process(Id, Ctx, rpc_what(<<"rpc_call">>, N, Mod, Fun), infinity,
                       fun() -> rpc_result(N, Mod, Fun, Args, Timeout) end);
        {error, _, _, _} = Error ->
            {reply, Error}
    end;
op(<<"handle">>, [Verb, Token, HArgs], Id, Ctx) when is_list(HArgs) ->
    %% Channels, buffers, shared dicts: reached only through their token.
    case pyport_handles:request(Verb, Token, HArgs) of
        {wait, What, Fun} -> in_process(Id, Ctx, What, infinity, Fun);
        {reply, _} = Reply -> Reply
    end;
op(Op, Args, _Id, _Ctx) ->
    {reply, bad_request(<<"unknown request or wrong arguments">>, {Op, Args})}.

%% @doc In a registered function run for `erlang.call' from Python: the
%% worker whose port the call came through, as its owner knows it (not as
%% the worker says), so a function can check who asks; `undefined'
%% elsewhere.
-spec caller() -> #{pool := atom(), slot := pos_integer(), os_pid := integer() | undefined,
                    port := port()} | undefined.
caller() ->
    get('$pyport_caller').

caller_of(#{port := Port, meta := #{pyport_pool := Pool, pyport_slot := Slot} = Meta}) ->
    #{pool => Pool, slot => Slot, os_pid => maps:get(os_pid, Meta, undefined), port => Port};
caller_of(_) ->
    undefined.

%% @doc Serves `[20, 0, Op, Args]': what needs no answer. The owner ends
%% the subscriptions of a mailbox when told to.
-spec notify(binary(), context()) -> ok | {unsubscribe_all, pos_integer()}.
notify(Rest, #{grants := Grants, meta := Meta} = Ctx) ->
    case pyport_codec:decode_fields(2, Rest) of
        {ok, [Op, Args]} when is_binary(Op) ->
            case pyport_grants:notify(Op, Args, Grants) of
                ok ->
                    notify_op(Op, Args, Ctx);
                Refusal ->
                    pyport_grants:refused(Grants, {notify, Refusal, Meta})
            end;
        Other ->
            ?LOG_WARNING("pyport: unknown NOTIFY from the worker: ~0tp", [Other], Meta)
    end.

notify_op(<<"log">>, [Level, Message, Meta], Ctx) ->
    log(Level, Message, Meta, Ctx);
notify_op(<<"span">>, [Span], Ctx) ->
    pyport_trace:record(Span, maps:get(meta, Ctx));
notify_op(<<"cast">>, [Name, Args], Ctx) when is_list(Args) ->
    run_cast(["erlang.cast(", quoted(Name), ")"], Ctx,
             fun() ->
                     case pyport_registry:call(Name, Args) of
                         {ok, _} -> ok;
                         Error -> ?LOG_WARNING("pyport: erlang.cast(~tp) failed: ~tp",
                                               [Name, Error], maps:get(meta, Ctx))
                     end
             end);
notify_op(<<"rpc_cast">>, [Node, M, F, Args], Ctx) when is_list(Args) ->
    case rpc_target(Node, M, F) of
        {ok, N, Mod, Fun} when N =:= node() ->
            %% Counted against the worker's callbacks like any local process.
            run_cast(rpc_what(<<"rpc_cast">>, N, Mod, Fun), Ctx,
                     fun() -> erlang:apply(Mod, Fun, Args) end);
        {ok, N, Mod, Fun} ->
            erpc:cast(N, Mod, Fun, Args);
        {error, _, Message, _} ->
            ?LOG_WARNING("pyport: rpc_cast: ~ts", [Message], maps:get(meta, Ctx))
    end;
notify_op(<<"hook">>, [Sub, HookArgs], Ctx) when is_binary(Sub), is_list(HookArgs) ->
    pyport_hooks:python_notify(Sub, HookArgs, Ctx);
notify_op(<<"unsubscribe_all">>, [Box], _Ctx) when is_integer(Box) ->
    {unsubscribe_all, Box};
notify_op(<<"cancel">>, [Id], #{keeper := Keeper, port := Port}) when is_integer(Id), Id > 0 ->
    %% Python gave up on request Id (interrupted, timed out, cancelled):
    %% whatever serves it is ended.
    pyport_callback_keeper:cancel(Keeper, Port, Id);
notify_op(Op, Args, Ctx) ->
    ?LOG_WARNING("pyport: unknown NOTIFY from the worker: ~0tp",
                 [{Op, Args}], maps:get(meta, Ctx)).

%% @doc The grant check of a `[21, Id, Kind, Payload]' SCHEDULE frame: a
%% registered function the pool is not granted is refused (the request is
%% answered with the error).
-spec schedule_check(binary(), context()) -> ok | {error, {'PermissionError', binary()}}.
schedule_check(_Rest, #{grants := all}) ->
    ok;
schedule_check(Rest, #{grants := Grants}) ->
    case pyport_codec:decode_fields(2, Rest) of
        {ok, [<<"erlang">>, [Name | _]]} ->
            case pyport_grants:function(Name, Grants) of
                ok ->
                    ok;
                Refusal ->
                    pyport_grants:refused(Grants, request),
                    {error, _, Message, _} = pyport_grants:error_reply(Grants, Refusal),
                    {error, {'PermissionError', Message}}
            end;
        _ ->
            ok                          % not a function: the owner handles it
    end.

%% @doc `erlang.schedule(Name, *Args)' whose caller is gone (or a cast):
%% run for nobody, as a counted callback of the worker.
-spec schedule_cast(term(), [term()], context()) -> ok.
schedule_cast(Name, Args, Ctx) ->
    run_cast(["erlang.schedule(", quoted(Name), ")"], Ctx,
             fun() -> pyport_registry:call(Name, Args) end).

%% @doc Runs `erlang.schedule(Name, *Args)' for a caller: the value of the
%% registered function is the call's result.
-spec schedule_erlang(term(), [term()]) -> pyport_registry:result().
schedule_erlang(Name, Args) ->
    pyport_registry:call(Name, Args).

%% @doc The REPLY frame for a result, as {@link encode_reply/2}, that the
%% worker can read: an answer over the pool's `max_frame_size' becomes an
%% error reply naming its size.
-spec reply_frame(pos_integer(), result(), context() | pos_integer()) -> iodata().
reply_frame(Id, Result, #{max_frame_size := Max}) ->
    reply_frame(Id, Result, Max);
reply_frame(Id, Result, Max) ->
    Frame = encode_reply(Id, Result),
    case iolist_size(Frame) of
        Size when Size > Max ->
            encode_reply(Id, {error, <<"ValueError">>,
                              io_lib:format("the answer is ~b bytes encoded, over the worker's "
                                            "max_frame_size (~b bytes)", [Size, Max]),
                              {frame_too_large, Size, Max}});
        _ ->
            Frame
    end.

%% @doc The REPLY frame for a result (an unconvertible value becomes an
%% error reply naming it).
-spec encode_reply(pos_integer(), result()) -> iodata().
encode_reply(Id, {ok, Value}) ->
    try pyport_codec:encode_frame(?REPLY, Id, [<<"ok">>, Value])
    catch error:{unsupported_term, T} ->
            encode_reply(Id, {error, <<"TypeError">>,
                              io_lib:format("cannot convert ~0tp (in the answer) to a Python value",
                                            [T]), none})
    end;
encode_reply(Id, {error, Type, Message, Reason}) ->
    Msg = unicode:characters_to_binary(Message),
    try pyport_codec:encode_frame(?REPLY, Id, [<<"error">>, [Type, Msg, Reason]])
    catch error:{unsupported_term, _} ->
            %% The reason as text: it still says what happened.
            Text = unicode:characters_to_binary(io_lib:format("~0tp", [Reason])),
            pyport_codec:encode_frame(?REPLY, Id, [<<"error">>, [Type, Msg, Text]])
    end.

%%%===================================================================
%%% Internals
%%%===================================================================

%% Runs Fun in a process of its own, watched by the worker's keeper, which
%% writes the REPLY to the port (checked against max_frame_size). The port
%% may be gone by then (the worker restarted): nobody waits any more.
in_process(Id, #{port := Port, keeper := Keeper, max_frame_size := Max}, What, Timeout, Fun) ->
    Run = fun() ->
                  Frame = reply_frame(Id, Fun(), Max),
                  try port_command(Port, pyport_framer:frame(Frame))
                  catch error:badarg -> ok
                  end
          end,
    case pyport_callback_keeper:run(Keeper, {Port, Id}, What, Timeout, Run) of
        ok -> spawned;
        {error, too_many} -> {reply, too_many(What, Keeper)}
    end.

run_cast(What, #{port := Port, keeper := Keeper, meta := Meta}, Fun) ->
    case pyport_callback_keeper:run(Keeper, {cast, Port}, What, infinity, Fun) of
        ok ->
            ok;
        {error, too_many} ->
            {error, _, Message, _} = too_many(What, Keeper),
            ?LOG_WARNING("pyport: ~ts; dropped", [Message], Meta)
    end.

too_many(What, {_, _, Max}) ->
    {error, <<"ErlangError">>,
     io_lib:format("~ts refused: this worker has ~b Erlang callback processes running "
                   "already (max_callbacks)", [What, Max]),
     {too_many_callbacks, Max}}.

%% A name from Python, for messages: bounded, never a new atom.
quoted(Name) when is_atom(Name) ->
    quoted(atom_to_binary(Name, utf8));
quoted(Name) when is_binary(Name), byte_size(Name) =< 200 ->
    case unicode:characters_to_binary(Name) of
        Name -> ["'", Name, "'"];
        _ -> io_lib:format("~0p", [Name])
    end;
quoted(Name) ->
    io_lib:format("~0tp", [Name], [{chars_limit, 200}]).

rpc_what(Op, Node, M, F) ->
    io_lib:format("~ts ~p:~p on ~p", [Op, M, F, Node]).

call_result({ok, V}) ->
    {ok, V};
call_result({error, {unknown_function, Name}}) ->
    {error, <<"UnknownFunctionError">>,
     ["no Erlang function is registered as '", Name, "' (py:register_function/2,3)"], Name};
call_result({error, {erlang_function_failed, Name, {Class, Reason}}}) ->
    {error, <<"ErlangError">>,
     io_lib:format("Erlang function '~ts' failed: ~p:~0tp", [Name, Class, Reason]),
     {Class, Reason}}.

state_result(ok, _Key) -> {ok, none};
state_result({ok, V}, _Key) -> {ok, V};
state_result({error, not_an_integer}, Key) ->
    {error, <<"TypeError">>, io_lib:format("the value of ~0tp is not an integer", [Key]), Key};
state_result({error, {state_full, Max}}, Key) ->
    {error, <<"StateFullError">>,
     io_lib:format("the shared state is full (max_state_entries = ~b); cannot add ~0tp",
                   [Max, Key]), Max}.

send(Pid, Msg) when is_pid(Pid) ->
    case node(Pid) =:= node() andalso not is_process_alive(Pid) of
        true ->
            {error, <<"ProcessError">>, io_lib:format("process ~p is not alive", [Pid]), Pid};
        false ->
            Pid ! Msg,
            {ok, none}
    end;
send({Name, Node} = Dest, Msg) ->
    case {existing_atom(Name), existing_atom(Node)} of
        {{ok, N}, {ok, Nd}} when Nd =:= node() ->
            send(N, Msg);
        {{ok, N}, {ok, Nd}} ->
            {N, Nd} ! Msg,
            {ok, none};
        _ ->
            {error, <<"ProcessError">>, io_lib:format("no process ~0tp is known", [Dest]), Dest}
    end;
send(Name, Msg) ->
    case existing_atom(Name) of
        {ok, A} ->
            case whereis(A) of
                undefined ->
                    {error, <<"ProcessError">>,
                     io_lib:format("no process is registered as ~0tp", [A]), A};
                Pid ->
                    Pid ! Msg,
                    {ok, none}
            end;
        error ->
            {error, <<"ProcessError">>,
             io_lib:format("cannot send to ~0tp: not a pid or a registered name", [Name]), Name}
    end.

whereis_or_none(A) ->
    case whereis(A) of
        undefined -> none;
        Pid -> Pid
    end.

%% Names from Python become atoms only if the atom exists already: hostile
%% code must not fill the atom table. A registered process or a connected
%% node has its atom.
existing_atom(A) when is_atom(A) -> {ok, A};
existing_atom(B) when is_binary(B) ->
    try {ok, binary_to_existing_atom(B, utf8)}
    catch error:badarg -> error
    end;
existing_atom(_) -> error.

%% The node must be known here (its atom exists: it is or was connected);
%% module and function names become atoms, since they may exist only on
%% the remote node.
rpc_target(Node, M, F) ->
    case existing_atom(Node) of
        {ok, N} ->
            case {to_atom(M), to_atom(F)} of
                {{ok, Mod}, {ok, Fun}} -> {ok, N, Mod, Fun};
                {{error, {atom_limit, _, _} = Why}, _} -> atom_limit_error(Why);
                {_, {error, {atom_limit, _, _} = Why}} -> atom_limit_error(Why);
                _ -> {error, <<"ValueError">>, <<"module and function must be strings">>, {M, F}}
            end;
        error ->
            {error, <<"ConnectionError">>,
             io_lib:format("node ~0tp is not known here (never connected)", [Node]), Node}
    end.

%% A name that is not an atom yet becomes one only within the pool's budget
%% of new atoms (pyport_atoms; this runs in the worker's port owner, whose
%% limits are its pool's).
to_atom(A) when is_atom(A) -> {ok, A};
to_atom(B) when is_binary(B) ->
    case pyport_atoms:to_atom(B, maps:get(atoms, pyport_limits:process())) of
        {ok, A} -> {ok, A};
        {error, {atom_limit, _, _}} = Error -> Error;
        {error, bad_atom} -> error
    end;
to_atom(_) -> error.

atom_limit_error({atom_limit, Name, Limit} = Why) ->
    {error, <<"ErlangError">>,
     io_lib:format("cannot make the atom '~ts': the budget of ~b new atoms is spent "
                   "(max_new_atoms)", [Name, Limit]), Why}.

rpc_result(Node, M, F, Args, Timeout) ->
    try erpc:call(Node, M, F, Args, Timeout) of
        V -> {ok, V}
    catch
        error:{erpc, timeout} ->
            {error, <<"TimeoutError">>,
             io_lib:format("~p:~p on ~p did not answer within ~p ms", [M, F, Node, Timeout]),
             timeout};
        error:{erpc, noconnection} ->
            {error, <<"ConnectionError">>, io_lib:format("node ~p cannot be reached", [Node]),
             noconnection};
        error:{exception, Reason, _Stack} ->
            {error, <<"ErlangError">>,
             io_lib:format("~p:~p on ~p failed: error:~0tp", [M, F, Node, Reason]),
             {error, Reason}};
        exit:{exception, Reason} ->
            {error, <<"ErlangError">>,
             io_lib:format("~p:~p on ~p exited: ~0tp", [M, F, Node, Reason]), {exit, Reason}};
        throw:Value ->
            {error, <<"ErlangError">>,
             io_lib:format("~p:~p on ~p threw ~0tp", [M, F, Node, Value]), {throw, Value}};
        error:{erpc, Other} ->
            {error, <<"ErlangError">>, io_lib:format("rpc to ~p failed: ~0tp", [Node, Other]),
             Other}
    end.

log(Level, Message, Meta, Ctx) ->
    L = pyport_logging:level(Level),
    Extra = case Meta of
                #{} -> maps:fold(fun(K, V, Acc) -> Acc#{meta_key(K) => V} end, #{}, Meta);
                _ -> #{}
            end,
    ?LOG(L, "~ts", [Message], maps:merge(Extra, (maps:get(meta, Ctx))#{domain => [pyport, python]})).

%% The metadata keys the Python handler sends, as atoms; others stay binaries.
meta_key(<<"logger">>) -> python_logger;
meta_key(<<"module">>) -> python_module;
meta_key(<<"function">>) -> python_function;
meta_key(<<"line">>) -> python_line;
meta_key(K) -> K.

bad_request(What, Detail) ->
    {error, <<"ValueError">>, io_lib:format("~ts: ~0tp", [What, Detail]), none}.
