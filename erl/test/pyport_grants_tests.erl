%% The grant check on its own (pyport_grants): every operation against a
%% pool granted nothing, one granted some names, and `all'.
-module(pyport_grants_tests).

-include_lib("eunit/include/eunit.hrl").

none() -> pyport_grants:new(p, #{sandbox => #{}}).

some() ->
    {ok, Spec} = pyport_grants:validate(#{functions => [f], state_prefixes => [<<"a:">>],
                                          topics => [t], send => [reg, pids],
                                          rpc => [{lists, reverse}]}),
    pyport_grants:new(p, #{grants => Spec}).

refused(Op, Args, G) ->
    case pyport_grants:request(Op, Args, G) of
        ok -> ok;
        {refused, What} -> unicode:characters_to_binary(What)
    end.

all_grants_everything_test() ->
    All = pyport_grants:new(p, #{}),
    ?assertEqual(all, All),
    [?assertEqual(ok, pyport_grants:request(Op, Args, All))
     || {Op, Args} <- [{<<"rpc_call">>, [n, os, cmd, [], 1]}, {<<"state_clear">>, []},
                       {<<"send">>, [init, x]}, {<<"call">>, [f, []]}]],
    ?assertEqual(ok, pyport_grants:notify(<<"rpc_cast">>, [n, os, cmd, []], All)).

nothing_granted_test() ->
    G = none(),
    ?assertEqual(<<"rpc_call os:cmd">>, refused(<<"rpc_call">>, [n, <<"os">>, <<"cmd">>, [], 1], G)),
    ?assertEqual(<<"function f">>, refused(<<"call">>, [<<"f">>, []], G)),
    ?assertEqual(<<"state_get k">>, refused(<<"state_get">>, [<<"k">>], G)),
    ?assertEqual(<<"state_get_multi k">>, refused(<<"state_get_multi">>, [[<<"k">>]], G)),
    ?assertEqual(<<"state_clear (it needs grants => all)">>, refused(<<"state_clear">>, [], G)),
    ?assertEqual(<<"publish on topic t">>, refused(<<"publish">>, [<<"t">>, m], G)),
    ?assertEqual(<<"subscribe to topic t">>, refused(<<"subscribe">>, [<<"t">>, 1], G)),
    ?assertEqual(<<"send to a pid">>, refused(<<"send">>, [self(), m], G)),
    ?assertEqual(<<"whereis init">>, refused(<<"whereis">>, [<<"init">>], G)),
    ?assertEqual(<<"nodes (it needs rpc)">>, refused(<<"nodes">>, [], G)),
    %% What reaches nothing is never refused.
    [?assertEqual(ok, refused(Op, Args, G))
     || {Op, Args} <- [{<<"node">>, []}, {<<"registered">>, [f]}, {<<"unsubscribe">>, [t, 1]}]],
    [?assertEqual(ok, pyport_grants:notify(Op, Args, G))
     || {Op, Args} <- [{<<"log">>, [info, m, #{}]}, {<<"span">>, [#{}]},
                       {<<"unsubscribe_all">>, [1]}, {<<"cancel">>, [1]}]],
    ?assertMatch({refused, _}, pyport_grants:notify(<<"cast">>, [f, []], G)),
    ?assertMatch({refused, _}, pyport_grants:notify(<<"cast">>, bad, G)).

some_granted_test() ->
    G = some(),
    ?assertEqual(ok, refused(<<"call">>, [f, []], G)),
    ?assertEqual(ok, refused(<<"call">>, [<<"f">>, []], G)),
    ?assertEqual(<<"function g">>, refused(<<"call">>, [g, []], G)),
    ?assertEqual(ok, refused(<<"state_set">>, [<<"a:1">>, v], G)),
    ?assertEqual(<<"state_set a">>, refused(<<"state_set">>, [<<"a">>, v], G)),
    ?assertEqual(ok, refused(<<"state_keys">>, [<<"a:">>], G)),
    ?assertEqual(<<"state_keys ">>, refused(<<"state_keys">>, [<<>>], G)),
    %% Only binary keys have prefixes.
    ?assertMatch(<<"state_get ", _/binary>>, refused(<<"state_get">>, [{a, 1}], G)),
    ?assertEqual(ok, refused(<<"publish">>, [t, m], G)),
    ?assertEqual(ok, refused(<<"send">>, [self(), m], G)),
    ?assertEqual(ok, refused(<<"send">>, [{reg, node()}, m], G)),
    ?assertEqual(<<"send to init">>, refused(<<"send">>, [{init, node()}, m], G)),
    ?assertEqual(ok, refused(<<"rpc_call">>, [n, lists, reverse, [[]], 1], G)),
    ?assertEqual(ok, refused(<<"nodes">>, [], G)),
    ?assertEqual(<<"rpc_call lists:sort">>, refused(<<"rpc_call">>, [n, lists, sort, [[]], 1], G)).

names_in_messages_are_bounded_test() ->
    G = none(),
    Long = binary:copy(<<"é">>, 200),
    What = refused(<<"call">>, [Long, []], G),
    ?assert(byte_size(What) < 120),
    ?assertMatch(<<"function ", _/binary>>, What),
    %% Not UTF-8, not text at all: shown as a term.
    ?assertEqual(unicode:characters_to_binary("function <<\"\x{ff}\">>"),
                 refused(<<"call">>, [<<255>>, []], G)),
    ?assertEqual(<<"function {1,2}">>, refused(<<"call">>, [{1, 2}, []], G)),
    {error, <<"PermissionError">>, <<"pool p is not granted function {1,2}">>, _} =
        pyport_grants:error_reply(G, pyport_grants:function({1, 2}, G)).

refusals_are_counted_test() ->
    G = none(),
    ?assertEqual(0, pyport_grants:count(G)),
    pyport_grants:refused(G, request),
    ok = pyport_grants:refused(G, {notify, {refused, <<"x">>}, #{}}),
    ?assertEqual(2, pyport_grants:count(G)).
