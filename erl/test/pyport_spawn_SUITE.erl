%% py:spawn_call on this node: no process per call, erlang_python's
%% `{py_response, Ref, Result}' message straight from the worker's
%% gen_server, its deadline, interrupts, a worker's death, and the count of
%% a call whose result is only received, never awaited.
-module(pyport_spawn_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [no_process_per_call, received_not_awaited_is_counted, deadline_answers_and_interrupts,
     interrupt_and_worker_exit, await_shorter_than_the_deadline].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    {ok, _} = pyport:start_pool(spawned, #{size => 1, python_path => [pyport_test_util:python_dir()],
                                           kill_after => 2000}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

%% 200 calls in flight at once: the node's process count does not follow
%% them (before: one helper process each), and every one is answered.
no_process_per_call(_Config) ->
    Ctx = py:context(1),
    Before = erlang:system_info(process_count),
    Refs = [py:spawn_call(asyncio, sleep, [0.3, N], #{}, #{pool => spawned}) || N <- lists:seq(1, 200)],
    During = erlang:system_info(process_count),
    ?assert(During - Before < 20, {Before, During}),
    ?assert(lists:all(fun erlang:is_reference/1, Refs)),
    ?assertEqual([{ok, N} || N <- lists:seq(1, 200)], [py:await(R, 30000) || R <- Refs]),
    ?assertEqual({ok, 3}, py:await(py:spawn_call(Ctx, ?F, add, [1, 2]))),
    ?assertEqual({messages, []}, process_info(self(), messages)).

%% The result comes as erlang_python's message; the call is counted when
%% it ends, though nobody awaits it.
received_not_awaited_is_counted(_Config) ->
    #{calls := Calls0, ok := Ok0} = stats(spawned),
    Ref = py:spawn_call(?F, add, [2, 3], #{}, #{pool => spawned}),
    receive {py_response, Ref, Result} -> ?assertEqual({ok, 5}, Result)
    after 10000 -> ct:fail(no_py_response)
    end,
    pyport_test_util:wait_until(fun() -> maps:get(calls, stats(spawned)) =:= Calls0 + 1 end),
    #{ok := Ok1} = stats(spawned),
    ?assertEqual(Ok0 + 1, Ok1),
    %% The row of the call went with the answer.
    ?assertEqual([], ets:lookup(pyport_tasks, Ref)),
    ?assertEqual({error, already_awaited}, py:await(Ref)).

%% At its deadline the call is answered {error, timeout} by the gen_server
%% (no await needed), counted, and interrupted in the worker, which then
%% serves the next call at once.
deadline_answers_and_interrupts(_Config) ->
    #{timeouts := T0} = stats(spawned),
    Started = erlang:monotonic_time(millisecond),
    Ref = py:spawn_call(?F, sleep, [20], #{}, #{pool => spawned, timeout => 300}),
    receive {py_response, Ref, Result} -> ?assertEqual({error, timeout}, Result)
    after 10000 -> ct:fail(no_timeout_answer)
    end,
    Ms = erlang:monotonic_time(millisecond) - Started,
    %% Not before the deadline, and well before the sleep would end.
    ?assert(Ms >= 300 andalso Ms < 10000, Ms),
    ?assertEqual({ok, 7}, py:call(?F, identity, [7], #{}, #{pool => spawned, timeout => 5000})),
    pyport_test_util:wait_until(fun() -> maps:get(timeouts, stats(spawned)) =:= T0 + 1 end),
    %% Only one answer ever came.
    receive {py_response, Ref, Again} -> ct:fail({second_answer, Again}) after 200 -> ok end.

%% py:interrupt/1 reaches the call's Python code; a worker that dies
%% answers its calls {error, {worker_exited, _}}, and each exactly once.
interrupt_and_worker_exit(_Config) ->
    Ref = py:spawn_call(?F, sleep, [20], #{}, #{pool => spawned}),
    timer:sleep(200),
    ok = py:interrupt(Ref),
    ?assertMatch({error, {'KeyboardInterrupt', _}}, py:await(Ref, 10000)),
    Refs = [py:spawn_call(?F, sleep, [20], #{}, #{pool => spawned}) || _ <- lists:seq(1, 5)],
    timer:sleep(200),
    OsPid = pyport_test_util:os_pid({spawned, 1}),
    os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    Answers = [receive {py_response, R, A} -> A after 10000 -> none end || R <- Refs],
    ?assertEqual(5, length([A || {error, {worker_exited, _}} = A <- Answers])),
    pyport_test_util:wait_until(fun() -> pyport_test_util:os_pid({spawned, 1}) =/= undefined end),
    receive {py_response, _, Extra} -> ct:fail({extra_answer, Extra}) after 200 -> ok end.

%% An await shorter than the call's deadline gives up itself: the call is
%% interrupted, counted as a timeout, and no message arrives later.
await_shorter_than_the_deadline(_Config) ->
    #{timeouts := T0} = stats(spawned),
    Ref = py:spawn_call(?F, sleep, [20], #{}, #{pool => spawned, timeout => 60000}),
    ?assertEqual({error, timeout}, py:await(Ref, 100)),
    ?assertEqual(T0 + 1, maps:get(timeouts, stats(spawned))),
    ?assertEqual({ok, 8}, py:call(?F, identity, [8], #{}, #{pool => spawned, timeout => 5000})),
    ?assertEqual({error, already_awaited}, py:await(Ref)),
    receive {py_response, Ref, Late} -> ct:fail({late_answer, Late}) after 200 -> ok end.

stats(Pool) ->
    {ok, S} = pyport:stats(Pool),
    S.
