%% A small program written for erlang_python, run unchanged on pyport:
%% contexts from start_contexts, functions defined with py:exec called as
%% '__main__', timeouts in option maps, eval calling back into Erlang, a
%% context of its own, registered pools, and the shapes it matches on.
-module(py_migration_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([erlang_python_program_runs_unchanged/1]).

all() ->
    [erlang_python_program_runs_unchanged].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

erlang_python_program_runs_unchanged(_Config) ->
    ?assertEqual({ok, [ok, 8, 27, 5.0, timeout, 6, [1, 4, 9], 10, 3]}, program()).

%% Written against erlang_python's documentation, not pyport's.
program() ->
    {ok, Contexts} = py:start_contexts(),
    true = py:contexts_started(),
    [Ctx | _] = Contexts,
    true = is_pid(Ctx),
    ok = py:register_function(cube, fun([X]) -> X * X * X end),
    ok = py:exec(Ctx, <<"def double(x):\n"
                        "    return x * 2\n"
                        "def sleepy(s):\n"
                        "    import time\n"
                        "    time.sleep(s)\n"
                        "    return s\n">>),
    {ok, 8} = py:call(Ctx, '__main__', double, [4]),
    {ok, 27} = py:eval(Ctx, <<"erlang.call('cube', 3)">>),
    {ok, 5.0} = py:call(Ctx, math, hypot, [3, 4], #{timeout => 5000}),
    {error, timeout} = py:call(Ctx, '__main__', sleepy, [5], #{timeout => 100}),
    {ok, 6} = py:call(Ctx, '__main__', double, [3], #{kwargs => #{}, timeout => 1000}),
    {ok, [1, 4, 9]} = py:parallel([{operator, mul, [1, 1]}, {operator, mul, [2, 2]},
                                   {operator, mul, [3, 3]}]),
    {ok, Own} = py_context:new(#{mode => worker}),
    ok = py_context:exec(Own, <<"total = 0\ndef add(n):\n    global total\n    total += n\n"
                                "    return total\n">>),
    {ok, 4} = py_context:call(Own, '__main__', add, [4]),
    {ok, 10} = py_context:call(Own, '__main__', add, [6]),
    Ref = py:spawn_call(operator, add, [1, 2]),
    true = is_reference(Ref),
    R = receive {py_response, Ref, Res} -> Res after 10000 -> timeout end,
    {ok, 3} = R,
    {ok, _Spans} = py:get_traces(),
    {ok, N} = py:gc(),
    true = is_integer(N),
    ok = py_context:stop(Own),
    ok = py:unregister_function(cube),
    {ok, [ok, 8, 27, 5.0, timeout, 6, [1, 4, 9], 10, 3]}.
