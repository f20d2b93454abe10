%% The owner's framing (pyport_framer): frames split across reads, many
%% frames in one read, and headers above the maximum refused from their
%% 4 bytes alone.
-module(pyport_framer_tests).

-include_lib("eunit/include/eunit.hrl").

framed(Payloads) ->
    iolist_to_binary([pyport_framer:frame(P) || P <- Payloads]).

%% Feeds Bin in reads cut at Cuts (offsets), collecting the frames.
feed_cut(Bin, Cuts, Max) ->
    Reads = reads(Bin, lists:usort(Cuts), 0),
    lists:foldl(fun(Read, {ok, Acc, S}) ->
                        case pyport_framer:feed(Read, S) of
                            {ok, Frames, S1} -> {ok, Acc ++ Frames, S1};
                            {error, Why, Frames} -> {error, Why, Acc ++ Frames}
                        end;
                   (_, Error) ->
                        Error
                end, {ok, [], pyport_framer:new(Max)}, Reads).

reads(Bin, [], Pos) -> [binary:part(Bin, Pos, byte_size(Bin) - Pos)];
reads(Bin, [Cut | Rest], Pos) when Cut > Pos, Cut < byte_size(Bin) ->
    [binary:part(Bin, Pos, Cut - Pos) | reads(Bin, Rest, Cut)];
reads(Bin, [_ | Rest], Pos) -> reads(Bin, Rest, Pos).

frame_prefix_test() ->
    ?assertEqual(<<0, 0, 0, 3, "abc">>, iolist_to_binary(pyport_framer:frame([<<"a">>, "bc"]))),
    ?assertEqual(<<0, 0, 0, 0>>, iolist_to_binary(pyport_framer:frame(<<>>))).

many_frames_in_one_read_test() ->
    Payloads = [<<>>, <<"x">>, binary:copy(<<"y">>, 1000), <<"z">>],
    {ok, Frames, S} = pyport_framer:feed(framed(Payloads), pyport_framer:new(1000)),
    ?assertEqual(Payloads, Frames),
    ?assertEqual(0, pyport_framer:buffered(S)).

every_cut_point_test() ->
    Payloads = [<<"hello">>, <<>>, binary:copy(<<"abc">>, 50), <<"end">>],
    Bin = framed(Payloads),
    [?assertMatch({ok, Payloads, _}, feed_cut(Bin, [A, B], 1000))
     || A <- lists:seq(1, byte_size(Bin) - 1), B <- lists:seq(A, byte_size(Bin) - 1, 7)].

one_byte_reads_test() ->
    Payloads = [binary:copy(<<"q">>, 300), <<"r">>],
    Bin = framed(Payloads),
    ?assertMatch({ok, Payloads, _}, feed_cut(Bin, lists:seq(1, byte_size(Bin) - 1), 300)).

random_reads_test() ->
    rand:seed(exsss, {1, 2, 3}),
    Payloads = [crypto:strong_rand_bytes(rand:uniform(5000) - 1) || _ <- lists:seq(1, 200)],
    Bin = framed(Payloads),
    Cuts = [rand:uniform(byte_size(Bin)) || _ <- lists:seq(1, 400)],
    ?assertMatch({ok, Payloads, _}, feed_cut(Bin, Cuts, 5000)).

partial_frame_is_buffered_test() ->
    {ok, [], S1} = pyport_framer:feed(<<0, 0>>, pyport_framer:new(100)),
    ?assertEqual(2, pyport_framer:buffered(S1)),
    {ok, [], S2} = pyport_framer:feed(<<0, 10, "abc">>, S1),
    ?assertEqual(7, pyport_framer:buffered(S2)),
    {ok, [<<"abcdefghij">>], S3} = pyport_framer:feed(<<"defghij", 0>>, S2),
    ?assertEqual(1, pyport_framer:buffered(S3)).

%% The limit is inclusive: a frame of exactly Max bytes passes, Max + 1 is
%% refused from its header, with the frames before it.
limit_test() ->
    Max = 1024,
    Ok = binary:copy(<<"a">>, Max),
    ?assertMatch({ok, [Ok], _}, pyport_framer:feed(framed([Ok]), pyport_framer:new(Max))),
    ?assertEqual({error, {frame_too_large, Max + 1, Max}, [<<"first">>]},
                 pyport_framer:feed(<<(framed([<<"first">>]))/binary, (Max + 1):32>>,
                                    pyport_framer:new(Max))).

huge_headers_refused_from_four_bytes_test() ->
    Max = 64 * 1024 * 1024,
    ?assertEqual({error, {frame_too_large, 16#FFFFFFFF, Max}, []},
                 pyport_framer:feed(<<16#FF, 16#FF, 16#FF, 16#FF>>, pyport_framer:new(Max))),
    %% A header cut across reads is checked once its 4th byte arrives.
    {ok, [], S} = pyport_framer:feed(<<16#40, 0, 0>>, pyport_framer:new(Max)),
    ?assertEqual({error, {frame_too_large, 16#40000000, Max}, []},
                 pyport_framer:feed(<<0, "body">>, S)).

%% A small frame cut from a large read does not keep the read alive.
small_frames_are_copied_test() ->
    Big = binary:copy(<<"b">>, 100000),
    {ok, [Small, Large], _} =
        pyport_framer:feed(framed([<<"small frame of some length">>, Big]), pyport_framer:new(200000)),
    ?assert(binary:referenced_byte_size(Small) < 1000),
    ?assertEqual(Big, Large).

%% A frame spanning reads is joined once, from its pieces.
spanning_frame_test() ->
    Body = crypto:strong_rand_bytes(300000),
    Bin = framed([Body, <<"next">>]),
    Cuts = lists:seq(65536, byte_size(Bin), 65536),
    ?assertMatch({ok, [Body, <<"next">>], _}, feed_cut(Bin, Cuts, 300000)).

oversized_payload_is_badarg_test() ->
    %% iolist_size only: nothing that large is built.
    Big = binary:copy(<<0>>, 1 bsl 20),
    ?assertError(badarg, pyport_framer:frame(lists:duplicate(4097, Big))).

%% A big frame arriving in pipe-sized reads (the VM's spawn driver reads
%% 64 KiB at a time) and in odd ones comes out whole, and the small frame
%% sharing its last read follows it. What a caller keeps of it references
%% no more than the frame: appending the pieces as they came would leave
%% up to the frame's size again of spare capacity behind it (measured:
%% 2 MiB for a 1 MiB frame), given back only by a garbage collection, so
%% the pieces are joined once at the end instead.
big_frame_in_many_reads_test() ->
    Big = << <<(I band 255)>> || I <- lists:seq(1, (1 bsl 20) + 3) >>,
    Bin = framed([Big, <<"after">>]),
    Pipe = lists:seq(65536, byte_size(Bin) - 1, 65536),
    Odd = lists:seq(1, byte_size(Bin) - 1, 9973),
    [begin
         {ok, [Frame, After], S} = feed_cut(Bin, Cuts, 2 bsl 20),
         ?assertEqual(Big, Frame),
         self() ! {frame, Frame},
         Sent = receive {frame, F} -> F end,
         ?assertEqual(byte_size(Frame), binary:referenced_byte_size(Sent)),
         ?assertEqual(<<"after">>, After),
         ?assertEqual(0, pyport_framer:buffered(S))
     end || Cuts <- [Pipe, Odd, [3, 4, 5 | Pipe]]].
