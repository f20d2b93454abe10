%% Pools across nodes, with OTP peer nodes (random names: other test runs
%% may use peers on this machine at the same time): calls to a node, calls
%% to a pool anywhere in the cluster (pg membership), and a node going
%% down with calls in flight.
-module(pyport_cluster_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [membership, node_option, cluster_pool_spreads_over_nodes, local_node_counts_too,
     node_down_answers_calls_in_flight, errors].

init_per_suite(Config) ->
    ok = distributed(),
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    [{python_dir, pyport_test_util:python_dir()} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    %% Two peers serving the pool `shared'; this node does not.
    Peers = [start_peer(?config(python_dir, Config)) || _ <- [1, 2]],
    wait_until(fun() -> length(pyport_cluster:serving_nodes(shared)) =:= 2 end),
    [{peers, Peers} | Config].

end_per_testcase(_Case, Config) ->
    [catch peer:stop(P) || {P, _} <- ?config(peers, Config)],
    pyport_test_util:stop_other_pools().

%% The test node must be distributed; a random name, since other runs may
%% use this machine at the same time.
distributed() ->
    case node() of
        nonode@nohost ->
            _ = os:cmd("epmd -daemon"),
            Name = list_to_atom("pyport_ct_" ++ os:getpid() ++ "_" ++
                                    integer_to_list(erlang:unique_integer([positive]))),
            {ok, _} = net_kernel:start(Name, #{name_domain => shortnames}),
            ok;
        _ ->
            ok
    end.

start_peer(PythonDir) ->
    Ebin = filename:dirname(code:which(pyport_worker)),
    {ok, Peer, Node} = peer:start(#{name => peer:random_name(?MODULE),
                                    connection => standard_io,
                                    args => ["-pa", Ebin,
                                             "-setcookie", atom_to_list(erlang:get_cookie())]}),
    ok = peer:call(Peer, application, load, [pyport]),
    ok = peer:call(Peer, application, set_env,
                   [pyport, pools, #{default => #{size => 1, python_path => [PythonDir]},
                                     shared => #{size => 2, python_path => [PythonDir]}}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
    %% The control connection is the peer's stdio; a cluster is made of
    %% distribution connections.
    true = net_kernel:connect_node(Node),
    {Peer, Node}.

%%%===================================================================
%%% Cases
%%%===================================================================

membership(Config) ->
    [{_, B}, {_, C}] = ?config(peers, Config),
    ?assertEqual(lists:sort([{B, 2}, {C, 2}]), pyport_cluster:serving_nodes(shared)),
    ?assertEqual(lists:sort([{node(), 1}, {B, 1}, {C, 1}]), pyport_cluster:serving_nodes(default)),
    %% A pool started here joins; stopped, it leaves.
    {ok, _} = pyport:start_pool(shared, #{size => 1}),
    wait_until(fun() -> lists:member({node(), 1}, pyport_cluster:serving_nodes(shared)) end),
    ok = pyport:stop_pool(shared),
    wait_until(fun() -> not lists:keymember(node(), 1, pyport_cluster:serving_nodes(shared)) end).

node_option(Config) ->
    [{PeerB, B} | _] = ?config(peers, Config),
    {ok, #{os_pid := BPid}} = peer:call(PeerB, pyport, worker_info, [{default, 1}]),
    ?assertEqual({ok, BPid}, py:call(os, getpid, [], #{}, #{node => B})),
    ?assertEqual({ok, 3}, py:call(?F, add, [1, 2], #{}, #{node => B, pool => shared})),
    ?assertEqual({ok, 3}, py:await(py:spawn_call(?F, add, [1, 2], #{}, #{node => B}))),
    %% eval/exec there run in a worker's shared namespace.
    ok = py:exec(<<"remote_x = 5">>, #{node => B}),
    ?assertEqual({ok, 5}, py:eval(<<"remote_x">>, none, #{node => B})),
    ?assertEqual({ok, 10}, py:eval(<<"remote_x * k">>, #{k => 2}, #{node => B})),
    ?assertMatch({error, {'NameError', _}}, py:eval(<<"remote_x">>)),
    Marker = make_ref(),
    ok = py:cast(?F, remember, [Marker], #{}, #{node => B}),
    wait_until(fun() ->
                       {ok, Seen} = py:call(?F, remembered, [], #{}, #{node => B}),
                       lists:member(Marker, Seen)
               end),
    %% Errors and timeouts come back as they would locally.
    ?assertMatch({error, {'ValueError', _}}, py:call(math, sqrt, [-1], #{}, #{node => B})),
    ?assertEqual({error, timeout}, py:call(?F, sleep, [1, x], #{}, #{node => B, timeout => 100})),
    %% The local node is just the local pool.
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{node => node()})).

cluster_pool_spreads_over_nodes(Config) ->
    [{PeerB, B}, {PeerC, C}] = ?config(peers, Config),
    Opts = #{pool => {cluster, shared}},
    Pids = [begin {ok, P} = py:call(os, getpid, [], #{}, Opts), P end || _ <- lists:seq(1, 40)],
    WorkerPids = [P || Peer <- [PeerB, PeerC], S <- [1, 2],
                       {ok, #{os_pid := P}} <- [peer:call(Peer, pyport, worker_info, [{shared, S}])]],
    ?assert(lists:all(fun(P) -> lists:member(P, WorkerPids) end, Pids)),
    %% Both nodes take calls.
    NodesUsed = lists:usort([node_of(P, PeerB, PeerC, B, C) || P <- Pids]),
    ?assertEqual(lists:sort([B, C]), NodesUsed),
    %% Concurrent callers are spread by what is in flight.
    Self = self(),
    [spawn_link(fun() -> Self ! {done, py:call(?F, getpid_after, [0.2], #{}, Opts)} end)
     || _ <- lists:seq(1, 8)],
    Concurrent = [receive {done, {ok, P}} -> P after 30000 -> ct:fail(no_answer) end
                  || _ <- lists:seq(1, 8)],
    ?assertEqual(lists:sort([B, C]),
                 lists:usort([node_of(P, PeerB, PeerC, B, C) || P <- Concurrent])).

local_node_counts_too(Config) ->
    {ok, _} = pyport:start_pool(shared, #{size => 1, python_path => [?config(python_dir, Config)]}),
    wait_until(fun() -> length(pyport_cluster:serving_nodes(shared)) =:= 3 end),
    %% Idle: the local node wins the tie.
    {ok, #{os_pid := Local}} = pyport:worker_info({shared, 1}),
    ?assertEqual({ok, Local}, py:call(os, getpid, [], #{}, #{pool => {cluster, shared}})).

node_down_answers_calls_in_flight(Config) ->
    [{PeerB, B}, {_, C}] = ?config(peers, Config),
    Self = self(),
    InFlight = [spawn_link(fun() ->
                                   Self ! {done, self(), py:call(?F, sleep, [30, x], #{},
                                                                 #{node => B, pool => shared})}
                           end) || _ <- [1, 2]],
    wait_until(fun() ->
                       {ok, #{workers := Ws}} = peer:call(PeerB, pyport, pool_info, [shared]),
                       lists:sum([maps:get(in_flight, W) || W <- Ws]) =:= 2
               end),
    BVm = peer:call(PeerB, os, getpid, []),
    _ = os:cmd("kill -KILL " ++ BVm),
    [?assertEqual({error, {nodedown, B}}, receive {done, P, R} -> R after 30000 -> timeout end)
     || P <- InFlight],
    %% Later calls go to the live node.
    wait_until(fun() -> [N || {N, _} <- pyport_cluster:serving_nodes(shared)] =:= [C] end),
    [?assertMatch({ok, _}, py:call(os, getpid, [], #{}, #{pool => {cluster, shared}}))
     || _ <- lists:seq(1, 10)],
    ?assertEqual({error, {nodedown, B}}, py:call(os, getpid, [], #{}, #{node => B})).

errors(_Config) ->
    ?assertEqual({error, {no_pool, {cluster, nope}}},
                 py:call(os, getpid, [], #{}, #{pool => {cluster, nope}})),
    ?assertEqual({error, {nodedown, 'nobody@nowhere'}},
                 py:call(os, getpid, [], #{}, #{node => 'nobody@nowhere'})),
    %% A node without pyport.
    {ok, Peer, Bare} = peer:start(#{name => peer:random_name(?MODULE), connection => standard_io,
                                    args => ["-setcookie", atom_to_list(erlang:get_cookie())]}),
    try
        ?assertEqual({error, {no_pyport, Bare}}, py:call(os, getpid, [], #{}, #{node => Bare}))
    after
        peer:stop(Peer)
    end.

%%%===================================================================
%%% Helpers
%%%===================================================================

node_of(OsPid, PeerB, PeerC, B, C) ->
    case [Node || {Peer, Node} <- [{PeerB, B}, {PeerC, C}], S <- [1, 2],
                  {ok, #{os_pid := P}} <- [peer:call(Peer, pyport, worker_info, [{shared, S}])],
                  P =:= OsPid] of
        [Node] -> Node;
        [] -> unknown
    end.

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond).
