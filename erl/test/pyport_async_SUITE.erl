%% Coroutines and streams from Erlang against real workers: py:async_call,
%% async_await, async_gather, py_event_loop, py_event_loop_pool (affinity,
%% stats, configuration), cancellation when a caller gives up, and streams
%% with credit-based flow control.
%%
%% Python helpers live in pyport_async_SUITE_data/pyport_async_funcs.py.
-module(pyport_async_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_async_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [{group, async}, {group, event_loop}, {group, streams}, {group, failures}, {group, docs}].

groups() ->
    [{async, [],
      [async_call_and_await, async_call_message, async_call_errors, async_await_timeout_cancels,
       async_gather_in_order, async_gather_first_error, thousand_coroutines_in_one_worker,
       call_timeout_cancels_coroutine, interrupted_coroutine_is_cancelled_not_killed,
       interrupt_while_the_loop_starts, runaway_coroutine_is_interrupted_not_killed,
       sync_function_through_async_call, coroutine_requests_use_the_task_factory,
       coroutines_call_erlang, awaited_erlang_function_calls_back]},
     {event_loop, [],
      [event_loop_run, event_loop_create_task_and_await, event_loop_message,
       event_loop_await_timeout_cancels, event_loop_spawn_task, event_loop_bad_arguments,
       pool_affinity_and_order, pool_get_loop_and_stats, pool_size_setting]},
     {streams, [],
      [stream_collects_generators, stream_eval_collects, stream_error_after_items,
       stream_start_messages, stream_cancel_stops_producer, slow_consumer_bounds_producer,
       dead_consumer_stops_producer]},
     {failures, [],
      [worker_exit_answers_tasks_and_streams, endless_task_and_stream_do_not_block_recycling]},
     {docs, [],
      [docs_examples]}].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_async_SUITE_data"),
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Data]}}),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

%% Polls a condition that the worker reaches on its own (a cancellation
%% running, a producer stopping): bounded tries, no timing asserted.
eventually(Fun, What) ->
    eventually(Fun, What, 500).

eventually(Fun, What, 0) ->
    ct:fail({gave_up_waiting_for, What, Fun()});
eventually(Fun, What, N) ->
    case Fun() of
        true -> ok;
        _ -> timer:sleep(10), eventually(Fun, What, N - 1)
    end.

%% The events recorded by the worker of a context.
events(Ctx) ->
    {ok, Events} = py:call(Ctx, ?F, taken_events, []),
    Events.

mailbox() ->
    {messages, Ms} = process_info(self(), messages),
    Ms.

%%%===================================================================
%%% py:async_call
%%%===================================================================

async_call_and_await(_Config) ->
    Ref = py:async_call(?F, double, [21]),
    ?assertEqual({ok, 42}, py:async_await(Ref)),
    Ref2 = py:async_call(?F, greet, [<<"erlang">>], #{greeting => <<"hi">>}),
    ?assertEqual({ok, <<"hi erlang">>}, py:async_await(Ref2, 5000)),
    ?assertEqual([], mailbox()).

async_call_message(_Config) ->
    Ref = py:async_call(?F, double, [5]),
    receive
        {async_result, Ref, Result} -> ?assertEqual({ok, 10}, Result)
    after 10000 -> ct:fail(no_message)
    end.

async_call_errors(_Config) ->
    ?assertEqual({error, {'ValueError', <<"nope">>}}, py:async_await(py:async_call(?F, fail, [<<"nope">>]))),
    ?assertMatch({error, {'ModuleNotFoundError', _}}, py:async_await(py:async_call(no_such_module, f, []))),
    ?assertEqual({error, {invalid_args, x}}, py:async_await(py:async_call(?F, double, x))),
    ?assertEqual({error, {no_pool, nope}},
                 py:async_await(pyport_async:start_task({pool, nope}, async_result, {1, []}, default))).

async_await_timeout_cancels(_Config) ->
    Ctx = py:context(1),
    [] = events(Ctx),
    Ref = pyport_async:start_task({slot, default, 1}, async_result,
                                  {1, pyport_args:call_fields(?F, wait_forever, [<<"given up">>], #{})},
                                  infinity),
    ?assertEqual({error, timeout}, py:async_await(Ref, 50)),
    eventually(fun() -> events(Ctx) =:= [[<<"cancelled">>, <<"given up">>]] end, cancellation),
    %% The CancelledError answer never reaches the caller that gave up.
    timer:sleep(50),
    ?assertEqual([], mailbox()).

async_gather_in_order(_Config) ->
    Calls = [{?F, double, [N]} || N <- lists:seq(1, 50)] ++ [{?F, greet, [<<"x">>], #{}}],
    ?assertEqual({ok, [2 * N || N <- lists:seq(1, 50)] ++ [<<"hello x">>]}, py:async_gather(Calls)),
    ?assertEqual({ok, []}, py:async_gather([])),
    ?assertEqual({ok, [2]}, py:async_gather([{?F, double, [1]}], 5000)).

async_gather_first_error(_Config) ->
    Calls = [{?F, double, [1]}, {?F, fail, [<<"first">>]}, {?F, fail, [<<"second">>]},
             {?F, wait_forever, [<<"gather">>]}],
    %% erlang_python's shape: every failure, by 1-based index; each call is
    %% awaited at most the timeout, and one that runs longer is cancelled.
    ?assertEqual({error, {gather_failed, [{2, {'ValueError', <<"first">>}},
                                          {3, {'ValueError', <<"second">>}},
                                          {4, timeout}]}},
                 py:async_gather(Calls, 500)),
    %% The call still running was cancelled, and nothing of it reaches us.
    eventually(fun() -> lists:member([<<"cancelled">>, <<"gather">>], get_all_events()) end,
               gather_cancellation),
    erase(events),
    ?assertEqual([], mailbox()).

%% Events of both workers, accumulated in the process dictionary.
get_all_events() ->
    All = case get(events) of undefined -> []; E -> E end
        ++ events(py:context(1)) ++ events(py:context(2)),
    put(events, All),
    All.

thousand_coroutines_in_one_worker(_Config) ->
    %% Each call returns only once all 1000 wait at the same time in one
    %% worker: they run concurrently on its event loop.
    Ctx = py:context(2),
    Handles = [py:spawn_call(Ctx, ?F, barrier, [1000]) || _ <- lists:seq(1, 1000)],
    ?assertEqual(lists:duplicate(1000, {ok, 1000}), [py:await(H) || H <- Handles]).

call_timeout_cancels_coroutine(_Config) ->
    Ctx = py:context(1),
    [] = events(Ctx),
    ?assertEqual({error, timeout}, py:call(Ctx, ?F, wait_forever, [<<"timed out">>], #{}, 50)),
    %% The worker's owner cancels what a caller left behind once its
    %% deadline has passed.
    eventually(fun() -> events(Ctx) =:= [[<<"cancelled">>, <<"timed out">>]] end, cancellation).

coroutines_call_erlang(_Config) ->
    ok = py:register_function(async_suite_double, fun([X]) -> 2 * X end),
    try
        %% Many tasks await Erlang at once on one worker's loop.
        Refs = [py:async_call(?F, ask_erlang, [async_suite_double, N]) || N <- lists:seq(1, 50)],
        ?assertEqual([{ok, [2 * N, 2 * (N + 1)]} || N <- lists:seq(1, 50)],
                     [py:async_await(R) || R <- Refs]),
        ?assertEqual({ok, 14}, py:call(?F, sleep_then_call, [async_suite_double, 7]))
    after
        py:unregister_function(async_suite_double)
    end.

%% A caller that gives up has the owner interrupt its request (and kill the
%% OS process if no answer comes within kill_after); a coroutine request is
%% cancelled instead, answers at once, and the worker lives on.
interrupted_coroutine_is_cancelled_not_killed(_Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_async_SUITE_data"),
    {ok, _} = pyport:start_pool(async_kill, #{size => 1, python_path => [Data], kill_after => 200}),
    try
        Ctx = py:context(async_kill, 1),
        {ok, #{os_pid := OsPid, restarts := Restarts}} = pyport:worker_info(Ctx),
        %% The worker's loop starts with the first coroutine: what is
        %% interrupted here is a coroutine already running on it.
        ?assertEqual({ok, ok}, py:call(Ctx, asyncio, sleep, [0, ok])),
        ?assertEqual({error, timeout},
                     py:call(Ctx, ?F, wait_forever, [<<"interrupted">>], #{}, 50)),
        eventually(fun() -> events(Ctx) =:= [[<<"cancelled">>, <<"interrupted">>]] end,
                   cancellation),
        timer:sleep(400),   % past kill_after
        ?assertMatch({ok, #{os_pid := OsPid, restarts := Restarts, interrupted := 0}},
                     pyport:worker_info(Ctx)),
        ?assertEqual({ok, 4}, py:call(Ctx, ?F, double, [2]))
    after
        pyport:stop_pool(async_kill)
    end.

%% A coroutine whose step never returns to the loop: the caller that gives
%% up has it interrupted (KeyboardInterrupt inside that step), so the
%% worker is not killed after kill_after, and its other tasks go on.
runaway_coroutine_is_interrupted_not_killed(_Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_async_SUITE_data"),
    {ok, _} = pyport:start_pool(async_runaway, #{size => 1, python_path => [Data], kill_after => 1000}),
    try
        Ctx = py:context(async_runaway, 1),
        ?assertEqual({ok, ok}, py:call(Ctx, asyncio, sleep, [0, ok])),
        {ok, #{os_pid := OsPid, restarts := Restarts}} = pyport:worker_info(Ctx),
        Bystander = pyport_async:start_task({slot, async_runaway, 1}, async_result,
                                            {1, pyport_args:call_fields(?F, double, [21], #{})}, infinity),
        ?assertEqual({error, timeout}, py:call(Ctx, ?F, runaway, [<<"r">>], #{}, 200)),
        ?assertEqual({ok, 42}, py:async_await(Bystander, 10000)),
        ?assertEqual({ok, 4}, py:call(Ctx, ?F, double, [2])),
        timer:sleep(1300),   % past kill_after
        ?assertMatch({ok, #{os_pid := OsPid, restarts := Restarts, interrupted := 0}},
                     pyport:worker_info(Ctx)),
        ?assertEqual({ok, [[<<"spinning">>, <<"r">>]]}, py:call(Ctx, ?F, taken_events, []))
    after
        pyport:stop_pool(async_runaway)
    end.

%% The first coroutine request starts the worker's loop (importing asyncio);
%% a caller that gives up meanwhile has its request interrupted, which must
%% never leave asyncio half-imported: the worker serves coroutines after it,
%% and is not killed for it.
interrupt_while_the_loop_starts(_Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_async_SUITE_data"),
    [begin
         Pool = list_to_atom("async_start_" ++ integer_to_list(Ms)),
         {ok, _} = pyport:start_pool(Pool, #{size => 1, python_path => [Data], kill_after => 200}),
         try
             Ctx = py:context(Pool, 1),
             {ok, #{os_pid := OsPid, restarts := Restarts}} = pyport:worker_info(Ctx),
             ?assertEqual({error, timeout},
                          py:call(Ctx, ?F, wait_forever, [<<"early">>], #{}, Ms)),
             ?assertEqual({ok, 4}, py:call(Ctx, ?F, double, [2])),
             ?assertEqual({ok, true},
                          py:eval(Ctx, <<"__import__('erlang').get_worker_loop().is_running()">>)),
             timer:sleep(400),   % past kill_after
             ?assertMatch({ok, #{os_pid := OsPid, restarts := Restarts, interrupted := 0}},
                          pyport:worker_info(Ctx))
         after
             pyport:stop_pool(Pool)
         end
     end || Ms <- [1, 5, 20]],
    ok.

%% A coroutine request awaits an Erlang function (erlang.async_call) on the
%% worker's loop, which goes on handling requests: the function may call
%% back into the very same worker, sync and coroutine functions alike.
awaited_erlang_function_calls_back(_Config) ->
    Ctx = py:context(2),
    ok = py:register_function(async_suite_reenter,
                              fun([X]) ->
                                      {ok, T} = py:call(Ctx, ?F, triple, [X]),
                                      {ok, D} = py:call(Ctx, ?F, double, [T]),
                                      D
                              end),
    try
        ?assertEqual({ok, 42}, py:call(Ctx, ?F, await_erlang, [async_suite_reenter, 7])),
        Refs = [py:async_call(?F, await_erlang, [async_suite_reenter, N]) || N <- lists:seq(1, 20)],
        ?assertEqual([{ok, 6 * N} || N <- lists:seq(1, 20)], [py:async_await(R) || R <- Refs])
    after
        py:unregister_function(async_suite_reenter)
    end.

sync_function_through_async_call(_Config) ->
    ?assertEqual({ok, 4.0}, py:async_await(py:async_call(math, sqrt, [16]))).

%%%===================================================================
%%% py_event_loop and py_event_loop_pool
%%%===================================================================

event_loop_run(_Config) ->
    ?assertEqual({ok, 8}, py_event_loop:run(?F, double, [4])),
    ?assertEqual({ok, <<"hey you">>},
                 py_event_loop:run(?F, greet, [<<"you">>], #{kwargs => #{greeting => <<"hey">>},
                                                          timeout => 10000})),
    ?assertEqual({ok, 4.0}, py_event_loop:run(math, sqrt, [16.0])),
    ?assertEqual({error, {'ValueError', <<"bad">>}}, py_event_loop:run(?F, fail, [<<"bad">>])),
    ?assertEqual({ok, 6}, py_event_loop_pool:run(?F, double, [3])).

event_loop_create_task_and_await(_Config) ->
    Refs = [py_event_loop:create_task(?F, double, [N]) || N <- lists:seq(1, 20)],
    ?assertEqual([{ok, 2 * N} || N <- lists:seq(1, 20)], [py_event_loop:await(R) || R <- Refs]),
    Ref = py_event_loop:create_task(?F, greet, [<<"a">>], #{greeting => <<"bye">>}),
    ?assertEqual({ok, <<"bye a">>}, py_event_loop:await(Ref, infinity)),
    PRef = py_event_loop_pool:create_task(?F, double, [7]),
    ?assertEqual({ok, 14}, py_event_loop_pool:await(PRef)).

event_loop_message(_Config) ->
    Ref = py_event_loop:create_task(asyncio, sleep, [0.001, <<"woke">>]),
    receive
        {async_result, Ref, Result} -> ?assertEqual({ok, <<"woke">>}, Result)
    after 10000 -> ct:fail(no_message)
    end.

event_loop_await_timeout_cancels(_Config) ->
    %% py_event_loop is the first worker of the pool.
    Ctx = py:context(1),
    [] = events(Ctx),
    Ref = py_event_loop:create_task(?F, wait_forever, [<<"loop">>]),
    ?assertEqual({error, timeout}, py_event_loop:await(Ref, 30)),
    eventually(fun() -> events(Ctx) =:= [[<<"cancelled">>, <<"loop">>]] end, cancellation),
    ?assertEqual({error, timeout}, py_event_loop_pool:run(?F, wait_forever, [<<"pool">>],
                                                          #{timeout => 30})),
    {ok, Loop} = py_event_loop_pool:get_loop(),
    eventually(fun() -> events(Loop) =:= [[<<"cancelled">>, <<"pool">>]] end, cancellation).

event_loop_spawn_task(_Config) ->
    Ctx = py:context(1),
    [] = events(Ctx),
    ?assertEqual(ok, py_event_loop:spawn_task(?F, record, [<<"spawned">>])),
    ?assertEqual(ok, py_event_loop:spawn_task(?F, record, [<<"kw">>], #{})),
    eventually(fun() -> length(get_events(Ctx)) >= 2 end, spawned_tasks),
    ?assertEqual([[<<"ran">>, <<"spawned">>], [<<"ran">>, <<"kw">>]], erase(events)).

get_events(Ctx) ->
    All = case get(events) of undefined -> []; E -> E end ++ events(Ctx),
    put(events, All),
    All.

event_loop_bad_arguments(_Config) ->
    ?assertEqual({error, {invalid_args, nope}}, py_event_loop:run(?F, double, nope)),
    ?assertEqual({error, {invalid_kwargs, nope}},
                 py_event_loop:await(py_event_loop:create_task(?F, double, [], nope))),
    ?assertEqual({error, {invalid_name, 42}}, py_event_loop:spawn_task(42, f, [])).

pool_affinity_and_order(_Config) ->
    %% Each process keeps to one worker, and its tasks run in the order it
    %% created them.
    Parent = self(),
    Pids = [spawn_link(fun() ->
                               {ok, Loop} = py_event_loop_pool:get_loop(),
                               {ok, OsPid} = py:call(Loop, ?F, os_pid, []),
                               Pids = [begin
                                           {ok, P} = py_event_loop_pool:run(?F, os_pid, []),
                                           P
                                       end || _ <- lists:seq(1, 10)],
                               Tags = [{I, self()} || I <- lists:seq(1, 30)],
                               Refs = [py_event_loop_pool:create_task(
                                         ?F, record, [term_to_binary(T)]) || T <- Tags],
                               Done = [py_event_loop_pool:await(R) || R <- Refs],
                               Parent ! {self(), OsPid, lists:usort(Pids),
                                         [binary_to_term(B) || {ok, B} <- Done] =:= Tags}
                       end) || _ <- lists:seq(1, 8)],
    Results = [receive {P, OsPid, Seen, InOrder} -> {OsPid, Seen, InOrder} end || P <- Pids],
    [?assertEqual({[OsPid], true}, {Seen, InOrder}) || {OsPid, Seen, InOrder} <- Results],
    %% The order in which each worker ran the tasks, per process.
    Runs = events(py:context(1)) ++ events(py:context(2)),
    ByProc = lists:foldl(fun([<<"ran">>, B], Acc) ->
                                 {I, P} = binary_to_term(B),
                                 maps:update_with(P, fun(L) -> [I | L] end, [I], Acc)
                         end, #{}, Runs),
    [?assertEqual(lists:seq(1, 30), lists:reverse(L)) || L <- maps:values(ByProc)],
    ?assertEqual(8, map_size(ByProc)).

pool_get_loop_and_stats(_Config) ->
    {ok, Loop1} = py_event_loop_pool:get_loop(),
    {ok, Loop2} = py_event_loop_pool:get_loop(),
    ?assertEqual(Loop1, Loop2),
    ?assertMatch({default, Slot} when Slot =:= 1; Slot =:= 2, py:context_slot(Loop1)),
    Stats = py_event_loop_pool:get_stats(),
    ?assertMatch(#{num_loops := 2, supported := true, pool := default, in_flight := [_, _]}, Stats).

%% A coroutine request runs as loop.create_task would run it, task factory
%% included; a factory that fails answers the request with its error, and
%% the worker goes on.
coroutine_requests_use_the_task_factory(_Config) ->
    Ctx = py:context(1),
    ?assertEqual({ok, 4}, py:call(Ctx, ?F, double, [2], #{}, #{})),    % the loop runs
    try
        ?assertEqual({ok, 0}, py:call(Ctx, ?F, set_task_factory, [<<"count">>], #{}, #{})),
        ?assertEqual({ok, 6}, py:call(Ctx, ?F, double, [3], #{}, #{})),
        ?assertEqual({ok, 8}, py_event_loop:run(?F, double, [4], #{})),
        ?assertMatch({ok, N} when N >= 1, py:call(Ctx, ?F, set_task_factory, [<<"fail">>], #{}, #{})),
        ?assertEqual({error, {'RuntimeError', <<"no tasks here">>}},
                     py:call(Ctx, ?F, double, [5], #{}, #{})),
        ?assertEqual({error, {'RuntimeError', <<"no tasks here">>}},
                     py:await(py:spawn_call(Ctx, ?F, double, [5]), 5000))
    after
        py:call(Ctx, ?F, set_task_factory, [<<"none">>], #{}, #{})
    end,
    ?assertEqual({ok, 10}, py:call(Ctx, ?F, double, [5], #{}, #{})).

pool_size_setting(_Config) ->
    try
        application:set_env(pyport, event_loop_pool_size, 1),
        ?assertMatch(#{num_loops := 1}, py_event_loop_pool:get_stats()),
        ?assertEqual({ok, py:context(1)}, py_event_loop_pool:get_loop()),
        application:set_env(pyport, event_loop_pool_size, 100),
        ?assertMatch(#{num_loops := 2}, py_event_loop_pool:get_stats()),
        application:set_env(pyport, event_loop_pool, no_such_pool),
        ?assertMatch(#{supported := false, error := {no_pool, no_such_pool}},
                     py_event_loop_pool:get_stats()),
        ?assertEqual({error, {no_pool, no_such_pool}}, py_event_loop:run(?F, double, [1])),
        ?assertEqual({error, {no_pool, no_such_pool}}, py_event_loop_pool:spawn_task(?F, double, [1]))
    after
        application:unset_env(pyport, event_loop_pool_size),
        application:unset_env(pyport, event_loop_pool)
    end.

%%%===================================================================
%%% Streams
%%%===================================================================

stream_collects_generators(_Config) ->
    ?assertEqual({ok, lists:seq(0, 999)}, py:stream(?F, count, [1000])),
    ?assertEqual({ok, [0, 1, 2]}, py:stream(?F, acount, [3])),
    ?assertEqual({ok, [0, 1]}, py:stream(builtins, range, [2], #{})),
    ?assertEqual({ok, []}, py:stream(?F, count, [0])),
    ?assertMatch({error, {'TypeError', _}}, py:stream(builtins, abs, [-1])).

stream_eval_collects(_Config) ->
    ?assertEqual({ok, [0, 1, 4, 9]}, py:stream_eval(<<"(x * x for x in range(4))">>)),
    ?assertEqual({ok, [<<"a">>, <<"b">>]}, py:stream_eval(<<"iter(s)">>, #{s => [<<"a">>, <<"b">>]})).

stream_error_after_items(_Config) ->
    ?assertEqual({error, {'RuntimeError', <<"failed after 3">>}}, py:stream(?F, count_then_fail, [3])),
    {ok, Ref} = py:stream_start(?F, count_then_fail, [2]),
    ?assertEqual([{data, 0}, {data, 1}, {error, {'RuntimeError', <<"failed after 2">>}}],
                 [receive {py_stream, Ref, M} -> M after 10000 -> timeout end || _ <- [1, 2, 3]]).

stream_start_messages(_Config) ->
    {ok, Ref} = py:stream_start(?F, acount, [5], #{}),
    Msgs = [receive {py_stream, Ref, M} -> M after 10000 -> timeout end || _ <- lists:seq(1, 6)],
    ?assertEqual([{data, I} || I <- lists:seq(0, 4)] ++ [done], Msgs),
    ?assertEqual({error, {bad_option, bogus}}, py:stream_start(?F, count, [1], #{bogus => 1})).

stream_cancel_stops_producer(_Config) ->
    {ok, Ref} = py:stream_start(?F, tracked, [<<"cancel">>, 1000000]),
    receive {py_stream, Ref, {data, 0}} -> ok after 10000 -> ct:fail(no_data) end,
    ok = py:stream_cancel(Ref),
    %% As erlang_python: items already delivered stay, then the stream ends
    %% with {error, <<"cancelled">>}, and nothing of it arrives later.
    Left = [M || {py_stream, R, _} = M <- mailbox(), R =:= Ref],
    ?assertEqual({py_stream, Ref, {error, <<"cancelled">>}}, lists:last(Left)),
    ?assertEqual([], [M || {py_stream, _, Ev} = M <- lists:droplast(Left),
                           element(1, Ev) =/= data]),
    flush_stream(Ref),
    {ok, Ctx} = worker_of_stream(<<"cancel">>),
    eventually(fun() -> produced(Ctx, <<"cancel">>) end, closed),
    timer:sleep(50),
    ?assertEqual([], mailbox()).

flush_stream(Ref) ->
    receive {py_stream, Ref, _} -> flush_stream(Ref) after 0 -> ok end.

%% The context whose worker ran the generator with this tag.
worker_of_stream(Tag) ->
    [Ctx] = [C || C <- [py:context(1), py:context(2)],
                  element(1, py:call(C, ?F, produced_count, [Tag])) =:= ok,
                  begin {ok, [N, _]} = py:call(C, ?F, produced_count, [Tag]), N > 0 end],
    {ok, Ctx}.

produced(Ctx, Tag) ->
    {ok, [_, Closed]} = py:call(Ctx, ?F, produced_count, [Tag]),
    Closed.

slow_consumer_bounds_producer(_Config) ->
    Total = 5000,
    {ok, Ref} = py:stream_start(?F, tracked, [<<"slow">>, Total]),
    receive {py_stream, Ref, {data, 0}} -> ok after 10000 -> ct:fail(no_data) end,
    {ok, Ctx} = worker_of_stream(<<"slow">>),
    %% Not reading: the producer stops once the window is used, however long
    %% we wait (it settles: the same count twice in a row, 100 ms apart).
    Count = fun() -> {ok, [N, _]} = py:call(Ctx, ?F, produced_count, [<<"slow">>]), N end,
    Settled = settle(Count, -1),
    Window = pyport_worker:stream_window(),
    ct:pal("producer settled at ~b items of ~b (window ~b)", [Settled, Total, Window]),
    ?assert(Settled =< 2 * Window + 1),
    %% Reading everything then brings the rest, in order.
    Items = [receive {py_stream, Ref, {data, I}} -> I after 10000 -> timeout end
             || _ <- lists:seq(2, Total)],
    ?assertEqual(lists:seq(1, Total - 1), Items),
    receive {py_stream, Ref, done} -> ok after 10000 -> ct:fail(no_done) end.

settle(Count, Previous) ->
    timer:sleep(100),
    case Count() of
        Previous -> Previous;
        N -> settle(Count, N)
    end.

dead_consumer_stops_producer(_Config) ->
    Self = self(),
    Consumer = spawn(fun() ->
                             {ok, Ref} = py:stream_start(?F, tracked, [<<"orphan">>, 1000000]),
                             receive {py_stream, Ref, {data, 0}} -> Self ! started end
                     end),
    receive started -> ok after 10000 -> ct:fail(not_started) end,
    eventually(fun() -> not is_process_alive(Consumer) end, consumer_exit),
    {ok, Ctx} = worker_of_stream(<<"orphan">>),
    eventually(fun() -> produced(Ctx, <<"orphan">>) end, closed).

%%%===================================================================
%%% Worker failures
%%%===================================================================

worker_exit_answers_tasks_and_streams(_Config) ->
    Ctx = py:context(2),
    {ok, #{os_pid := OsPid}} = pyport:worker_info(Ctx),
    {ok, Loop} = py_event_loop_pool:get_loop(),
    {_, LoopSlot} = py:context_slot(Loop),
    {default, 2} = py:context_slot(Ctx),
    Task = pyport_async:start_task({slot, default, 2}, async_result,
                                   {1, pyport_args:call_fields(?F, wait_forever, [<<"x">>], #{})}, infinity),
    {ok, Stream} = pyport_async:stream_start({slot, default, 2},
                                             {1, pyport_args:call_fields(?F, tracked, [<<"dies">>, 1000000], #{})},
                                             self()),
    receive {py_stream, Stream, {data, 0}} -> ok after 10000 -> ct:fail(no_data) end,
    _ = LoopSlot,
    os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    ?assertEqual({error, {worker_exited, {signal, sigkill}}}, py:async_await(Task, 10000)),
    ?assertEqual({error, {worker_exited, {signal, sigkill}}}, last_stream_message(Stream)),
    %% The restarted worker serves again.
    eventually(fun() -> py:call(Ctx, ?F, double, [1]) =:= {ok, 2} end, restart).

%% max_requests recycles a worker once what it runs has finished; a task
%% or a stream that never ends is cancelled shutdown_timeout after the
%% recycling began, so the worker is recycled all the same.
endless_task_and_stream_do_not_block_recycling(_Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_async_SUITE_data"),
    {ok, _} = pyport:start_pool(async_recycle, #{size => 1, python_path => [Data],
                                                 max_requests => 3, shutdown_timeout => 300}),
    try
        Ctx = py:context(async_recycle, 1),
        {ok, #{os_pid := OsPid, recycles := 0}} = pyport:worker_info(Ctx),
        Task = pyport_async:start_task({slot, async_recycle, 1}, async_result,
                                       {1, pyport_args:call_fields(?F, wait_forever, [<<"endless">>], #{})},
                                       infinity),
        {ok, Stream} = pyport_async:stream_start({slot, async_recycle, 1},
                                                 {1, pyport_args:call_fields(itertools, count, [], #{})},
                                                 self()),
        receive {py_stream, Stream, {data, 0}} -> ok after 10000 -> ct:fail(no_data) end,
        %% The third request: the worker takes no more and drains.
        ?assertEqual({ok, 4}, py:call(Ctx, ?F, double, [2])),
        ?assertMatch({error, {'CancelledError', _}}, py:async_await(Task, 10000)),
        ?assertMatch({error, {'CancelledError', _}}, last_stream_message(Stream)),
        eventually(fun() ->
                           case pyport:worker_info(Ctx) of
                               {ok, #{os_pid := New, recycles := 1, status := up}} -> New =/= OsPid;
                               _ -> false
                           end
                   end, recycled),
        ?assertEqual({ok, 6}, py:call(Ctx, ?F, double, [3]))
    after
        pyport:stop_pool(async_recycle)
    end.

last_stream_message(Ref) ->
    receive
        {py_stream, Ref, {data, _}} -> last_stream_message(Ref);
        {py_stream, Ref, Last} -> Last
    after 10000 -> timeout
    end.

%%%===================================================================
%%% docs/asyncio.md
%%%===================================================================

%% Every Erlang example of docs/asyncio.md (but sys.config snippets) runs.
docs_examples(_Config) ->
    Doc = find_up(filename:dirname(code:which(?MODULE)), "docs/asyncio.md"),
    {ok, Text} = file:read_file(Doc),
    {match, Blocks} = re:run(Text, "^```erlang\n(.*?)^```$", [global, multiline, dotall,
                                                                {capture, all_but_first, list}]),
    Run = [B || [B] <- Blocks, not lists:prefix("%% sys.config", B)],
    ?assert(length(Run) >= 5),
    lists:foreach(fun(Source) ->
                          {ok, Tokens, _} = erl_scan:string(Source),
                          {ok, Exprs} = erl_parse:parse_exprs(Tokens),
                          try erl_eval:exprs(Exprs, erl_eval:new_bindings())
                          catch C:R:S -> ct:fail({example_failed, Source, C, R, S})
                          end,
                          ?assertEqual([], mailbox())
                  end, Run).

find_up(Dir, Rel) ->
    Path = filename:join(Dir, Rel),
    case filelib:is_regular(Path) of
        true -> Path;
        false when Dir =/= "/" -> find_up(filename:dirname(Dir), Rel);
        false -> ct:fail({not_found, Rel})
    end.
