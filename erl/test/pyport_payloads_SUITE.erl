%% Big payloads off the pipe (pyport_payloads, proto/PROTOCOL.md
%% "Payloads"): what crosses, what Python sees, what the node refuses, and
%% that nothing is left behind.
-module(pyport_payloads_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([bytes_both_ways/1, off_the_pipe/1, pipe_when_off/1, zero_copy_views/1,
         no_file_left/1, crashed_worker_leaves_no_file/1, regions_not_lent/1,
         file_shrunk_by_the_worker/1, more_requests_than_regions/1,
         abandoned_answers_give_regions_back/1, sandboxed_pools_keep_the_pipe/1,
         threshold_option/1, big_payloads_leave_no_memory/1, recycled_worker_new_file/1,
         answer_after_restart_reads_no_new_file/1, region_held_by_another_answer/1,
         file_grown_by_the_worker/1, callers_killed_mid_write/1,
         no_descriptor_left_after_restarts/1, node_end_leaves_nothing/1,
         unsent_requests_give_regions_back/1, all_answer_regions_marked/1,
         full_tmpfs_keeps_the_pipe/1]).

-define(M, payload_helpers).
-define(MAX, (16 * 1024 * 1024)).
-define(THRESHOLD, (64 * 1024)).
-define(RESTARTS, 100).

all() ->
    [bytes_both_ways, off_the_pipe, pipe_when_off, zero_copy_views, no_file_left,
     crashed_worker_leaves_no_file, regions_not_lent, file_shrunk_by_the_worker,
     more_requests_than_regions, abandoned_answers_give_regions_back,
     sandboxed_pools_keep_the_pipe, threshold_option, big_payloads_leave_no_memory,
     recycled_worker_new_file, answer_after_restart_reads_no_new_file,
     region_held_by_another_answer, file_grown_by_the_worker, callers_killed_mid_write,
     no_descriptor_left_after_restarts, node_end_leaves_nothing,
     unsent_requests_give_regions_back, all_answer_regions_marked, full_tmpfs_keeps_the_pipe].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_payloads_SUITE_data"),
    ok = pyport_test_util:start(#{}),
    [{data, Data} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    start_pool(payloads, #{}, Config),
    Config.

end_per_testcase(_Case, _Config) ->
    _ = pyport:stop_pool(payloads),
    _ = pyport:stop_pool(piped),
    ok.

%% Python gets bytes (or str for a UTF-8 binary, as on the pipe), Erlang
%% gets binaries, in both directions, and the values are exact.
bytes_both_ways(_Config) ->
    B = crypto:strong_rand_bytes(1024 * 1024 + 7),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    ?assertEqual({ok, B}, call(echo, [B])),
    ?assertEqual({ok, [<<"bytes">>, byte_size(B)]}, call(kind, [{bytes, B}])),
    Text = binary:copy(<<"é"/utf8>>, 200000),
    ?assertEqual({ok, [<<"str">>, 200000]}, call(kind, [Text])),
    ?assertEqual({ok, Text}, call(echo, [Text])),
    ?assertEqual({ok, Text}, call(make_str, [200000])),
    N = 3 * 1024 * 1024 + 11,
    ?assertEqual({ok, pattern(N)}, call(make, [N])),
    %% Several big binaries in one value, each way.
    C = crypto:strong_rand_bytes(300000),
    ?assertEqual({ok, [B, #{<<"c">> => C}, {B}]},
                 call(echo, [[{bytes, B}, #{<<"c">> => {bytes, C}}, {B}]])),
    %% Small ones stay in the frame beside them.
    ?assertEqual({ok, [<<"x">>, B]}, call(echo, [[<<"x">>, B]])).

%% Above the threshold, the bytes do not cross the pipe.
off_the_pipe(_Config) ->
    B = crypto:strong_rand_bytes(4 * 1024 * 1024),
    {ok, B} = call(echo, [{bytes, B}]),
    {In, Out} = port_bytes(payloads),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    {In1, Out1} = port_bytes(payloads),
    ct:pal("pipe bytes for a 4 MiB round trip: in ~b, out ~b", [In1 - In, Out1 - Out]),
    ?assert(In1 - In < 4096),
    ?assert(Out1 - Out < 4096).

%% payload_threshold infinity: everything on the pipe, as before.
pipe_when_off(Config) ->
    start_pool(piped, #{payload_threshold => infinity}, Config),
    B = crypto:strong_rand_bytes(1024 * 1024),
    {In, Out} = port_bytes(piped),
    ?assertEqual({ok, B}, call(piped, echo, [{bytes, B}])),
    {In1, Out1} = port_bytes(piped),
    ?assert(In1 - In > byte_size(B)),
    ?assert(Out1 - Out > byte_size(B)),
    ?assertEqual([], ets:lookup(pyport_payloads, {piped, 1})).

%% erlang.payloads.zero_copy(True): {bytes, B} arrives as a memoryview of
%% the file itself.
zero_copy_views(_Config) ->
    B = crypto:strong_rand_bytes(1024 * 1024),
    ?assertEqual({ok, false}, call(zero_copy, [true])),
    Sum = lists:sum(binary_to_list(binary:part(B, 0, 1000))),
    ?assertEqual({ok, [<<"memoryview">>, Sum]}, call(view_sum, [{bytes, B}])),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    ?assertEqual({ok, true}, call(zero_copy, [false])),
    ?assertEqual({ok, [<<"bytes">>, byte_size(B)]}, call(kind, [{bytes, B}])).

%% The file exists only as the two processes' descriptors: no name in
%% /dev/shm once the worker is up, nor after its requests.
no_file_left(_Config) ->
    ?assertEqual({ok, true}, call(payload_file_open, [])),
    ?assertEqual([], files_left()),
    B = crypto:strong_rand_bytes(1024 * 1024),
    {ok, B} = call(echo, [{bytes, B}]),
    ?assertEqual([], files_left()),
    ok = pyport:stop_pool(payloads),
    ?assertEqual([], ets:lookup(pyport_payloads, {payloads, 1})),
    ?assertEqual([], files_left()).

%% A worker killed while it holds a request's payload: the caller is
%% answered, nothing is left on disk, and the next OS process has a file
%% of its own.
crashed_worker_leaves_no_file(_Config) ->
    OsPid = pyport_test_util:os_pid({payloads, 1}),
    B = crypto:strong_rand_bytes(2 * 1024 * 1024),
    Ref = pyport_test_util:async(fun() -> call(sleep_then, [{bytes, B}, 30]) end),
    timer:sleep(300),
    [{_, _, Token, _, _, _, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    ?assertMatch({error, {worker_exited, _}}, pyport_test_util:await(Ref)),
    pyport_test_util:wait_until(fun() ->
                                        P = pyport_test_util:os_pid({payloads, 1}),
                                        P =/= undefined andalso P =/= OsPid
                                end),
    ?assertEqual([], files_left()),
    [{_, _, Token1, _, _, _, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    ?assertNotEqual(Token, Token1),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])).

%% Placeholders no honest worker writes are refused before a byte is read:
%% a request's region, across two answer regions, more than one frame's
%% worth in one answer. (Decoded here as the caller would.)
regions_not_lent(_Config) ->
    [{_, _, _, SlotSize, _, Max, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    Out = 4096 + 8 * SlotSize,
    Decode = fun(Placeholders) ->
                     Bin = iolist_to_binary([16#90 + length(Placeholders)
                                             | [placeholder(O, L) || {O, L} <- Placeholders]]),
                     pyport_codec:decode(Bin, pyport_payloads:limits(source(payloads),
                                                                     pyport_limits:process()))
             end,
    ?assertEqual({error, {bad_frame, {payload_not_lent, 4096, 10}}}, Decode([{4096, 10}])),
    ?assertEqual({error, {bad_frame, {payload_not_lent, 0, 10}}}, Decode([{0, 10}])),
    ?assertEqual({error, {bad_frame, {payload_not_lent, Out + SlotSize - 5, 10}}},
                 Decode([{Out + SlotSize - 5, 10}])),
    Past = Out + 8 * SlotSize,
    ?assertEqual({error, {bad_frame, {payload_not_lent, Past, 10}}}, Decode([{Past, 10}])),
    ?assertEqual({error, {bad_frame, {payload_too_large, Max + 1, Max}}},
                 Decode([{Out, Max + 1}])),
    Half = Max div 2 + 1,
    ?assertEqual({error, {bad_frame, {payload_too_large, Half, Max}}},
                 Decode([{Out, Half}, {Out + SlotSize, Half}])),
    %% Without a payload file (a pool without payloads), ext 7 is unknown.
    ?assertEqual({error, {bad_msgpack, {unknown_ext, 7}}},
                 pyport_codec:decode(placeholder(Out, 10))),
    %% A region honestly named reads (zeros here: nothing was written).
    ?assertEqual({ok, [<<0:80>>]}, Decode([{Out, 10}])).

%% Hostile code shrinking the file: a placeholder past its end is a
%% bad_frame, not a short binary.
file_shrunk_by_the_worker(_Config) ->
    [{_, _, _, SlotSize, _, _, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    ?assertEqual({ok, 4096}, call(truncate_payloads, [])),
    Out = 4096 + 8 * SlotSize,
    Bin = iolist_to_binary([16#91, placeholder(Out, 10)]),
    ?assertEqual({error, {bad_frame, {payload_past_end, Out, 10, 0}}},
                 pyport_codec:decode(Bin, pyport_payloads:limits(source(payloads),
                                                                 pyport_limits:process()))).

%% More big requests in flight than the file has regions: the rest go
%% through the pipe, and every answer is right.
more_requests_than_regions(_Config) ->
    Bs = [crypto:strong_rand_bytes(300000 + I) || I <- lists:seq(1, 12)],
    Refs = [pyport_test_util:async(fun() -> call(payloads, sleep_then, [{bytes, B}, 0.05]) end)
            || B <- Bs],
    ?assertEqual([{ok, B} || B <- Bs], [pyport_test_util:await(R) || R <- Refs]),
    %% All regions were given back.
    [{_, _, _, _, Atomics, _, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    ?assertEqual([0, 0, 0, 0, 0, 0, 0, 0, 0], [atomics:get(Atomics, I) || I <- lists:seq(1, 9)]).

%% Answers nobody waits for (their callers timed out) give their regions
%% back: later answers still go off the pipe.
abandoned_answers_give_regions_back(_Config) ->
    N = 1024 * 1024,
    [?assertEqual({error, timeout},
                  py:call(?M, stubborn, [{bytes, pattern(N)}, 0.2], #{},
                          #{pool => payloads, timeout => 50}))
     || _ <- lists:seq(1, 10)],
    %% Their answers come late, each after the interrupted one's, and the
    %% owner gives their regions back as they come: soon a big answer
    %% travels through the file again (not through the pipe), however
    %% loaded the machine is.
    ?assert(through_the_file(N, 50)),
    %% The owner remembers nothing of them.
    {ok, #{pid := Owner}} = pyport:worker_info({payloads, 1}),
    {dictionary, Dict} = process_info(Owner, dictionary),
    ?assertEqual([], [K || {{'$pyport_payload_caller', _} = K, _} <- Dict]).

through_the_file(_N, 0) ->
    false;
through_the_file(N, Tries) ->
    timer:sleep(100),
    {In, _} = port_bytes(payloads),
    ?assertEqual({ok, pattern(N)}, call(make, [N])),
    {In1, _} = port_bytes(payloads),
    In1 - In < 4096 orelse through_the_file(N, Tries - 1).

%% A sandboxed pool keeps the pipe: its workers could not open the file.
sandboxed_pools_keep_the_pipe(_Config) ->
    ?assertEqual([], pyport_payloads:setup(sbx, 1, #{sandbox => #{}, payload_threshold => 4096,
                                                     max_frame_size => 1 bsl 20})),
    ?assertEqual([], ets:lookup(pyport_payloads, {sbx, 1})).

threshold_option(_Config) ->
    ?assertMatch({error, {invalid_pool_option, p, payload_threshold, 100}},
                 pyport_config:validate_pool(p, #{payload_threshold => 100})),
    ?assertMatch({ok, #{payload_threshold := infinity}},
                 pyport_config:validate_pool(p, #{payload_threshold => infinity})),
    ?assertMatch({ok, #{payload_threshold := 262144}}, pyport_config:validate_pool(p, #{})).

%% Nothing outlives the request in memory either: the file gives back
%% what a 12 MiB round trip wrote beyond the warm pages of its regions.
big_payloads_leave_no_memory(_Config) ->
    B = crypto:strong_rand_bytes(12 * 1024 * 1024),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    %% The answer region is given back once the caller has read it, and
    %% emptied when the worker next answers.
    pyport_test_util:wait_until(
      fun() ->
              {ok, Held} = call(payload_file_bytes, []),
              Held =< 5 * 1024 * 1024
      end),
    {ok, Held} = call(payload_file_bytes, []),
    ct:pal("payload file holds ~b bytes after a 12 MiB round trip", [Held]),
    ?assert(Held =< 5 * 1024 * 1024).

%% A worker recycled (max_requests) gets a file of its own; the old one is
%% gone with it.
recycled_worker_new_file(Config) ->
    start_pool(recycled, #{max_requests => 3}, Config),
    B = crypto:strong_rand_bytes(1024 * 1024),
    Tokens = [begin
                  ?assertEqual({ok, B}, call(recycled, echo, [{bytes, B}])),
                  pyport_test_util:wait_until(
                    fun() -> ets:lookup(pyport_payloads, {recycled, 1}) =/= [] end),
                  [{_, _, T, _, _, _, _}] = ets:lookup(pyport_payloads, {recycled, 1}),
                  T
              end || _ <- lists:seq(1, 7)],
    ?assert(length(lists:usort(Tokens)) >= 2),
    _ = pyport:stop_pool(recycled),
    ?assertEqual([], files_left()).

%% An answer is read from the file of the OS process that sent it: decoded
%% after that process was replaced (a kill -9 right after it answered), its
%% placeholders find the file gone, never the next process's file (whose
%% answer regions hold other callers' answers).
answer_after_restart_reads_no_new_file(_Config) ->
    Old = source(payloads),
    {_, SlotSize, _} = Old,
    Out = 4096 + 8 * SlotSize,
    Frame = iolist_to_binary([16#91, placeholder(Out, 10)]),
    ?assertEqual({ok, [<<0:80>>]}, pyport_codec:decode(Frame, pyport_payloads:limits(Old, pyport_limits:process()))),
    OsPid = pyport_test_util:os_pid({payloads, 1}),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    pyport_test_util:wait_until(fun() ->
                                        P = pyport_test_util:os_pid({payloads, 1}),
                                        P =/= undefined andalso P =/= OsPid
                                                andalso ets:member(pyport_payloads, {payloads, 1})
                                end),
    %% The new process answers into its own file...
    B = crypto:strong_rand_bytes(1024 * 1024),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    %% ...which the old process's answer cannot name.
    ?assertEqual({error, {bad_frame, {payload_without_file, Out, 10}}},
                 pyport_codec:decode(Frame, pyport_payloads:limits(Old, pyport_limits:process()))).

%% An answer region is read by one answer at a time: while a decode holds
%% it, another answer naming it is refused; once that decode is done (or
%% its process dies) the region is free again.
region_held_by_another_answer(_Config) ->
    {_, SlotSize, _} = Source = source(payloads),
    Out = 4096 + 8 * SlotSize,
    Frame = iolist_to_binary([16#91, placeholder(Out, 10)]),
    Decode = fun() -> pyport_codec:decode(Frame, pyport_payloads:limits(Source, pyport_limits:process())) end,
    Self = self(),
    %% A decode that read the region and is not done with it yet.
    Holder = spawn(fun() ->
                           Self ! {read, pyport_payloads:read(Source, Out, 10, undefined, read)},
                           receive done -> pyport_payloads:done(), Self ! released, receive _ -> ok end end
                   end),
    receive {read, R} -> ?assertEqual({ok, <<0:80>>, ?MAX - 10}, R) end,
    ?assertEqual({error, {bad_frame, {payload_not_lent, Out, 10}}}, Decode()),
    Holder ! done,
    receive released -> ok end,
    pyport_test_util:wait_until(fun() -> Decode() =:= {ok, [<<0:80>>]} end),
    %% A holder that dies without being done gives the region back too.
    {Dying, Mon} = spawn_monitor(fun() ->
                                          Self ! {read, pyport_payloads:read(Source, Out, 10, undefined, read)},
                                          receive _ -> ok end
                                  end),
    receive {read, {ok, _, _}} -> ok end,
    ?assertEqual({error, {bad_frame, {payload_not_lent, Out, 10}}}, Decode()),
    exit(Dying, kill),
    receive {'DOWN', Mon, _, _, _} -> ok end,
    pyport_test_util:wait_until(fun() -> Decode() =:= {ok, [<<0:80>>]} end),
    exit(Holder, kill).

%% Hostile code growing the file to 100 GB (sparse): the node reads only
%% the regions it checked, allocates nothing for the rest, and honest
%% calls go on; shrunk to nothing, a placeholder is a bad_frame.
file_grown_by_the_worker(_Config) ->
    {_, SlotSize, _} = Source = source(payloads),
    Huge = 100 * 1024 * 1024 * 1024,
    ?assertEqual({ok, Huge}, call(resize_payloads, [Huge])),
    Bin0 = erlang:memory(binary),
    Out = 4096 + 8 * SlotSize,
    Limits = pyport_payloads:limits(Source, pyport_limits:process()),
    Past = Out + 8 * SlotSize,
    ?assertEqual({error, {bad_frame, {payload_not_lent, Past, ?MAX}}},
                 pyport_codec:decode(iolist_to_binary([16#91, placeholder(Past, ?MAX)]), Limits)),
    ?assertEqual({error, {bad_frame, {payload_too_large, Huge - Out, ?MAX}}},
                 pyport_codec:decode(iolist_to_binary([16#91, placeholder(Out, Huge - Out)]), Limits)),
    ?assert(erlang:memory(binary) - Bin0 < 8 * 1024 * 1024),
    B = crypto:strong_rand_bytes(1024 * 1024),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    %% Its region's word cleared before the file shrinks, or it grows again.
    wait_answer_regions_free(),
    ?assertEqual({ok, 0}, call(resize_payloads, [0])),
    ?assertEqual({error, {bad_frame, {payload_past_end, Out, 10, 0}}},
                 pyport_codec:decode(iolist_to_binary([16#91, placeholder(Out, 10)]), Limits)).

%% Callers killed while their arguments are being written hold nothing
%% up: the file is written by its server, the next calls go through the
%% file, and every region comes back.
callers_killed_mid_write(_Config) ->
    B = crypto:strong_rand_bytes(8 * 1024 * 1024),
    Pids = [spawn(fun() -> call(echo, [{bytes, B}]) end) || _ <- lists:seq(1, 20)],
    timer:sleep(5),
    [exit(P, kill) || P <- Pids],
    %% The requests they sent keep their regions until answered.
    [{_, _, _, _, Atomics, _, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    pyport_test_util:wait_until(fun() -> atomics:get(Atomics, 9) =:= 0 end),
    C = crypto:strong_rand_bytes(1024 * 1024),
    {In, _} = port_bytes(payloads),
    ?assertEqual({ok, C}, call(echo, [{bytes, C}])),
    {In1, _} = port_bytes(payloads),
    ?assert(In1 - In < 4096).

%% ?RESTARTS OS process restarts (kill -9, some mid-request): the node holds
%% no more descriptors than before, no file server is left, nothing is
%% on disk.
no_descriptor_left_after_restarts(_Config) ->
    Fds0 = fds(),
    Procs0 = erlang:system_info(process_count),
    B = crypto:strong_rand_bytes(512 * 1024),
    lists:foreach(fun(I) ->
                          OsPid = pyport_test_util:os_pid({payloads, 1}),
                          %% A process that answered is replaced at once.
                          {ok, B} = call(echo, [{bytes, B}]),
                          Ref = case I rem 4 of
                                    0 -> pyport_test_util:async(fun() -> call(sleep_then, [{bytes, B}, 5]) end);
                                    _ -> none
                                end,
                          _ = Ref =/= none andalso timer:sleep(50),
                          _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
                          _ = Ref =/= none andalso pyport_test_util:await(Ref),
                          pyport_test_util:wait_until(
                            fun() ->
                                    P = pyport_test_util:os_pid({payloads, 1}),
                                    P =/= undefined andalso P =/= OsPid
                                        andalso ets:member(pyport_payloads, {payloads, 1})
                            end)
                  end, lists:seq(1, ?RESTARTS)),
    ?assertEqual({ok, B}, call(echo, [{bytes, B}])),
    Fds1 = fds(),
    ct:pal("node descriptors before / after ~b restarts: ~b / ~b", [?RESTARTS, Fds0, Fds1]),
    ?assert(Fds1 =< Fds0),
    ?assert(erlang:system_info(process_count) =< Procs0 + 5),
    ?assertEqual([], files_left()).

%% A node that stops, or is killed (kill -9), with a payload file in use
%% (here in PYPORT_PAYLOAD_DIR) leaves nothing in that directory, and its
%% workers go with it.
node_end_leaves_nothing(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "payload_dir"),
    ok = filelib:ensure_path(Dir),
    Paths = lists:append([["-pa", filename:dirname(code:which(M))] || M <- [?MODULE, pyport]]),
    Data = ?config(data, Config),
    lists:foreach(
      fun(How) ->
              {ok, Peer, _} = peer:start_link(#{connection => standard_io, args => Paths,
                                             env => [{"PYPORT_PAYLOAD_DIR", Dir}]}),
              {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
              {ok, _} = peer:call(Peer, pyport, start_pool,
                                  [p, #{size => 2, max_frame_size => ?MAX,
                                        payload_threshold => ?THRESHOLD, python_path => [Data]}]),
              B = crypto:strong_rand_bytes(1024 * 1024),
              ?assertEqual({ok, B}, peer:call(Peer, py, call, [?M, echo, [{bytes, B}], #{},
                                                               #{pool => p}])),
              {ok, Where} = peer:call(Peer, py, call, [?M, payload_file_path, [], #{},
                                                        #{pool => p}]),
              ?assert(lists:prefix(Dir ++ "/pyport-", unicode:characters_to_list(Where))),
              NodeOs = peer:call(Peer, os, getpid, []),
              Workers = [pyport_test_util_os_pid(Peer, S) || S <- [1, 2]],
              %% A request in flight when the node ends.
              _ = spawn(fun() -> catch peer:call(Peer, py, call, [?M, sleep_then, [{bytes, B}, 5],
                                                                   #{}, #{pool => p}], 10000) end),
              timer:sleep(200),
              case How of
                  stop -> peer:stop(Peer);
                  kill -> _ = os:cmd("kill -9 " ++ NodeOs), catch peer:stop(Peer)
              end,
              pyport_test_util:wait_until(
                fun() -> [W || W <- Workers, filelib:is_dir("/proc/" ++ integer_to_list(W))] =:= [] end),
              ?assertEqual({ok, []}, {ok, element(2, file:list_dir(Dir))}),
              {ok, Shm} = file:list_dir("/dev/shm"),
              ?assertEqual([], [N || N <- Shm, lists:prefix("pyport-" ++ NodeOs ++ "-", N)])
      end, [stop, kill]).

%% A request placed in the file that its owner never sends (its deadline
%% passed before the owner got it) gives its region back; so does one
%% whose caller died before the owner got it.
unsent_requests_give_regions_back(_Config) ->
    {ok, #{opts := Opts, counters := C} = Info} = pyport_pool:info(payloads),
    {ok, #{pid := Owner}} = pyport:worker_info({payloads, 1}),
    [{_, _, _, _, Atomics, _, _}] = ets:lookup(pyport_payloads, {payloads, 1}),
    B = crypto:strong_rand_bytes(300000),
    Place = fun(Id) ->
                    ok = pyport_payloads:encoding(Opts),
                    P = pyport_payloads:placeholder(B, 1),
                    {ok, Frame} = pyport_payloads:place(Info, 1, Id, [P]),
                    Frame
            end,
    Id = erlang:unique_integer([positive]),
    Frame = Place(Id),
    ?assertEqual(1, atomics:get(Atomics, 9)),
    counters:add(C, 1, 1),
    Alias = erlang:alias([reply]),
    Owner ! {'$pyport', Alias, Id, erlang:monotonic_time(millisecond) - 1000, Frame, self()},
    receive {Alias, Reply} -> ?assertEqual({error, timeout}, Reply) after 5000 -> ct:fail(no_reply) end,
    ?assertEqual(0, atomics:get(Atomics, 9)),
    %% Placed by a caller that dies before sending.
    {Caller, Mon} = spawn_monitor(fun() -> Place(erlang:unique_integer([positive])) end),
    receive {'DOWN', Mon, process, Caller, normal} -> ok end,
    pyport_test_util:wait_until(fun() -> atomics:get(Atomics, 9) =:= 0 end).

%% A worker whose answer regions are all marked busy (and never cleared,
%% since no answer names them) answers through the pipe: nothing waits
%% for a free region, in the worker or in the node.
all_answer_regions_marked(_Config) ->
    %% No release of an earlier answer still on its way to clear a mark.
    wait_answer_regions_free(),
    {ok, _} = call(mark_all_answer_regions, []),
    N = 2 * 1024 * 1024,
    {In, _} = port_bytes(payloads),
    ?assertEqual({ok, pattern(N)}, call(make, [N])),
    {In1, _} = port_bytes(payloads),
    ?assert(In1 - In > N),
    %% Arguments still go through the file.
    B = crypto:strong_rand_bytes(N),
    {_, Out} = port_bytes(payloads),
    ?assertEqual({ok, [<<"bytes">>, N]}, call(kind, [{bytes, B}])),
    {_, Out1} = port_bytes(payloads),
    ?assert(Out1 - Out < 4096).

%% A full tmpfs: the owner cannot allocate the file's header (the worker
%% writes it through a mapping, where a full tmpfs would be SIGBUS), so
%% the pool keeps the pipe; and with the file in place, a full tmpfs sends
%% answers through the pipe. In a peer node in a mount namespace of its
%% own, with a small tmpfs as PYPORT_PAYLOAD_DIR (skipped where
%% `unshare -rm' cannot mount one).
full_tmpfs_keeps_the_pipe(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "small_tmpfs"),
    ok = filelib:ensure_path(Dir),
    Mount = "mount -t tmpfs -o size=2m tmpfs " ++ Dir,
    case os:find_executable("unshare") of
        false ->
            {skip, "no unshare"};
        Unshare ->
            case os:cmd(Unshare ++ " -rm sh -c '" ++ Mount ++ " && echo mounted' 2>&1") of
                "mounted\n" -> full_tmpfs(Unshare, Mount, Dir, Config);
                Other -> {skip, "unshare -rm cannot mount a tmpfs here: " ++ Other}
            end
    end.

full_tmpfs(Unshare, Mount, Dir, Config) ->
    Paths = lists:append([["-pa", filename:dirname(code:which(M))] || M <- [?MODULE, pyport]]),
    Erl = os:find_executable("erl"),
    {ok, Peer, _} = peer:start_link(#{connection => standard_io, args => Paths,
                                     exec => {Unshare, ["-rm", "sh", "-c",
                                                        Mount ++ " && exec \"$0\" \"$@\"", Erl]},
                                     env => [{"PYPORT_PAYLOAD_DIR", Dir}]}),
    try
        Fill = fun() -> fill(Peer, filename:join(Dir, "filler"), 0) end,
        Free = fun() -> ok = peer:call(Peer, file, delete, [filename:join(Dir, "filler")]) end,
        Opts = #{size => 1, max_frame_size => ?MAX, payload_threshold => ?THRESHOLD,
                 python_path => [?config(data, Config)]},
        {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
        B = crypto:strong_rand_bytes(1024 * 1024),
        Call = fun() -> peer:call(Peer, py, call, [?M, echo, [{bytes, B}], #{}, #{pool => p}], 30000) end,
        %% Full before the pool starts: no payload file, the pipe.
        Fill(),
        {ok, _} = peer:call(Peer, pyport, start_pool, [p, Opts]),
        ?assertEqual({ok, B}, Call()),
        ?assertMatch({ok, [_]}, peer:call(Peer, file, list_dir, [Dir])),
        ok = peer:call(Peer, pyport, stop_pool, [p]),
        %% Room when it starts, full later: answers (and requests) take the pipe.
        Free(),
        {ok, _} = peer:call(Peer, pyport, start_pool, [p, Opts]),
        ?assertEqual({ok, B}, Call()),
        Fill(),
        [?assertEqual({ok, B}, Call()) || _ <- lists:seq(1, 3)],
        OsPid = pyport_test_util_os_pid(Peer, 1),
        Free(),
        ?assertEqual({ok, B}, Call()),
        %% The same OS process answered throughout: no crash.
        ?assertEqual(OsPid, pyport_test_util_os_pid(Peer, 1))
    after
        peer:stop(Peer)
    end.

fill(Peer, Path, N) ->
    case peer:call(Peer, file, write_file, [Path, <<0:(8 * 65536)>>, [append]]) of
        ok when N < 64 -> fill(Peer, Path, N + 1);
        {error, enospc} -> ok
    end.

pyport_test_util_os_pid(Peer, Slot) ->
    {ok, #{os_pid := OsPid}} = peer:call(Peer, pyport, worker_info, [{p, Slot}]),
    OsPid.

%%% Helpers

fds() ->
    {ok, L} = file:list_dir("/proc/self/fd"),
    length(L).

%% Where the current OS process's answers are read (pyport_payloads:bind/1).
source(Pool) ->
    [{_, Server, _, SlotSize, _, Max, _}] = ets:lookup(pyport_payloads, {Pool, 1}),
    {Server, SlotSize, Max}.

start_pool(Pool, Opts, Config) ->
    Data = ?config(data, Config),
    {ok, _} = pyport:start_pool(Pool, maps:merge(#{size => 1, max_frame_size => ?MAX,
                                                   payload_threshold => ?THRESHOLD,
                                                   python_path => [Data]},
                                                 Opts)),
    ok.

call(F, A) ->
    call(payloads, F, A).

%% The node clears an answer region's word after the caller's decode,
%% without the caller waiting: this waits until every one is clear.
wait_answer_regions_free() ->
    pyport_test_util:wait_until(fun() -> call(answer_regions_free, []) =:= {ok, true} end).

call(Pool, F, A) ->
    py:call(?M, F, A, #{}, #{pool => Pool, timeout => 20000}).

pattern(N) ->
    binary:part(binary:copy(list_to_binary(lists:seq(0, 250)), N div 251 + 1), 0, N).

placeholder(Offset, Length) ->
    <<16#c7, 17, 7, 0, Offset:64, Length:64>>.

%% Bytes the worker's port read and wrote so far.
port_bytes(Pool) ->
    {ok, #{pid := Pid}} = pyport:worker_info({Pool, 1}),
    {links, Links} = process_info(Pid, links),
    [Port] = [P || P <- Links, is_port(P)],
    {input, In} = erlang:port_info(Port, input),
    {output, Out} = erlang:port_info(Port, output),
    {In, Out}.

%% Payload directories of this node left on disk.
files_left() ->
    Prefix = "pyport-" ++ os:getpid() ++ "-",
    {ok, Names} = file:list_dir("/dev/shm"),
    [N || N <- Names, lists:prefix(Prefix, N)].
