%% hornbeam_pubsub (Hornbeam's Erlang pub/sub API, on pyport_pubsub) and
%% hornbeam_erlang.publish / get_members / get_local_members: topics are
%% used as given.
-module(hornbeam_pubsub_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(M, hb_pubsub).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [subscribe_publish_receive, topics_are_used_as_given, subscribed_twice,
     unsubscribe_is_always_ok, subscribe_another_process, members,
     python_publish_reaches_erlang_subscribers, python_atom_topic_stays_an_atom,
     python_atom_topics_mint_no_atom, python_members, erlang_publish_reaches_python].

init_per_suite(Config) ->
    _ = application:load(pyport),
    Data = ?config(data_dir, Config),
    application:set_env(pyport, pools, #{default => #{size => 1, python_path => [Data]},
                                         no_atoms => #{size => 1, python_path => [Data],
                                                       max_new_atoms => 0}}),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

topic() ->
    <<"t", (integer_to_binary(erlang:unique_integer([positive])))/binary>>.

received(Topic) ->
    receive {pubsub, Topic, Msg} -> Msg after 5000 -> ct:fail({nothing_on, Topic}) end.

nothing(Topic) ->
    receive {pubsub, Topic, Msg} -> ct:fail({unexpected, Topic, Msg}) after 100 -> ok end.

subscribe_publish_receive(_Config) ->
    T = topic(),
    ?assertEqual(0, hornbeam_pubsub:publish(T, nobody)),
    ?assertEqual(ok, hornbeam_pubsub:subscribe(T)),
    ?assertEqual(1, hornbeam_pubsub:publish(T, hello)),
    ?assertEqual(hello, received(T)),
    ok = hornbeam_pubsub:unsubscribe(T),
    ?assertEqual(0, hornbeam_pubsub:publish(T, again)),
    nothing(T).

topics_are_used_as_given(_Config) ->
    [ok = hornbeam_pubsub:subscribe(T) || T <- [hb_news, <<"hb_news">>, "hb_news"]],
    ?assertEqual(1, hornbeam_pubsub:publish(hb_news, a)),
    ?assertEqual(a, received(hb_news)),
    ?assertEqual(1, hornbeam_pubsub:publish(<<"hb_news">>, b)),
    ?assertEqual(b, received(<<"hb_news">>)),
    ?assertEqual(1, hornbeam_pubsub:publish("hb_news", c)),
    ?assertEqual(c, received("hb_news")),
    nothing(hb_news),
    [ok = hornbeam_pubsub:unsubscribe(T) || T <- [hb_news, <<"hb_news">>, "hb_news"]].

subscribed_twice(_Config) ->
    %% Counted per subscription; one message per process (docs/migration.md).
    T = topic(),
    ok = hornbeam_pubsub:subscribe(T),
    ok = hornbeam_pubsub:subscribe(T),
    ?assertEqual(2, hornbeam_pubsub:publish(T, m)),
    ?assertEqual(m, received(T)),
    nothing(T),
    ?assertEqual([self(), self()], hornbeam_pubsub:get_members(T)),
    ok = hornbeam_pubsub:unsubscribe(T),
    ?assertEqual([self()], hornbeam_pubsub:get_members(T)),
    ok = hornbeam_pubsub:unsubscribe(T).

unsubscribe_is_always_ok(_Config) ->
    ?assertEqual(ok, hornbeam_pubsub:unsubscribe(topic())),
    ?assertEqual(ok, hornbeam_pubsub:unsubscribe(topic(), self())).

subscribe_another_process(_Config) ->
    T = topic(),
    Self = self(),
    Pid = spawn(fun() -> receive {pubsub, T, M} -> Self ! {got, M} end end),
    ok = hornbeam_pubsub:subscribe(T, Pid),
    ?assertEqual(1, hornbeam_pubsub:publish(T, x)),
    receive {got, x} -> ok after 5000 -> ct:fail(no_delivery) end,
    %% The subscription ends with the process.
    pyport_test_util:wait_until(fun() -> hornbeam_pubsub:get_members(T) =:= [] end).

members(_Config) ->
    T = topic(),
    ?assertEqual([], hornbeam_pubsub:get_members(T)),
    ?assertEqual([], hornbeam_pubsub:get_local_members(T)),
    ok = hornbeam_pubsub:subscribe(T),
    ?assertEqual([self()], hornbeam_pubsub:get_members(T)),
    ?assertEqual([self()], hornbeam_pubsub:get_local_members(T)),
    %% The binary topic is not the atom one.
    ?assertEqual([], hornbeam_pubsub:get_members(binary_to_atom(T))),
    ok = hornbeam_pubsub:unsubscribe(T).

python_publish_reaches_erlang_subscribers(_Config) ->
    T = topic(),
    ok = hornbeam_pubsub:subscribe(T),
    ?assertEqual({ok, 1}, py:call(?M, publish, [T, #{<<"type">> => <<"alert">>}])),
    ?assertEqual(#{<<"type">> => <<"alert">>}, received(T)),
    ok = hornbeam_pubsub:unsubscribe(T),
    ?assertEqual({ok, 0}, py:call(?M, publish, [T, x])).

python_atom_topic_stays_an_atom(_Config) ->
    ok = hornbeam_pubsub:subscribe(hb_alerts),
    ok = hornbeam_pubsub:subscribe(<<"hb_alerts">>),
    ?assertEqual({ok, 1}, py:call(?M, publish_atom, [<<"hb_alerts">>, 1])),
    ?assertEqual(1, received(hb_alerts)),
    nothing(<<"hb_alerts">>),
    ?assertEqual({ok, 1}, py:call(?M, publish, [<<"hb_alerts">>, 2])),
    ?assertEqual(2, received(<<"hb_alerts">>)),
    nothing(hb_alerts),
    ok = hornbeam_pubsub:unsubscribe(hb_alerts),
    ok = hornbeam_pubsub:unsubscribe(<<"hb_alerts">>).

python_atom_topics_mint_no_atom(_Config) ->
    %% A pool without an atom budget: an unknown atom topic is refused, an
    %% existing one is that atom.
    Name = <<"hb_never_an_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    Atoms = erlang:system_info(atom_count),
    {ok, [_, Msg, true]} = py:call(?M, publish_atom_error, [Name, 1], #{}, #{pool => no_atoms}),
    ?assertMatch({_, _}, binary:match(Msg, <<"atom">>)),
    ?assertEqual(Atoms, erlang:system_info(atom_count)),
    ?assertError(badarg, binary_to_existing_atom(Name)),
    ok = hornbeam_pubsub:subscribe(hb_known),
    ?assertEqual({ok, 1}, py:call(?M, publish_atom, [<<"hb_known">>, 3], #{}, #{pool => no_atoms})),
    ?assertEqual(3, received(hb_known)),
    ok = hornbeam_pubsub:unsubscribe(hb_known).

python_members(_Config) ->
    T = topic(),
    ok = hornbeam_pubsub:subscribe(T),
    ok = hornbeam_pubsub:subscribe(hb_members),
    Self = self(),
    ?assertEqual({ok, [[Self], [Self]]}, py:call(?M, members, [T])),
    ?assertEqual({ok, [[Self], [Self]]}, py:call(?M, members, [<<"hb_members">>, true])),
    ?assertEqual({ok, [[], []]}, py:call(?M, members, [<<"hb_members">>])),
    ok = hornbeam_pubsub:unsubscribe(T),
    ok = hornbeam_pubsub:unsubscribe(hb_members).

erlang_publish_reaches_python(_Config) ->
    T = topic(),
    Ref = pyport_test_util:async(fun() -> py:call(?M, subscribe_and_receive, [T]) end),
    pyport_test_util:wait_until(fun() -> hornbeam_pubsub:get_members(T) =/= [] end),
    ?assertEqual(1, hornbeam_pubsub:publish(T, <<"hi">>)),
    ?assertEqual({ok, {T, <<"hi">>}}, pyport_test_util:await(Ref)).
