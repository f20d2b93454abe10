%% `output => caller' (per pool and per call): what a call prints reaches
%% its caller's group leader (a process of the test's, speaking the io
%% protocol) instead of logger; attributed per request even when asyncio
%% tasks interleave; within the pool's log_rate, lines cut to it; a worker
%% cannot send lines to a group leader that did not ask for them.
-module(pyport_output_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_output_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [per_call_output, default_goes_to_logger, pool_option, stderr_and_partial_lines,
     tasks_interleave, threads_go_to_logger, rate_limited, long_line_is_cut,
     forged_lines_go_to_logger, nothing_left_behind, routes, invalid_options].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1,
                                               python_path => [?config(data_dir, Config)]}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools().

start_pool(Name, Opts, Config) ->
    {ok, _} = pyport:start_pool(Name, maps:merge(#{size => 1,
                                                   python_path => [?config(data_dir, Config)]},
                                                 Opts)),
    ok.

%%%===================================================================
%%% Cases
%%%===================================================================

per_call_output(_Config) ->
    {Result, Text, Logged} = capture(fun() ->
                                             py:call(?F, shout, [<<"hello">>, <<"wörld"/utf8>>], #{},
                                                     #{output => caller})
                                     end),
    ?assertEqual({ok, 2}, Result),
    ?assertEqual(<<"hello\nwörld\n"/utf8>>, Text),
    ?assertEqual([], Logged),
    %% Through a context, and with spawn_call.
    Ctx = py:context(default, 1),
    {{ok, 1}, <<"ctx\n">>, []} =
        capture(fun() -> py:call(Ctx, ?F, shout, [<<"ctx">>], #{}, #{output => caller}) end),
    {{ok, 1}, <<"spawned\n">>, []} =
        capture(fun() ->
                        py:await(py:spawn_call(?F, shout, [<<"spawned">>], #{},
                                               #{output => caller}))
                end).

default_goes_to_logger(_Config) ->
    {Result, Text, Logged} = capture(fun() -> py:call(?F, shout, [<<"to the log">>]) end),
    ?assertEqual({ok, 1}, Result),
    ?assertEqual(<<>>, Text),
    ?assert(lists:member(<<"to the log">>, Logged)).

pool_option(Config) ->
    start_pool(shell, #{output => caller}, Config),
    {{ok, 1}, <<"pool-wide\n">>, []} =
        capture(fun() -> py:call(?F, shout, [<<"pool-wide">>], #{}, #{pool => shell}) end),
    %% A call may still ask for the log.
    {{ok, 1}, <<>>, Logged} =
        capture(fun() ->
                        py:call(?F, shout, [<<"logged anyway">>], #{},
                                #{pool => shell, output => logger})
                end),
    ?assert(lists:member(<<"logged anyway">>, Logged)),
    %% eval and exec are not calls: logged.
    ok = py:exec(<<"print('from exec')">>, #{pool => shell}).

stderr_and_partial_lines(_Config) ->
    {{ok, true}, <<"on stderr\n">>, []} =
        capture(fun() -> py:call(?F, to_stderr, [<<"on stderr">>], #{}, #{output => caller}) end),
    %% A line without its newline still comes, when the call ends.
    {{ok, true}, <<"unfinished">>, []} =
        capture(fun() -> py:call(?F, partial, [<<"unfinished">>], #{}, #{output => caller}) end),
    %% A str that is not valid Unicode is shown escaped, not an error.
    {{ok, true}, <<"bad \\udcff char\n">>, []} =
        capture(fun() -> py:call(?F, surrogate, [], #{}, #{output => caller}) end).

tasks_interleave(Config) ->
    start_pool(tasks, #{}, Config),
    %% Two coroutine calls on one worker, printing in turns: each caller
    %% gets its own lines only.
    Self = self(),
    Run = fun(Tag) ->
                  spawn_link(fun() ->
                                     Self ! {Tag, capture_io(fun() ->
                                                                  py:call(?F, interleaved, [Tag, 5], #{},
                                                                          #{pool => tasks,
                                                                            output => caller})
                                                          end)}
                             end)
          end,
    Run(<<"a">>),
    Run(<<"b">>),
    [receive
         {Tag, {Result, Text}} ->
             ?assertEqual({ok, Tag}, Result),
             ?assertEqual(iolist_to_binary([[Tag, " ", integer_to_list(I), "\n"]
                                            || I <- lists:seq(0, 4)]), Text)
     after 30000 ->
             ct:fail({no_answer, Tag})
     end || Tag <- [<<"a">>, <<"b">>]].

threads_go_to_logger(_Config) ->
    %% A thread the call starts does not inherit its context.
    {{ok, true}, <<>>, Logged} =
        capture(fun() -> py:call(?F, in_thread, [<<"from a thread">>], #{}, #{output => caller}) end),
    ?assert(lists:member(<<"from a thread">>, Logged)).

rate_limited(Config) ->
    start_pool(flood, #{log_rate => #{lines => 20, bytes => infinity}}, Config),
    T0 = erlang:monotonic_time(millisecond),
    {Result, Text, _} = capture(fun() ->
                                        py:call(?F, flood, [20000], #{},
                                                #{pool => flood, output => caller})
                                end),
    Seconds = (erlang:monotonic_time(millisecond) - T0) div 1000 + 1,
    ?assertEqual({ok, 20000}, Result),
    Lines = length(binary:split(Text, <<"\n">>, [global, trim_all])),
    %% A burst of two seconds' worth, then 20 a second.
    ct:pal("~b lines of 20000 in ~b s", [Lines, Seconds]),
    ?assert(Lines >= 20),
    ?assert(Lines =< 40 + 20 * Seconds).

long_line_is_cut(Config) ->
    start_pool(long, #{log_rate => #{lines => infinity, bytes => 1000}}, Config),
    {{ok, 10000}, Text, _} =
        capture(fun() -> py:call(?F, long_line, [10000], #{}, #{pool => long, output => caller}) end),
    %% Cut to the bucket (2000 bytes), at a character boundary.
    [Kept, Note] = binary:split(Text, <<" ... (">>),
    ?assert(byte_size(Kept) =< 2000 andalso byte_size(Kept) >= 1998),
    ?assertEqual(Kept, unicode:characters_to_binary(Kept)),
    ?assertMatch({match, _}, re:run(Note, "bytes cut")).

forged_lines_go_to_logger(_Config) ->
    %% Python names a request id that is not one asking for output.
    {{ok, true}, <<>>, Logged} =
        capture(fun() -> py:call(?F, forge, [12345, <<"forged">>], #{}, #{output => caller}) end),
    ?assert(lists:member(<<"forged">>, Logged)),
    %% A frame that is not [Id, Text, Newline] is reported, not delivered.
    {{ok, true}, <<>>, _} =
        capture(fun() -> py:call(?F, forge, [<<"not an id">>, <<"x">>], #{}, #{output => caller}) end),
    %% Its own request, but bytes that are not UTF-8: not for a terminal.
    {{ok, true}, <<>>, _} =
        capture(fun() -> py:call(?F, forge, [none, {bytes, <<255, 0>>}], #{},
                                 #{output => caller}) end),
    %% ... while its own request with text is delivered.
    {{ok, true}, <<"mine\n">>, []} =
        capture(fun() -> py:call(?F, forge, [none, <<"mine">>], #{}, #{output => caller}) end).

nothing_left_behind(Config) ->
    start_pool(clean, #{}, Config),
    {ok, [{1, Pid}]} = pyport:workers(clean),
    %% Answered, timed out, and lost with the OS process.
    {{ok, 1}, _, _} = capture(fun() -> py:call(?F, shout, [<<"x">>], #{},
                                               #{pool => clean, output => caller}) end),
    {{error, timeout}, <<"slow\n">>, _} =
        capture(fun() ->
                        py:call(?F, sleep_printing, [<<"slow">>, 30], #{},
                                #{pool => clean, output => caller, timeout => 300})
                end),
    pyport_test_util:wait_until(fun() -> outputs(Pid) =:= undefined end),
    Ref = pyport_test_util:async(fun() ->
                                         py:call(?F, sleep_printing, [<<"doomed">>, 30], #{},
                                                 #{pool => clean, output => caller})
                                 end),
    pyport_test_util:wait_until(fun() -> outputs(Pid) =/= undefined end),
    pyport_os:kill(pyport_test_util:os_pid({clean, 1})),
    ?assertMatch({error, {worker_exited, _}}, pyport_test_util:await(Ref)),
    ?assertEqual(undefined, outputs(Pid)).

routes(_Config) ->
    %% This node named: as a local call.
    {{ok, 1}, <<"here\n">>, []} =
        capture(fun() -> py:call(?F, shout, [<<"here">>], #{}, #{node => node(), output => caller}) end),
    %% A shard key.
    {{ok, 1}, <<"shard\n">>, []} =
        capture(fun() -> py:call(?F, shout, [<<"shard">>], #{}, #{shard => k, output => caller}) end),
    %% The cluster: the call may run on another node, so its output is logged.
    {{ok, 1}, <<>>, Logged} =
        capture(fun() -> py:call(?F, shout, [<<"anywhere">>], #{},
                                 #{pool => {cluster, default}, output => caller}) end),
    ?assert(lists:member(<<"anywhere">>, Logged)).

invalid_options(_Config) ->
    ?assertEqual({error, {invalid_option, output, loud}},
                 py:call(?F, shout, [], #{}, #{output => loud})),
    ?assertEqual({error, {invalid_pool_option, p, output, loud}},
                 pyport_config:validate_pool(p, #{output => loud})).

%%%===================================================================
%%% Helpers
%%%===================================================================

%% The owner's map of requests whose output goes to a caller.
outputs(Pid) ->
    {dictionary, Dict} = process_info(Pid, dictionary),
    proplists:get_value('$pyport_outputs', Dict).

%% Runs Fun in a process whose group leader records what it is sent, with
%% pyport's log captured: {Result, Text, LoggedLines}.
capture(Fun) ->
    pyport_test_util:with_log_capture(info, fun() ->
        {Result, Text} = capture_io(Fun),
        {Result, Text, logged()}
    end).

%% The same without the log (for several at once): {Result, Text, []}.
capture_io(Fun) ->
    Gl = spawn_link(fun() -> group_leader_loop([]) end),
    Self = self(),
    Ref = make_ref(),
    Pid = spawn_link(fun() -> Self ! {Ref, Fun()} end),
    true = group_leader(Gl, Pid),
    Result = receive {Ref, R} -> R after 50000 -> ct:fail(no_answer) end,
    %% Lines a worker sent come before its answer; the logger's too.
    timer:sleep(100),
    Gl ! {text, self()},
    Text = receive {Gl, T} -> T after 5000 -> ct:fail(no_text) end,
    unlink(Gl),
    exit(Gl, kill),
    {Result, Text}.

logged() ->
    receive
        {pyport_test_log, #{msg := {"~ts", [Line]}}} ->
            [iolist_to_binary(Line) | logged()];
        {pyport_test_log, _} ->
            logged()
    after 0 ->
            []
    end.

%% A group leader: takes put_chars, answers ok, keeps the text.
group_leader_loop(Acc) ->
    receive
        {io_request, From, ReplyAs, {put_chars, unicode, Chars}} ->
            From ! {io_reply, ReplyAs, ok},
            group_leader_loop([Acc, unicode:characters_to_binary(Chars)]);
        {io_request, From, ReplyAs, {put_chars, unicode, M, F, A}} ->
            From ! {io_reply, ReplyAs, ok},
            group_leader_loop([Acc, unicode:characters_to_binary(apply(M, F, A))]);
        {io_request, From, ReplyAs, _} ->
            From ! {io_reply, ReplyAs, {error, enotsup}},
            group_leader_loop(Acc);
        {text, Pid} ->
            Pid ! {self(), iolist_to_binary(Acc)},
            group_leader_loop(Acc)
    end.
