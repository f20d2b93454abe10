%% erlang_python's py_context (reference section 1.2) on pyport: a context
%% is a dedicated worker OS process behind a pid, whose lifetime is the
%% pid's.
-module(py_context_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([new_is_a_dedicated_worker/1, option_errors/1, shared_globals_and_env/1,
         call_forms_and_timeouts/1, stop_frees_the_worker/1, killed_context_frees_the_worker/1,
         linked_creator_lifetime/1, names_are_reused/1, interrupt_a_context/1,
         event_loop_functions/1, works_on_pool_contexts/1]).

all() ->
    [new_is_a_dedicated_worker, option_errors, shared_globals_and_env, call_forms_and_timeouts,
     stop_frees_the_worker, killed_context_frees_the_worker, linked_creator_lifetime,
     names_are_reused, interrupt_a_context, event_loop_functions, works_on_pool_contexts].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    [{pools, pyport:pools()} | Config].

end_per_testcase(_Case, Config) ->
    %% No context's pool outlives its test.
    pyport_test_util:wait_until(fun() -> pyport:pools() =:= ?config(pools, Config) end),
    ok.

new_is_a_dedicated_worker(_Config) ->
    {ok, Ctx} = py_context:new(#{}),
    ?assert(is_pid(Ctx)),
    {ok, Other} = py_context:new(#{mode => owngil}),
    {ok, P1} = py_context:call(Ctx, os, getpid, []),
    {ok, P2} = py_context:call(Other, os, getpid, []),
    {ok, P0} = py:call(os, getpid, []),
    ?assertEqual(3, length(lists:usort([P0, P1, P2]))),
    %% Its own interpreter: no state shared with the other.
    ok = py_context:exec(Ctx, <<"import sys\nsys.marker = 1">>),
    ?assertEqual({ok, false}, py_context:eval(Other, <<"hasattr(__import__('sys'), 'marker')">>)),
    ok = py_context:stop(Ctx),
    ok = py_context:destroy(Other).

option_errors(_Config) ->
    ?assertEqual({error, {invalid_mode, turbo}}, py_context:new(#{mode => turbo})),
    ?assertEqual({error, {invalid_memory_limit, -1}}, py_context:new(#{memory_limit => -1})),
    %% A worker that cannot start: the reason, and nothing left over.
    ?assertMatch({error, _}, py_context:new(#{pool => #{worker => <<"/nonexistent/worker">>}})),
    %% preload runs once in the shared globals; a failing one is logged only.
    {ok, Ctx} = py_context:new(#{preload => <<"PRE = 41">>}),
    ?assertEqual({ok, 42}, py_context:eval(Ctx, <<"PRE + 1">>)),
    ok = py_context:stop(Ctx),
    {ok, Bad} = py_context:new(#{preload => <<"raise ValueError('x')">>}),
    ?assertEqual({ok, 2.0}, py_context:call(Bad, math, sqrt, [4])),
    ok = py_context:stop(Bad).

shared_globals_and_env(_Config) ->
    {ok, Ctx} = py_context:new(#{}),
    %% Without an environment: the context's shared globals, for everyone.
    ok = py_context:exec(Ctx, <<"def double(x):\n    return 2 * x\nbase = 10\n">>),
    ?assertEqual({ok, 8}, py_context:call(Ctx, '__main__', double, [4])),
    ?assertEqual({ok, 11}, py_context:eval(Ctx, <<"base + 1">>)),
    ?assertEqual({ok, 13}, py_context:eval(Ctx, <<"base + k">>, #{k => 3})),
    Other = pyport_test_util:async(fun() -> py_context:call(Ctx, '__main__', double, [5]) end),
    ?assertEqual({ok, 10}, pyport_test_util:await(Other)),
    %% With an environment: the calling process's own namespace, which
    %% starts from the shared globals.
    ok = py_context:exec(Ctx, <<"base = 20\ndef mine():\n    return base\n">>, env),
    ?assertEqual({ok, 20}, py_context:call(Ctx, '__main__', mine, [], #{}, infinity, env)),
    ?assertEqual({ok, 20}, py_context:eval(Ctx, <<"base">>, #{}, infinity, env)),
    ?assertEqual({ok, 11}, py_context:eval(Ctx, <<"base + 1">>)),
    %% py:eval(Ctx, ...) is that same per-process namespace.
    ?assertEqual({ok, 20}, py:eval(Ctx, <<"base">>)),
    ok = py_context:stop(Ctx).

call_forms_and_timeouts(_Config) ->
    {ok, Ctx} = py_context:new(#{pool => #{call_timeout => 50}}),
    %% No timeout by default, whatever the pool's call_timeout.
    ?assertEqual({ok, none}, py_context:call(Ctx, time, sleep, [0.3])),
    ?assertEqual({ok, <<"{\"a\": 1}">>}, py_context:call(Ctx, json, dumps, [#{a => 1}],
                                                       #{sort_keys => true})),
    ?assertEqual({error, timeout}, py_context:call(Ctx, time, sleep, [5], #{}, 100)),
    ?assertEqual({error, timeout}, py_context:eval(Ctx, <<"__import__('time').sleep(5)">>, #{}, 100)),
    ?assertEqual({ok, 2.0}, py_context:call(Ctx, math, sqrt, [4], #{}, 5000)),
    ?assertMatch({error, {'ZeroDivisionError', _}}, py_context:eval(Ctx, <<"1/0">>)),
    ?assertMatch({error, {'SyntaxError', _}}, py_context:exec(Ctx, <<"def (">>)),
    ok = py_context:stop(Ctx).

stop_frees_the_worker(_Config) ->
    {ok, Ctx} = py_context:new(#{}),
    {ok, OsPid} = py_context:call(Ctx, os, getpid, []),
    {ok, Pool} = pyport_context:pool(Ctx),
    ?assert(lists:member(Pool, pyport:pools())),
    ok = py_context:stop(Ctx),
    ?assertNot(is_process_alive(Ctx)),
    ?assertNot(lists:member(Pool, pyport:pools())),
    pyport_test_util:wait_until(fun() -> not os_alive(OsPid) end),
    ?assertEqual({error, {context_died, noproc}}, py_context:call(Ctx, math, sqrt, [4])),
    ?assertEqual({error, {context_died, noproc}}, py:eval(Ctx, <<"1">>)),
    ok = py_context:stop(Ctx).

killed_context_frees_the_worker(_Config) ->
    {ok, Ctx} = py_context:new(#{}),
    {ok, OsPid} = py_context:call(Ctx, os, getpid, []),
    {ok, Pool} = pyport_context:pool(Ctx),
    exit(Ctx, kill),
    %% However it dies, its worker goes with it.
    pyport_test_util:wait_until(fun() -> not lists:member(Pool, pyport:pools()) end),
    pyport_test_util:wait_until(fun() -> not os_alive(OsPid) end).

linked_creator_lifetime(_Config) ->
    Self = self(),
    Start = fun(Exit) ->
                    Creator = spawn(fun() ->
                                            {ok, C} = py_context:start_link(ctx_id, worker),
                                            Self ! {ctx, self(), C},
                                            receive Why -> exit(Why) end
                                    end),
                    Ctx = receive {ctx, Creator, C} -> C after 30000 -> ct:fail(no_ctx) end,
                    Creator ! Exit,
                    Ctx
            end,
    %% A creator that exits normally, or crashes, leaves it running.
    Normal = Start(normal),
    Crashed = Start(crashed),
    timer:sleep(200),
    ?assert(is_process_alive(Normal)),
    ?assert(is_process_alive(Crashed)),
    ?assertEqual({ok, 2.0}, py_context:call(Normal, math, sqrt, [4])),
    %% One that shuts down takes it along.
    Down = Start(shutdown),
    pyport_test_util:wait_until(fun() -> not is_process_alive(Down) end),
    Down2 = Start({shutdown, bye}),
    pyport_test_util:wait_until(fun() -> not is_process_alive(Down2) end),
    ok = py_context:stop(Normal),
    ok = py_context:stop(Crashed).

names_are_reused(_Config) ->
    %% A context's pool name comes from a bounded set: creating and
    %% stopping contexts does not create atoms without end.
    {ok, C0} = py_context:new(#{}),
    ok = py_context:stop(C0),
    Atoms = erlang:system_info(atom_count),
    [begin {ok, C} = py_context:new(#{}), ok = py_context:stop(C) end || _ <- lists:seq(1, 5)],
    ?assert(erlang:system_info(atom_count) - Atoms < 5).

interrupt_a_context(_Config) ->
    {ok, Ctx} = py_context:new(#{}),
    ?assertEqual(not_running, py_context:interrupt(Ctx)),
    Caller = pyport_test_util:async(fun() -> py_context:call(Ctx, time, sleep, [30]) end),
    pyport_test_util:wait_until(fun() -> py_context:interrupt(Ctx) =:= ok end),
    ?assertMatch({error, {'KeyboardInterrupt', _}}, pyport_test_util:await(Caller)),
    ok = py_context:stop(Ctx).

event_loop_functions(_Config) ->
    {ok, Ctx} = py_context:new(#{}),
    ?assertEqual({ok, Ctx}, py_context:loop_ref(Ctx)),
    {ok, Ref} = py_context:submit(Ctx, asyncio, sleep, [0, done]),
    ?assert(is_reference(Ref)),
    receive {async_result, Ref, R} -> ?assertEqual({ok, done}, R)
    after 10000 -> ct:fail(no_result)
    end,
    ?assertEqual({ok, 3.0}, py_context:submit_await(Ctx, math, sqrt, [9])),
    ?assertEqual({ok, 3}, py_context:submit_await(Ctx, operator, add, [1, 2], #{}, 5000)),
    ?assertEqual({error, timeout}, py_context:submit_await(Ctx, asyncio, sleep, [10], #{}, 50)),
    %% Loop ownership: one owner, told when it stops.
    ?assertEqual({error, no_loop}, py_context:stop_loop(Ctx)),
    ok = py_context:start_loop(Ctx),
    ?assertEqual({error, already_running}, py_context:start_loop(Ctx)),
    %% The context keeps serving calls while its loop runs.
    ?assertEqual({ok, 2.0}, py_context:call(Ctx, math, sqrt, [4])),
    ok = py_context:stop_loop(Ctx),
    receive {py_loop_exit, Ctx, Exit} -> ?assertEqual({ok, <<"stopped">>}, Exit)
    after 5000 -> ct:fail(no_loop_exit)
    end,
    %% An owner's exit ends its ownership.
    Owner = spawn(fun() -> receive stop -> ok end end),
    ok = py_context:start_loop(Ctx, #{owner => Owner}),
    Owner ! stop,
    pyport_test_util:wait_until(fun() -> py_context:start_loop(Ctx) =:= ok end),
    ok = py_context:stop_loop(Ctx, 100),
    receive {py_loop_exit, Ctx, _} -> ok after 5000 -> ct:fail(no_loop_exit) end,
    ok = py_context:stop(Ctx).

works_on_pool_contexts(_Config) ->
    Ctx = py:context(1),
    ok = py_context:exec(Ctx, <<"pool_ctx_value = 7">>),
    ?assertEqual({ok, 7}, py_context:eval(Ctx, <<"pool_ctx_value">>)),
    ?assertEqual({ok, 2.0}, py_context:call(Ctx, math, sqrt, [4])).

os_alive(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        %% A zombie (exited, not yet reaped) counts as gone.
        {ok, Stat} -> binary:match(Stat, <<") Z ">>) =:= nomatch;
        {error, _} -> false
    end.
