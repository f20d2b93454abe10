%% @doc EUnit tests of pyport_codec: the shared wire vectors in proto/vectors,
%% exact header forms, frames, and hostile input (which must always give
%% `{error, {bad_msgpack, _}}', never an exception).
-module(pyport_codec_tests).

-include_lib("eunit/include/eunit.hrl").

-define(C, pyport_codec).

%%%===================================================================
%%% Shared vectors (proto/vectors)
%%%===================================================================

vectors_test_() ->
    Dir = vectors_dir(),
    Vectors = read_vectors(Dir),
    [{atom_to_list(Name) ++ " " ++ Test, Fun}
     || {Name, Direction, Term} <- Vectors,
        {Test, Fun} <- vector_tests(Direction, Term, msgpack_file(Dir, Name))].

vector_tests(Direction, Term, Bytes) ->
    Encode = {"encode", ?_assertEqual(Bytes, enc(Term))},
    Decode = {"decode", ?_assertMatch({ok, V} when V =:= Term, ?C:decode(Bytes))},
    case Direction of
        both -> [Encode, Decode];
        encode -> [Encode];
        decode -> [Decode]
    end.

%% Guards against a vectors file that silently lost entries or directions.
vectors_complete_test() ->
    Vectors = read_vectors(vectors_dir()),
    Names = [Name || {Name, _, _} <- Vectors],
    ?assertEqual(length(Names), length(lists:usort(Names))),
    ?assert(length(Vectors) >= 53),
    [?assert(lists:member(D, [both, encode, decode])) || {_, D, _} <- Vectors],
    [?assert(lists:member(Name, Names))
     || Name <- [int_u64_max, int_big_neg, float_nan, bytes_marked, nil_undefined,
                 atom_utf8, tuple_nested, map_str_key, pid, ref]].

%% Vectors with no Erlang direction (Python sets, bytearray) still decode.
python_only_vectors_test() ->
    Dir = vectors_dir(),
    ?assertEqual({ok, [1, 2]}, ?C:decode(msgpack_file(Dir, set))),
    ?assertEqual({ok, []}, ?C:decode(msgpack_file(Dir, frozenset_empty))),
    ?assertEqual({ok, <<"ab">>}, ?C:decode(msgpack_file(Dir, bytearray))).

%%%===================================================================
%%% Encoding: canonical forms
%%%===================================================================

int_forms_test_() ->
    Cases = [{0, <<0>>}, {127, <<127>>},
             {128, <<16#cc, 128>>}, {255, <<16#cc, 255>>},
             {256, <<16#cd, 1, 0>>}, {65535, <<16#cd, 255, 255>>},
             {65536, <<16#ce, 0, 1, 0, 0>>}, {16#FFFFFFFF, <<16#ce, -1:32>>},
             {16#100000000, <<16#cf, 16#100000000:64>>},
             {16#FFFFFFFFFFFFFFFF, <<16#cf, -1:64>>},
             {16#10000000000000000, <<16#c7, 10, 3, 0, 1, 0:64>>},
             {-1, <<16#ff>>}, {-32, <<16#e0>>},
             {-33, <<16#d0, -33>>}, {-128, <<16#d0, 16#80>>},
             {-129, <<16#d1, -129:16>>}, {-32768, <<16#d1, 16#80, 0>>},
             {-32769, <<16#d2, -32769:32>>}, {-16#80000000, <<16#d2, 16#80, 0:24>>},
             {-16#80000001, <<16#d3, -16#80000001:64>>},
             {-16#8000000000000000, <<16#d3, 16#80, 0:56>>},
             {-16#8000000000000001, <<16#c7, 9, 3, 1, 16#80, 0:48, 1>>}],
    [{integer_to_list(I), ?_assertEqual(Bytes, enc(I))} || {I, Bytes} <- Cases] ++
        [{"round trip " ++ integer_to_list(I), ?_assertEqual({ok, I}, ?C:decode(Bytes))}
         || {I, Bytes} <- Cases].

bigint_test_() ->
    [%% Magnitude without leading zero bytes, in fixext when 1+len fits one.
     ?_assertEqual(<<16#c7, 17, 3, 0, 1, 0:(15 * 8)>>, enc(1 bsl 120)),
     ?_assertEqual(<<16#d8, 3, 0, 16#ff, -1:(14 * 8)>>, enc(1 bsl 120 - 1)),
     ?_assertEqual(<<16#d8, 3, 1, 16#ff, -1:(14 * 8)>>, enc(-(1 bsl 120 - 1))),
     [?_assertEqual({ok, I}, ?C:decode(enc(I)))
      || I <- [1 bsl 64, -(1 bsl 63) - 1, 1 bsl 1000, -(1 bsl 4000) + 7, 10 bsl 200]]].

float_test_() ->
    [?_assertEqual(<<16#cb, 1.5/float>>, enc(1.5)),
     ?_assertEqual(<<16#cb, 0:64>>, enc(0.0)),
     ?_assertEqual(<<16#cb, 1:1, 0:63>>, enc(-0.0)),
     ?_assertMatch({ok, F} when F =:= -0.0, ?C:decode(<<16#cb, 1:1, 0:63>>)),
     ?_assertEqual({ok, 5.0e-324}, ?C:decode(enc(5.0e-324))),
     ?_assertEqual({ok, 1.7976931348623157e308}, ?C:decode(enc(1.7976931348623157e308))),
     %% float32 is accepted, NaN/infinities in both widths become atoms.
     ?_assertEqual({ok, 1.5}, ?C:decode(<<16#ca, 1.5:32/float>>)),
     ?_assertEqual({ok, -0.25}, ?C:decode(<<16#ca, -0.25:32/float>>)),
     ?_assertEqual({ok, infinity}, ?C:decode(<<16#ca, 16#7f800000:32>>)),
     ?_assertEqual({ok, neg_infinity}, ?C:decode(<<16#ca, 16#ff800000:32>>)),
     ?_assertEqual({ok, nan}, ?C:decode(<<16#ca, 16#7fc00000:32>>)),
     ?_assertEqual({ok, nan}, ?C:decode(<<16#ca, 16#ff800001:32>>)),
     ?_assertEqual({ok, nan}, ?C:decode(<<16#cb, 16#7ff0000000000001:64>>)),
     ?_assertEqual({ok, nan}, ?C:decode(<<16#cb, 16#fff8000000000000:64>>)),
     %% The atoms are atoms on the way out: only a float is a float.
     ?_assertEqual(<<16#c7, 3, 1, "nan">>, enc(nan)),
     ?_assertEqual({ok, [nan, 1.0]},
                   ?C:decode(<<16#92, 16#cb, -1:64, 16#cb, 1.0/float>>))].

binary_forms_test_() ->
    Sizes = [0, 1, 31, 32, 255, 256, 65535, 65536, 100000],
    [{integer_to_list(N),
      fun() ->
              B = binary:copy(<<"b">>, N),
              Header = if N < 256 -> <<16#c4, N>>;
                          N < 65536 -> <<16#c5, N:16>>;
                          true -> <<16#c6, N:32>>
                       end,
              ?assertEqual(<<Header/binary, B/binary>>, enc(B)),
              ?assertEqual({ok, B}, ?C:decode(enc(B))),
              %% {bytes, B} is ext 4 and decodes to the plain binary.
              Bytes = enc({bytes, B}),
              ?assertEqual(4, ext_code(Bytes)),
              ?assertEqual({ok, B}, ?C:decode(Bytes))
      end} || N <- Sizes].

str_forms_test_() ->
    [?_assertEqual({ok, <<"">>}, ?C:decode(<<16#a0>>)),
     ?_assertEqual({ok, <<"abc">>}, ?C:decode(<<16#a3, "abc">>)),
     ?_assertEqual({ok, <<"abc">>}, ?C:decode(<<16#d9, 3, "abc">>)),
     ?_assertEqual({ok, <<"abc">>}, ?C:decode(<<16#da, 3:16, "abc">>)),
     ?_assertEqual({ok, <<"abc">>}, ?C:decode(<<16#db, 3:32, "abc">>)),
     ?_assertEqual({ok, <<"abc">>}, ?C:decode(<<16#c5, 3:16, "abc">>)),
     ?_assertEqual({ok, <<"abc">>}, ?C:decode(<<16#c6, 3:32, "abc">>)),
     ?_assertEqual({ok, <<"héllo"/utf8>>}, ?C:decode(<<16#a6, "héllo"/utf8>>))].

%% Large binaries travel by reference in both directions.
binary_not_copied_test() ->
    Big = binary:copy(<<"x">>, 1 bsl 20),
    IoData = ?C:encode(Big),
    ?assert(lists:any(fun(Part) -> erts_debug:same(Part, Big) end, parts(IoData))),
    Frame = iolist_to_binary(?C:encode([Big, <<"tail">>])),
    {ok, [Decoded, _]} = ?C:decode(Frame),
    ?assertEqual(Big, Decoded),
    ?assertEqual(byte_size(Frame), binary:referenced_byte_size(Decoded)).

%% Wherever they are: each large binary is one of the output's parts, and
%% the bytes around them (headers whose sizes count them) are right.
binary_not_copied_anywhere_test_() ->
    A = binary:copy(<<"a">>, 100000),
    B = binary:copy(<<"b">>, 70000),
    Terms = [{"list", [1, A, 2, B, 3]},
             {"tuple", {ok, A}},
             {"tuple of tuples", {{A, 1}, [x, {B}], {}}},
             {"nested tuples", {{{A}, B}}},
             {"bytes", [{bytes, A}, {tag, {bytes, B}}]},
             {"map", #{A => B, k => {A, [B]}}},
             {"adjacent", [A, B, {A, B}, [A], B]}],
    [{Name,
      fun() ->
              IoData = ?C:encode(Term),
              Parts = parts(IoData),
              [?assert(lists:any(fun(Part) -> erts_debug:same(Part, Big) end, Parts))
               || Big <- [A, B], contains(Term, Big)],
              Bin = iolist_to_binary(IoData),
              ?assertEqual({ok, pyport_codec_prop_tests:normalise(Term)}, ?C:decode(Bin))
      end} || {Name, Term} <- Terms] ++
        [?_test(begin
                    Frame = ?C:encode_frame(1, 7, [<<"m">>, <<"f">>, [A], #{}]),
                    ?assert(lists:any(fun(Part) -> erts_debug:same(Part, A) end, parts(Frame))),
                    ?assertMatch({1, 7, [<<"m">>, <<"f">>, [A], #{}]},
                                 frame_round_trip(1, 7, [<<"m">>, <<"f">>, [A], #{}]))
                end)].

none_test_() ->
    [?_assertEqual(<<16#c0>>, enc(A)) || A <- [none, nil, undefined]] ++
        [?_assertEqual({ok, none}, ?C:decode(<<16#c0>>)),
         ?_assertEqual(<<16#c3>>, enc(true)),
         ?_assertEqual(<<16#c2>>, enc(false)),
         ?_assertEqual({ok, [true, false]}, ?C:decode(<<16#92, 16#c3, 16#c2>>))].

atom_test_() ->
    %% Ext header follows the payload length: fixext 1/2/4/8/16, else ext 8/16.
    Cases = [{a, 16#d4}, {ok, 16#d5}, {abc, 16#c7}, {abcd, 16#d6},
             {abcdefgh, 16#d7}, {'abcdefghijklmnop', 16#d8},
             {'abcdefghijklmnopq', 16#c7},
             {list_to_atom(lists:duplicate(255, $z)), 16#c7},
             {list_to_atom(lists:duplicate(255, 16#e9)), 16#c8},      % 510 bytes
             {list_to_atom(lists:duplicate(255, 16#1F600)), 16#c8}], % 1020 bytes
    [{atom_to_list(A),
      fun() ->
              Bytes = enc(A),
              ?assertEqual(Header, binary:first(Bytes)),
              ?assertEqual(1, ext_code(Bytes)),
              ?assertEqual(atom_to_binary(A, utf8), ext_payload(Bytes)),
              ?assertEqual({ok, A}, ?C:decode(Bytes))
      end} || {A, Header} <- Cases].

list_forms_test_() ->
    [{integer_to_list(N),
      fun() ->
              L = lists:seq(1, N),
              Bytes = enc(L),
              Header = if N < 16 -> <<(16#90 + N)>>;
                          N < 65536 -> <<16#dc, N:16>>;
                          true -> <<16#dd, N:32>>
                       end,
              ?assertEqual(Header, binary:part(Bytes, 0, byte_size(Header))),
              ?assertEqual({ok, L}, ?C:decode(Bytes))
      end} || N <- [0, 1, 15, 16, 65535, 65536]] ++
        [?_assertEqual({ok, [1, 2]}, ?C:decode(<<16#dc, 2:16, 1, 2>>)),
         ?_assertEqual({ok, [1, 2]}, ?C:decode(<<16#dd, 2:32, 1, 2>>)),
         ?_assertEqual(<<16#92, 16#68, 16#69>>, enc("hi"))].

map_forms_test_() ->
    [{integer_to_list(N),
      fun() ->
              M = maps:from_list([{I, -I} || I <- lists:seq(1, N)]),
              Bytes = enc(M),
              Header = if N < 16 -> <<(16#80 + N)>>;
                          N < 65536 -> <<16#de, N:16>>;
                          true -> <<16#df, N:32>>
                       end,
              %% Pairs follow maps:to_list/1 (also for large hash maps).
              Body = iolist_to_binary([[enc(K), enc(V)] || {K, V} <- maps:to_list(M)]),
              ?assertEqual(<<Header/binary, Body/binary>>, Bytes),
              ?assertEqual({ok, M}, ?C:decode(Bytes))
      end} || N <- [0, 1, 15, 16, 33, 70000]] ++
        [?_assertEqual({ok, #{1 => 2}}, ?C:decode(<<16#de, 1:16, 1, 2>>)),
         ?_assertEqual({ok, #{1 => 2}}, ?C:decode(<<16#df, 1:32, 1, 2>>)),
         %% A repeated key keeps its last value, as in a Python dict.
         ?_assertEqual({ok, #{1 => 3}}, ?C:decode(<<16#82, 1, 2, 1, 3>>)),
         %% str and bin keys are both binaries.
         ?_assertEqual({ok, #{<<"k">> => 1, <<"j">> => 2}},
                       ?C:decode(<<16#82, 16#a1, "k", 1, 16#c4, 1, "j", 2>>))].

tuple_test_() ->
    Big = list_to_tuple(lists:seq(1, 70000)),
    [?_assertEqual(<<16#d4, 2, 16#90>>, enc({})),
     ?_assertEqual(<<16#d5, 2, 16#91, 7>>, enc({7})),
     ?_assertEqual(<<16#c7, 3, 2, 16#92, 7, 8>>, enc({7, 8})),
     ?_assertEqual({ok, Big}, ?C:decode(enc(Big))),
     ?_assertEqual(16#c9, binary:first(enc(Big))),
     ?_assertEqual(16#c8, binary:first(enc(list_to_tuple(lists:seq(1, 300))))),
     ?_assertEqual({ok, {bytes, 1}}, ?C:decode(enc({bytes, 1}))),
     ?_assertEqual({ok, {bytes, <<1>>, 2}}, ?C:decode(enc({bytes, <<1>>, 2}))),
     %% Non-shortest headers around and inside the tuple are accepted.
     ?_assertEqual({ok, {1, 2}}, ?C:decode(<<16#c8, 5:16, 2, 16#dc, 2:16, 1, 2>>)),
     ?_assertEqual({ok, {1}}, ?C:decode(<<16#c9, 6:32, 2, 16#dd, 1:32, 1>>)),
     ?_assertEqual({ok, [{}, {[]}]},
                   ?C:decode(<<16#92, 16#d4, 2, 16#90, 16#d5, 2, 16#91, 16#90>>))].

ext_forms_test_() ->
    %% Every ext header form carries every ext type.
    Atom = <<"abc">>,
    [?_assertEqual({ok, abc}, ?C:decode(<<16#c7, 3, 1, Atom/binary>>)),
     ?_assertEqual({ok, abc}, ?C:decode(<<16#c8, 3:16, 1, Atom/binary>>)),
     ?_assertEqual({ok, abc}, ?C:decode(<<16#c9, 3:32, 1, Atom/binary>>)),
     ?_assertEqual({ok, <<1, 2, 3, 4, 5, 6, 7, 8>>},
                   ?C:decode(<<16#d7, 4, 1, 2, 3, 4, 5, 6, 7, 8>>)),
     ?_assertEqual({ok, 5}, ?C:decode(<<16#d5, 3, 0, 5>>)),     % non-canonical bigint
     ?_assertEqual({ok, -5}, ?C:decode(<<16#c7, 3, 3, 1, 0, 5>>)),
     ?_assertEqual({ok, <<>>}, ?C:decode(<<16#c7, 0, 4>>))].

term_test_() ->
    Self = self(),
    Ref = make_ref(),
    Closure = fun() -> Ref end,
    Terms = [Self, Ref, fun lists:reverse/1, Closure, fun() -> ok end
             | [P || P <- lists:sublist(erlang:ports(), 1)]],
    [?_assertEqual({ok, T}, ?C:decode(enc(T))) || T <- Terms] ++
        [?_assertMatch(<<131, _/binary>>, ext_payload(enc(T))) || T <- Terms] ++
        [?_assertEqual(5, ext_code(enc(T))) || T <- Terms].

signed_ints_test_() ->
    %% Non-shortest and signed forms of small values decode to the value.
    [?_assertEqual({ok, 5}, ?C:decode(B))
     || B <- [<<16#cc, 5>>, <<16#cd, 5:16>>, <<16#ce, 5:32>>, <<16#cf, 5:64>>,
              <<16#d0, 5>>, <<16#d1, 5:16>>, <<16#d2, 5:32>>, <<16#d3, 5:64>>]] ++
        [?_assertEqual({ok, -5}, ?C:decode(B))
         || B <- [<<16#fb>>, <<16#d0, -5>>, <<16#d1, -5:16>>, <<16#d2, -5:32>>,
                  <<16#d3, -5:64>>]].

unsupported_term_test_() ->
    Improper = [1 | 2],
    [?_assertError({unsupported_term, Improper}, ?C:encode(Improper)),
     ?_assertError({unsupported_term, Improper}, ?C:encode(#{k => {ok, [Improper]}})),
     ?_assertError({unsupported_term, [a, b | c]}, ?C:encode([x, [a, b | c]])),
     ?_assertError({unsupported_term, <<1:3>>}, ?C:encode({<<1:3>>})),
     ?_assertError({unsupported_term, Improper}, ?C:encode_frame(1, 1, Improper)),
     ?_assertError({unsupported_term, Improper}, ?C:encode_frame(1, 1, [Improper]))].

%%%===================================================================
%%% Frames
%%%===================================================================

frame_exact_bytes_test() ->
    ?assertEqual(<<16#93, 16, 1, 16#d5, 1, "ok">>,
                 iolist_to_binary(?C:encode_frame(16, 1, [ok]))),
    ?assertEqual(<<16#92, 15, 0>>, iolist_to_binary(?C:encode_frame(15, 0, []))).

%% BATCH [12, 0, [Frame, ...]]: each frame a bin of its exact bytes.
batch_exact_bytes_test() ->
    A = ?C:encode_frame(2, 5, [<<"m">>, <<"f">>, [], #{}]),
    B = [<<16#92, 5>>, [<<7>>]],
    Bin = iolist_to_binary(?C:encode_batch([A, B])),
    ABin = iolist_to_binary(A),
    ?assertEqual(<<16#93, 12, 0, 16#92, 16#c4, (byte_size(ABin)), ABin/binary,
                   16#c4, 3, 16#92, 5, 7>>, Bin),
    ?assertEqual(<<16#93, 12, 0, 16#90>>, iolist_to_binary(?C:encode_batch([]))),
    {ok, [12, 0, [ABin, <<16#92, 5, 7>>]]} = ?C:decode(Bin),
    Big = binary:copy(<<0>>, 70000),
    <<16#93, 12, 0, 16#91, 16#c6, 70000:32, Big/binary>> =
        iolist_to_binary(?C:encode_batch([Big])).

frame_round_trip_test_() ->
    Ids = [0, 1, 127, 128, 255, 256, 65535, 65536, 16#FFFFFFFF, 16#100000000,
           16#FFFFFFFFFFFFFFFF],
    Fields = [<<"os.path">>, <<"join">>, [<<"a">>, 1], #{<<"sep">> => <<"/">>}],
    [{"id " ++ integer_to_list(Id),
      ?_assertEqual({Kind, Id, Fields}, frame_round_trip(Kind, Id, Fields))}
     || Id <- Ids, Kind <- [1]] ++
        [?_assertEqual({Kind, 7, []}, frame_round_trip(Kind, 7, []))
         || Kind <- lists:seq(0, 127)] ++
        [?_assertEqual({17, 9, lists:seq(1, 20)}, frame_round_trip(17, 9, lists:seq(1, 20))),
         %% A frame is an ordinary msgpack array.
         ?_assertEqual({ok, [16, 3, {ok, 1}]},
                       ?C:decode(iolist_to_binary(?C:encode_frame(16, 3, [{ok, 1}]))))].

frame_head_leaves_fields_undecoded_test() ->
    Payload = binary:copy(<<"p">>, 1000),
    Frame = iolist_to_binary(?C:encode_frame(16, 42, [Payload])),
    {ok, 16, 42, 1, Rest} = ?C:decode_frame_head(Frame),
    ?assertEqual(iolist_to_binary(?C:encode(Payload)), Rest),
    %% Even a field that does not decode leaves the head readable.
    ?assertEqual({ok, 16, 42, 1, <<16#c1>>}, ?C:decode_frame_head(<<16#93, 16, 42, 16#c1>>)).

frame_head_forms_test_() ->
    %% Any valid msgpack form of the array, kind and id is accepted.
    [?_assertEqual({ok, 5, 9, 1, <<16#c0>>},
                   ?C:decode_frame_head(<<16#dc, 3:16, 16#d0, 5, 16#cf, 9:64, 16#c0>>)),
     ?_assertEqual({ok, 5, 9, 0, <<>>},
                   ?C:decode_frame_head(<<16#dd, 2:32, 16#cc, 5, 16#d3, 9:64>>)),
     ?_assertEqual({ok, 5, 16#FFFFFFFFFFFFFFFF, 0, <<>>},
                   ?C:decode_frame_head(<<16#92, 5, 16#cf, -1:64>>))].

frame_head_errors_test_() ->
    Bad = fun(Why, Bin) -> ?_assertEqual({error, {bad_frame, Why}}, ?C:decode_frame_head(Bin)) end,
    [Bad({truncated, 0}, <<>>),
     Bad({truncated, 0}, <<16#dc, 0>>),
     Bad({truncated, 0}, <<16#dd, 0, 0, 0>>),
     Bad(not_an_array, <<16#c0>>),
     Bad(not_an_array, <<16#80>>),
     Bad(not_an_array, <<16#c1>>),
     Bad(not_an_array, <<16#d4, 2, 16#92>>),
     Bad(missing_kind, <<16#90>>),
     Bad(missing_id, <<16#91, 1>>),
     Bad(missing_id, <<16#91>>),
     Bad(bad_kind, <<16#92, 16#a1, "x", 1>>),
     Bad(bad_kind, <<16#92, 16#ff, 1>>),
     Bad(bad_kind, <<16#92, 16#d0, -3, 1>>),
     Bad(bad_kind, <<16#92, 16#cb, 1.0/float, 1>>),
     Bad(bad_kind, <<16#92, 16#c7, 9, 3, 0, 1, 0:64, 1>>),     % bigint
     Bad(bad_id, <<16#92, 1, 16#c0>>),
     Bad(bad_id, <<16#92, 1, 16#d3, -1:64>>),
     Bad(bad_id, <<16#92, 1, 16#92, 1, 2>>),
     Bad({truncated, 1}, <<16#92>>),
     Bad({truncated, 1}, <<16#92, 16#cc>>),
     Bad({truncated, 2}, <<16#92, 1>>),
     Bad({truncated, 2}, <<16#92, 1, 16#cf, 0, 0, 0>>),
     Bad({truncated, 4}, <<16#dc, 0, 2, 1>>)].

encode_frame_arguments_test_() ->
    [?_assertError(function_clause, ?C:encode_frame(128, 1, [])),
     ?_assertError(function_clause, ?C:encode_frame(-1, 1, [])),
     ?_assertError(function_clause, ?C:encode_frame(1, 1 bsl 64, [])),
     ?_assertError(function_clause, ?C:encode_frame(1, -1, []))].

decode_fields_test_() ->
    Fields = iolist_to_binary([?C:encode(F) || F <- [1, <<"two">>, [3]]]),
    [?_assertEqual({ok, [1, <<"two">>, [3]]}, ?C:decode_fields(3, Fields)),
     ?_assertEqual({ok, []}, ?C:decode_fields(0, <<>>)),
     ?_assertEqual({error, {bad_msgpack, {trailing_bytes, 7}}}, ?C:decode_fields(1, Fields)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 8}}}, ?C:decode_fields(4, Fields)),
     ?_assertEqual({error, {bad_msgpack, {trailing_bytes, 1}}}, ?C:decode_fields(0, <<1>>)),
     ?_assertEqual({error, {bad_msgpack, {reserved_byte, 16#c1}}},
                   ?C:decode_fields(2, <<1, 16#c1>>))].

%%%===================================================================
%%% Hostile input
%%%===================================================================

%% msgpack values are prefix-free, so no proper prefix of a value decodes.
every_truncation_test_() ->
    Dir = vectors_dir(),
    Files = filelib:wildcard(filename:join(Dir, "*.msgpack")),
    ?assert(length(Files) >= 56),
    [{filename:basename(File),
      fun() ->
              {ok, Bin} = file:read_file(File),
              [?assertMatch({Cut, {error, {bad_msgpack, {truncated, Off}}}}
                              when Off =< Cut,
                            {Cut, ?C:decode(binary:part(Bin, 0, Cut))})
               || Cut <- lists:seq(0, byte_size(Bin) - 1)],
              %% The same inside a frame, at the field level.
              Frame = <<16#93, 16, 1, Bin/binary>>,
              {ok, 16, 1, 1, Rest} = ?C:decode_frame_head(Frame),
              [?assertMatch({error, {bad_msgpack, {truncated, _}}},
                            ?C:decode_fields(1, binary:part(Rest, 0, Cut)))
               || Cut <- lists:seq(0, byte_size(Rest) - 1)],
              [?assertMatch({error, {bad_frame, _}},
                            ?C:decode_frame_head(binary:part(Frame, 0, Cut)))
               || Cut <- lists:seq(0, 2)]
      end} || File <- Files].

truncated_offset_test_() ->
    [?_assertEqual({error, {bad_msgpack, {truncated, 0}}}, ?C:decode(<<>>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 2}}}, ?C:decode(<<16#92, 1, 16#c4, 5, "ab">>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 2}}}, ?C:decode(<<16#92, 1, 16#a5, "ab">>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 1}}}, ?C:decode(<<16#91, 16#c7, 9, 1, "ab">>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 1}}}, ?C:decode(<<16#91, 16#d6, 2, 16#92, 1>>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 3}}}, ?C:decode(<<16#93, 1, 2>>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 0}}}, ?C:decode(<<16#dd, 0, 0>>)),
     %% A header that promises 4 GiB fails at once without allocating it.
     ?_assertEqual({error, {bad_msgpack, {truncated, 0}}}, ?C:decode(<<16#c6, -1:32, "x">>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 6}}}, ?C:decode(<<16#dd, -1:32, 1>>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 6}}}, ?C:decode(<<16#df, -1:32, 1>>))].

reserved_byte_test_() ->
    [?_assertEqual({error, {bad_msgpack, {reserved_byte, 16#c1}}}, ?C:decode(B))
     || B <- [<<16#c1>>, <<16#c1, 0>>, <<16#92, 1, 16#c1>>, <<16#81, 16#c1, 1>>,
              <<16#d5, 2, 16#91, 16#c1>>]].

unknown_ext_test_() ->
    [?_assertEqual({error, {bad_msgpack, {unknown_ext, 0}}}, ?C:decode(<<16#d4, 0, 0>>)),
     ?_assertEqual({error, {bad_msgpack, {unknown_ext, 6}}}, ?C:decode(<<16#c7, 0, 6>>)),
     ?_assertEqual({error, {bad_msgpack, {unknown_ext, 127}}}, ?C:decode(<<16#d5, 127, 0, 0>>)),
     %% msgpack's own timestamp type (-1) is not part of this protocol.
     ?_assertEqual({error, {bad_msgpack, {unknown_ext, -1}}}, ?C:decode(<<16#d6, -1, 0:32>>)),
     ?_assertEqual({error, {bad_msgpack, {unknown_ext, 9}}},
                   ?C:decode(<<16#92, 1, 16#c8, 2:16, 9, 0, 0>>))].

trailing_bytes_test_() ->
    [?_assertEqual({error, {bad_msgpack, {trailing_bytes, 1}}}, ?C:decode(<<1, 2>>)),
     ?_assertEqual({error, {bad_msgpack, {trailing_bytes, 3}}}, ?C:decode(<<16#90, 1, 2, 3>>)),
     ?_assertEqual({error, {bad_msgpack, {trailing_bytes, 1}}},
                   ?C:decode(<<16#c4, 1, "x", 16#c0>>))].

too_deep_test_() ->
    Nest = fun(Wrap, Depth) -> lists:foldl(fun(_, T) -> Wrap(T) end, 0, lists:seq(1, Depth)) end,
    Wraps = [{"arrays", fun(T) -> [T] end},
             {"maps", fun(T) -> #{k => T} end},
             {"map keys", fun(T) -> #{T => 1} end},
             {"tuples", fun(T) -> {T} end},
             {"mixed", fun([_] = T) -> {T}; ({_} = T) -> #{1 => T}; (T) -> [T] end}],
    [{Name,
      fun() ->
              Ok = Nest(Wrap, 512),
              ?assertEqual({ok, Ok}, ?C:decode(enc(Ok))),
              ?assertEqual({error, {bad_msgpack, too_deep}}, ?C:decode(enc(Nest(Wrap, 513)))),
              ?assertEqual({error, {bad_msgpack, too_deep}}, ?C:decode(enc(Nest(Wrap, 5000))))
      end} || {Name, Wrap} <- Wraps] ++
        %% Empty containers count too; headers of every size are checked.
        [?_assertEqual({error, {bad_msgpack, too_deep}},
                       ?C:decode(<<(binary:copy(<<16#91>>, 512))/binary, Empty/binary>>))
         || Empty <- [<<16#90>>, <<16#80>>, <<16#dc, 0:16>>, <<16#dd, 0:32>>,
                      <<16#de, 0:16>>, <<16#df, 0:32>>, <<16#d4, 2, 16#90>>]].

bad_atom_test_() ->
    TooLong = binary:copy(<<"a">>, 256),
    [?_assertEqual({error, {bad_msgpack, {bad_atom, 0}}}, ?C:decode(<<16#d4, 1, 255>>)),
     ?_assertEqual({error, {bad_msgpack, {bad_atom, 1}}},
                   ?C:decode(<<16#91, 16#d5, 1, 16#c3, 16#28>>)),
     ?_assertEqual({error, {bad_msgpack, {bad_atom, 0}}},
                   ?C:decode(<<16#c8, 256:16, 1, TooLong/binary>>))].

%% The decoder caches the atoms it makes: repeats and near-names stay right,
%% and a bad name is refused where it is, cached names or not.
atom_repeat_test_() ->
    Records = [#{id => I, name => <<"n">>, active => true, 'ab' => a, 'abc' => ab}
               || I <- lists:seq(1, 50)],
    [?_assertEqual({ok, Records}, ?C:decode(enc(Records))),
     ?_assertEqual({ok, [ok, ok, okk, ok, 'ok ']}, ?C:decode(enc([ok, ok, okk, ok, 'ok ']))),
     ?_assertEqual({error, {bad_msgpack, {bad_atom, 9}}},
                   ?C:decode(<<16#94, 16#d5, 1, "ok", 16#d5, 1, "ok", 16#d5, 1, 16#c3, 16#28,
                               16#d5, 1, "ok">>)),
     ?_assertEqual({error, {bad_msgpack, {truncated, 9}}},
                   ?C:decode(<<16#93, 16#d5, 1, "ok", 16#d5, 1, "ok", 16#d5, 1, "o">>))].

bad_bigint_test_() ->
    [?_assertEqual({error, {bad_msgpack, {bad_bigint, 0}}}, ?C:decode(B))
     || B <- [<<16#d4, 3, 0>>,                   % sign only
              <<16#c7, 0, 3>>,                   % empty
              <<16#d5, 3, 2, 1>>,                % sign byte neither 0 nor 1
              %% Larger than any Erlang integer.
              <<16#c9, (1 bsl 24 + 1):32, 3, 0, (binary:copy(<<255>>, 1 bsl 24))/binary>>]].

bad_tuple_test_() ->
    [?_assertEqual({error, {bad_msgpack, {bad_tuple, 0}}}, ?C:decode(B))
     || B <- [<<16#d4, 2, 1>>,                      % payload not an array
              <<16#c7, 0, 2>>,                      % empty payload
              <<16#d4, 2, 16#c0>>,
              <<16#d6, 2, 16#91, 1, 0, 0>>,         % array shorter than payload
              <<16#d4, 2, 16#91, 1>>,               % array longer than payload
              <<16#d5, 2, 16#dc, 0, 0>>]] ++        % array header longer than payload
        [?_assertEqual({error, {bad_msgpack, {bad_tuple, 1}}},
                       ?C:decode(<<16#91, 16#d5, 2, 16#92, 1, 2>>))].

bad_term_test_() ->
    Pid = term_to_binary(self()),
    <<131, PidBody/binary>> = Pid,
    %% term_to_binary/1 never compresses, and a compressed payload could
    %% expand to anything, so it is refused unread.
    Compressed = <<131, 80, (byte_size(PidBody)):32, (zlib:compress(PidBody))/binary>>,
    %% A pid on a node whose name is not an atom yet: `safe' refuses it, so
    %% a worker cannot grow the atom table through ext 5.
    Node = <<"pyport_never_an_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary,
             "@nowhere">>,
    Foreign = <<131, 88, 119, (byte_size(Node)), Node/binary, 1:32, 0:32, 1:32>>,
    Cases = [<<>>,
             <<1, 2, 3>>,
             term_to_binary(42),                         % not a pid, ref, port or fun
             term_to_binary({self()}),
             Compressed,
             <<Pid/binary, 0>>,                          % trailing bytes in the payload
             binary:part(Pid, 0, byte_size(Pid) - 1),
             Foreign],
    [?_assertEqual({error, {bad_msgpack, {bad_term, 0}}},
                   ?C:decode(iolist_to_binary([ext_header(5, byte_size(E)), E])))
     || E <- Cases] ++
        [?_assertEqual(self(), binary_to_term(Compressed)),
         ?_assertError(badarg, binary_to_existing_atom(Node, utf8))].

%%%===================================================================
%%% Limits: the decode budget and the atom budget (pyport_limits, pyport_atoms)
%%%===================================================================

%% Limits with the given sizes and no new atoms.
limits(Terms, Bytes) ->
    #{atoms => pyport_atoms:no_new_atoms(), max_terms => Terms, max_bytes => Bytes}.

limits(Terms, Bytes, Atoms) ->
    (limits(Terms, Bytes))#{atoms := Atoms}.

too_large(Key, Max) ->
    {error, {result_too_large, Key, Max}}.

%% Every element of a container is a value; a scalar result is none.
terms_budget_test_() ->
    L100 = enc(lists:seq(1, 100)),
    Nested = enc(lists:duplicate(1000, [1])),
    [?_assertMatch({ok, [_ | _]}, ?C:decode(L100, limits(100, infinity))),
     ?_assertEqual(too_large(max_result_terms, 99), ?C:decode(L100, limits(99, infinity))),
     ?_assertEqual({ok, 7}, ?C:decode(enc(7), limits(1, 1024))),
     %% Containers add up: 1000 lists of one.
     ?_assertMatch({ok, _}, ?C:decode(Nested, limits(2000, infinity))),
     ?_assertEqual(too_large(max_result_terms, 1999), ?C:decode(Nested, limits(1999, infinity))),
     %% A key and a value are two; a tuple's elements count.
     ?_assertMatch({ok, _}, ?C:decode(enc(#{a => 1, b => 2}), limits(4, infinity))),
     ?_assertEqual(too_large(max_result_terms, 3),
                   ?C:decode(enc(#{a => 1, b => 2}), limits(3, infinity))),
     ?_assertEqual(too_large(max_result_terms, 2), ?C:decode(enc({1, 2, 3}), limits(2, infinity))),
     %% decode_fields: the fields themselves are not counted.
     ?_assertEqual({ok, [1, [2]]}, ?C:decode_fields(2, <<1, 16#91, 2>>, limits(1, infinity)))].

%% A header claiming more values than there are bytes is truncated, not
%% too large, and what the bytes can hold is all that is built.
claimed_count_test_() ->
    [?_assertEqual({error, {bad_msgpack, {truncated, 8}}},
                   ?C:decode(<<16#dd, 30000000:32, 1, 2, 3>>, limits(10, infinity))),
     ?_assertEqual({error, {bad_msgpack, {truncated, 8}}},
                   ?C:decode(<<16#df, 30000000:32, 1, 2, 3>>, limits(10, infinity))),
     ?_assertEqual(too_large(max_result_terms, 2),
                   ?C:decode(<<16#dd, 30000000:32, 1, 2, 3>>, limits(2, infinity)))].

%% Without budgets, a header claiming 4 G values passes its charge and the
%% integer, float and pair runs read it: they stop where the bytes end,
%% having built only what the bytes hold (the heap would be 64 GB).
claimed_count_run_test_() ->
    Ints = binary:copy(<<1, 16#cd, 300:16, 16#e0>>, 100),
    Floats = binary:copy(<<16#cb, 1.5/float>>, 100),
    Cases = [{<<16#dd, -1:32, Ints/binary>>, 5 + byte_size(Ints)},
             {<<16#dc, -1:16, Ints/binary>>, 3 + byte_size(Ints)},
             {<<16#dd, -1:32, Floats/binary>>, 5 + byte_size(Floats)},
             %% 150 pairs, and a key whose value is missing.
             {<<16#df, -1:32, Ints/binary, 7>>, 5 + byte_size(Ints) + 1},
             {<<16#de, -1:16, Ints/binary, 7>>, 3 + byte_size(Ints) + 1}],
    [?_test(begin
                {Result, Heap} = in_process(fun() -> ?C:decode(Bin, limits(infinity, infinity)) end),
                ?assertEqual({error, {bad_msgpack, {truncated, At}}}, Result),
                ?assert(Heap < 100000, {heap_words, Heap})
            end) || {Bin, At} <- Cases].

%% A 30 MB list of fixints is refused at its header, before anything is
%% built: the decoding process's heap stays small (it would be 480 MB).
refused_before_built_test_() ->
    {timeout, 30,
     fun() ->
             Bin = <<16#dd, 30000000:32, (binary:copy(<<1>>, 30000000))/binary>>,
             {Result, Heap} = in_process(fun() -> ?C:decode(Bin) end),
             ?assertEqual(too_large(max_result_terms, 64 * 1024 * 1024 div 16), Result),
             ?assert(Heap < 100000, {heap_words, Heap}),
             %% By bytes too, and as it goes: 3 M strings of one character
             %% pass the header (48 MB of cells) and are refused where
             %% their own heap binaries pass 64 MB.
             Strings = <<16#dd, 3000000:32, (binary:copy(<<16#a1, $a>>, 3000000))/binary>>,
             {Result2, Heap2} = in_process(fun() -> ?C:decode(Strings, limits(infinity, 64 bsl 20)) end),
             ?assertEqual(too_large(max_decoded_bytes, 64 bsl 20), Result2),
             ?assert(Heap2 < 64 bsl 20, {heap_words, Heap2})
     end}.

%% Runs Fun in a fresh process: its result and that process's heap (words)
%% right after.
in_process(Fun) ->
    Self = self(),
    Pid = spawn(fun() ->
                        R = Fun(),
                        {total_heap_size, H} = process_info(self(), total_heap_size),
                        Self ! {self(), R, H}
                end),
    receive {Pid, R, H} -> {R, H} end.

%% What each kind of value is charged: heap words, 8 bytes each.
bytes_budget_test_() ->
    Cases = [{lists:seq(1, 100), 200},                       % list cells
             {lists:duplicate(100, <<"a">>), 200 + 100 * 3}, % heap binaries of 1 byte
             {lists:duplicate(100, 1.5), 200 + 100 * 2},     % floats
             {[1 bsl 62], 2 + 2},                            % beyond a small integer
             {{1, 2, 3}, 4},                                 % tuple
             {#{a => 1}, 4 + 4},                             % map
             {[a, b, c], 6}],                                % atoms take no heap
    lists:append(
      [[?_assertMatch({ok, _}, ?C:decode(enc(T), limits(infinity, 8 * Words))),
        ?_assertMatch({error, {result_too_large, max_decoded_bytes, _}},
                      ?C:decode(enc(T), limits(infinity, 8 * Words - 1)))]
       || {T, Words} <- Cases]) ++
        %% A large binary is a sub-binary of the frame: its data is not
        %% charged (the frame is bounded by max_frame_size).
        [?_assertMatch({ok, _}, ?C:decode(enc(binary:copy(<<0>>, 1 bsl 20)), limits(1, 6 * 8)))].

%% Atoms: existing ones always decode; new ones only within the budget.
atom_budget_test_() ->
    {setup,
     fun() -> application:load(pyport) end,
     fun(_) -> application:unset_env(pyport, max_new_atoms) end,
     fun(_) ->
             [fun existing_atoms_need_no_budget/0, fun pool_budget_counts/0,
              fun node_budget_bounds_every_pool/0, fun sandboxed_pools_make_none/0,
              fun exception_types/0, fun concurrent_decoders_share_a_budget/0]
     end}.

new_name(Prefix) ->
    <<Prefix/binary, (integer_to_binary(erlang:unique_integer([positive])))/binary>>.

%% A new atom's bytes: ext 1 with the name.
atom_bytes(Name) ->
    <<(ext_header(1, byte_size(Name)))/binary, Name/binary>>.

existing_atoms_need_no_budget() ->
    New = new_name(<<"pyport_no_budget_">>),
    None = limits(infinity, infinity),
    ?assertEqual({ok, [ok, error]}, ?C:decode(enc([ok, error]), None)),
    ?assertEqual({error, {atom_limit, New, 0}}, ?C:decode(atom_bytes(New), None)),
    %% As a map key too, and the atom was not made.
    ?assertEqual({error, {atom_limit, New, 0}},
                 ?C:decode(<<16#81, (atom_bytes(New))/binary, 1>>, None)),
    ?assertError(badarg, binary_to_existing_atom(New, utf8)),
    %% A name that cannot be an atom is bad, whatever the budget.
    ?assertEqual({error, {bad_msgpack, {bad_atom, 0}}}, ?C:decode(<<16#d4, 1, 255>>, None)).

pool_budget_counts() ->
    Pool = binary_to_atom(new_name(<<"pyport_test_pool_">>)),
    Limits = limits(infinity, infinity, pyport_atoms:pool_budget(Pool, #{max_new_atoms => 3})),
    [A, B, C, D] = [new_name(<<"pyport_pool_atom_">>) || _ <- lists:seq(1, 4)],
    Before = erlang:system_info(atom_count),
    ?assertEqual({error, {atom_limit, D, 3}},
                 ?C:decode(<<16#94, (atom_bytes(A))/binary, (atom_bytes(B))/binary,
                             (atom_bytes(C))/binary, (atom_bytes(D))/binary>>, Limits)),
    ?assertEqual(3, erlang:system_info(atom_count) - Before),
    ?assertEqual(#{used => 3}, pyport_atoms:pool_info(Pool)),
    %% Made once, they exist: no budget needed any more.
    ?assertMatch({ok, [_, _, _]},
                 ?C:decode(<<16#93, (atom_bytes(A))/binary, (atom_bytes(B))/binary,
                             (atom_bytes(C))/binary>>, Limits)),
    ?assertEqual({error, {atom_limit, D, 3}}, ?C:decode(atom_bytes(D), Limits)).

node_budget_bounds_every_pool() ->
    #{used := Used} = pyport_atoms:info(),
    ok = application:set_env(pyport, max_new_atoms, Used + 2),
    try
        Pool = binary_to_atom(new_name(<<"pyport_test_pool_">>)),
        %% The pool's own budget is larger, the node's is what is left.
        Limits = limits(infinity, infinity, pyport_atoms:pool_budget(Pool, #{max_new_atoms => 100})),
        [A, B, C] = [new_name(<<"pyport_node_atom_">>) || _ <- lists:seq(1, 3)],
        ?assertMatch({ok, _}, ?C:decode(atom_bytes(A), Limits)),
        ?assertMatch({ok, _}, ?C:decode(atom_bytes(B), Limits)),
        ?assertEqual({error, {atom_limit, C, Used + 2}}, ?C:decode(atom_bytes(C), Limits)),
        %% A refused atom leaves both counts as they were.
        ?assertEqual(#{used => 2}, pyport_atoms:pool_info(Pool)),
        ?assertMatch(#{used := U} when U =:= Used + 2, pyport_atoms:info())
    after
        application:unset_env(pyport, max_new_atoms)
    end.

sandboxed_pools_make_none() ->
    New = new_name(<<"pyport_sandboxed_">>),
    Budget = pyport_atoms:pool_budget(sandboxed, #{sandbox => #{}, max_new_atoms => default}),
    ?assertEqual({error, {atom_limit, New, 0}},
                 ?C:decode(atom_bytes(New), limits(infinity, infinity, Budget))),
    %% Unless the pool says otherwise.
    Allowed = pyport_atoms:pool_budget(sandboxed, #{sandbox => #{}, max_new_atoms => node}),
    ?assertMatch({ok, _}, ?C:decode(atom_bytes(New), limits(infinity, infinity, Allowed))).

exception_types() ->
    Pool = binary_to_atom(new_name(<<"pyport_test_pool_">>)),
    Budget = pyport_atoms:pool_budget(Pool, #{max_new_atoms => 1}),
    [A, B] = [new_name(<<"PyportError">>) || _ <- [1, 2]],
    ?assertEqual('ValueError', pyport_atoms:exception_type(<<"ValueError">>, Budget)),
    TypeA = pyport_atoms:exception_type(A, Budget),
    ?assert(is_atom(TypeA)),
    ?assertEqual(A, atom_to_binary(TypeA)),
    %% Past the budget the name arrives as text, and is not made.
    ?assertEqual(B, pyport_atoms:exception_type(B, Budget)),
    ?assertError(badarg, binary_to_existing_atom(B, utf8)).

%% Many decoders at once never make more than the budget.
concurrent_decoders_share_a_budget() ->
    Pool = binary_to_atom(new_name(<<"pyport_test_pool_">>)),
    Limits = limits(infinity, infinity, pyport_atoms:pool_budget(Pool, #{max_new_atoms => 50})),
    Self = self(),
    Before = erlang:system_info(atom_count),
    Pids = [spawn(fun() ->
                          Made = length([ok || _ <- lists:seq(1, 20),
                                               {ok, _} <- [?C:decode(atom_bytes(new_name(<<"pyport_race_">>)),
                                                                     Limits)]]),
                          Self ! {self(), Made}
                  end) || _ <- lists:seq(1, 8)],
    Made = lists:sum([receive {P, M} -> M end || P <- Pids]),
    ?assert(Made =< 50 andalso Made >= 40, {made, Made}),
    ?assertEqual(Made, erlang:system_info(atom_count) - Before),
    ?assertEqual(#{used => Made}, pyport_atoms:pool_info(Pool)).

%% A process's own limits (a port owner's, its pool's) apply to the
%% decodes that name none.
process_limits_test() ->
    Self = self(),
    spawn(fun() ->
                  ok = pyport_limits:set_process(limits(2, infinity)),
                  Self ! {limited, ?C:decode(enc([1, 2, 3]))}
          end),
    receive {limited, R} -> ?assertEqual(too_large(max_result_terms, 2), R) end,
    ?assertMatch({ok, [1, 2, 3]}, ?C:decode(enc([1, 2, 3]))).

%% Random bytes and mutated vectors: every outcome is a value or a clean error.
random_bytes_test_() ->
    {timeout, 60,
     fun() ->
             Rand = rand:seed_s(exsss, {17, 42, 4711}),
             Vectors = [element(2, file:read_file(F))
                        || F <- filelib:wildcard(filename:join(vectors_dir(), "*.msgpack"))],
             Count = fuzz(Rand, Vectors, 5000, 0),
             %% Some inputs must have been valid, or the fuzz only hit one path.
             ?assert(Count > 0)
     end}.

fuzz(_, _, 0, Ok) ->
    Ok;
fuzz(Rand0, Vectors, N, Ok) ->
    {Bin, Rand} = fuzz_input(Rand0, Vectors),
    Result = no_crash(fun pyport_codec:decode/1, [Bin]),
    ?assertMatch({ok, _} when true, ok_or(bad_msgpack, Result)),
    case no_crash(fun pyport_codec:decode_frame_head/1, [Bin]) of
        {ok, _, _, NFields, Rest} ->
            case no_crash(fun pyport_codec:decode_fields/2, [NFields, Rest]) of
                {ok, Fields} -> ?assertEqual(NFields, length(Fields));
                {error, {bad_msgpack, _}} -> ok
            end;
        {error, {bad_frame, _}} ->
            ok
    end,
    fuzz(Rand, Vectors, N - 1, Ok + case Result of {ok, _} -> 1; _ -> 0 end).

%% Runs F, turning any exception into a test failure that shows the input.
no_crash(F, Args) ->
    try
        apply(F, Args)
    catch
        Class:Reason:Stack -> error({crashed, Args, Class, Reason, Stack})
    end.

ok_or(_, {ok, _} = Ok) -> Ok;
ok_or(Tag, {error, {Tag, _}}) -> {ok, error}.

fuzz_input(Rand0, Vectors) ->
    {Choice, Rand1} = rand:uniform_s(3, Rand0),
    case Choice of
        1 ->
            {Len, Rand2} = rand:uniform_s(64, Rand1),
            random_bytes(Len - 1, Rand2, []);
        _ ->
            %% A vector with one byte replaced, inside a frame half the time.
            {I, Rand2} = rand:uniform_s(length(Vectors), Rand1),
            V0 = lists:nth(I, Vectors),
            V = case Choice of
                    2 -> V0;
                    3 -> <<16#93, 16, 1, V0/binary>>
                end,
            {Pos, Rand3} = rand:uniform_s(byte_size(V), Rand2),
            {Byte, Rand4} = rand:uniform_s(256, Rand3),
            <<Pre:(Pos - 1)/binary, _, Post/binary>> = V,
            {<<Pre/binary, (Byte - 1), Post/binary>>, Rand4}
    end.

random_bytes(0, Rand, Acc) ->
    {list_to_binary(Acc), Rand};
random_bytes(N, Rand0, Acc) ->
    {B, Rand} = rand:uniform_s(256, Rand0),
    random_bytes(N - 1, Rand, [B - 1 | Acc]).

%%%===================================================================
%%% Lists and maps of integers (the encoder's wide appends, the
%%% decoder's integer runs and pair runs)
%%%===================================================================

%% Integers near every form boundary, and floats.
boundary_ints() ->
    [0, 1, 126, 127, 128, 200, 255, 256, 257, 4096, 65534, 65535, 65536, 16#FFFFFFFF,
     16#100000000, -1, -32, -33, -128, -129, -32768, -32769, -16#80000000, -16#80000001].

%% Lists of Len values drawn from Pool, deterministic.
random_lists(Pool, Seed, Count) ->
    Rand0 = rand:seed_s(exsss, Seed),
    {Lists, _} = lists:mapfoldl(
                   fun(_, R0) ->
                           {Len, R1} = rand:uniform_s(40, R0),
                           lists:mapfoldl(fun(_, R) ->
                                                  {I, R2} = rand:uniform_s(length(Pool), R),
                                                  {lists:nth(I, Pool), R2}
                                          end, R1, lists:seq(1, Len - 1))
                   end, Rand0, lists:seq(1, Count)),
    Lists.

%% An array or map is its header and then its values one by one, each in
%% its own shortest form, whatever the encoder groups.
int_list_bytes_test_() ->
    Pools = [boundary_ints(), [1, 2, 3, 127], [300, 400, 65535, 256], [0.5, -1.25, 1.0e300],
             [1, 300, 0.5, <<"a">>, [7], none]],
    [{lists:flatten(io_lib:format("~w", [L])),
      fun() ->
              Expected = iolist_to_binary([array_header(length(L)) | [enc(E) || E <- L]]),
              ?assertEqual(Expected, enc(L)),
              ?assertEqual({ok, L}, ?C:decode(Expected))
      end} || Pool <- Pools, L <- random_lists(Pool, 1, 40)].

int_map_bytes_test_() ->
    Maps = [maps:from_list(lists:zip(lists:seq(1, length(L)), L))
            || L <- random_lists(boundary_ints(), 2, 30)] ++
        [maps:from_list([{I, I} || I <- lists:seq(1, 1000)]),
         maps:from_list([{I * 300, 100 - I} || I <- lists:seq(1, 50)])],
    [fun() ->
             Body = iolist_to_binary([[enc(K), enc(V)] || {K, V} <- maps:to_list(M)]),
             Bytes = enc(M),
             ?assertEqual(Body, binary:part(Bytes, byte_size(Bytes), -byte_size(Body))),
             ?assertEqual({ok, M}, ?C:decode(Bytes))
     end || M <- Maps].

%% Every integer form a worker may use, shortest or not, in arrays of every
%% length around the decoder's grouping (4 at a time, runs from 8), with
%% and without other values after the integers.
int_forms() ->
    [{fixint, fun(I) when I >= 0, I < 128 -> <<I>> end, [0, 5, 127]},
     {negfix, fun(I) when I >= -32, I < 0 -> <<I:8/signed>> end, [-1, -32]},
     {u8, fun(I) -> <<16#cc, I>> end, [0, 7, 255]},
     {u16, fun(I) -> <<16#cd, I:16>> end, [0, 9, 65535]},
     {u32, fun(I) -> <<16#ce, I:32>> end, [0, 11, 16#FFFFFFFF]},
     {u64, fun(I) -> <<16#cf, I:64>> end, [3, 16#FFFFFFFFFFFFFFFF]},
     {i8, fun(I) -> <<16#d0, I:8/signed>> end, [-128, 4, 127]},
     {i16, fun(I) -> <<16#d1, I:16/signed>> end, [-32768, 6, 32767]},
     {i32, fun(I) -> <<16#d2, I:32/signed>> end, [-16#80000000, 8]},
     {i64, fun(I) -> <<16#d3, I:64/signed>> end, [-16#8000000000000000, 10]}].

int_run_forms_test_() ->
    Forms = int_forms(),
    Tails = [{[], <<>>}, {[<<"x">>], <<16#a1, "x">>}, {[1.5], <<16#cb, 1.5/float>>},
             {[[1, 2]], <<16#92, 1, 2>>}, {[none, 3], <<16#c0, 3>>}],
    [{lists:flatten(io_lib:format("~p ~p+~p", [Name, Len, TailTerm])),
      fun() ->
              Values = [lists:nth(1 + (I rem length(Samples)), Samples) || I <- lists:seq(1, Len)],
              Bytes = iolist_to_binary([array_header(Len + length(TailTerm)),
                                        [Form(V) || V <- Values], TailBytes]),
              ?assertEqual({ok, Values ++ TailTerm}, ?C:decode(Bytes)),
              %% The same integers after a non-integer: read one by one.
              Bytes2 = iolist_to_binary([array_header(Len + 1), 16#c0, [Form(V) || V <- Values]]),
              ?assertEqual({ok, [none | Values]}, ?C:decode(Bytes2))
      end} || {Name, Form, Samples} <- Forms, Len <- [3, 4, 5, 7, 8, 9, 12, 17, 100],
              {TailTerm, TailBytes} <- Tails].

%% Integers of mixed forms, with another value at every position.
int_run_mixed_test_() ->
    Forms = int_forms(),
    Values = [{lists:nth(1 + (I rem length(S)), S), F}
              || I <- lists:seq(1, 30), {_, F, S} <- [lists:nth(1 + (I * 7) rem length(Forms), Forms)]],
    Ints = [V || {V, _} <- Values],
    [fun() ->
             {Before, After} = lists:split(At, Values),
             Bytes = iolist_to_binary([array_header(31), [F(V) || {V, F} <- Before],
                                       16#a2, "ab", [F(V) || {V, F} <- After]]),
             {B1, A1} = lists:split(At, Ints),
             ?assertEqual({ok, B1 ++ [<<"ab">>] ++ A1}, ?C:decode(Bytes))
     end || At <- lists:seq(0, 30)].

%% Arrays that start with float 64s, with NaN, an infinity, a float 32 or
%% another value at every position, and the budget of their heap words.
float_run_test_() ->
    Floats = [I * 0.25 - 3.0 || I <- lists:seq(1, 20)],
    Odd = [{nan, <<16#cb, 16#7ff8000000000000:64>>}, {infinity, <<16#cb, 16#7ff0000000000000:64>>},
           {neg_infinity, <<16#cb, 16#fff0000000000000:64>>}, {1.5, <<16#ca, 1.5:32/float>>},
           {7, <<7>>}, {<<"s">>, <<16#a1, "s">>}],
    [fun() ->
             {Before, After} = lists:split(At, Floats),
             Bytes = iolist_to_binary([array_header(21), [enc(F) || F <- Before], OddBytes,
                                       [enc(F) || F <- After]]),
             ?assertEqual({ok, Before ++ [OddTerm] ++ After}, ?C:decode(Bytes))
     end || At <- lists:seq(0, 20), {OddTerm, OddBytes} <- Odd] ++
        [?_assertEqual({ok, Floats}, ?C:decode(enc(Floats))),
         %% 20 cells and 20 floats: 80 words.
         ?_assertMatch({ok, _}, ?C:decode(enc(Floats), limits(20, 80 * 8))),
         ?_assertEqual(too_large(max_decoded_bytes, 80 * 8 - 1),
                       ?C:decode(enc(Floats), limits(20, 80 * 8 - 1))),
         ?_assertEqual(too_large(max_decoded_bytes, 60 * 8),
                       ?C:decode(enc(Floats ++ [1, 2]), limits(22, 60 * 8))),
         ?_assertMatch({ok, _}, ?C:decode(enc(Floats ++ [1, 2]), limits(22, 84 * 8))),
         %% The run's floats are charged: what follows them has the rest
         %% (21 cells, 20 floats, then 10 cells: 102 words).
         ?_assertMatch({ok, _}, ?C:decode(enc(Floats ++ [lists:seq(1, 10)]), limits(31, 102 * 8))),
         ?_assertEqual(too_large(max_decoded_bytes, 101 * 8),
                       ?C:decode(enc(Floats ++ [lists:seq(1, 10)]), limits(31, 101 * 8))),
         ?_assertMatch({error, {bad_msgpack, {truncated, 12}}},
                       ?C:decode(binary:part(enc(Floats), 0, 15)))].

%% Maps whose pairs are integers, with a non-integer key or value at every
%% position; a repeated key keeps its last value wherever it is.
int_pair_run_test_() ->
    Pairs = [{K, K * 3} || K <- lists:seq(1, 20)],
    Enc = fun(Ps) -> [[enc(K), enc(V)] || {K, V} <- Ps] end,
    Cases = [{At, Kind} || At <- lists:seq(0, 20), Kind <- [key, value]],
    [fun() ->
             {Before, After} = lists:split(At, Pairs),
             Odd = case Kind of
                       key -> {<<"k">>, 7};
                       value -> {999, <<"v">>}
                   end,
             Bytes = iolist_to_binary([map_header(21), Enc(Before), Enc([Odd]), Enc(After)]),
             ?assertEqual({ok, maps:from_list(Before ++ [Odd] ++ After)}, ?C:decode(Bytes))
     end || {At, Kind} <- Cases] ++
        [?_assertEqual({ok, maps:from_list([{K, K} || K <- lists:seq(1, 9)] ++ [{1, 7}])},
                       ?C:decode(iolist_to_binary([map_header(10), Enc([{K, K} || K <- lists:seq(1, 9)]),
                                                   Enc([{1, 7}])]))),
         ?_assertEqual({ok, maps:from_list([{K, K} || K <- lists:seq(1, 9)] ++ [{1, <<"x">>}])},
                       ?C:decode(iolist_to_binary([map_header(10), Enc([{K, K} || K <- lists:seq(1, 9)]),
                                                   Enc([{1, <<"x">>}])]))),
         ?_assertEqual({ok, #{1 => 2}},
                       ?C:decode(iolist_to_binary([map_header(9), Enc([{1, I} || I <- lists:seq(-6, 2)])])))].

%% A value cut inside a run of integers is truncated where it starts.
int_run_truncation_test_() ->
    Values = lists:seq(1, 12) ++ [300, 301, 302, 303, 70000, 70001, -5, -300],
    Parts = [enc(V) || V <- Values],
    Whole = iolist_to_binary([array_header(length(Values)) | Parts]),
    Starts = element(1, lists:mapfoldl(fun(P, Off) -> {Off, Off + byte_size(P)} end,
                                       byte_size(array_header(length(Values))), Parts)),
    MapWhole = enc(maps:from_list([{I, I * 1000} || I <- lists:seq(1, 10)])),
    [?_assertEqual({error, {bad_msgpack, {truncated, lists:last([S || S <- Starts, S =< Cut])}}},
                   ?C:decode(binary:part(Whole, 0, Cut)))
     || Cut <- lists:seq(4, byte_size(Whole) - 1)] ++
        [?_assertMatch({error, {bad_msgpack, {truncated, _}}}, ?C:decode(binary:part(MapWhole, 0, Cut)))
         || Cut <- lists:seq(1, byte_size(MapWhole) - 1)].

%% Runs are charged like any container, at their header.
int_run_budget_test_() ->
    L = enc(lists:seq(1, 100)),
    M = enc(maps:from_list([{I, I} || I <- lists:seq(1, 20)])),
    [?_assertMatch({ok, _}, ?C:decode(L, limits(100, 200 * 8))),
     ?_assertEqual(too_large(max_result_terms, 99), ?C:decode(L, limits(99, infinity))),
     ?_assertEqual(too_large(max_decoded_bytes, 200 * 8 - 1), ?C:decode(L, limits(100, 200 * 8 - 1))),
     ?_assertMatch({ok, _}, ?C:decode(M, limits(40, infinity))),
     ?_assertEqual(too_large(max_result_terms, 39), ?C:decode(M, limits(39, infinity)))].

%% Decoding leaves the caller's process dictionary as it was, whether it
%% succeeds or fails.
int_run_dictionary_test() ->
    Before = lists:sort(get()),
    L = enc(lists:seq(1, 50)),
    M = enc(maps:from_list([{I, I} || I <- lists:seq(1, 50)])),
    {ok, _} = ?C:decode(L),
    {ok, _} = ?C:decode(M),
    {error, _} = ?C:decode(binary:part(L, 0, 40)),
    {error, _} = ?C:decode(binary:part(M, 0, 40)),
    {error, _} = ?C:decode(L, limits(10, infinity)),
    ?assertEqual(Before, lists:sort(get())).

%%%===================================================================
%%% Long lists (their headers and the parts around them)
%%%===================================================================

%% The bytes are the canonical ones, the header the shortest (the same
%% bytes pyport_codec_prop_tests's plain reference encoder writes), on
%% either side of every header form and of 1024 (where a header written
%% after the elements was tried), wherever a long list is: first in
%% another, in tuples (whose ext header counts what is inside), as a map's
%% key, around large binaries (parts of the output).
long_list_bytes_test_() ->
    L = fun(N) -> lists:seq(1, N) end,
    A = binary:copy(<<"a">>, 100000),
    Cases = [{"seq " ++ integer_to_list(N), L(N)}
             || N <- [1023, 1024, 1025, 1055, 1056, 1057, 4000, 65535, 65536, 70000]] ++
        [{"first in a long list", [L(1100) | L(1100)]},
         {"first in a first", [[L(1024) | L(1030)] | L(1024)]},
         {"last in a long list", L(1100) ++ [L(2000)]},
         {"in a short list", [[L(1100)]]},
         {"long lists of long lists", [L(1024) || _ <- L(1100)]},
         {"mixed elements", lists:append([[I, I * 0.5, <<"s">>, [I], #{I => I}, {I}, none]
                                          || I <- L(200)])},
         {"tuple", {L(1100), #{a => L(2000)}}},
         {"tuple of tuples", {{{L(1024)}, x}, [L(1025)]}},
         {"long tuple", list_to_tuple([L(1100) || _ <- L(1100)])},
         {"map", #{L(1100) => L(1024), k => [x | L(1100)]}},
         {"large binaries", [A | L(1100)] ++ [A, {A, L(1024)}, [A]]}],
    [{Name,
      fun() ->
              IoData = ?C:encode(Term),
              ?assertEqual(pyport_codec_prop_tests:reference(Term), iolist_to_binary(IoData)),
              ?assertEqual({ok, pyport_codec_prop_tests:normalise(Term)},
                           ?C:decode(iolist_to_binary(IoData))),
              [?assert(lists:any(fun(Part) -> erts_debug:same(Part, A) end, parts(IoData)))
               || contains(Term, A)],
              Fields = [<<"m">>, <<"f">>, [Term], #{}],
              ?assertEqual(pyport_codec_prop_tests:reference([1, 7 | Fields]),
                           iolist_to_binary(?C:encode_frame(1, 7, Fields)))
      end} || {Name, Term} <- Cases].

%% An improper long list is refused by name, as a short one is, wherever
%% its tail is (after scalars, after containers, an integer) and wherever
%% it is.
long_list_improper_test_() ->
    Improper = fun(Elements, Tail) -> lists:foldr(fun(E, T) -> [E | T] end, Tail, Elements) end,
    Lists = [{integer_to_list(N) ++ " " ++ io_lib:format("~w", [Tail]), Improper(lists:seq(1, N), Tail)}
             || N <- [1023, 1024, 1025, 1056, 3000], Tail <- [tail, 5]] ++
        [{"lists", Improper([[I] || I <- lists:seq(1, 1100)], tail)},
         {"maps", Improper([#{I => I} || I <- lists:seq(1, 1100)], 5)},
         {"list of a list", Improper(lists:seq(1, 1100) ++ [[[1]]], 5)},
         {"tuple of a list", Improper(lists:seq(1, 1100) ++ [{[1], 2}], 7)}],
    [{lists:flatten(Name ++ " " ++ Where), ?_assertError({unsupported_term, Bad}, ?C:encode(Wrap(Bad)))}
     || {Name, Bad} <- Lists,
        {Where, Wrap} <- [{"alone", fun(X) -> X end},
                          {"nested", fun(X) -> #{k => {ok, [X]}} end},
                          {"in a long list", fun(X) -> lists:seq(1, 1100) ++ [X] end}]].

array_header(N) when N < 16 -> <<(16#90 + N)>>;
array_header(N) when N < 65536 -> <<16#dc, N:16>>;
array_header(N) -> <<16#dd, N:32>>.

map_header(N) when N < 16 -> <<(16#80 + N)>>;
map_header(N) when N < 65536 -> <<16#de, N:16>>;
map_header(N) -> <<16#df, N:32>>.

%%%===================================================================
%%% Helpers
%%%===================================================================

enc(Term) ->
    iolist_to_binary(?C:encode(Term)).

%% The ext type code of an encoded ext value.
ext_code(<<H, T, _/binary>>) when H >= 16#d4, H =< 16#d8 -> T;
ext_code(<<16#c7, _, T, _/binary>>) -> T;
ext_code(<<16#c8, _:16, T, _/binary>>) -> T;
ext_code(<<16#c9, _:32, T, _/binary>>) -> T.

ext_payload(<<H, _, P/binary>>) when H >= 16#d4, H =< 16#d8 -> P;
ext_payload(<<16#c7, N, _, P:N/binary>>) -> P;
ext_payload(<<16#c8, N:16, _, P:N/binary>>) -> P;
ext_payload(<<16#c9, N:32, _, P:N/binary>>) -> P.

ext_header(Code, 1) -> <<16#d4, Code>>;
ext_header(Code, N) when N < 256 -> <<16#c7, N, Code>>;
ext_header(Code, N) -> <<16#c8, N:16, Code>>.

%% Whether Big is somewhere in Term.
contains(Big, Big) -> true;
contains(L, Big) when is_list(L) -> lists:any(fun(E) -> contains(E, Big) end, L);
contains(T, Big) when is_tuple(T) -> contains(tuple_to_list(T), Big);
contains(M, Big) when is_map(M) -> contains(maps:to_list(M), Big);
contains(_, _) -> false.

%% The binaries and bytes an iolist is made of, in order.
parts(B) when is_binary(B) -> [B];
parts(I) when is_integer(I) -> [I];
parts([H | T]) -> parts(H) ++ parts(T);
parts([]) -> [].

frame_round_trip(Kind, Id, Fields) ->
    Frame = iolist_to_binary(?C:encode_frame(Kind, Id, Fields)),
    {ok, Kind, Id, N, Rest} = ?C:decode_frame_head(Frame),
    {ok, Decoded} = ?C:decode_fields(N, Rest),
    {Kind, Id, Decoded}.

msgpack_file(Dir, Name) ->
    {ok, Bin} = file:read_file(filename:join(Dir, atom_to_list(Name) ++ ".msgpack")),
    Bin.

read_vectors(Dir) ->
    {ok, Entries} = file:consult(filename:join(Dir, "vectors.eterm")),
    [{Name, Direction, resolve(Term)} || {Name, Direction, Term} <- Entries].

%% {'$etf', Bytes} stands for binary_to_term(list_to_binary(Bytes)).
resolve({'$etf', Bytes}) -> binary_to_term(list_to_binary(Bytes));
resolve(L) when is_list(L) -> [resolve(E) || E <- L];
resolve(T) when is_tuple(T) -> list_to_tuple(resolve(tuple_to_list(T)));
resolve(M) when is_map(M) -> maps:from_list(resolve(maps:to_list(M)));
resolve(X) -> X.

%% proto/vectors of the repository this test belongs to: the first ancestor
%% of the source (or, when built elsewhere, of the beam) that has it, so it
%% works from erl/test and from rebar3's _build alike.
vectors_dir() ->
    Starts = [filename:dirname(filename:absname(?FILE)),
              filename:dirname(filename:absname(code:which(?MODULE)))],
    case lists:filtermap(fun find_vectors/1, Starts) of
        [Dir | _] -> Dir;
        [] -> error({vectors_not_found, Starts})
    end.

find_vectors(Dir) ->
    Candidate = filename:join([Dir, "proto", "vectors"]),
    case filelib:is_regular(filename:join(Candidate, "vectors.eterm")) of
        true -> {true, Candidate};
        false ->
            case filename:dirname(Dir) of
                Dir -> false;
                Parent -> find_vectors(Parent)
            end
    end.
