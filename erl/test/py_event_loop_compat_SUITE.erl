%% erlang_python's py_event_loop and py_event_loop_pool additions
%% (reference sections 1.3 and 1.8): get_loop, exec/eval in the caller's
%% namespace, '__main__' tasks, real references, get_all_loops.
-module(py_event_loop_compat_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([loop_exec_eval_and_main_tasks/1, pool_exec_eval_and_loops/1, task_refs_are_references/1]).

all() ->
    [loop_exec_eval_and_main_tasks, pool_exec_eval_and_loops, task_refs_are_references].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

loop_exec_eval_and_main_tasks(_Config) ->
    {ok, Loop} = py_event_loop:get_loop(),
    ?assert(is_pid(Loop)),
    ?assertEqual({ok, Loop}, py_event_loop:get_loop()),
    ok = py_event_loop:exec(<<"import asyncio\n"
                              "async def slow_add(a, b):\n"
                              "    await asyncio.sleep(0)\n"
                              "    return a + b\n">>),
    ?assertEqual({ok, 5}, py_event_loop:eval(<<"2 + 3">>)),
    ?assertEqual({ok, true}, py_event_loop:eval(Loop, <<"callable(slow_add)">>)),
    ?assertEqual({ok, 7}, py_event_loop:run('__main__', slow_add, [3, 4])),
    Ref = py_event_loop:create_task('__main__', slow_add, [1, 2]),
    ?assertEqual({ok, 3}, py_event_loop:await(Ref)),
    %% The namespace is the calling process's: another one has none.
    Other = pyport_test_util:async(fun() ->
                                           py_event_loop:await(
                                             py_event_loop:create_task('__main__', slow_add, [1, 2]))
                                   end),
    ?assertMatch({error, {'AttributeError', _}}, pyport_test_util:await(Other)),
    ?assertMatch({error, {'SyntaxError', _}}, py_event_loop:exec(<<"def (">>)),
    ?assertMatch({error, {'ZeroDivisionError', _}}, py_event_loop:eval(<<"1/0">>)).

pool_exec_eval_and_loops(_Config) ->
    {ok, Loops} = py_event_loop_pool:get_all_loops(),
    ?assertEqual(2, length(Loops)),
    [?assert(is_pid(L) andalso L =:= W) || {L, W} <- Loops],
    {ok, Mine} = py_event_loop_pool:get_loop(),
    ?assert(lists:keymember(Mine, 1, Loops)),
    ok = py_event_loop_pool:exec(<<"pool_value = 6">>),
    ?assertEqual({ok, 7}, py_event_loop_pool:eval(<<"pool_value + 1">>)),
    ?assertEqual({ok, 6}, py_event_loop_pool:eval(Mine, <<"pool_value">>)),
    ok = py_event_loop_pool:exec(Mine, <<"async def twice(x):\n    return 2 * x\n">>),
    ?assertEqual({ok, 8}, py_event_loop_pool:run('__main__', twice, [4])).

task_refs_are_references(_Config) ->
    R1 = py_event_loop:create_task(asyncio, sleep, [0, a]),
    R2 = py_event_loop_pool:create_task(asyncio, sleep, [0, b]),
    R3 = py:async_call(asyncio, sleep, [0, c]),
    ?assert(lists:all(fun erlang:is_reference/1, [R1, R2, R3])),
    Got = [receive {async_result, R, V} -> V after 10000 -> timeout end || R <- [R1, R2, R3]],
    ?assertEqual([{ok, a}, {ok, b}, {ok, c}], Got),
    %% The table behind them holds only tasks in flight. The worker's
    %% gen_server drops a row just after it sends the result (an await that
    %% finds no row finds the message), so the last row may outlive the
    %% receive above by a moment.
    ok = pyport_test_util:wait_until(fun() -> ets:info(pyport_tasks, size) =:= 0 end),
    %% A task that could not start is a reference too, its error at once.
    R4 = py_event_loop:create_task(math, sqrt, not_a_list),
    ?assert(is_reference(R4)),
    ?assertEqual({error, {invalid_args, not_a_list}}, py_event_loop:await(R4)).
