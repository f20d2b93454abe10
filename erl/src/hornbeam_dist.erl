%% @doc Hornbeam's `hornbeam_dist' on pyport: distribution for Erlang
%% callers, with Hornbeam's return shapes. Names may be atoms, binaries or
%% strings; text becomes an atom by pyport's atom rule (docs/type-mapping.md,
%% `pyport_atoms', the node's `max_new_atoms' budget), never without bound.
-module(hornbeam_dist).

-export([rpc_call/5, rpc_cast/4, nodes/0, connected_nodes/0, node/0, ping/1, connect/1,
         disconnect/1]).

-type name() :: atom() | binary() | string().

%% @doc `Module:Function(Args...)' on `Node': `{ok, Result}', or `{error,
%% Reason}' (`{badrpc, Reason}' of `rpc:call/5', or a name that cannot be
%% an atom).
-spec rpc_call(name(), name(), name(), [term()], timeout()) -> {ok, term()} | {error, term()}.
rpc_call(Node, Module, Function, Args, Timeout) ->
    case atoms([Node, Module, Function]) of
        {ok, [N, M, F]} ->
            case rpc:call(N, M, F, Args, Timeout) of
                {badrpc, Reason} -> {error, Reason};
                Result -> {ok, Result}
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc Runs `Module:Function(Args...)' on `Node' without waiting.
-spec rpc_cast(name(), name(), name(), [term()]) -> ok.
rpc_cast(Node, Module, Function, Args) ->
    case atoms([Node, Module, Function]) of
        {ok, [N, M, F]} -> rpc:cast(N, M, F, Args), ok;
        {error, _} -> ok
    end.

%% @doc Every node known here, connected or not.
-spec nodes() -> [node()].
nodes() ->
    erlang:nodes(known).

%% @doc The nodes connected now.
-spec connected_nodes() -> [node()].
connected_nodes() ->
    erlang:nodes(connected).

%% @doc This node.
-spec node() -> node().
node() ->
    erlang:node().

%% @doc `pong' if `Node' answers, else `pang'.
-spec ping(name()) -> pong | pang.
ping(Node) ->
    case atoms([Node]) of
        {ok, [N]} -> net_adm:ping(N);
        {error, _} -> pang
    end.

%% @doc Connects to `Node'.
-spec connect(name()) -> boolean() | ignored.
connect(Node) ->
    case atoms([Node]) of
        {ok, [N]} -> net_kernel:connect_node(N);
        {error, _} -> false
    end.

%% @doc Disconnects from `Node'.
-spec disconnect(name()) -> boolean() | ignored.
disconnect(Node) ->
    case atoms([Node]) of
        {ok, [N]} -> erlang:disconnect_node(N);
        {error, _} -> false
    end.

atoms(Names) ->
    atoms(Names, []).

atoms([], Acc) ->
    {ok, lists:reverse(Acc)};
atoms([A | Rest], Acc) when is_atom(A) ->
    atoms(Rest, [A | Acc]);
atoms([L | Rest], Acc) when is_list(L) ->
    try unicode:characters_to_binary(L) of
        B when is_binary(B) -> atoms([B | Rest], Acc);
        _ -> {error, {invalid_name, L}}
    catch error:_ -> {error, {invalid_name, L}}
    end;
atoms([B | Rest], Acc) when is_binary(B) ->
    case pyport_atoms:to_atom(B, pyport_atoms:node_budget()) of
        {ok, A} -> atoms(Rest, [A | Acc]);
        {error, Why} -> {error, Why}
    end;
atoms([Other | _], _Acc) ->
    {error, {invalid_name, Other}}.
