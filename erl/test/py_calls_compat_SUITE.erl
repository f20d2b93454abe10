%% erlang_python's calling conventions and result shapes on pyport
%% (/work/shared/reference/erlang-python-api.md, section 1.1): the Pool and
%% Ctx forms of py:call, the options map, per-process namespaces on a
%% context (freed when the process exits, bounded per worker), '__main__',
%% eval/exec globals as real modules, and the shapes code matches on.
-module(py_calls_compat_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2,
         end_per_testcase/2]).
-export([pool_and_ctx_call_forms/1, options_map_of_the_ctx_form/1, ctx_timeout_default_is_infinity/1,
         registered_pools_route_calls/1, contexts_are_pids/1, start_contexts_and_stop/1,
         process_namespaces_on_a_context/1, namespace_freed_when_process_exits/1,
         namespace_cap_per_worker/1, main_is_the_callers_namespace/1,
         globals_behave_like_a_module/1, eval_with_erlang_call/1,
         schedule_marker_from_eval/1, spawn_call_message/1, async_call_message_and_gather/1,
         parallel_shape/1, traces_shape/1, gc_and_memory_stats_shapes/1,
         stream_cancel_event_and_owner/1, execution_mode_is_truthful/1,
         interrupt_a_context/1]).

-define(F, pyport_test_funcs).

all() ->
    [{group, calls}, {group, namespaces}, {group, shapes}].

groups() ->
    [{calls, [], [pool_and_ctx_call_forms, options_map_of_the_ctx_form,
                  ctx_timeout_default_is_infinity, registered_pools_route_calls,
                  contexts_are_pids, start_contexts_and_stop]},
     {namespaces, [], [process_namespaces_on_a_context, namespace_freed_when_process_exits,
                       namespace_cap_per_worker, main_is_the_callers_namespace,
                       globals_behave_like_a_module, eval_with_erlang_call,
                       schedule_marker_from_eval]},
     {shapes, [], [spawn_call_message, async_call_message_and_gather, parallel_shape,
                   traces_shape, gc_and_memory_stats_shapes, stream_cancel_event_and_owner,
                   execution_mode_is_truthful, interrupt_a_context]}].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools(),
    [py:unregister_pool(K) || {K, _} <- py_context_router:list_pool_registrations()],
    ok.

%%%===================================================================
%%% Calls
%%%===================================================================

pool_and_ctx_call_forms(_Config) ->
    %% The example of the issue: {error, {invalid_args, sqrt}} before.
    ?assertEqual({ok, 4.0}, py:call(default, math, sqrt, [16])),
    ?assertEqual({ok, <<"{\"a\": 1, \"b\": 2}">>},
                 py:call(default, json, dumps, [#{b => 2, a => 1}], #{sort_keys => true})),
    ?assertEqual({error, {no_pool, nowhere}}, py:call(nowhere, math, sqrt, [16])),
    %% The third argument tells the forms apart: a name there is the pool
    %% form, a list the arguments of call(M, F, Args, Kwargs).
    ?assertEqual({error, {invalid_kwargs, [1]}}, py:call(math, sqrt, [4], [1])),
    ?assertEqual({error, {invalid_kwargs, [1]}}, py:call(math, sqrt, [4], [1], #{})),
    ?assertEqual({ok, 4.0}, py:call(default, <<"math">>, <<"sqrt">>, [16])),
    Ctx = py:context(1),
    ?assertEqual({ok, 4.0}, py:call(Ctx, math, sqrt, [16])),
    %% pyport's own forms still work.
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])),
    ?assertEqual({ok, <<"[1]">>}, py:call(json, dumps, [[1]], #{})),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{timeout => 5000})),
    ?assertEqual({ok, <<"{\"a\": 1}">>},
                 py:call(Ctx, json, dumps, [#{a => 1}], #{sort_keys => true}, 5000)),
    %% cast through a context: the worker runs it, nobody waits.
    ok = py:cast(Ctx, builtins, exec, [<<"import builtins; builtins.compat_cast_one = 1">>, #{}]),
    ok = py:cast(Ctx, builtins, exec, [<<"import builtins; builtins.compat_cast_two = 2">>, #{}],
                 #{}),
    pyport_test_util:wait_until(
      fun() ->
              py:eval(Ctx, <<"[getattr(__import__('builtins'), n, 0)"
                             " for n in ('compat_cast_one', 'compat_cast_two')]">>) =:= {ok, [1, 2]}
      end).

options_map_of_the_ctx_form(_Config) ->
    Ctx = py:context(2),
    %% kwargs go to Python; timeout is the caller's; other keys are ignored.
    ?assertEqual({ok, <<"{\"a\": 1, \"b\": 2}">>},
                 py:call(Ctx, json, dumps, [#{b => 2, a => 1}],
                         #{kwargs => #{sort_keys => true}, timeout => 5000, colour => red})),
    ?assertEqual({error, timeout}, py:call(Ctx, time, sleep, [5], #{timeout => 50})),
    %% Before: timeout reached Python as a keyword argument.
    ?assertEqual({ok, 2.0}, py:call(Ctx, math, sqrt, [4], #{timeout => 1000})),
    ?assertEqual({ok, 2.0}, py:call(Ctx, math, sqrt, [4], 1000)),
    ?assertEqual({error, {invalid_option, timeout, -1}},
                 py:call(Ctx, math, sqrt, [4], #{timeout => -1})).

ctx_timeout_default_is_infinity(_Config) ->
    %% A pool whose call_timeout is short: a context-less call times out,
    %% a call through a context waits (erlang_python: infinity).
    {ok, _} = pyport:start_pool(short, #{size => 1, call_timeout => 100}),
    ?assertEqual({error, timeout}, py:call(short, time, sleep, [0.5])),
    Ctx = py:context(short, 1),
    ?assertEqual({ok, none}, py:call(Ctx, time, sleep, [0.5])),
    ?assertEqual({ok, none}, py:call(Ctx, time, sleep, [0.5], #{})),
    ?assertEqual({ok, 1}, py:eval(Ctx, <<"__import__('time').sleep(0.5) or 1">>)),
    %% pyport's `default': the pool's call_timeout.
    ?assertEqual({error, timeout}, py:call(Ctx, time, sleep, [0.5], #{timeout => default})).

registered_pools_route_calls(_Config) ->
    {ok, [IoCtx]} = py_context_router:start_pool(io_pool, 1),
    {ok, IoPid} = py:call(IoCtx, os, getpid, []),
    ok = py:register_pool(io_pool, os),
    ?assertEqual({ok, IoPid}, py:call(os, getpid, [])),
    ?assertEqual({ok, IoPid}, py:call(<<"os">>, <<"getpid">>, [], #{})),
    %% A function's registration wins over its module's.
    {ok, [FnCtx]} = py_context_router:start_pool(fn_pool, 1),
    {ok, FnPid} = py:call(FnCtx, os, getpid, []),
    ok = py:register_pool(fn_pool, {os, getpid}),
    ?assertEqual({ok, FnPid}, py:call(os, getpid, [])),
    %% An explicit pool option wins over both.
    {ok, DefaultPid} = py:call(os, getpid, [], #{}, #{pool => default}),
    ?assertNotEqual(IoPid, DefaultPid),
    ?assertEqual(fn_pool, py_context_router:lookup_pool(os, getpid)),
    ?assertEqual(io_pool, py_context_router:lookup_pool(os, getcwd)),
    ?assertEqual(default, py_context_router:lookup_pool(math, sqrt)),
    ?assertEqual(lists:sort([{{os, '_'}, io_pool}, {{os, getpid}, fn_pool}]),
                 lists:sort(py_context_router:list_pool_registrations())),
    ok = py:unregister_pool({os, getpid}),
    ?assertEqual({ok, IoPid}, py:call(os, getpid, [])),
    ok = py:unregister_pool(os),
    ?assertEqual(default, py_context_router:lookup_pool(os, getpid)).

contexts_are_pids(_Config) ->
    C1 = py:context(1),
    C2 = py:context(2),
    ?assert(is_pid(C1) andalso is_pid(C2)),
    ?assertNotEqual(C1, C2),
    ?assertEqual(py:context(), py:context()),
    {ok, P1} = py:call(C1, os, getpid, []),
    {ok, P2} = py:call(C2, os, getpid, []),
    ?assertNotEqual(P1, P2),
    ?assertEqual({default, 2}, py:context_slot(C2)),
    %% A pid that is no context is refused; a dead one is a dead context.
    ?assertEqual({error, {not_a_context, self()}}, py:call(self(), math, sqrt, [4])),
    Dead = spawn(fun() -> ok end),
    pyport_test_util:wait_until(fun() -> not is_process_alive(Dead) end),
    ?assertEqual({error, {context_died, noproc}}, py:call(Dead, math, sqrt, [4])).

start_contexts_and_stop(_Config) ->
    ?assert(py:contexts_started()),
    %% A running pool is returned as it is.
    {ok, Ctxs} = py:start_contexts(),
    ?assertEqual([py:context(1), py:context(2)], Ctxs),
    {ok, Ctxs} = py:start_contexts(#{contexts => 5}),
    ok = py:stop_contexts(),
    ?assertNot(py:contexts_started()),
    {ok, New} = py:start_contexts(#{contexts => 3, mode => worker}),
    ?assertEqual(3, length(New)),
    ?assert(lists:all(fun erlang:is_pid/1, New)),
    ?assertEqual({ok, 2.0}, py:call(hd(New), math, sqrt, [4])),
    ok = py:stop_contexts(),
    {ok, Back} = py:start_contexts(#{contexts => 2}),
    ?assertEqual(2, length(Back)).

%%%===================================================================
%%% Namespaces
%%%===================================================================

process_namespaces_on_a_context(_Config) ->
    Ctx = py:context(1),
    ok = py:exec(Ctx, <<"mine = 1">>),
    ?assertEqual({ok, 1}, py:eval(Ctx, <<"mine">>)),
    Other = pyport_test_util:async(fun() ->
                                           {py:eval(Ctx, <<"mine">>),
                                            py:exec(Ctx, <<"mine = 2">>),
                                            py:eval(Ctx, <<"mine">>)}
                                   end),
    {{error, {'NameError', _}}, ok, {ok, 2}} = pyport_test_util:await(Other),
    %% Each kept its own.
    ?assertEqual({ok, 1}, py:eval(Ctx, <<"mine">>)),
    ?assertEqual({ok, 1}, py:eval(Ctx, <<"mine">>, #{})),
    ?assertEqual({ok, 11}, py:eval(Ctx, <<"mine + k">>, #{k => 10})).

namespace_freed_when_process_exits(_Config) ->
    Ctx = py:context(2),
    Before = namespaces(Ctx),
    Self = self(),
    N = 20,
    Pids = [spawn(fun() ->
                          ok = py:exec(Ctx, <<"big = bytearray(1 << 16)">>),
                          Self ! {ready, self()},
                          receive stop -> ok end
                  end) || _ <- lists:seq(1, N)],
    [receive {ready, P} -> ok after 10000 -> ct:fail(not_ready) end || P <- Pids],
    ?assertEqual(Before + N, namespaces(Ctx)),
    [P ! stop || P <- Pids],
    %% The worker's gen_server learns of each exit and frees it there.
    pyport_test_util:wait_until(fun() -> namespaces(Ctx) =:= Before end),
    ?assertEqual(Before, namespaces(Ctx)),
    {ok, #{namespaces := Monitored}} = pyport:worker_info(Ctx),
    ?assert(Monitored =< Before),
    ct:log("namespaces on the worker: ~b before, ~b with ~b processes, ~b after",
           [Before, Before + N, N, namespaces(Ctx)]).

namespace_cap_per_worker(_Config) ->
    {ok, _} = pyport:start_pool(capped, #{size => 1, max_namespaces => 3}),
    Ctx = py:context(capped, 1),
    Self = self(),
    Holders = [spawn(fun() ->
                             Self ! {held, self(), py:exec(Ctx, <<"x = 1">>)},
                             receive stop -> ok end
                     end) || _ <- lists:seq(1, 3)],
    [receive {held, P, R} -> ?assertEqual(ok, R) after 10000 -> ct:fail(no_answer) end
     || P <- Holders],
    %% The fourth process is refused with a clear error; nothing ran.
    ?assertEqual({error, {too_many_namespaces, 3}}, py:exec(Ctx, <<"x = 1">>)),
    ?assertEqual({error, {too_many_namespaces, 3}}, py:eval(Ctx, <<"1">>)),
    ?assertEqual(3, namespaces(Ctx)),
    %% The shared globals and plain calls are not namespaces: still served.
    ?assertEqual({ok, 2.0}, py:call(Ctx, math, sqrt, [4])),
    ?assertEqual(ok, py:exec(Ctx, <<"y = 1">>, #{namespace => shared})),
    %% One exits: its slot is free again.
    hd(Holders) ! stop,
    pyport_test_util:wait_until(fun() -> namespaces(Ctx) < 4 andalso
                                             py:exec(Ctx, <<"x = 2">>) =:= ok end),
    ?assertEqual({ok, 2}, py:eval(Ctx, <<"x">>)),
    [P ! stop || P <- tl(Holders)].

main_is_the_callers_namespace(_Config) ->
    Ctx = py:context(1),
    ok = py:exec(Ctx, <<"def triple(x, add=0):\n    return 3 * x + add\n">>),
    ?assertEqual({ok, 12}, py:call(Ctx, '__main__', triple, [4])),
    ?assertEqual({ok, 13}, py:call(Ctx, '__main__', triple, [4], #{kwargs => #{add => 1}})),
    ?assertEqual({ok, 12}, py:await(py:spawn_call(Ctx, '__main__', triple, [4]))),
    %% Another process did not define it.
    Other = pyport_test_util:async(fun() -> py:call(Ctx, '__main__', triple, [4]) end),
    ?assertMatch({error, {'AttributeError', _}}, pyport_test_util:await(Other)),
    %% Without a context: the namespace of py:exec/1 of this process.
    ok = py:exec(<<"def quad(x):\n    return 4 * x\n">>),
    ?assertEqual({ok, 8}, py:call('__main__', quad, [2])),
    ?assertEqual({ok, 8}, py:call(<<"__main__">>, <<"quad">>, [2], #{})).

globals_behave_like_a_module(_Config) ->
    Ctx = py:context(2),
    ok = py:exec(Ctx, <<"import dataclasses, pickle, sys\n"
                        "@dataclasses.dataclass\n"
                        "class Point:\n    x: int\n    y: int = 0\n"
                        "def roundtrip(p):\n    return pickle.loads(pickle.dumps(p)) == p\n">>),
    ?assertEqual({ok, true}, py:eval(Ctx, <<"sys.modules[__name__].Point is Point">>)),
    ?assertEqual({ok, true}, py:eval(Ctx, <<"roundtrip(Point(1, 2))">>)),
    ?assertEqual({ok, true}, py:eval(Ctx, <<"Point.__module__ == __name__">>)),
    %% erlang is there without an import, and importable.
    ?assertEqual({ok, true}, py:eval(Ctx, <<"erlang is __import__('erlang')">>)),
    %% Two processes, two modules.
    Name = py:eval(Ctx, <<"__name__">>),
    Other = pyport_test_util:async(fun() -> py:eval(Ctx, <<"__name__">>) end),
    ?assertNotEqual(Name, pyport_test_util:await(Other)).

eval_with_erlang_call(_Config) ->
    ok = py:register_function(compat_add, fun([A, B]) -> A + B end),
    Ctx = py:context(1),
    ?assertEqual({ok, 5}, py:eval(Ctx, <<"erlang.call('compat_add', 2, 3)">>)),
    ?assertEqual({ok, 5}, py:eval(<<"erlang.call('compat_add', 2, 3)">>)),
    ok = py:exec(Ctx, <<"def via_erlang(n):\n    return erlang.compat_add(n, n)\n">>),
    ?assertEqual({ok, 8}, py:call(Ctx, '__main__', via_erlang, [4])),
    ok = py:unregister_function(compat_add).

schedule_marker_from_eval(_Config) ->
    ok = py:register_function(compat_double, fun([X]) -> 2 * X end),
    Ctx = py:context(1),
    ?assertEqual({ok, 42}, py:eval(Ctx, <<"erlang.schedule('compat_double', 21)">>)),
    ?assertEqual({ok, 3.0}, py:eval(Ctx, <<"erlang.schedule_py('math', 'sqrt', [9])">>)),
    ok = py:exec(Ctx, <<"def later(x):\n    return x + 1\n">>),
    ?assertEqual({ok, 2}, py:eval(Ctx, <<"erlang.schedule_inline('__main__', 'later', [1])">>)),
    ok = py:unregister_function(compat_double).

%%%===================================================================
%%% Shapes
%%%===================================================================

spawn_call_message(_Config) ->
    Ref = py:spawn_call(math, sqrt, [16]),
    ?assert(is_reference(Ref)),
    receive {py_response, Ref, Result} -> ?assertEqual({ok, 4.0}, Result)
    after 10000 -> ct:fail(no_py_response)
    end,
    Ref2 = py:spawn_call(py:context(2), math, sqrt, [-1]),
    ?assertMatch({error, {'ValueError', _}}, py:await(Ref2, 10000)),
    ?assertEqual({error, already_awaited}, py:await(Ref2)).

async_call_message_and_gather(_Config) ->
    Ref = py:async_call(asyncio, sleep, [0, done]),
    ?assert(is_reference(Ref)),
    receive {async_result, Ref, Result} -> ?assertEqual({ok, done}, Result)
    after 10000 -> ct:fail(no_async_result)
    end,
    ?assertEqual({ok, [2.0, 3.0]}, py:async_gather([{math, sqrt, [4]}, {math, sqrt, [9]}])),
    ?assertMatch({error, {gather_failed, [{2, {'ValueError', _}}, {3, {'ValueError', _}}]}},
                 py:async_gather([{math, sqrt, [4]}, {math, sqrt, [-1]}, {math, sqrt, [-4]}])).

parallel_shape(_Config) ->
    ?assertEqual({ok, [2.0, 3.0]}, py:parallel([{math, sqrt, [4]}, {math, sqrt, [9]}])),
    ?assertMatch({error, {'ValueError', _}},
                 py:parallel([{math, sqrt, [4]}, {math, sqrt, [-1]}])).

traces_shape(_Config) ->
    ok = py:clear_traces(),
    ok = py:enable_tracing(),
    try
        ok = py:exec(<<"import erlang\n"
                       "with erlang.Span('outer', k=1) as s:\n"
                       "    s.add_event('first')\n"
                       "    s.add_event('second', n=2)\n"
                       "    with erlang.Span('inner'):\n        pass\n"
                       "try:\n"
                       "    with erlang.Span('failing'):\n        raise ValueError('boom')\n"
                       "except ValueError:\n    pass\n">>),
        pyport_test_util:wait_until(fun() -> length(element(2, py:get_traces())) =:= 3 end),
        {ok, Spans} = py:get_traces(),
        ByName = maps:from_list([{N, S} || #{name := N} = S <- Spans]),
        #{<<"outer">> := Outer, <<"inner">> := Inner, <<"failing">> := Failing} = ByName,
        [?assertMatch(#{span_id := _, parent_id := _, attributes := _, start_time := _,
                        end_time := _, duration_us := _, status := _, end_attrs := _,
                        events := _}, S) || S <- Spans],
        ?assertEqual(undefined, maps:get(parent_id, Outer)),
        ?assertEqual(maps:get(span_id, Outer), maps:get(parent_id, Inner)),
        ?assertMatch(#{status := ok, end_attrs := #{}, attributes := #{<<"k">> := 1}}, Outer),
        %% Events newest first.
        ?assertMatch([#{name := <<"second">>, attrs := #{<<"n">> := 2}, time := _},
                      #{name := <<"first">>}], maps:get(events, Outer)),
        ?assertMatch(#{status := error, end_attrs := #{<<"exception">> := <<"ValueError: boom">>}},
                     Failing),
        ok = py:clear_traces(),
        ?assertEqual({ok, []}, py:get_traces())
    after
        py:disable_tracing()
    end.

gc_and_memory_stats_shapes(_Config) ->
    {ok, Stats} = py:memory_stats(),
    ?assertMatch(#{gc_stats := [#{<<"collected">> := _, <<"collections">> := _,
                                  <<"uncollectable">> := _} | _],
                   gc_count := {_, _, _}, gc_threshold := {_, _, _}}, Stats),
    {ok, _} = py:memory_stats(py:context(2)),
    {ok, N} = py:gc(),
    ?assert(is_integer(N) andalso N >= 0),
    [?assertMatch({ok, G} when is_integer(G), py:gc(Gen)) || Gen <- [0, 1, 2]],
    ?assertMatch({error, {'ValueError', _}}, py:gc(5)).

stream_cancel_event_and_owner(_Config) ->
    {ok, Ref} = py:stream_start(itertools, count, []),
    receive {py_stream, Ref, {data, 0}} -> ok after 10000 -> ct:fail(no_data) end,
    ok = py:stream_cancel(Ref),
    ?assertEqual({error, <<"cancelled">>}, last_event(Ref)),
    %% owner: the messages go to another process.
    Self = self(),
    Owner = spawn(fun() ->
                          receive go -> ok end,
                          Self ! {got, [receive {py_stream, _, M} -> M after 10000 -> timeout end
                                        || _ <- lists:seq(1, 4)]}
                  end),
    {ok, Ref2} = py:stream_start(builtins, range, [3], #{owner => Owner}),
    Owner ! go,
    receive {got, Got} -> ?assertEqual([{data, 0}, {data, 1}, {data, 2}, done], Got)
    after 10000 -> ct:fail(owner_got_nothing)
    end,
    ?assertEqual([], [M || {py_stream, R, _} = M <- element(2, process_info(self(), messages)),
                           R =:= Ref2]),
    ?assertEqual({error, {invalid_option, owner, nobody}},
                 py:stream_start(builtins, range, [3], #{owner => nobody})).

last_event(Ref) ->
    receive
        {py_stream, Ref, {data, _}} -> last_event(Ref);
        {py_stream, Ref, Other} -> Other
    after 10000 -> timeout
    end.

execution_mode_is_truthful(_Config) ->
    %% Every context is a worker OS process with its own interpreter and GIL.
    ?assertEqual(owngil, py:execution_mode()),
    ?assert(py:subinterp_supported()),
    {ok, P1} = py:call(py:context(1), os, getpid, []),
    {ok, P2} = py:call(py:context(2), os, getpid, []),
    ?assertNotEqual(P1, P2).

interrupt_a_context(_Config) ->
    Ctx = py:context(2),
    ?assertEqual(not_running, py:interrupt(Ctx)),
    Caller = pyport_test_util:async(fun() -> py:call(Ctx, time, sleep, [30]) end),
    pyport_test_util:wait_until(fun() -> py:interrupt(Ctx) =:= ok end),
    ?assertMatch({error, {'KeyboardInterrupt', _}}, pyport_test_util:await(Caller)),
    ?assertEqual({ok, 2.0}, py:call(Ctx, math, sqrt, [4])).

%% The namespaces the worker behind a context holds.
namespaces(Ctx) ->
    {ok, #{namespaces := N}} = py:memory_stats(Ctx),
    N.
