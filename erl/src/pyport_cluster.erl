%% @doc Pools across Erlang nodes.
%%
%% Every worker gen_server joins the `pg' group `{pyport_pool, Pool}' of
%% the `pyport' scope (started by {@link pyport_sup}), so any connected
%% node running pyport sees which nodes serve a pool and with how many
%% workers. A call for another node runs there through `erpc': the remote
%% node routes it to its own least-loaded worker, and the answer comes back
%% to the caller. When the node goes down, a call in flight there is
%% answered `{error, {nodedown, Node}}'; `pg' drops that node's members, so
%% later `{cluster, Pool}' calls go to live nodes.
%%
%% A remote call answers at the caller's own timeout, whatever the other
%% node does (a node that is frozen or slow to be noticed as down): the
%% remote node is given the same timeout, and the caller stops waiting when
%% it passes. `default' is the pool's `call_timeout' as configured on the
%% calling node, or the default `call_timeout' when the pool is not
%% configured here.
%%
%% `{cluster, Pool}' picks the node with the fewest requests in flight per
%% worker: exact for the local node (its counters), and for a remote node
%% the requests this node has in flight there, which is what one node can
%% know without asking. Ties go to the local node, else to a random one of
%% the tied nodes.
-module(pyport_cluster).

-export([scope/0, join/1, serving_nodes/1, pick_node/1, call/5, start/5, await/2, cast/3,
         inflight_table/0]).

-export_type([handle/0]).

-define(SCOPE, pyport).
-define(INFLIGHT, pyport_remote_inflight).
-type handle() :: {pyport_remote, erpc:request_id(), node(), integer() | infinity,
                   Owner :: pid()}.

%% @doc The pg scope pyport's pools join.
-spec scope() -> atom().
scope() ->
    ?SCOPE.

%% @doc Creates the table of requests in flight per remote node; the
%% calling process (pyport_sup) owns it.
-spec inflight_table() -> ok.
inflight_table() ->
    _ = ets:new(?INFLIGHT, [named_table, public, set, {write_concurrency, true}]),
    ok.

%% @doc The calling worker joins its pool's group.
-spec join(pyport_config:pool_name()) -> ok.
join(Pool) ->
    case whereis(?SCOPE) of
        undefined -> ok;                        % pyport_sup not running (tests of parts)
        _ -> pg:join(?SCOPE, {pyport_pool, Pool}, self())
    end.

%% @doc The nodes serving `Pool' and how many workers each has there.
-spec serving_nodes(pyport_config:pool_name()) -> [{node(), pos_integer()}].
serving_nodes(Pool) ->
    Members = try pg:get_members(?SCOPE, {pyport_pool, Pool})
              catch error:badarg -> []           % no scope
              end,
    Counts = lists:foldl(fun(P, Acc) -> maps:update_with(node(P), fun(N) -> N + 1 end, 1, Acc) end,
                         #{}, Members),
    lists:sort(maps:to_list(Counts)).

%% @doc The node a `{cluster, Pool}' call goes to.
-spec pick_node(pyport_config:pool_name()) -> {ok, node()} | {error, {no_pool, term()}}.
pick_node(Pool) ->
    case serving_nodes(Pool) of
        [] ->
            {error, {no_pool, {cluster, Pool}}};
        Nodes ->
            Ranked = lists:sort([{load(Pool, Node, Workers), Node =/= node(), rand:uniform(), Node}
                                 || {Node, Workers} <- Nodes]),
            {_, _, _, Node} = hd(Ranked),
            {ok, Node}
    end.

load(Pool, Node, Workers) when Node =:= node() ->
    case pyport_pool:info(Pool) of
        {ok, #{counters := C, size := Size}} ->
            lists:sum([counters:get(C, Slot) || Slot <- lists:seq(1, Size)]) / Workers;
        {error, _} ->
            0
    end;
load(_Pool, Node, Workers) ->
    inflight(Node) / Workers.

inflight(Node) ->
    try ets:lookup_element(?INFLIGHT, Node, 2)
    catch error:badarg -> 0
    end.

%% @doc Runs `pyport_request:call(Target, Kind, Fields, Timeout)' on Node;
%% answers within `Timeout' here too.
-spec call(node(), pyport_request:target(), pos_integer(), [term()], timeout() | default) ->
          pyport_request:result().
call(Node, Target, Kind, Fields, Timeout) ->
    track(Node, 1),
    try
        await(start(Node, Target, Kind, Fields, Timeout), deadline)
    after
        track(Node, -1)
    end.

%% @doc Starts the same on Node; {@link await/2} collects the answer.
-spec start(node(), pyport_request:target(), pos_integer(), [term()], timeout() | default) ->
          handle().
start(Node, Target, Kind, Fields, Timeout0) ->
    Timeout = timeout(Target, Timeout0),
    ReqId = erpc:send_request(Node, pyport_request, call, [Target, Kind, Fields, Timeout]),
    {pyport_remote, ReqId, Node, pyport_request:deadline(Timeout), self()}.

%% @doc Waits for a request started with {@link start/5}: at most until its
%% deadline, or `Timeout' ms (`deadline' for the deadline alone). At the
%% end of the wait the request is abandoned: no answer arrives later.
-spec await(handle(), timeout() | deadline) -> pyport_request:result().
await({pyport_remote, ReqId, Node, Deadline0, _Owner}, Timeout) ->
    Deadline = case Timeout of
                   deadline -> Deadline0;
                   _ -> pyport_request:deadline(Timeout)
               end,
    try wait(ReqId, Deadline)
    catch
        Class:Reason -> remote_error(Node, Class, Reason)
    end.

%% erpc takes at most 2^32-1 ms per wait: longer ones go in pieces, and
%% the last one abandons the request.
wait(ReqId, Deadline) ->
    case pyport_request:wait_ms(Deadline) of
        Ms when Ms =:= infinity; Ms < 16#FFFFFFFF ->
            erpc:receive_response(ReqId, Ms);
        Ms ->
            case erpc:wait_response(ReqId, Ms) of
                {response, Result} -> Result;
                no_response -> wait(ReqId, Deadline)
            end
    end.

%% @doc A cast run on Node.
-spec cast(node(), pyport_request:target(), [term()]) -> ok.
cast(Node, Target, Fields) ->
    erpc:cast(Node, pyport_request, cast, [Target, Fields]).

%% The timeout both nodes use: `default' is resolved here, so that the
%% caller knows when to stop waiting.
timeout(Target, default) ->
    case pyport_pool:info(pool_of(Target)) of
        {ok, #{call_timeout := T}} -> T;
        {error, _} -> maps:get(call_timeout, pyport_config:defaults())
    end;
timeout(_Target, Timeout) ->
    Timeout.

pool_of({pool, Pool}) -> Pool;
pool_of({slot, Pool, _}) -> Pool;
pool_of({shard, Pool, _}) -> Pool.

track(Node, Incr) ->
    try ets:update_counter(?INFLIGHT, Node, Incr, {Node, 0}) of
        _ -> ok
    catch
        error:badarg -> ok                      % no table: pyport_sup not running
    end.

remote_error(Node, error, {erpc, noconnection}) -> {error, {nodedown, Node}};
remote_error(_Node, error, {erpc, timeout}) -> {error, timeout};
remote_error(Node, error, {exception, undef, _}) -> {error, {no_pyport, Node}};
remote_error(Node, error, {exception, Reason, _}) -> {error, {remote_exception, Node, Reason}};
remote_error(Node, exit, {exception, Reason}) -> {error, {remote_exception, Node, Reason}};
remote_error(Node, exit, {signal, Reason}) -> {error, {remote_exception, Node, Reason}};
remote_error(Node, throw, Value) -> {error, {remote_exception, Node, {throw, Value}}};
remote_error(Node, Class, Reason) -> {error, {remote_exception, Node, {Class, Reason}}}.
