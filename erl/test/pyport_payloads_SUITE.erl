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
         threshold_option/1, big_payloads_leave_no_memory/1, recycled_worker_new_file/1]).

-define(M, payload_helpers).
-define(MAX, (16 * 1024 * 1024)).
-define(THRESHOLD, (64 * 1024)).

all() ->
    [bytes_both_ways, off_the_pipe, pipe_when_off, zero_copy_views, no_file_left,
     crashed_worker_leaves_no_file, regions_not_lent, file_shrunk_by_the_worker,
     more_requests_than_regions, abandoned_answers_give_regions_back,
     sandboxed_pools_keep_the_pipe, threshold_option, big_payloads_leave_no_memory,
     recycled_worker_new_file].

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
                     pyport_codec:decode(Bin, pyport_payloads:limits(payloads, 1,
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
                 pyport_codec:decode(Bin, pyport_payloads:limits(payloads, 1,
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
    ?assert(through_the_file(N, 50)).

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

%%% Helpers

start_pool(Pool, Opts, Config) ->
    Data = ?config(data, Config),
    {ok, _} = pyport:start_pool(Pool, maps:merge(#{size => 1, max_frame_size => ?MAX,
                                                   payload_threshold => ?THRESHOLD,
                                                   python_path => [Data]},
                                                 Opts)),
    ok.

call(F, A) ->
    call(payloads, F, A).

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
