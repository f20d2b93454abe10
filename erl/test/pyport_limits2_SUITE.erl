%% Limits of what callers and operators can ask for (issue 10, items 8, 9,
%% 11 and 13): timeouts beyond 2^32-1 ms, configuration errors that name
%% the key, bounded stream collection, handles awaited by the wrong process
%% or twice, remote calls to a frozen node, pool sizes the node cannot
%% hold. Every case checks the exact answer, that it comes once, and that
%% the node keeps the processes it had.
-module(pyport_limits2_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

%% Beyond what one `receive ... after' takes.
-define(HUGE, (1 bsl 40)).
-define(MAX_TIMEOUT, 16#FFFFFFFF).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [huge_timeouts_do_not_crash_the_caller, timeout_options_are_bounded,
     limit_options_are_bounded, pool_size_is_bounded,
     worker_reports_why_it_cannot_start, python_start_failure_names_env,
     sandbox_limits_the_worker_refuses_are_named,
     init_code_that_exits_names_init_code,
     stream_collection_is_bounded, stream_bytes_are_bounded, stream_default_bytes_follow_the_pool,
     await_from_another_process_is_not_owner, second_await_answers_at_once,
     frozen_node_answers_at_the_callers_timeout].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    [{processes, erlang:system_info(process_count)}, {ports, counted_ports()} | Config].

end_per_testcase(_Case, Config) ->
    pyport_test_util:stop_other_pools(),
    %% Nothing the case did may leave processes or ports behind (a little
    %% slack for processes of the runtime that come and go).
    Before = {?config(processes, Config) + 2, ?config(ports, Config)},
    case settled(Before, 500) of
        ok -> ok;
        {leaked, After, Names} -> {fail, {leaked, #{before => Before, 'after' => After, ports => Names}}}
    end.

%% The node's ports but OTP's DNS helper, which the first distributed
%% case starts on its own and keeps for the node's life.
counted_ports() ->
    length([P || P <- erlang:ports(),
                 case erlang:port_info(P, name) of
                     {name, Name} -> filename:basename(Name) =/= "inet_gethost";
                     undefined -> false
                 end]).

settled({Processes, Ports} = Before, Tries) ->
    Now = {erlang:system_info(process_count), counted_ports()},
    case Now of
        {P, Q} when P =< Processes, Q =< Ports -> ok;
        _ when Tries > 1 -> timer:sleep(10), settled(Before, Tries - 1);
        _ -> {leaked, Now, [erlang:port_info(P, name) || P <- erlang:ports()]}
    end.

%%%===================================================================
%%% Item 8: timeouts of any size
%%%===================================================================

huge_timeouts_do_not_crash_the_caller(_Config) ->
    %% Slow enough that every caller goes past its first short wait.
    Sleep = [0.05],
    ?assertEqual({ok, none}, py:call(time, sleep, Sleep, #{}, ?HUGE)),
    ?assertEqual({ok, none}, py:call(time, sleep, Sleep, #{}, #{timeout => ?HUGE})),
    H1 = py:spawn_call(time, sleep, Sleep, #{}, #{timeout => ?HUGE}),
    ?assertEqual({ok, none}, py:await(H1)),
    H2 = py:spawn_call(time, sleep, Sleep),
    ?assertEqual({ok, none}, py:await(H2, ?HUGE)),
    R1 = py:async_call(asyncio, sleep, Sleep),
    ?assertEqual({ok, none}, py:async_await(R1, ?HUGE)),
    R2 = py_event_loop:create_task(asyncio, sleep, Sleep),
    ?assertEqual({ok, none}, py_event_loop:await(R2, ?HUGE)),
    ?assertEqual({ok, [0, 1]},
                 py:stream_eval(<<"(__import__('time').sleep(0.02) or i for i in range(2))">>,
                                #{}, #{timeout => ?HUGE})),
    %% A C module is reloaded by recycling the worker: a gen_server call.
    {ok, #{recycles := Recycles}} = pyport:worker_info(py:context(1)),
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4])),
    ?assertEqual(ok, py:reload(math, #{timeout => ?HUGE})),
    ?assertMatch({ok, #{recycles := R}} when R > Recycles, pyport:worker_info(py:context(1))),
    %% Nothing is left in the mailbox.
    ?assertEqual({messages, []}, process_info(self(), messages)).

timeout_options_are_bounded(_Config) ->
    [begin
         ?assertEqual({error, {invalid_pool_option, t, Key, ?MAX_TIMEOUT + 1}},
                      pyport:start_pool(t, #{size => 1, Key => ?MAX_TIMEOUT + 1})),
         ?assertEqual({error, {invalid_pool_option, t, Key, ?HUGE}},
                      pyport:start_pool(t, #{size => 1, Key => ?HUGE}))
     end || Key <- [call_timeout, start_timeout, kill_after, shutdown_timeout]],
    %% The largest one works, also when the pool stops (shutdown_timeout).
    {ok, _} = pyport:start_pool(t, #{size => 1, call_timeout => ?MAX_TIMEOUT,
                                     start_timeout => ?MAX_TIMEOUT, kill_after => ?MAX_TIMEOUT,
                                     shutdown_timeout => ?MAX_TIMEOUT}),
    ?assertEqual({ok, none}, py:call(time, sleep, [0.05], #{}, #{pool => t})),
    ?assertEqual(ok, pyport:stop_pool(t)).

%%%===================================================================
%%% Item 9: configuration errors name the key
%%%===================================================================

limit_options_are_bounded(_Config) ->
    Max = pyport_config:max_value(max_memory),
    ?assertEqual(1 bsl 62, Max),
    [?assertEqual({error, {invalid_pool_option, l, Key, Value}},
                  pyport:start_pool(l, #{size => 1, Key => Value}))
     || {Key, Value} <- [{max_memory, Max + 1}, {max_memory, 1 bsl 65},
                         {cpu_seconds, 1 bsl 64 - 1}, {cpu_seconds, 1 bsl 32},
                         {max_open_files, 1 bsl 63},
                         {max_inflight, Max + 1}, {max_requests, Max + 1}, {max_rss, Max + 1}]],
    %% At the bound the worker takes them.
    {ok, _} = pyport:start_pool(l, #{size => 1, max_memory => Max, cpu_seconds => 1 bsl 32 - 1,
                                     max_open_files => Max}),
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4], #{}, #{pool => l})).

pool_size_is_bounded(_Config) ->
    Ports = length(erlang:ports()),
    Max = pyport_config:max_value(size),
    ?assert(Max >= 1 andalso Max =< 4096),
    ?assert(Max =< erlang:system_info(port_limit) div 4),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, {invalid_pool_option, huge, size, 1 bsl 40}},
                 pyport:start_pool(huge, #{size => 1 bsl 40})),
    ?assertEqual({error, {invalid_pool_option, huge, size, Max + 1}},
                 pyport:start_pool(huge, #{size => Max + 1})),
    ?assert(erlang:monotonic_time(millisecond) - T0 < 1000),
    ?assertEqual(Ports, length(erlang:ports())).

%% The worker itself says which option it refuses, in a frame, before it
%% exits (what a pool sees when its own checks let something through).
worker_reports_why_it_cannot_start(_Config) ->
    Worker = maps:get(worker, pyport_config:defaults()),
    Port = open_port({spawn_executable, Worker},
                     [{packet, 4}, binary, exit_status,
                      {args, ["--max-memory", integer_to_list(1 bsl 63)]}]),
    Frame = receive {Port, {data, Bin}} -> Bin after 5000 -> error(no_frame) end,
    {ok, 17, 0, 3, Rest} = pyport_codec:decode_frame_head(Frame),
    {ok, [<<"StartError">>, Message, <<"--max-memory">>]} = pyport_codec:decode_fields(3, Rest),
    ?assertMatch({_, _}, binary:match(Message, integer_to_binary(1 bsl 63))),
    ?assertEqual({config_error, max_memory, Message},
                 element(2, pyport_start_error:from_frame(Rest, #{}))),
    receive {Port, {exit_status, 2}} -> ok after 5000 -> error(no_exit) end.

python_start_failure_names_env(_Config) ->
    {error, {pool_start_failed, home, {worker_start_failed, {config_error, env, Message}}}} =
        pyport:start_pool(home, #{size => 1, env => #{"PYTHONHOME" => "/nonexistent/pyhome"}}),
    ?assertMatch({_, _}, binary:match(Message, <<"cannot start Python">>)),
    ?assertMatch({_, _}, binary:match(Message, <<"PYTHONHOME=/nonexistent/pyhome">>)).

%% The sandbox map's own limits are checked by the worker (refused before
%% it is confined): the error names the sandbox key.
sandbox_limits_the_worker_refuses_are_named(_Config) ->
    {error, {pool_start_failed, sb, {worker_start_failed,
                                     {config_error, {sandbox, cpu_seconds}, M1}}}} =
        pyport:start_pool(sb, #{size => 1, sandbox => #{cpu_seconds => 1 bsl 40}}),
    ?assertMatch({_, _}, binary:match(M1, integer_to_binary(1 bsl 40))),
    {error, {pool_start_failed, sb, {worker_start_failed,
                                     {config_error, {sandbox, max_processes}, _}}}} =
        pyport:start_pool(sb, #{size => 1, sandbox => #{max_processes => 1 bsl 63}}),
    ?assertEqual([default], pyport:pools()).

init_code_that_exits_names_init_code(_Config) ->
    ?assertEqual({error, {pool_start_failed, osexit,
                          {worker_start_failed, {init_failed, init_code, {exit_status, 7}}}}},
                 pyport:start_pool(osexit, #{size => 1,
                                             init_code => <<"import os; os._exit(7)">>})),
    ?assertEqual({error, {pool_start_failed, sysexit,
                          {worker_start_failed, {init_failed, init_code,
                                                 {<<"SystemExit">>, <<"3">>}}}}},
                 pyport:start_pool(sysexit, #{size => 1,
                                              init_code => <<"import sys; sys.exit(3)">>})),
    %% An import that kills the process names the import.
    ?assertMatch({error, {pool_start_failed, imp,
                          {worker_start_failed, {init_failed, {import, <<"this">>}, {exit_status, 5}}}}},
                 pyport:start_pool(imp, #{size => 1, imports => [this],
                                          init_code => <<"pass">>,
                                          python_path => [exiting_module_dir()]})).

%% A directory with a module `this' (shadowing the standard one) that
%% exits its process when imported.
exiting_module_dir() ->
    Dir = filename:join(["/tmp", "pyport_limits2_" ++ os:getpid()]),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "this.py"), <<"import os\nos._exit(5)\n">>),
    Dir.

%%%===================================================================
%%% Item 11: stream collection is bounded
%%%===================================================================

-define(ENDLESS,
        <<"import itertools\n"
          "closed = []\n"
          "def endless(item):\n"
          "    try:\n"
          "        for _ in itertools.count():\n"
          "            yield item\n"
          "    finally:\n"
          "        closed.append(1)\n">>).

stream_collection_is_bounded(_Config) ->
    {ok, _} = pyport:start_pool(s, #{size => 1, init_code => ?ENDLESS}),
    Ctx = py:context(s, 1),
    ?assertEqual({error, {stream_too_large, max_items, 1000}},
                 py:stream_eval(<<"endless(1)">>, #{}, #{pool => s, max_items => 1000})),
    %% The generator was closed in the worker, and no item is left here.
    pyport_test_util:wait_until(fun() -> py:eval(Ctx, <<"len(closed)">>) =:= {ok, 1} end),
    timer:sleep(50),
    ?assertEqual({messages, []}, process_info(self(), messages)),
    %% The worker serves on; a finite stream up to the limit is whole.
    ?assertEqual({ok, lists:seq(0, 999)},
                 py:stream(builtins, range, [1000], #{}, #{pool => s, max_items => 1000})),
    ?assertEqual({error, {invalid_option, max_items, 0}},
                 py:stream(builtins, range, [1], #{}, #{max_items => 0})),
    ?assertEqual({error, {bad_option, colour}}, py:stream_eval(<<"[]">>, #{}, #{colour => red})).

stream_bytes_are_bounded(_Config) ->
    {ok, _} = pyport:start_pool(s, #{size => 1, init_code => ?ENDLESS}),
    ?assertEqual({error, {stream_too_large, max_bytes, 1000000}},
                 py:stream_eval(<<"endless(b'x' * 10000)">>, #{},
                                #{pool => s, max_bytes => 1000000})),
    pyport_test_util:wait_until(
      fun() -> py:eval(py:context(s, 1), <<"len(closed)">>) =:= {ok, 1} end).

%% Without options the collection stops at the pool's max_frame_size: a
%% never-ending generator costs the collector at most that much.
stream_default_bytes_follow_the_pool(_Config) ->
    {ok, _} = pyport:start_pool(s, #{size => 1, init_code => ?ENDLESS,
                                     max_frame_size => 1 bsl 20}),
    Self = self(),
    Collector = spawn(fun() ->
                              R = py:stream_eval(<<"endless(b'x' * 4096)">>, #{}, #{pool => s}),
                              {memory, M} = process_info(self(), memory),
                              Self ! {self(), R, M}
                      end),
    receive
        {Collector, Result, Memory} ->
            ?assertEqual({error, {stream_too_large, max_bytes, 1 bsl 20}}, Result),
            ct:log("collector memory at the end: ~b bytes", [Memory]),
            ?assert(Memory < 16 bsl 20)
    after 20000 ->
            error(collector_hangs)
    end.

%%%===================================================================
%%% Item 13: handles awaited once, by their owner
%%%===================================================================

await_from_another_process_is_not_owner(_Config) ->
    %% The calls take 2 s: an answer well before that did not wait for them.
    H = py:spawn_call(time, sleep, [2.0]),
    Task = py:async_call(asyncio, sleep, [2.0, <<"done">>]),
    Loop = py_event_loop:create_task(asyncio, sleep, [2.0, <<"done">>]),
    Self = self(),
    Other = spawn(fun() ->
                          T0 = erlang:monotonic_time(millisecond),
                          Answers = [py:await(H), py:await(H, infinity),
                                     py:async_await(Task, infinity), py_event_loop:await(Loop, infinity)],
                          Self ! {self(), Answers, erlang:monotonic_time(millisecond) - T0}
                  end),
    receive
        {Other, Answers, Ms} ->
            ?assertEqual(lists:duplicate(4, {error, not_owner}), Answers),
            ?assert(Ms < 1500)
    after 5000 ->
            error(other_process_hangs)
    end,
    %% The owner's calls went on, untouched.
    ?assertEqual({ok, none}, py:await(H)),
    ?assertEqual({ok, <<"done">>}, py:async_await(Task)),
    ?assertEqual({ok, <<"done">>}, py_event_loop:await(Loop)),
    ?assertEqual({messages, []}, process_info(self(), messages)).

second_await_answers_at_once(_Config) ->
    H = py:spawn_call(math, sqrt, [4.0], #{}, #{timeout => infinity}),
    ?assertEqual({ok, 2.0}, py:await(H)),
    Task = py:async_call(asyncio, sleep, [0, 1]),
    ?assertEqual({ok, 1}, py:async_await(Task)),
    Loop = py_event_loop:create_task(asyncio, sleep, [0, 2]),
    ?assertEqual({ok, 2}, py_event_loop:await(Loop, infinity)),
    %% Timed out first: the handle is spent as well.
    Slow = py:spawn_call(time, sleep, [0.2], #{}, #{timeout => infinity}),
    ?assertEqual({error, timeout}, py:await(Slow, 10)),
    SlowTask = py_event_loop:create_task(asyncio, sleep, [0.2]),
    ?assertEqual({error, timeout}, py_event_loop:await(SlowTask, 10)),
    Failed = py:async_call(math, sqrt, [4], not_a_map),
    ?assertMatch({error, {invalid_kwargs, _}}, py:async_await(Failed)),
    Received = py_event_loop:create_task(asyncio, sleep, [0, 3]),
    receive {async_result, Received, {ok, 3}} -> ok after 5000 -> error(no_result) end,
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual([{error, already_awaited} || _ <- lists:seq(1, 11)],
                 [py:await(H), py:await(H, infinity), py:async_await(Task),
                  py:async_await(Task, infinity), py_event_loop:await(Loop, infinity),
                  py:await(Slow, infinity), py_event_loop:await(SlowTask, infinity),
                  py:async_await(Failed, infinity), py_event_loop:await(Received, infinity),
                  py_event_loop:await(Received, infinity), py:await(Slow)]),
    %% Not at a deadline: the default one is 5 s, the others infinite.
    ?assert(erlang:monotonic_time(millisecond) - T0 < 2500),
    timer:sleep(300),
    ?assertEqual({messages, []}, process_info(self(), messages)).

%% A call to a node that stops answering (SIGSTOP: distribution does not
%% notice for a minute) answers at the caller's timeout, given or default.
frozen_node_answers_at_the_callers_timeout(_Config) ->
    Started = case is_alive() of
                  true -> false;
                  false ->
                      _ = os:cmd("epmd -daemon"),
                      Name = list_to_atom("pyport_limits2_" ++ os:getpid()),
                      {ok, _} = net_kernel:start([Name, shortnames]),
                      true
              end,
    Paths = lists:append([["-pa", filename:dirname(code:which(M))] || M <- [?MODULE, pyport]]),
    {ok, Peer, Node} = peer:start(#{name => peer:random_name(?MODULE), args => Paths}),
    OsPid = erpc:call(Node, os, getpid, []),
    %% The pool's call_timeout here is what a `default' remote call waits.
    {ok, _} = pyport:start_pool(frozen, #{size => 1, call_timeout => 700}),
    try
        "" = os:cmd("kill -STOP " ++ OsPid),
        {Ms1, R1} = timed(fun() -> py:call(math, sqrt, [4], #{}, #{node => Node, timeout => 400}) end),
        ?assertEqual({error, timeout}, R1),
        ?assert(Ms1 >= 400 andalso Ms1 < 1400),
        {Ms2, R2} = timed(fun() -> py:call(math, sqrt, [4], #{}, #{node => Node, pool => frozen}) end),
        ?assertEqual({error, timeout}, R2),
        ?assert(Ms2 >= 700 andalso Ms2 < 1700),
        H = py:spawn_call(math, sqrt, [4], #{}, #{node => Node, timeout => 300}),
        {Ms3, R3} = timed(fun() -> py:await(H) end),
        ?assertEqual({error, timeout}, R3),
        ?assert(Ms3 < 1300),
        ?assertEqual({error, already_awaited}, py:await(H, infinity)),
        ct:log("frozen node: given timeout 400 ms answered in ~b ms, default (700) in ~b ms, "
               "await 300 in ~b ms", [Ms1, Ms2, Ms3])
    after
        os:cmd("kill -CONT " ++ OsPid),
        peer:stop(Peer),
        case Started of
            true -> net_kernel:stop();
            false -> ok
        end
    end,
    %% The late answers (if any came) never reach the mailbox.
    timer:sleep(100),
    ?assertEqual({messages, []}, process_info(self(), messages)).

timed(Fun) ->
    T0 = erlang:monotonic_time(millisecond),
    R = Fun(),
    {erlang:monotonic_time(millisecond) - T0, R}.
