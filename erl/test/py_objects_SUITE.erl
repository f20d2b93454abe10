%% Python objects kept in a worker for an Erlang process (pyport_objects):
%% handles from `#{return => ref}', their use as arguments (routed to their
%% worker), ownership, release on owner exit, the per-worker cap, staleness
%% after a worker restart, and forged or replayed handles.
-module(py_objects_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [lifecycle, eval_and_coroutine_results_kept, failed_call_keeps_nothing,
     handles_route_to_their_worker, owner_exit_frees_objects, cap_per_worker,
     stale_after_worker_restart, forged_and_replayed_handles_refused,
     worker_cannot_send_an_object_id, call_options, type_mapping_doc_example].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2},
                                  capped => #{size => 1, max_objects => 3}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

%% Objects the worker of slot N of the default pool keeps.
kept(Slot) ->
    {ok, N} = py:call(py:context(Slot), 'erlang._objects', count, []),
    N.

new_list(Slot, Items) ->
    py:call(py:context(Slot), builtins, list, [Items], #{}, #{return => ref}).

%%%===================================================================

lifecycle(_Config) ->
    Before = kept(1),
    {ok, H} = new_list(1, [3, 1, 2]),
    ?assert(py:is_ref(H)),
    ?assertNot(py:is_ref({not_a, handle})),
    ?assertEqual(Before + 1, kept(1)),
    ?assertEqual(ok, element(1, py:call_method(H, sort, []))),
    ?assertEqual({ok, none}, py:call_method(H, append, [4])),
    ?assertEqual({ok, [1, 2, 3, 4]}, py:to_term(H)),
    ?assertEqual({ok, 4}, py:call(builtins, len, [H])),
    ?assertEqual({ok, 1}, py:call_method(H, index, [2])),
    ?assertEqual({ok, 1}, py:call_method(H, count, [3], #{kwargs => #{}})),
    ?assertEqual({ok, [4, 3, 2, 1]},
                 py:call(builtins, sorted, [H], #{reverse => true}, #{})),
    {ok, Doc} = py:getattr(H, '__doc__'),
    ?assert(is_binary(Doc)),
    ?assertMatch({error, {'AttributeError', _}}, py:getattr(H, nope)),
    %% A method's result may stay in the worker too.
    {ok, H2} = py:call_method(H, copy, [], #{return => ref}),
    ?assertEqual({ok, [1, 2, 3, 4]}, py:to_term(H2)),
    ?assertEqual(Before + 2, kept(1)),
    ok = py:release(H),
    ok = py:release(H),  % twice: ok
    ?assertEqual({error, {stale_ref, H}}, py:to_term(H)),
    ok = py:release(H2),
    ?assertEqual(Before, kept(1)),
    %% An unconvertible object as a handle: usable, not convertible.
    {ok, D} = py:call(py:context(1), collections, deque, [[1, 2]], #{}, #{return => ref}),
    ?assertMatch({error, {'TypeError', _}}, py:to_term(D)),
    ?assertEqual({ok, 2}, py:call(builtins, len, [D])),
    ok = py:release(D).

eval_and_coroutine_results_kept(_Config) ->
    {ok, H} = py:eval(py:context(1), <<"{'a': [1, 2]}">>, none, #{return => ref}),
    ?assertEqual({ok, #{<<"a">> => [1, 2]}}, py:to_term(H)),
    {ok, H1} = py:eval(<<"x * 2">>, #{x => 21}, #{return => ref}),
    ?assertEqual({ok, 42}, py:to_term(H1)),
    %% A coroutine's value is kept once it is done.
    {ok, C} = py:call(asyncio, sleep, [0, <<"done">>], #{}, #{return => ref}),
    ?assertEqual({ok, <<"done">>}, py:to_term(C)),
    [ok = py:release(R) || R <- [H, H1, C]].

failed_call_keeps_nothing(_Config) ->
    Before = kept(1),
    Count = pyport_objects:count(worker_pid(1)),
    ?assertMatch({error, {'ValueError', _}},
                 py:call(py:context(1), math, sqrt, [-1], #{}, #{return => ref})),
    ?assertEqual({error, timeout},
                 py:call(py:context(1), time, sleep, [5], #{}, #{return => ref, timeout => 200})),
    ?assertEqual(Before, kept(1)),
    ?assertEqual(Count, pyport_objects:count(worker_pid(1))).

handles_route_to_their_worker(_Config) ->
    {ok, H1} = new_list(1, [1]),
    {ok, H2} = new_list(2, [1, 2]),
    {ok, P1} = py:call(py:context(1), os, getpid, []),
    {ok, P2} = py:call(py:context(2), os, getpid, []),
    ?assertNotEqual(P1, P2),
    %% Least-loaded routing would spread these: the handle pins them.
    ?assertEqual([{ok, 1}], lists:usort([py:call(builtins, len, [H1]) || _ <- lists:seq(1, 20)])),
    ?assertEqual([{ok, 2}], lists:usort([py:call(builtins, len, [H2]) || _ <- lists:seq(1, 20)])),
    %% Even against the call's own route, and nested in arguments.
    ?assertEqual({ok, 1}, py:call(py:context(2), builtins, len, [H1])),
    ?assertEqual({ok, [1, 1]}, py:eval(<<"list(a[0]) + list(b['k'])">>,
                                       #{a => [H1], b => #{k => H1}})),
    ?assertMatch({error, {refs_on_different_workers, _, _}},
                 py:call(builtins, zip, [H1, H2])),
    %% A cast with a handle goes to its worker too.
    ok = py:cast(builtins, list, [H1]),
    ok = py:release(H1),
    ok = py:release(H2).

owner_exit_frees_objects(_Config) ->
    Before = kept(1),
    Node = pyport_objects:count(worker_pid(1)),
    Self = self(),
    Owner = spawn(fun() ->
                          Hs = [begin {ok, H} = new_list(1, [I]), H end || I <- lists:seq(1, 50)],
                          Self ! {made, Hs},
                          receive stop -> ok end
                  end),
    Hs = receive {made, M} -> M after 20000 -> error(no_handles) end,
    ?assertEqual(Before + 50, kept(1)),
    ?assertEqual(Node + 50, pyport_objects:count(worker_pid(1))),
    ct:pal("objects alive in worker 1: ~b before, ~b with the owner alive", [Before, kept(1)]),
    Owner ! stop,
    pyport_test_util:wait_until(fun() -> kept(1) =:= Before end),
    ct:pal("after the owner exited: ~b", [kept(1)]),
    ?assertEqual(Node, pyport_objects:count(worker_pid(1))),
    ?assertEqual({error, {stale_ref, hd(Hs)}}, py:to_term(hd(Hs))).

cap_per_worker(_Config) ->
    Opts = #{pool => capped, return => ref},
    Hs = [begin {ok, H} = py:call(builtins, list, [[I]], #{}, Opts), H end
          || I <- lists:seq(1, 3)],
    ?assertEqual({error, {too_many_objects, 3}}, py:call(builtins, list, [[4]], #{}, Opts)),
    {ok, 3} = py:call('erlang._objects', count, [], #{}, #{pool => capped}),
    ok = py:release(hd(Hs)),
    {ok, H4} = py:call(builtins, list, [[4]], #{}, Opts),
    ?assertEqual({ok, [4]}, py:to_term(H4)),
    %% Converted results are not counted.
    ?assertEqual({ok, [5]}, py:call(builtins, list, [[5]], #{}, #{pool => capped})),
    [ok = py:release(H) || H <- [H4 | tl(Hs)]],
    {ok, 0} = py:call('erlang._objects', count, [], #{}, #{pool => capped}).

stale_after_worker_restart(_Config) ->
    {ok, H} = new_list(2, [1, 2, 3]),
    ?assertEqual(1, pyport_objects:count(worker_pid(2))),
    OsPid = pyport_test_util:os_pid({default, 2}),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    pyport_test_util:wait_until(
      fun() ->
              case catch pyport_test_util:os_pid({default, 2}) of
                  New when is_integer(New) -> New =/= OsPid;
                  _ -> false
              end
      end),
    %% Dropped on the node as the OS process exited (no longer counted).
    pyport_test_util:wait_until(fun() -> pyport_objects:count(worker_pid(2)) =:= 0 end),
    ?assertEqual({error, {stale_ref, H}}, py:call(builtins, len, [H])),
    ?assertEqual({error, {stale_ref, H}}, py:to_term(H)),
    ok = py:release(H),
    %% The worker kept only what its new process made.
    ?assertEqual(0, kept(2)).

forged_and_replayed_handles_refused(_Config) ->
    {ok, H} = new_list(1, [<<"secret">>]),
    Self = self(),
    %% Another process: neither use nor release.
    Other = fun(F) ->
                    spawn(fun() -> Self ! {other, F()} end),
                    receive {other, R} -> R after 10000 -> error(no_answer) end
            end,
    ?assertEqual({error, {not_owner, H}}, Other(fun() -> py:to_term(H) end)),
    ?assertEqual({error, {not_owner, H}}, Other(fun() -> py:release(H) end)),
    ?assertEqual({error, {not_owner, H}}, Other(fun() -> py:call(builtins, len, [[H]]) end)),
    %% A handle made by hand with the same id: the owner check is the node's.
    {'$pyport_object', Id, _, _, _, _} = H,
    Forged = {'$pyport_object', Id, capped, 1, self(), 0},
    ?assertEqual({error, {not_owner, Forged}}, Other(fun() -> py:to_term(Forged) end)),
    %% An id nobody holds.
    Made = {'$pyport_object', 987654321, default, 1, worker_pid(1), 0},
    ?assertEqual({error, {stale_ref, Made}}, py:to_term(Made)),
    %% Through the encoder directly (no routing): refused, never sent.
    ?assertError({unsupported_term, Made}, pyport_codec:encode([Made])),
    %% Replayed after release.
    ok = py:release(H),
    ?assertEqual({error, {stale_ref, H}}, py:to_term(H)),
    ?assertEqual({error, {stale_ref, H}}, py:call(builtins, len, [H])).

worker_cannot_send_an_object_id(_Config) ->
    {ok, H} = new_list(1, [1]),
    {'$pyport_object', Id, Pool, Slot, Pid, OsPid} = H,
    %% A worker can return a term shaped like a handle; to another process
    %% it reaches nothing.
    {ok, Echoed} = py:call(builtins, tuple, [['$pyport_object', Id, Pool, Slot, Pid, OsPid]]),
    ?assertEqual(H, Echoed),
    Self = self(),
    spawn(fun() -> Self ! {other, py:to_term(Echoed)} end),
    ?assertEqual({error, {not_owner, Echoed}}, receive {other, R} -> R after 10000 -> timeout end),
    %% An ext 6 (object id) from a worker does not decode in the node.
    ?assertMatch({error, {bad_msgpack, {unknown_ext, 6}}},
                 pyport_codec:decode(<<16#d7, 6, Id:64>>)),
    ok = py:release(H).

call_options(_Config) ->
    {error, {'JSONDecodeError', _, Tb}} = py:call(json, loads, [<<"x">>], #{}, #{traceback => true}),
    ?assertMatch({match, _}, re:run(Tb, <<"^Traceback .*json/decoder.py.*JSONDecodeError">>,
                                    [dotall])),
    ?assertMatch({error, {'ValueError', _}}, py:call(math, sqrt, [-1])),
    ?assertEqual({error, {invalid_option, return, object}},
                 py:call(math, sqrt, [4], #{}, #{return => object})),
    ?assertEqual({error, {invalid_option, numpy, matrix}},
                 py:eval(<<"1">>, #{}, #{numpy => matrix})),
    %% Handles are made for local workers only.
    ?assertEqual({error, {invalid_option, return, ref}},
                 py:call(builtins, list, [], #{}, #{return => ref, pool => {cluster, default}})),
    {ok, H} = new_list(1, []),
    ?assertEqual({error, {invalid_name, 42}}, py:getattr(H, 42)),
    ?assertEqual({error, {invalid_name, 42}}, py:call_method(H, 42, [])),
    ok = py:release(H).

%% The example of docs/type-mapping.md, "Objects kept in the worker", as
%% written there.
type_mapping_doc_example(_Config) ->
    {ok, Counter} = py:call(collections, 'Counter', [[<<"a">>, <<"b">>, <<"a">>]], #{},
                            #{return => ref}),
    {ok, [{<<"a">>, 2}]} = py:call_method(Counter, most_common, [1]),
    {ok, 2} = py:call(builtins, len, [Counter]),
    ok = py:release(Counter),
    {ok, <<"<object object at 0x", _/binary>>} =
        py:eval(<<"object()">>, #{}, #{str_fallback => true}),
    {error, {'ValueError', <<"math domain error">>, Tb}} =
        py:call(math, sqrt, [-1], #{}, #{traceback => true}),
    true = is_binary(Tb).

worker_pid(Slot) ->
    {ok, Info} = pyport_pool:info(default),
    {ok, Pid} = pyport_pool:worker(Info, Slot),
    Pid.
