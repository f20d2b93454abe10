%% @doc PropEr properties of pyport_codec, run as EUnit tests.
%%
%% term/0 generates Erlang terms over the whole term mapping of
%% proto/PROTOCOL.md, and normalise/1 gives what such a term decodes back to;
%% both are exported for other suites (e.g. a round trip through a worker).
%%
%% Debian's erlang-proper ships no proper.hrl (that is erlang-proper-dev), so
%% the few macros used here are defined below exactly as proper.hrl does.
-module(pyport_codec_prop_tests).

-export([term/0, normalise/1, reference/1]).

%% Before eunit.hrl, whose ?LET is only defined when absent.
-define(FORALL(X, Gen, Prop), proper:forall(Gen, fun(X) -> Prop end)).
-define(LET(X, Gen, In), proper_types:bind(Gen, fun(X) -> In end, false)).
-define(SIZED(S, Gen), proper_types:sized(fun(S) -> Gen end)).
-define(LAZY(Gen), proper_types:lazy(fun() -> Gen end)).

-include_lib("eunit/include/eunit.hrl").

-define(C, pyport_codec).
-define(NUMTESTS, 2000).
-define(TIMEOUT, 600).

%%%===================================================================
%%% EUnit wrappers
%%%===================================================================

roundtrip_test_() -> quickcheck(prop_roundtrip()).
canonical_bytes_test_() -> quickcheck(prop_canonical_bytes()).
number_list_bytes_test_() -> quickcheck(prop_number_list_bytes()).
frame_bytes_test_() -> quickcheck(prop_frame_bytes()).
deep_roundtrip_test_() -> quickcheck(prop_deep_roundtrip()).
frame_roundtrip_test_() -> quickcheck(prop_frame_roundtrip()).
truncation_test_() -> quickcheck(prop_truncation()).
mutation_test_() -> quickcheck(prop_mutation()).
random_bytes_test_() -> quickcheck(prop_random_bytes()).
budget_bytes_test_() -> quickcheck(prop_budget_bytes()).
budget_terms_test_() -> quickcheck(prop_budget_terms()).
long_list_bytes_test_() -> quickcheck(prop_long_list_bytes(), 60).

%% long_result makes a failing property return its counterexample, which
%% assertEqual then shows.
quickcheck(Prop) ->
    quickcheck(Prop, ?NUMTESTS).

quickcheck(Prop, NumTests) ->
    {timeout, ?TIMEOUT,
     ?_assertEqual(true, proper:quickcheck(Prop, [{numtests, NumTests}, quiet, long_result]))}.

%%%===================================================================
%%% Properties
%%%===================================================================

%% Every term of the mapping decodes to its normal form.
prop_roundtrip() ->
    ?FORALL(T, term(), ?C:decode(encode(T)) =:= {ok, normalise(T)}).

%% The encoder writes exactly the canonical bytes of PROTOCOL.md, as the
%% plain reference encoder below does, whatever its shortcuts.
prop_canonical_bytes() ->
    ?FORALL(T, term(), encode(T) =:= reference(T)).

%% Lists of numbers, whose neighbouring integers the encoder writes
%% together when they share a form: every mix and alignment of forms.
prop_number_list_bytes() ->
    ?FORALL(L, proper_types:list(number_of_some_form()), encode(L) =:= reference(L)).

prop_frame_bytes() ->
    ?FORALL({Kind, Id, Fields},
            {proper_types:range(0, 127), frame_id(), proper_types:list(term())},
            iolist_to_binary(?C:encode_frame(Kind, Id, Fields))
            =:= reference([Kind, Id | Fields])).

%% Lists of about 1024 elements: anywhere in a term, as elements of each
%% other, around large binaries and in tuples (whose ext headers count
%% them), in frames.
prop_long_list_bytes() ->
    ?FORALL(T, long_term(),
            begin
                Bin = encode(T),
                Frame = iolist_to_binary(?C:encode_frame(1, 9, [<<"m">>, <<"f">>, [T], #{}])),
                Bin =:= reference(T) andalso
                    ?C:decode(Bin) =:= {ok, normalise(T)} andalso
                    Frame =:= reference([1, 9, <<"m">>, <<"f">>, [T], #{}])
            end).

%% Nesting up to the protocol's 512 levels survives the trip.
prop_deep_roundtrip() ->
    ?FORALL(T, deep_term(), ?C:decode(encode(T)) =:= {ok, normalise(T)}).

prop_frame_roundtrip() ->
    ?FORALL({Kind, Id, Fields},
            {proper_types:range(0, 127), frame_id(), proper_types:list(term())},
            begin
                Frame = iolist_to_binary(?C:encode_frame(Kind, Id, Fields)),
                N = length(Fields),
                case ?C:decode_frame_head(Frame) of
                    {ok, Kind, Id, N, Rest} ->
                        ?C:decode_fields(N, Rest) =:= {ok, normalise(Fields)};
                    _ ->
                        false
                end
            end).

%% msgpack values are prefix-free: a cut value is reported truncated,
%% at an offset inside what was given.
prop_truncation() ->
    ?FORALL({Bin, Cut},
            ?LET(T, term(),
                 begin
                     B = encode(T),
                     {B, proper_types:range(0, byte_size(B) - 1)}
                 end),
            case ?C:decode(binary:part(Bin, 0, Cut)) of
                {error, {bad_msgpack, {truncated, Offset}}} -> Offset =< Cut;
                _ -> false
            end).

%% One changed byte gives a value or a clean error, never an exception;
%% whatever decodes is within the mapping again.
prop_mutation() ->
    ?FORALL({Bin, Pos, Byte},
            ?LET(T, term(),
                 begin
                     B = encode(T),
                     {B, proper_types:range(0, byte_size(B) - 1), proper_types:range(0, 255)}
                 end),
            begin
                <<Pre:Pos/binary, _, Post/binary>> = Bin,
                decodes_cleanly(<<Pre/binary, Byte, Post/binary>>)
            end).

prop_random_bytes() ->
    ?FORALL(Bin, proper_types:binary(), decodes_cleanly(Bin)).

decodes_cleanly(Bin) ->
    case ?C:decode(Bin) of
        {ok, V} -> ?C:decode(encode(V)) =:= {ok, normalise(V)};
        {error, {bad_msgpack, _}} -> true
    end.

encode(T) ->
    iolist_to_binary(?C:encode(T)).

%%%===================================================================
%%% Generators
%%%===================================================================

%% The decode budget in bytes is never less than the heap the value takes
%% (erts_debug:flat_size/1, in words): whatever the limit, a value that
%% gets through fits it, and one that does not is refused by name.
prop_budget_bytes() ->
    ?FORALL({T, Bytes}, {term(), proper_types:range(0, 8192)},
            case ?C:decode(encode(T), limits(infinity, Bytes)) of
                {ok, V} -> 8 * erts_debug:flat_size(V) =< Bytes;
                {error, {result_too_large, max_decoded_bytes, Bytes}} -> true;
                _ -> false
            end).

%% The budget of values is exact: the elements of every list, tuple and
%% map (a key and a value are two).
prop_budget_terms() ->
    ?FORALL(T, term(),
            begin
                %% Counted as written: normalising may merge map keys.
                N = elements_in(T),
                ?C:decode(encode(T), limits(N, infinity)) =:= {ok, normalise(T)} andalso
                    (N =:= 0 orelse ?C:decode(encode(T), limits(N - 1, infinity)) =:=
                         {error, {result_too_large, max_result_terms, N - 1}})
            end).

limits(Terms, Bytes) ->
    #{atoms => pyport_atoms:no_new_atoms(), max_terms => Terms, max_bytes => Bytes}.

elements_in({bytes, B}) when is_binary(B) -> 0;
elements_in(L) when is_list(L) -> length(L) + lists:sum([elements_in(E) || E <- L]);
elements_in(T) when is_tuple(T) -> elements_in(tuple_to_list(T));
elements_in(M) when is_map(M) ->
    2 * map_size(M) + lists:sum([elements_in(K) + elements_in(V) || {K, V} <- maps:to_list(M)]);
elements_in(_) -> 0.

%% @doc A PropEr generator of Erlang terms over the whole term mapping:
%% integers of every width (also beyond 64 bits), floats, binaries,
%% `{bytes, B}', atoms (also none/nil/undefined, UTF-8 and 255-character
%% names), pids, references, ports and funs, nested in lists, tuples and maps.
-spec term() -> proper_types:type().
term() ->
    ?SIZED(Size, term(Size)).

term(Size) when Size =< 1 ->
    leaf();
term(Size) ->
    proper_types:frequency(
      [{4, leaf()},
       {1, ?LAZY(elements(Size))},
       {1, ?LET(L, elements(Size), list_to_tuple(L))},
       {1, ?LET(L, elements(Size), maps:from_list(pairs(L)))}]).

%% Up to 20 elements (past the 15 of a fixarray) sharing the size budget,
%% so a term has about Size leaves however deep it goes.
elements(Size) ->
    ?LET(N, proper_types:range(0, min(Size, 20)),
         proper_types:vector(N, term(Size div (N + 1)))).

%% A term holding long lists: 1000 to 1060 elements, some of them containers, long lists among them.
long_term() ->
    ?SIZED(Size, long_term(min(Size, 2))).

long_term(Depth) ->
    Element = case Depth of
                  0 -> proper_types:frequency([{30, leaf()}, {1, term(4)}]);
                  _ -> proper_types:frequency([{400, leaf()}, {3, term(4)},
                                               {1, ?LAZY(long_term(Depth - 1))}])
              end,
    Long = ?LET(N, proper_types:range(1000, 1060), proper_types:vector(N, Element)),
    proper_types:frequency(
      [{4, Long},
       {1, ?LET(L, Long, list_to_tuple(L))},
       {1, ?LET({L, E}, {Long, Element}, {E, L})},
       {1, ?LET({L, E}, {Long, Element}, #{L => E, E => L})},
       {1, ?LET({L, B}, {Long, big_binary()}, [B | L] ++ [B])},
       {1, ?LET(L, Long, [L])}]).

big_binary() ->
    ?LET(N, proper_types:range(4097, 9000), binary:copy(<<"b">>, N)).

pairs([K, V | T]) -> [{K, V} | pairs(T)];
pairs(_) -> [].

%% Up to 512 nested containers, the deepest the protocol allows.
deep_term() ->
    ?LET({Depth, Leaf}, {proper_types:range(1, 512), leaf()},
         ?LET(Wraps, proper_types:vector(Depth, proper_types:elements([list, tuple, map, key])),
              lists:foldl(fun wrap/2, Leaf, Wraps))).

wrap(list, T) -> [T];
wrap(tuple, T) -> {T};
wrap(map, T) -> #{k => T};
wrap(key, T) -> #{T => v}.

leaf() ->
    proper_types:frequency(
      [{4, int()},
       {2, float()},
       {3, binary()},
       {1, ?LET(B, binary(), {bytes, B})},
       {3, atom()},
       {1, handle()}]).

int() ->
    Edges = [0, 127, 128, 255, 256, 65535, 65536, 16#FFFFFFFF, 16#100000000,
             16#FFFFFFFFFFFFFFFF, 16#10000000000000000,
             -1, -32, -33, -128, -129, -32768, -32769, -16#80000000, -16#80000001,
             -16#8000000000000000, -16#8000000000000001],
    proper_types:oneof(
      [proper_types:integer(),
       proper_types:elements(Edges),
       ?LET({E, D}, {proper_types:elements(Edges), proper_types:range(-3, 3)}, E + D),
       ?LET({Sign, Mag}, {proper_types:elements([1, -1]), proper_types:binary()},
            Sign * binary:decode_unsigned(<<1, Mag/binary>>))]).

float() ->
    proper_types:oneof(
      [proper_types:float(),
       proper_types:elements([0.0, -0.0, 5.0e-324, -5.0e-324, 2.2250738585072014e-308,
                              1.7976931348623157e308, -1.7976931348623157e308]),
       %% Any finite bit pattern: an exponent field below all ones.
       ?LET({S, E, M}, {proper_types:range(0, 1), proper_types:range(0, 2046),
                        proper_types:range(0, 1 bsl 52 - 1)},
            begin <<F:64/float>> = <<S:1, E:11, M:52>>, F end)]).

binary() ->
    proper_types:frequency(
      [{40, proper_types:binary()},
       {2, ?LET(N, proper_types:range(250, 300), binary:copy(<<"s">>, N))},
       {1, ?LET(N, proper_types:range(65534, 65538), binary:copy(<<0>>, N))}]).

atom() ->
    Named = [true, false, none, nil, undefined, ok, error, '', nan, infinity,
             neg_infinity, bytes, 'ünïcode', '日本語', 'with space',
             list_to_atom(lists:duplicate(255, $z)),
             list_to_atom(lists:duplicate(255, 16#1F600))],
    %% A small alphabet keeps the number of atoms created bounded.
    Char = proper_types:elements([$a, $b, $Z, $_, $é, 16#4e2d, 16#1F600]),
    proper_types:oneof(
      [proper_types:elements(Named),
       ?LET(Chars, proper_types:list(Char), list_to_atom(lists:sublist(Chars, 255)))]).

%% Pids (local and of another node), references, ports and funs.
handle() ->
    %% The pid of proto/vectors/pid.msgpack, from node vecgen@vm.
    Remote = binary_to_term(<<131, 88, 100, 0, 9, "vecgen@vm", 0, 0, 0, 85, 0, 0, 0, 0,
                              107, 2, 54, 130>>),
    Ports = [proper_types:exactly(P) || P <- lists:sublist(erlang:ports(), 1)],
    proper_types:oneof(
      [proper_types:exactly(self()),
       proper_types:exactly(Remote),
       ?LET(_, proper_types:exactly(ref), make_ref()),
       proper_types:exactly(fun lists:reverse/1),
       ?LET(I, proper_types:integer(), fun() -> I end)
       | Ports]).

number_of_some_form() ->
    proper_types:frequency(
      [{3, proper_types:range(0, 127)},
       {1, proper_types:range(128, 255)},
       {3, proper_types:range(256, 65535)},
       {1, proper_types:range(65536, 16#FFFFFFFF)},
       {1, proper_types:range(-32, -1)},
       {1, proper_types:range(-70000, -33)},
       {1, int()},
       {1, float()}]).

frame_id() ->
    proper_types:oneof(
      [proper_types:range(0, 1000),
       proper_types:integer(0, 16#FFFFFFFFFFFFFFFF),
       proper_types:elements([0, 127, 128, 65535, 65536, 16#FFFFFFFF, 16#100000000,
                              16#FFFFFFFFFFFFFFFF])]).

%%%===================================================================
%%% Expected decoding
%%%===================================================================

%% @doc What decode(encode(T)) gives for a term T of the mapping:
%% none/nil/undefined become `none', `{bytes, B}' becomes B; map keys are
%% normalised too (pairs in maps:to_list/1 order, a repeated key keeping
%% its last value, as the decoder does).
-spec normalise(term()) -> term().
normalise(nil) -> none;
normalise(undefined) -> none;
normalise({bytes, B}) when is_binary(B) -> B;
normalise(L) when is_list(L) -> [normalise(E) || E <- L];
normalise(T) when is_tuple(T) -> list_to_tuple(normalise(tuple_to_list(T)));
normalise(M) when is_map(M) ->
    maps:from_list([{normalise(K), normalise(V)} || {K, V} <- maps:to_list(M)]);
normalise(X) -> X.

%%%===================================================================
%%% Reference encoder
%%%===================================================================

%% PROTOCOL.md's canonical bytes of a term, written as plainly as possible
%% (one value at a time, no shortcuts) to check the real encoder against.
reference(T) ->
    iolist_to_binary([ref(T)]).

ref(I) when is_integer(I), I >= 0, I < 16#80 -> <<I>>;
ref(I) when is_integer(I), I >= 0, I < 16#100 -> <<16#cc, I>>;
ref(I) when is_integer(I), I >= 0, I < 16#10000 -> <<16#cd, I:16>>;
ref(I) when is_integer(I), I >= 0, I < 16#100000000 -> <<16#ce, I:32>>;
ref(I) when is_integer(I), I >= 0, I < 1 bsl 64 -> <<16#cf, I:64>>;
ref(I) when is_integer(I), I >= 0 -> ref_ext(3, [0, binary:encode_unsigned(I)]);
ref(I) when is_integer(I), I >= -16#20 -> <<I:8>>;
ref(I) when is_integer(I), I >= -16#80 -> <<16#d0, I:8>>;
ref(I) when is_integer(I), I >= -16#8000 -> <<16#d1, I:16>>;
ref(I) when is_integer(I), I >= -16#80000000 -> <<16#d2, I:32>>;
ref(I) when is_integer(I), I >= -(1 bsl 63) -> <<16#d3, I:64>>;
ref(I) when is_integer(I) -> ref_ext(3, [1, binary:encode_unsigned(-I)]);
ref(F) when is_float(F) -> <<16#cb, F/float>>;
ref(B) when is_binary(B), byte_size(B) < 16#100 -> [16#c4, byte_size(B), B];
ref(B) when is_binary(B), byte_size(B) < 16#10000 -> [<<16#c5, (byte_size(B)):16>>, B];
ref(B) when is_binary(B) -> [<<16#c6, (byte_size(B)):32>>, B];
ref(true) -> 16#c3;
ref(false) -> 16#c2;
ref(A) when A =:= none; A =:= nil; A =:= undefined -> 16#c0;
ref(A) when is_atom(A) -> ref_ext(1, atom_to_binary(A, utf8));
ref(L) when is_list(L) -> [ref_header(16#90, 16#dc, length(L)) | [ref(E) || E <- L]];
ref(M) when is_map(M) ->
    [ref_header(16#80, 16#de, map_size(M)) | [[ref(K), ref(V)] || {K, V} <- maps:to_list(M)]];
ref({bytes, B}) when is_binary(B) -> ref_ext(4, B);
ref(T) when is_tuple(T) -> ref_ext(2, ref(tuple_to_list(T)));
ref(T) -> ref_ext(5, term_to_binary(T, [{minor_version, 1}])).

%% fix, 16-bit or 32-bit header of an array (16#90, 16#dc) or map (16#80, 16#de).
ref_header(Fix, _, N) when N < 16 -> Fix + N;
ref_header(_, Marker, N) when N < 16#10000 -> <<Marker, N:16>>;
ref_header(_, Marker, N) -> <<(Marker + 1), N:32>>.

ref_ext(Code, Payload) ->
    P = iolist_to_binary(Payload),
    Header = case byte_size(P) of
                 1 -> <<16#d4, Code>>;
                 2 -> <<16#d5, Code>>;
                 4 -> <<16#d6, Code>>;
                 8 -> <<16#d7, Code>>;
                 16 -> <<16#d8, Code>>;
                 N when N < 16#100 -> <<16#c7, N, Code>>;
                 N when N < 16#10000 -> <<16#c8, N:16, Code>>;
                 N -> <<16#c9, N:32, Code>>
             end,
    [Header, P].
