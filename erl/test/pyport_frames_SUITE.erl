%% What a worker writes on its frame channel cannot hurt the node: the
%% owner checks each length header before it buffers a byte of the body
%% (pyport_framer), kills a worker that breaks the framing or writes faster
%% than it can be read, and logs a worker's output within the pool's
%% log_rate (pyport_worker_log). The attacks run as Python code in a real
%% worker writing straight to its channel (pyport_hostile.py); those that
%% could cost the node memory run in a peer node started under a memory
%% cap (ulimit -v), and measure its peak RSS.
-module(pyport_frames_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(H, pyport_hostile).
-define(MAX, (1024 * 1024)).
%% The peer node: its address space cap (KiB), and how much its peak RSS
%% may grow during an attack on a pool of ?PEER_MAX frames.
-define(PEER_VMEM_KB, (3 * 1024 * 1024)).
-define(PEER_MAX, (4 * 1024 * 1024)).
-define(PEER_GROWTH, (6 * ?PEER_MAX)).
-define(CALLERS, 50).
-define(FLOOD_SECONDS, 3).

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [{group, framing}, {group, memory}, {group, flood}].

groups() ->
    [{framing, [], [garbage_header, undecodable_frame, frame_at_and_below_max,
                    frame_just_above_max, broken_frame_answers_every_caller_once,
                    broken_frame_before_ready_fails_the_start]},
     {memory, [], [header_claims_1gb_then_stalls, header_claims_4gb_then_stalls,
                   frame_of_600mb]},
     {flood, [], [print_flood_does_not_starve_callers, hostile_log_frames_dropped_with_note,
                  hostile_flood_is_killed, log_rate_validated]}].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_frames_SUITE_data"),
    ok = pyport_test_util:start(#{default => #{size => 1, python_path => [Data]}}),
    [{data, Data} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_group(framing, Config) ->
    %% One attack first, so that the code it runs is loaded (loading a
    %% module makes atoms) before the cases count atoms.
    start_pool(frames, #{}, Config),
    {error, {worker_exited, _}} = call(?H, write_raw, [<<16#FF, 16#FF, 16#FF, 16#FF>>]),
    {ok, _} = call(?H, identity, [warm]),
    ok = pyport:stop_pool(frames),
    Config;
init_per_group(_Group, Config) ->
    Config.

end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools().

%%%===================================================================
%%% Framing
%%%===================================================================

%% 0xFFFFFFFF: refused from its 4 bytes; nothing of a body is awaited.
garbage_header(Config) ->
    broken_frame(Config, write_raw, [<<16#FF, 16#FF, 16#FF, 16#FF>>],
                 {frame_too_large, 16#FFFFFFFF, ?MAX}).

%% A header of 3 bytes whose body is no msgpack array: the stream cannot be
%% trusted after it.
undecodable_frame(Config) ->
    broken_frame(Config, write_raw, [<<0, 0, 0, 3, 16#c1, 0, 0>>], {bad_frame, not_an_array}).

%% A frame of exactly max_frame_size bytes, and one byte less, are taken;
%% so is a real answer just under the limit.
frame_at_and_below_max(Config) ->
    start_pool(frames, #{}, Config),
    OsPid = pyport_test_util:os_pid({frames, 1}),
    ?assertEqual({ok, ?MAX + 4}, call(?H, write_frame_of_size, [?MAX])),
    ?assertEqual({ok, ?MAX + 3}, call(?H, write_frame_of_size, [?MAX - 1])),
    {ok, Blob} = call(?H, blob, [?MAX - 64]),
    ?assertEqual(?MAX - 64, byte_size(Blob)),
    ?assertEqual(OsPid, pyport_test_util:os_pid({frames, 1})),
    ?assertMatch({ok, #{restarts := 0}}, pyport:worker_info({frames, 1})).

%% One byte more than max_frame_size: the worker is killed.
frame_just_above_max(Config) ->
    broken_frame(Config, write_frame_of_size, [?MAX + 1], {frame_too_large, ?MAX + 1, ?MAX}).

%% Calls waiting on the worker when it breaks the framing are each
%% answered once, with the reason; nothing leaks.
broken_frame_answers_every_caller_once(Config) ->
    start_pool(frames, #{}, Config),
    Flag = pyport_test_util:flag(Config),
    OsPid = pyport_test_util:os_pid({frames, 1}),
    Before = node_counts(),
    Self = self(),
    Caller = fun(F, A) ->
                     spawn_link(fun() ->
                                        R = call(?H, F, A),
                                        timer:sleep(50),
                                        {messages, Extra} = process_info(self(), messages),
                                        Self ! {answer, self(), R, Extra}
                                end)
             end,
    First = Caller(write_raw, [<<16#7F, 16#FF, 16#FF, 16#FF>>, Flag]),
    wait_pending(1),
    Rest = [Caller(identity, [N]) || N <- lists:seq(1, 7)],
    wait_pending(8),
    ok = file:write_file(Flag, <<>>),
    Detail = {frame_too_large, 16#7FFFFFFF, ?MAX},
    Answers = [receive {answer, P, R, Extra} -> {R, Extra} after 20000 -> ct:fail({no_answer, P}) end
               || P <- [First | Rest]],
    ?assertEqual(lists:duplicate(8, {{error, {worker_exited, Detail}}, []}), Answers),
    assert_replaced(OsPid, Detail),
    ?assertEqual(Before, node_counts()).

%% A worker that breaks the framing before it is ready fails its start
%% with the reason (here: the first worker of a pool).
broken_frame_before_ready_fails_the_start(Config) ->
    Code = <<"import pyport_hostile\npyport_hostile.write_raw(b'\\xff\\xff\\xff\\xff')\n">>,
    ?assertEqual({error, {pool_start_failed, early,
                          {worker_start_failed, {frame_too_large, 16#FFFFFFFF, ?MAX}}}},
                 pyport:start_pool(early, #{size => 1, max_frame_size => ?MAX, init_code => Code,
                                            python_path => [?config(data, Config)]})).

broken_frame(Config, F, A, Detail) ->
    start_pool(frames, #{}, Config),
    OsPid = pyport_test_util:os_pid({frames, 1}),
    Before = node_counts(),
    ?assertEqual({error, {worker_exited, Detail}}, call(?H, F, A)),
    assert_replaced(OsPid, Detail),
    ?assertEqual(Before, node_counts()).

%%%===================================================================
%%% Memory (in a capped peer node)
%%%===================================================================

header_claims_1gb_then_stalls(Config) ->
    peer_attack(Config, write_raw, [<<16#40000000:32>>, none, 30.0],
                {frame_too_large, 16#40000000, ?PEER_MAX}).

header_claims_4gb_then_stalls(Config) ->
    peer_attack(Config, write_raw, [<<16#FFFFFFF0:32>>, none, 30.0],
                {frame_too_large, 16#FFFFFFF0, ?PEER_MAX}).

frame_of_600mb(Config) ->
    Size = 600 * 1024 * 1024,
    peer_attack(Config, write_huge_frame, [Size], {frame_too_large, Size, ?PEER_MAX}).

%% Runs the attack in a fresh peer node; its peak RSS and erlang:memory
%% must grow by no more than a few max_frame_size.
peer_attack(Config, F, A, Detail) ->
    {Peer, _Node} = start_peer(Config),
    try
        ok = peer:call(Peer, ?MODULE, peer_start, [?config(data, Config)], 60000),
        Report = peer:call(Peer, ?MODULE, peer_run, [?H, F, A], 90000),
        ct:log("~p(~p): ~p", [F, A, Report]),
        #{result := Result, served := Served, hwm_before := Hwm0, hwm_after := Hwm1,
          mem_before := Mem0, mem_peak := MemPeak} = Report,
        ?assertEqual({error, {worker_exited, Detail}}, Result),
        ?assertEqual({ok, served}, Served),
        ?assert(Hwm1 - Hwm0 < ?PEER_GROWTH),
        ?assert(MemPeak - Mem0 < ?PEER_GROWTH)
    after
        peer:stop(Peer)
    end.

start_peer(Config) ->
    Erl = os:find_executable("erl"),
    Wrapper = filename:join(?config(priv_dir, Config), "erl_capped.sh"),
    ok = file:write_file(Wrapper, ["#!/bin/sh\nulimit -v ", integer_to_list(?PEER_VMEM_KB),
                                   "\nexec ", Erl, " \"$@\"\n"]),
    ok = file:change_mode(Wrapper, 8#755),
    Paths = lists:usort([filename:dirname(code:which(M))
                         || M <- [pyport, pyport_test_util, ?MODULE]]),
    {ok, Peer, Node} = peer:start_link(#{exec => Wrapper, connection => standard_io,
                                         args => lists:append([["-pa", P] || P <- Paths])}),
    {Peer, Node}.

%% In the peer: pyport with one pool of ?PEER_MAX frames.
peer_start(Data) ->
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{hostile => #{size => 1, max_frame_size => ?PEER_MAX,
                                                      python_path => [Data]}}),
    {ok, _} = application:ensure_all_started(pyport),
    {ok, 1} = py:call(?H, identity, [1], #{}, #{pool => hostile}),
    ok.

%% In the peer: the attack, with its memory sampled every millisecond.
peer_run(M, F, A) ->
    erlang:garbage_collect(),
    Hwm0 = vm_hwm(),
    Mem0 = erlang:memory(total),
    Sampler = spawn(fun() -> sample_memory(Mem0) end),
    Result = py:call(M, F, A, #{}, #{pool => hostile, timeout => 60000}),
    Served = case py:call(M, identity, [served], #{}, #{pool => hostile, timeout => 30000}) of
                 {ok, served} = Ok -> Ok;
                 Other -> Other
             end,
    Sampler ! {stop, self()},
    Peak = receive {peak, P} -> P after 5000 -> undefined end,
    #{result => Result, served => Served, hwm_before => Hwm0, hwm_after => vm_hwm(),
      mem_before => Mem0, mem_peak => Peak}.

sample_memory(Peak) ->
    receive
        {stop, From} -> From ! {peak, max(Peak, erlang:memory(total))}
    after 1 ->
            sample_memory(max(Peak, erlang:memory(total)))
    end.

%% Peak RSS of this OS process, in bytes.
vm_hwm() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [_, Rest] = binary:split(Status, <<"VmHWM:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb) * 1024.

%%%===================================================================
%%% Output flood
%%%===================================================================

%% A worker printing as fast as it can for 3 s while 50 callers call it:
%% every call is answered in time, the owner's mailbox stays short, the
%% log gets at most log_rate, and a note says how much was dropped.
print_flood_does_not_starve_callers(Config) ->
    start_pool(flood, #{}, Config),
    Owner = owner(flood),
    pyport_test_util:with_log_capture(info, fun() ->
        ?assertEqual({ok, true}, call(flood, ?H, print_flood, [?FLOOD_SECONDS])),
        Until = now_ms() + ?FLOOD_SECONDS * 1000,
        Sampler = start_mailbox_sampler(Owner),
        Self = self(),
        Callers = [spawn_link(fun() -> Self ! {done, self(), call_loop(Until, 0, 0, 0)} end)
                   || _ <- lists:seq(1, ?CALLERS)],
        Results = [receive {done, C, R} -> R after 60000 -> ct:fail(caller_hung) end
                   || C <- Callers],
        MaxQueue = stop_sampler(Sampler),
        {Calls, Errors, MaxLatency} =
            lists:foldl(fun({C, E, L}, {C0, E0, L0}) -> {C0 + C, E0 + E, max(L0, L)} end,
                        {0, 0, 0}, Results),
        %% The note comes once the relay's rate lets it through.
        Notes = collect_notes(<<"of output dropped">>, 5000),
        Logged = logged_lines(<<"flooding the log">>),
        ct:log("~b calls, ~b errors, max latency ~b ms, owner mailbox max ~b, ~b flood lines "
               "logged, notes: ~p", [Calls, Errors, MaxLatency, MaxQueue, Logged, Notes]),
        ?assertEqual(0, Errors),
        ?assert(Calls > ?CALLERS),
        ?assert(MaxQueue < 4 * ?CALLERS),
        %% At most the default 1,000 lines a second, plus the burst.
        ?assert(Logged =< 1000 * (?FLOOD_SECONDS + 2)),
        ?assertMatch([_ | _], Notes)
    end).

call_loop(Until, Calls, Errors, MaxLatency) ->
    case now_ms() < Until of
        false ->
            {Calls, Errors, MaxLatency};
        true ->
            T0 = now_ms(),
            E = case py:call(?H, identity, [Calls], #{}, #{pool => flood, timeout => 5000}) of
                    {ok, Calls} -> 0;
                    _ -> 1
                end,
            call_loop(Until, Calls + 1, Errors + E, max(MaxLatency, now_ms() - T0))
    end.

%% LOG frames written straight to the channel, above the pool's log_rate
%% but slower than the owner reads: dropped and counted, worker kept.
hostile_log_frames_dropped_with_note(Config) ->
    start_pool(flood, #{log_rate => #{lines => 100, bytes => infinity}}, Config),
    OsPid = pyport_test_util:os_pid({flood, 1}),
    pyport_test_util:with_log_capture(info, fun() ->
        T0 = now_ms(),
        ?assertEqual({ok, 5000}, call(flood, ?H, paced_log_frames, [5000, 10])),
        Seconds = (now_ms() - T0) / 1000,
        Notes = collect_notes(<<"of worker output dropped">>, 3000),
        Logged = logged_lines(<<"paced line">>),
        Dropped = lists:sum([N || {N, _Bytes} <- Notes]),
        ct:log("~b of 5000 logged in ~.2f s, ~b dropped: ~p", [Logged, Seconds, Dropped, Notes]),
        %% The burst (2 s of rate) plus the rate.
        ?assert(Logged =< 200 + 100 * (Seconds + 1)),
        ?assertEqual(5000, Logged + Dropped),
        ?assertEqual(OsPid, pyport_test_util:os_pid({flood, 1}))
    end).

%% LOG frames as fast as the worker can write them: the owner falls behind,
%% and the worker is killed as flooding before the unread bytes pass the
%% bound; the owner's mailbox never holds more than that.
hostile_flood_is_killed(Config) ->
    start_pool(flood, #{}, Config),
    OsPid = pyport_test_util:os_pid({flood, 1}),
    Sampler = start_mailbox_sampler(owner(flood)),
    Result = call(flood, ?H, flood_log_frames, [20.0]),
    MaxQueue = stop_sampler(Sampler),
    ct:log("~p, owner mailbox max ~b", [Result, MaxQueue]),
    {error, {worker_exited, {flooding, #{unread_bytes := Unread, limit := Limit}}}} = Result,
    ?assertEqual(16 * 1024 * 1024 + 2 * ?MAX, Limit),
    ?assert(Unread > Limit),
    %% The port reads at most 64 KiB at a time.
    ?assert(MaxQueue < 2 * Limit div 65536 + 100),
    assert_replaced(flood, OsPid, undefined).

log_rate_validated(Config) ->
    Data = ?config(data, Config),
    [?assertEqual({error, {invalid_pool_option, bad, log_rate, Rate}},
                  pyport:start_pool(bad, #{log_rate => Rate, python_path => [Data]}))
     || Rate <- [0, #{lines => 0}, #{bytes => -1}, #{lines => 1.5}, #{other => 1}, "fast"]],
    {ok, _} = pyport:start_pool(unlimited, #{size => 1, log_rate => infinity,
                                             python_path => [Data]}),
    {ok, _} = pyport:start_pool(lines_only, #{size => 1, log_rate => #{lines => 10},
                                              python_path => [Data]}),
    ?assertEqual({ok, 1}, call(lines_only, ?H, identity, [1])).

%%%===================================================================
%%% Helpers
%%%===================================================================

start_pool(Pool, Opts, Config) ->
    {ok, _} = pyport:start_pool(Pool, maps:merge(#{size => 1, max_frame_size => ?MAX,
                                                   python_path => [?config(data, Config)]},
                                                 Opts)),
    ok.

call(M, F, A) ->
    call(frames, M, F, A).

call(Pool, M, F, A) ->
    py:call(M, F, A, #{}, #{pool => Pool, timeout => 30000}).

wait_pending(N) ->
    pyport_test_util:wait_until(fun() ->
                                        {ok, #{pending := P}} = pyport:worker_info({frames, 1}),
                                        P >= N
                                end).

assert_replaced(OsPid, Detail) ->
    assert_replaced(frames, OsPid, Detail).

%% The slot has a new OS process that serves; the old one is gone.
assert_replaced(Pool, OsPid, Detail) ->
    ?assertEqual({ok, again}, call(Pool, ?H, identity, [again])),
    {ok, #{os_pid := NewPid, last_exit := Last, restarts := 1}} = pyport:worker_info({Pool, 1}),
    ?assertNotEqual(OsPid, NewPid),
    case Detail of
        undefined -> ok;
        _ -> ?assertEqual(Detail, Last)
    end,
    pyport_test_util:wait_until(fun() -> not pyport_os:alive(OsPid) end).

%% What must not leak through a broken worker: ports, processes, ETS
%% tables, atoms.
node_counts() ->
    #{ports => length(erlang:ports()), processes => erlang:system_info(process_count),
      ets => length(ets:all()), atoms => erlang:system_info(atom_count)}.

owner(Pool) ->
    {ok, #{pid := Pid}} = pyport:worker_info({Pool, 1}),
    Pid.

start_mailbox_sampler(Pid) ->
    spawn_link(fun() -> mailbox_sampler(Pid, 0) end).

mailbox_sampler(Pid, Max) ->
    receive
        {stop, From} -> From ! {max_queue, Max}
    after 2 ->
            case process_info(Pid, message_queue_len) of
                {message_queue_len, N} -> mailbox_sampler(Pid, max(N, Max));
                undefined -> mailbox_sampler(Pid, Max)
            end
    end.

stop_sampler(Sampler) ->
    Sampler ! {stop, self()},
    receive {max_queue, Max} -> Max after 5000 -> ct:fail(sampler_hung) end.


event_text(#{msg := {string, S}}) ->
    unicode:characters_to_binary(S);
event_text(#{msg := {Format, Args}}) when is_list(Args) ->
    unicode:characters_to_binary(io_lib:format(Format, Args));
event_text(_) ->
    <<>>.

%% Waits up to Ms for log notes containing Marker; returns {Lines, Bytes}
%% of each, leaving other events in the mailbox.
collect_notes(Marker, Ms) ->
    Deadline = now_ms() + Ms,
    collect_notes(Marker, Deadline, []).

collect_notes(Marker, Deadline, Acc) ->
    receive
        {pyport_test_log, Event} ->
            Text = event_text(Event),
            case binary:match(Text, Marker) of
                nomatch ->
                    self() ! {pyport_frames_other, Event},
                    collect_notes(Marker, Deadline, Acc);
                _ ->
                    {match, [L, B]} = re:run(Text, "([0-9]+) lines \\(([0-9]+) bytes\\)",
                                             [{capture, all_but_first, binary}]),
                    Note = {binary_to_integer(L), binary_to_integer(B)},
                    %% After a first note, only those already sent.
                    collect_notes(Marker, min(Deadline, now_ms() + 1500), [Note | Acc])
            end
    after max(0, Deadline - now_ms()) ->
            lists:reverse(Acc)
    end.

%% Log events so far whose text contains Marker (the events collect_notes/2
%% set aside included).
logged_lines(Marker) ->
    logged_lines(Marker, 0).

logged_lines(Marker, N) ->
    receive
        {Tag, Event} when Tag =:= pyport_test_log; Tag =:= pyport_frames_other ->
            case binary:match(event_text(Event), Marker) of
                nomatch -> logged_lines(Marker, N);
                _ -> logged_lines(Marker, N + 1)
            end
    after 0 ->
            N
    end.

now_ms() ->
    erlang:monotonic_time(millisecond).
