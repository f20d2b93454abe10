%% Python and Erlang distribution: rpc_call/rpc_cast to a second node
%% started with OTP's peer module, nodes()/node(), a node that is down,
%% and pub/sub topics that span the cluster.
%%
%% The test node becomes distributed here (a random short name: other test
%% runs may use epmd on this machine at the same time), unless it already is.
-module(pyport_dist_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, erl_funcs).

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [node_and_nodes, rpc_call_to_the_peer, remote_crash_carries_the_reason,
     remote_timeout_is_a_timeout_error, rpc_cast_to_the_peer, unknown_node_is_a_connection_error,
     topics_span_the_cluster, node_that_is_down_is_a_connection_error].

init_per_suite(Config) ->
    Started = case is_alive() of
                  true ->
                      false;
                  false ->
                      _ = os:cmd("epmd -daemon"),
                      Name = list_to_atom("pyport_dist_" ++ os:getpid() ++ "_" ++
                                              integer_to_list(erlang:unique_integer([positive]))),
                      {ok, _} = net_kernel:start([Name, shortnames]),
                      true
              end,
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_erlang_SUITE_data"),
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Data]}}),
    {ok, _} = application:ensure_all_started(pyport),
    %% The peer can run this suite's functions and has a pg scope pyport.
    Paths = lists:append([["-pa", filename:dirname(code:which(M))] || M <- [?MODULE, pyport]]),
    {ok, Peer, Node} = peer:start(#{name => peer:random_name(?MODULE), args => Paths}),
    {ok, _} = erpc:call(Node, pg, start, [pyport]),
    [{peer, Peer}, {node, Node}, {started_distribution, Started} | Config].

end_per_suite(Config) ->
    catch peer:stop(?config(peer, Config)),
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    case ?config(started_distribution, Config) of
        true -> net_kernel:stop();
        false -> ok
    end,
    ok.

node_and_nodes(Config) ->
    Node = ?config(node, Config),
    ?assertEqual({ok, node()}, py:eval(<<"__import__('erlang').node()">>)),
    {ok, Nodes} = py:eval(<<"__import__('hornbeam_erlang').nodes()">>),
    ?assert(lists:member(Node, Nodes)),
    %% Node names are atoms, which Python sees as str.
    ?assertEqual({ok, true}, py:eval(<<"all(isinstance(n, str) for n in __import__('erlang').nodes())">>)).

rpc_call_to_the_peer(Config) ->
    Node = ?config(node, Config),
    ?assertEqual({ok, Node}, py:eval(<<"__import__('erlang').rpc_call(n, 'erlang', 'node', [])">>,
                                     #{n => Node})),
    ?assertEqual({ok, [3, 2, 1]},
                 py:eval(<<"__import__('hornbeam_erlang').rpc_call(n, 'lists', 'reverse', [[1, 2, 3]], timeout_ms=5000)">>,
                         #{n => Node})),
    %% The node as a string works as well as the atom.
    ?assertEqual({ok, 6}, py:eval(<<"__import__('erlang').rpc_call(str(n), 'lists', 'sum', [[1, 2, 3]])">>,
                                  #{n => Node})).

remote_crash_carries_the_reason(Config) ->
    Node = ?config(node, Config),
    {ok, [<<"ErlangError">>, Msg, {error, badarith}]} =
        py:eval(<<"__import__('erl_funcs').error_of(__import__('erlang').rpc_call, n, 'erlang', '/', [1, 0])">>,
                #{n => Node}),
    ?assertMatch({_, _}, binary:match(Msg, atom_to_binary(Node))),
    ?assertMatch({ok, [<<"ErlangError">>, _, {exit, bye}]},
                 py:eval(<<"__import__('erl_funcs').error_of(__import__('erlang').rpc_call, n, 'erlang', 'exit', [r])">>,
                         #{n => Node, r => bye})),
    ?assertMatch({ok, [<<"ErlangError">>, _, {throw, ball}]},
                 py:eval(<<"__import__('erl_funcs').error_of(__import__('erlang').rpc_call, n, 'erlang', 'throw', [r])">>,
                         #{n => Node, r => ball})).

remote_timeout_is_a_timeout_error(Config) ->
    Node = ?config(node, Config),
    {ok, [<<"RpcTimeoutError">>, _, timeout]} =
        py:eval(<<"__import__('erl_funcs').error_of(__import__('erlang').rpc_call, n, 'timer', 'sleep', [5000], timeout_ms=50)">>,
                #{n => Node}),
    %% Hornbeam's code catches it as TimeoutError.
    ?assertEqual({ok, true},
                 py:eval(<<"isinstance(__import__('erlang').RpcTimeoutError('x'), TimeoutError)">>)).

rpc_cast_to_the_peer(Config) ->
    Node = ?config(node, Config),
    ?assertEqual({ok, none},
                 py:eval(<<"__import__('erlang').rpc_cast(n, 'erlang', 'send', [p, 'from the peer'])">>,
                         #{n => Node, p => self()})),
    receive <<"from the peer">> -> ok after 10000 -> ct:fail(no_cast) end.

unknown_node_is_a_connection_error(_Config) ->
    {ok, [<<"NodeDownError">>, Msg, <<"never_seen_node_xyz@nowhere">>]} =
        py:eval(<<"__import__('erl_funcs').error_of(__import__('erlang').rpc_call, 'never_seen_node_xyz@nowhere', 'erlang', 'node', [])">>),
    ?assertMatch({_, _}, binary:match(Msg, <<"not known">>)),
    ?assertEqual({ok, true}, py:eval(<<"isinstance(__import__('erlang').NodeDownError('x'), ConnectionError)">>)).

topics_span_the_cluster(Config) ->
    Node = ?config(node, Config),
    Topic = <<"cluster-topic">>,
    Remote = erlang:spawn(Node, ?MODULE, forwarder, [self(), Topic]),
    receive {subscribed, Remote} -> ok after 10000 -> ct:fail(not_subscribed) end,
    %% pg spreads the membership to this node.
    wait_until(fun() -> py:publish(Topic, probe) =:= 1 end),
    receive {forwarded, probe} -> ok after 10000 -> ct:fail(no_probe) end,
    ?assertEqual({ok, 1}, py:call(?F, publish, [Topic, #{from => python}])),
    receive {forwarded, #{from := python}} -> ok after 10000 -> ct:fail(no_delivery) end.

%% On the peer: subscribes to Topic and sends what it gets to Parent.
forwarder(Parent, Topic) ->
    ok = pyport_pubsub:subscribe(Topic),
    Parent ! {subscribed, self()},
    forward(Parent).

forward(Parent) ->
    receive {pubsub, _Topic, Msg} -> Parent ! {forwarded, Msg} end,
    forward(Parent).

node_that_is_down_is_a_connection_error(Config) ->
    Node = ?config(node, Config),
    ok = peer:stop(?config(peer, Config)),
    wait_until(fun() -> not lists:member(Node, nodes()) end),
    {ok, [<<"NodeDownError">>, Msg, noconnection]} =
        py:eval(<<"__import__('erl_funcs').error_of(__import__('erlang').rpc_call, n, 'erlang', 'node', [])">>,
                #{n => Node}),
    ?assertMatch({_, _}, binary:match(Msg, <<"cannot be reached">>)).

wait_until(Fun) ->
    wait_until(Fun, 200).

wait_until(Fun, 0) ->
    ?assert(Fun());
wait_until(Fun, N) ->
    case Fun() of
        true -> ok;
        false -> timer:sleep(50), wait_until(Fun, N - 1)
    end.
