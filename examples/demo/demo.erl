%% The pyport demo: what a user sees in the first five minutes.
%% Run with `make demo`; it prints what happens and halts 0 on success.
-module(demo).
-export([main/0]).

main() ->
    try
        {ok, _} = application:ensure_all_started(pyport),
        {ok, Version} = py:version(),
        say("pyport started a pool of Python ~ts workers.", [Version]),
        calls(),
        types(),
        errors(),
        crash(),
        concurrency(),
        say("~nAll demo steps passed.", []),
        halt(0)
    catch
        Class:Reason:Stack ->
            say("~nDemo FAILED: ~p:~p~n~p", [Class, Reason, Stack]),
            halt(1)
    end.

calls() ->
    step("Calling Python functions"),
    {ok, 4.0} = show("py:call(math, sqrt, [16])", py:call(math, sqrt, [16])),
    {ok, <<"Hello, Erlang?">>} =
        show("py:call(demo_tasks, greet, [<<\"Erlang\">>], #{punctuation => <<\"?\">>})",
             py:call(demo_tasks, greet, [<<"Erlang">>], #{punctuation => <<"?">>})),
    {ok, <<"{\"a\": 1, \"b\": 2}">>} =
        show("py:call(json, dumps, [#{b => 2, a => 1}], #{sort_keys => true})",
             py:call(json, dumps, [#{b => 2, a => 1}], #{sort_keys => true})),
    {ok, 25} = show("py:eval(<<\"x * y\">>, #{x => 5, y => 5})",
                    py:eval(<<"x * y">>, #{x => 5, y => 5})),
    Ctx = py:context(1),
    ok = show("py:exec(Ctx, <<\"counter = 41\">>)", py:exec(Ctx, <<"counter = 41">>)),
    {ok, 42} = show("py:eval(Ctx, <<\"counter + 1\">>)", py:eval(Ctx, <<"counter + 1">>)).

types() ->
    step("Every kind of Erlang term goes to Python and comes back"),
    Big = 1 bsl 200,
    Values = [{"integer", 42}, {"2^200", Big}, {"-2^200", -Big}, {"float", 2.5},
              {"binary (UTF-8)", <<"héllo"/utf8>>}, {"binary (not UTF-8)", <<255, 0, 1>>},
              {"atom", hello}, {"true", true}, {"list", [1, [2, [3]]]},
              {"tuple", {ok, {nested, 1}}}, {"map", #{name => <<"ada">>, <<"k">> => [1]}},
              {"pid", self()}, {"reference", make_ref()}],
    lists:foreach(
      fun({Label, V}) ->
              {ok, PyType} = py:call(demo_tasks, python_type, [V]),
              {ok, V} = py:call(demo_tasks, identity, [V]),
              say("  ~-20s -> Python ~-6ts -> back unchanged", [Label, PyType])
      end, Values),
    {ok, <<"bytes">>} = py:call(demo_tasks, python_type, [{bytes, <<"raw">>}]),
    say("  ~-20s -> Python bytes  -> back as binary", ["{bytes, <<\"raw\">>}"]),
    {ok, none} = py:call(demo_tasks, identity, [undefined]),
    say("  ~-20s -> Python None   -> back as none", ["undefined"]),
    {ok, nan} = show("py:eval(<<\"float('nan')\">>)", py:eval(<<"float('nan')">>)),
    {ok, [1, 2, 3]} = show("py:eval(<<\"{3, 1, 2}\">>) (a set, sorted here)",
                           sorted(py:eval(<<"{3, 1, 2}">>))),
    {error, {'TypeError', _}} = show("py:eval(<<\"object()\">>)", py:eval(<<"object()">>)).

errors() ->
    step("Python exceptions come back as errors"),
    {error, {'ZeroDivisionError', _}} = show("py:eval(<<\"1/0\">>)", py:eval(<<"1/0">>)),
    {error, {'ValueError', _}} = show("py:call(demo_tasks, withdraw, [10, 50])",
                                      py:call(demo_tasks, withdraw, [10, 50])),
    {error, {'ModuleNotFoundError', _}} = show("py:call(no_such_module, f, [])",
                                               py:call(no_such_module, f, [])),
    {error, timeout} = show("py:call(time, sleep, [0.5], #{}, 100)",
                            py:call(time, sleep, [0.5], #{}, 100)),
    {ok, 4.0} = show("and the pool still answers: py:call(math, sqrt, [16])",
                     py:call(math, sqrt, [16])).

crash() ->
    step("A worker killed in the middle of a call"),
    Ctx = py:context(1),
    {ok, OsPid} = py:call(Ctx, os, getpid, []),
    Pending = py:spawn_call(Ctx, demo_tasks, slow, [10]),
    timer:sleep(200),
    say("  worker OS pid ~p is running a 10 s call; sending it SIGKILL", [OsPid]),
    _ = os:cmd("kill -KILL " ++ integer_to_list(OsPid)),
    {error, {worker_exited, Detail}} = py:await(Pending, 5000),
    say("  the waiting caller was answered: {error, {worker_exited, ~p}}", [Detail]),
    {ok, NewPid} = wait_for_worker(Ctx, 50),
    true = NewPid =/= OsPid,
    say("  a replacement worker (OS pid ~p) answers the next call", [NewPid]).

concurrency() ->
    step("1,000 concurrent callers"),
    Parent = self(),
    T0 = erlang:monotonic_time(millisecond),
    Pids = [spawn_link(fun() -> Parent ! {self(), N, py:call(demo_tasks, square, [N])} end)
            || N <- lists:seq(1, 1000)],
    Answers = [receive {P, N, R} -> {N, R} end || P <- Pids],
    Wrong = [A || {N, R} = A <- Answers, R =/= {ok, N * N}],
    [] = Wrong,
    say("  1000 callers, 1000 correct answers, in ~p ms",
        [erlang:monotonic_time(millisecond) - T0]).

wait_for_worker(_Ctx, 0) -> error(worker_not_replaced);
wait_for_worker(Ctx, Tries) ->
    case py:call(Ctx, os, getpid, []) of
        {ok, Pid} -> {ok, Pid};
        {error, _} -> timer:sleep(20), wait_for_worker(Ctx, Tries - 1)
    end.

sorted({ok, L}) -> {ok, lists:sort(L)};
sorted(Other) -> Other.

step(Title) -> say("~n== ~ts", [Title]).

show(Expr, Result) ->
    say("  ~ts~n    -> ~tp", [Expr, Result]),
    Result.

say(Fmt, Args) -> io:format(Fmt ++ "~n", Args).
