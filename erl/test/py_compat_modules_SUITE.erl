%% erlang_python's small modules over pyport's own (docs/channels.md):
%% py_semaphore, py_callback, py_state, py_tracer, and py:tracemalloc_*,
%% py:dup_fd/1.
-module(py_compat_modules_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [semaphore, callback_registry, state_module, tracer, tracemalloc, dup_fd_refused].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

semaphore(_Config) ->
    Max0 = py_semaphore:max_concurrent(),
    ?assertEqual(erlang:system_info(schedulers) * 2 + 1, Max0),
    ok = py_semaphore:set_max_concurrent(2),
    ?assertEqual(2, py_semaphore:max_concurrent()),
    ?assertEqual(0, py_semaphore:current()),
    ok = py_semaphore:acquire(100),
    ok = py_semaphore:acquire(100),
    ?assertEqual(2, py_semaphore:current()),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, max_concurrent}, py_semaphore:acquire(100)),
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 100),
    %% A slot released while one waits is taken.
    Self = self(),
    spawn(fun() -> Self ! {got, py_semaphore:acquire(5000)} end),
    timer:sleep(50),
    ok = py_semaphore:release(),
    receive {got, R} -> ?assertEqual(ok, R) after 5000 -> ct:fail(never_acquired) end,
    [ok = py_semaphore:release() || _ <- lists:seq(1, 5)],
    ?assertEqual(0, py_semaphore:current()),             % never below zero
    ok = py_semaphore:set_max_concurrent(Max0),
    ?assertError(function_clause, py_semaphore:set_max_concurrent(0)).

callback_registry(_Config) ->
    ok = py_callback:register(double, fun([X]) -> 2 * X end),
    ok = py_callback:register(<<"mf">>, {lists, reverse}),
    ?assertMatch({ok, F} when is_function(F, 1), py_callback:lookup(double)),
    ?assertEqual({ok, {lists, reverse}}, py_callback:lookup(mf)),
    ?assertEqual({error, not_found}, py_callback:lookup(nothing_here)),
    ?assertEqual({ok, 42}, py_callback:execute(double, [21])),
    ?assertEqual({ok, [b, a]}, py_callback:execute(mf, [a, b])),
    ?assertEqual({error, {not_found, <<"nothing_here">>}}, py_callback:execute(nothing_here, [])),
    ?assertMatch({error, {error, badarith, [_ | _]}}, py_callback:execute(double, [x])),
    %% Python reaches what py_callback registered.
    ?assertEqual({ok, 14}, py:eval(<<"__import__('erlang').call('double', 7)">>)),
    ok = py_callback:unregister(double),
    ?assertEqual({error, not_found}, py_callback:lookup(double)),
    ok = py_callback:unregister(mf).

state_module(_Config) ->
    ok = py_state:clear(),
    ok = py_state:store(k, 1),
    ?assertEqual({ok, 1}, py_state:fetch(k)),
    ?assertEqual({error, not_found}, py_state:fetch(nope)),
    ?assertEqual(2, py_state:incr(k)),
    ?assertEqual(12, py_state:incr(k, 10)),
    ?assertEqual(11, py_state:decr(k)),
    ?assertEqual(1, py_state:decr(k, 10)),
    ?assertEqual([k], py_state:keys()),
    %% Shared with Python's erlang.state_* (a Python str key is a binary).
    ok = py_state:store(<<"s">>, 5),
    ?assertEqual({ok, 5}, py:eval(<<"__import__('erlang').state_get('s')">>)),
    ok = py_state:remove(<<"s">>),
    ok = py_state:remove(k),
    ?assertEqual([], py_state:keys()),
    ok = py_state:clear().

tracer(_Config) ->
    ok = py_tracer:clear(),
    ok = py_tracer:enable(),
    ok = py:exec(<<"import erlang\nwith erlang.Span('compat-span'):\n    pass\n">>),
    pyport_test_util:wait_until(fun() -> {ok, S} = py_tracer:get_spans(), S =/= [] end),
    {ok, [Span]} = py_tracer:get_spans(),
    ?assertEqual(<<"compat-span">>, maps:get(name, Span)),
    ok = py_tracer:disable(),
    ok = py_tracer:clear(),
    ?assertEqual({ok, []}, py_tracer:get_spans()).

tracemalloc(_Config) ->
    ok = py:tracemalloc_start(),
    Tracing = <<"__import__('tracemalloc').is_tracing()">>,
    [?assertEqual({ok, true}, py:eval(py:context(N), Tracing)) || N <- [1, 2]],
    ok = py:tracemalloc_stop(),
    ok = py:tracemalloc_start(5),
    ?assertEqual({ok, 5}, py:eval(py:context(2), <<"__import__('tracemalloc').get_traceback_limit()">>)),
    ok = py:tracemalloc_stop(),
    [?assertEqual({ok, false}, py:eval(py:context(N), Tracing)) || N <- [1, 2]],
    ?assertEqual({error, {invalid_nframes, 0}}, py:tracemalloc_start(0)).

dup_fd_refused(_Config) ->
    ?assertMatch({error, {not_supported, <<"dup_fd", _/binary>>}}, py:dup_fd(0)).
