%% @doc The pyport wire codec: Erlang terms to msgpack and back, as specified
%% in proto/PROTOCOL.md ("Values" and "Frames").
%%
%% Pure Erlang on purpose: a NIF could crash the VM, and the VM must survive
%% anything a worker sends. Decoding never raises for bad input; it returns
%% `{error, {bad_msgpack, Why}}' (or `{bad_frame, Why}' for a frame head).
%%
%% Encoding builds iodata: headers are small binaries or single bytes, payload
%% binaries are kept by reference, so a large binary is never copied here.
%% Decoding walks the binary left to right with one clause per msgpack format
%% and returns sub-binaries that share the input (no data is copied).
-module(pyport_codec).

-export([encode/1, decode/1,
         encode_frame/3, decode_frame_head/1, decode_fields/2]).

-export_type([frame_kind/0, frame_id/0]).

-type frame_kind() :: 0..127.
-type frame_id() :: 0..16#FFFFFFFFFFFFFFFF.

%% Extension type codes (PROTOCOL.md, "Extension types").
-define(EXT_ATOM, 1).
-define(EXT_TUPLE, 2).
-define(EXT_BIGINT, 3).
-define(EXT_BYTES, 4).
-define(EXT_TERM, 5).

%% Containers (arrays, maps, tuples) nest at most this deep.
-define(MAX_DEPTH, 512).

-define(U64_MAX, 16#FFFFFFFFFFFFFFFF).
-define(I64_MIN, -16#8000000000000000).

%% Thrown inside the decoder, caught by the exported functions.
%% `{?MODULE, Why}' is reported as is; `{?MODULE, Tag, Remaining}' becomes
%% `{Tag, Offset}' where Offset is where the bad value starts, Remaining
%% bytes before the end of the input. FAIL_AT finds Remaining from the
%% binary At that follows the value's first Back bytes.
-define(FAIL(Why), throw({?MODULE, Why})).
-define(FAIL_SIZE(Tag, Remaining), throw({?MODULE, Tag, Remaining})).
-define(FAIL_AT(Tag, At, Back), ?FAIL_SIZE(Tag, byte_size(At) + (Back))).

%%%===================================================================
%%% API
%%%===================================================================

%% @doc Encode one term to iodata per proto/PROTOCOL.md (canonical shortest forms).
%% Raises `error({unsupported_term, T})' for a term with no wire form
%% (an improper list, a bitstring that is not a binary); T is the offending part.
-spec encode(term()) -> iodata().
encode(Term) ->
    [enc(Term)].

%% @doc Decode exactly one value occupying the whole binary.
-spec decode(binary()) -> {ok, term()} | {error, {bad_msgpack, Why :: term()}}.
decode(Bin) when is_binary(Bin) ->
    try d(Bin, 1, [], 0, []) of
        {[Value], <<>>} ->
            {ok, Value};
        {_, Rest} ->
            {error, {bad_msgpack, {trailing_bytes, byte_size(Rest)}}}
    catch
        throw:Failure when element(1, Failure) =:= ?MODULE ->
            {error, {bad_msgpack, why(Failure, Bin)}}
    end.

%% @doc Encode a whole frame, msgpack array `[Kind, Id | Fields]', without the
%% 4-byte length (the port adds it with `{packet, 4}').
-spec encode_frame(Kind :: frame_kind(), Id :: frame_id(), Fields :: [term()]) ->
          iodata().
encode_frame(Kind, Id, Fields)
  when is_integer(Kind), Kind >= 0, Kind =< 127,
       is_integer(Id), Id >= 0, Id =< ?U64_MAX ->
    N = try length(Fields)
        catch error:badarg -> error({unsupported_term, Fields})
        end,
    [array_header(N + 2), Kind, enc_int(Id) | enc_elems(Fields)].

%% @doc Read only the head of a frame (array length, Kind, Id); the fields
%% stay undecoded in Rest so the port owner can route a reply cheaply.
-spec decode_frame_head(binary()) ->
          {ok, Kind :: non_neg_integer(), Id :: non_neg_integer(),
           NFields :: non_neg_integer(), Rest :: binary()} |
          {error, {bad_frame, Why :: term()}}.
decode_frame_head(Bin) when is_binary(Bin) ->
    case Bin of
        <<B, R/binary>> when B >= 16#90, B =< 16#9f ->
            frame_head(R, B - 16#90, Bin);
        <<16#dc, N:16, R/binary>> ->
            frame_head(R, N, Bin);
        <<16#dd, N:32, R/binary>> ->
            frame_head(R, N, Bin);
        <<B, _/binary>> when B =:= 16#dc; B =:= 16#dd ->
            {error, {bad_frame, {truncated, 0}}};
        <<>> ->
            {error, {bad_frame, {truncated, 0}}};
        _ ->
            {error, {bad_frame, not_an_array}}
    end.

%% @doc Decode exactly N consecutive values that make up all of Rest
%% (the fields after a frame head). Offsets in errors count from Rest's start.
-spec decode_fields(non_neg_integer(), binary()) ->
          {ok, [term()]} | {error, {bad_msgpack, Why :: term()}}.
decode_fields(N, Bin) when is_integer(N), N >= 0, is_binary(Bin) ->
    try d(Bin, N, [], 0, []) of
        {Reversed, <<>>} ->
            {ok, lists:reverse(Reversed)};
        {_, Rest} ->
            {error, {bad_msgpack, {trailing_bytes, byte_size(Rest)}}}
    catch
        throw:Failure when element(1, Failure) =:= ?MODULE ->
            {error, {bad_msgpack, why(Failure, Bin)}}
    end.

%%%===================================================================
%%% Encoding
%%%===================================================================

%% Single bytes stand for themselves in iodata, so fixints and one-byte
%% markers cost no binary at all.
enc(I) when is_integer(I) -> enc_int(I);
enc(B) when is_binary(B) -> enc_bin(B);
enc(true) -> 16#c3;
enc(false) -> 16#c2;
enc(none) -> 16#c0;
enc(nil) -> 16#c0;
enc(undefined) -> 16#c0;
enc(A) when is_atom(A) -> enc_ext(?EXT_ATOM, atom_to_binary(A, utf8), A);
enc(F) when is_float(F) -> <<16#cb, F/float>>;
enc(L) when is_list(L) -> enc_list(L);
enc(M) when is_map(M) -> enc_map(M);
enc({bytes, B}) when is_binary(B) -> enc_ext(?EXT_BYTES, B, B);
enc(T) when is_tuple(T) -> enc_tuple(T);
enc(T) when is_pid(T); is_reference(T); is_port(T); is_function(T) ->
    %% minor_version 1 is term_to_binary/1's format on OTP 25 and keeps the
    %% bytes stable on later releases (which default to UTF-8 atom tags).
    enc_ext(?EXT_TERM, term_to_binary(T, [{minor_version, 1}]), T);
enc(T) ->
    error({unsupported_term, T}).

enc_int(I) when I >= 0 ->
    if
        I < 16#80 -> I;
        I < 16#100 -> [16#cc, I];
        I < 16#10000 -> <<16#cd, I:16>>;
        I < 16#100000000 -> <<16#ce, I:32>>;
        I =< ?U64_MAX -> <<16#cf, I:64>>;
        true -> enc_bigint(0, I)
    end;
enc_int(I) ->
    if
        I >= -16#20 -> I + 16#100;
        I >= -16#80 -> [16#d0, I + 16#100];
        I >= -16#8000 -> <<16#d1, I:16>>;
        I >= -16#80000000 -> <<16#d2, I:32>>;
        I >= ?I64_MIN -> <<16#d3, I:64>>;
        true -> enc_bigint(1, -I)
    end.

enc_bigint(Sign, Magnitude) ->
    Mag = binary:encode_unsigned(Magnitude),
    [ext_header(?EXT_BIGINT, byte_size(Mag) + 1, Magnitude), Sign, Mag].

enc_bin(B) ->
    case byte_size(B) of
        N when N < 16#100 -> [16#c4, N, B];
        N when N < 16#10000 -> [<<16#c5, N:16>>, B];
        N when N < 16#100000000 -> [<<16#c6, N:32>>, B];
        _ -> error({unsupported_term, B})
    end.

enc_ext(Code, Payload, Term) ->
    [ext_header(Code, byte_size(Payload), Term), Payload].

enc_list([]) ->
    16#90;
enc_list(L) ->
    N = try length(L)
        catch error:badarg -> error({unsupported_term, L})
        end,
    [array_header(N) | enc_elems(L)].

enc_elems([H | T]) -> [enc(H) | enc_elems(T)];
enc_elems([]) -> [].

enc_map(M) ->
    [map_header(map_size(M)) | enc_pairs(maps:to_list(M))].

enc_pairs([{K, V} | T]) -> [enc(K), enc(V) | enc_pairs(T)];
enc_pairs([]) -> [].

%% The ext header needs the payload size, so the elements are encoded first
%% and measured once.
enc_tuple(T) ->
    N = tuple_size(T),
    Payload = [array_header(N) | enc_tuple_elems(T, 1, N)],
    [ext_header(?EXT_TUPLE, iolist_size(Payload), T) | Payload].

enc_tuple_elems(T, I, N) when I =< N ->
    [enc(element(I, T)) | enc_tuple_elems(T, I + 1, N)];
enc_tuple_elems(_, _, _) ->
    [].

array_header(N) when N < 16#10 -> 16#90 bor N;
array_header(N) when N < 16#10000 -> <<16#dc, N:16>>;
array_header(N) when N < 16#100000000 -> <<16#dd, N:32>>.

map_header(N) when N < 16#10 -> 16#80 bor N;
map_header(N) when N < 16#10000 -> <<16#de, N:16>>;
map_header(N) when N < 16#100000000 -> <<16#df, N:32>>.

ext_header(Code, 1, _) -> [16#d4, Code];
ext_header(Code, 2, _) -> [16#d5, Code];
ext_header(Code, 4, _) -> [16#d6, Code];
ext_header(Code, 8, _) -> [16#d7, Code];
ext_header(Code, 16, _) -> [16#d8, Code];
ext_header(Code, N, _) when N < 16#100 -> <<16#c7, N, Code>>;
ext_header(Code, N, _) when N < 16#10000 -> <<16#c8, N:16, Code>>;
ext_header(Code, N, _) when N < 16#100000000 -> <<16#c9, N:32, Code>>;
ext_header(_, _, Term) -> error({unsupported_term, Term}).

%%%===================================================================
%%% Decoding
%%%===================================================================

%% The decoder is one loop over the binary, so the VM keeps a single match
%% context for the whole input instead of building a {Value, Rest} pair and
%% a sub-binary per value:
%%
%%   d(Bin, N, Acc, D, Stack)
%%
%% N values are still to be read into Acc (reversed) for the container being
%% filled, D containers are open, Stack holds the open containers' parents as
%% {array | map, N, Acc} or {tuple, N, Acc, End, Start}. The outermost
%% "container" is the caller's list of N values with an empty Stack.
%% A clause that does not match for lack of bytes falls through to the last
%% one, which reports the value as truncated where it starts.
d(<<_/binary>> = Bin, 0, Acc, _, []) ->
    {Acc, Bin};
d(<<_/binary>> = Bin, 0, Acc, D, [{array, N, PAcc} | S]) ->
    d(Bin, N, [lists:reverse(Acc) | PAcc], D - 1, S);
d(<<_/binary>> = Bin, 0, Acc, D, [{map, N, PAcc} | S]) ->
    d(Bin, N, [to_map(Acc, []) | PAcc], D - 1, S);
d(<<_/binary>> = Bin, 0, Acc, D, [{tuple, N, PAcc, End, Start} | S]) ->
    %% The array must fill the ext payload exactly.
    case byte_size(Bin) of
        End -> d(Bin, N, [list_to_tuple(lists:reverse(Acc)) | PAcc], D - 1, S);
        _ -> ?FAIL_SIZE(bad_tuple, Start)
    end;
d(<<B, R/binary>>, N, Acc, D, S) when B < 16#80 ->
    d(R, N - 1, [B | Acc], D, S);
d(<<B, R/binary>>, N, Acc, D, S) when B >= 16#e0 ->
    d(R, N - 1, [B - 16#100 | Acc], D, S);
d(<<B, R/binary>>, N, Acc, D, S) when B < 16#90, D < ?MAX_DEPTH ->
    d(R, 2 * (B - 16#80), [], D + 1, [{map, N - 1, Acc} | S]);
d(<<B, R/binary>>, N, Acc, D, S) when B < 16#a0, D < ?MAX_DEPTH ->
    d(R, B - 16#90, [], D + 1, [{array, N - 1, Acc} | S]);
d(<<B, R/binary>>, N, Acc, D, S) when B >= 16#a0, B < 16#c0 ->
    raw(R, B - 16#a0, 1, N, Acc, D, S);
d(<<16#c0, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [none | Acc], D, S);
d(<<16#c2, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [false | Acc], D, S);
d(<<16#c3, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [true | Acc], D, S);
d(<<16#c4, L, V:L/binary, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#c5, L:16, V:L/binary, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#c6, L:32, V:L/binary, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#c7, L, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, L, T, 3, N, Acc, D, S);
d(<<16#c8, L:16, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, L, T, 4, N, Acc, D, S);
d(<<16#c9, L:32, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, L, T, 6, N, Acc, D, S);
d(<<16#ca, V:32/float, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#ca, Sign:1, 16#ff:8, Fraction:23, R/binary>>, N, Acc, D, S) ->
    %% NaN and the infinities do not match as a float: read their bits.
    d(R, N - 1, [non_finite(Sign, Fraction) | Acc], D, S);
d(<<16#cb, V:64/float, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#cb, Sign:1, 16#7ff:11, Fraction:52, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [non_finite(Sign, Fraction) | Acc], D, S);
d(<<16#cc, V, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#cd, V:16, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#ce, V:32, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#cf, V:64, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#d0, V:8/signed, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#d1, V:16/signed, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#d2, V:32/signed, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#d3, V:64/signed, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#d4, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, 1, T, 2, N, Acc, D, S);
d(<<16#d5, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, 2, T, 2, N, Acc, D, S);
d(<<16#d6, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, 4, T, 2, N, Acc, D, S);
d(<<16#d7, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, 8, T, 2, N, Acc, D, S);
d(<<16#d8, T:8/signed, R/binary>>, N, Acc, D, S) ->
    ext(R, 16, T, 2, N, Acc, D, S);
d(<<16#d9, L, V:L/binary, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#da, L:16, V:L/binary, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#db, L:32, V:L/binary, R/binary>>, N, Acc, D, S) ->
    d(R, N - 1, [V | Acc], D, S);
d(<<16#dc, L:16, R/binary>>, N, Acc, D, S) when D < ?MAX_DEPTH ->
    d(R, L, [], D + 1, [{array, N - 1, Acc} | S]);
d(<<16#dd, L:32, R/binary>>, N, Acc, D, S) when D < ?MAX_DEPTH ->
    d(R, L, [], D + 1, [{array, N - 1, Acc} | S]);
d(<<16#de, L:16, R/binary>>, N, Acc, D, S) when D < ?MAX_DEPTH ->
    d(R, 2 * L, [], D + 1, [{map, N - 1, Acc} | S]);
d(<<16#df, L:32, R/binary>>, N, Acc, D, S) when D < ?MAX_DEPTH ->
    d(R, 2 * L, [], D + 1, [{map, N - 1, Acc} | S]);
d(Bin, _, _, _, _) ->
    bad_value(Bin).

%% Why d/5 could not read a value at the start of Bin. A complete container
%% header only fails to match there at the depth limit.
-spec bad_value(binary()) -> no_return().
bad_value(<<16#c1, _/binary>>) ->
    ?FAIL({reserved_byte, 16#c1});
bad_value(<<B, _/binary>>) when B >= 16#80, B < 16#a0 ->
    ?FAIL(too_deep);
bad_value(<<B, _:16, _/binary>>) when B =:= 16#dc; B =:= 16#de ->
    ?FAIL(too_deep);
bad_value(<<B, _:32, _/binary>>) when B =:= 16#dd; B =:= 16#df ->
    ?FAIL(too_deep);
bad_value(Bin) ->
    ?FAIL_AT(truncated, Bin, 0).

%% A fixstr payload of L bytes: a sub-binary of the input, not a copy.
raw(Bin, L, Back, N, Acc, D, S) ->
    case Bin of
        <<V:L/binary, R/binary>> -> d(R, N - 1, [V | Acc], D, S);
        _ -> ?FAIL_AT(truncated, Bin, Back)
    end.

%% An ext value of type T with an L-byte payload at the start of Bin,
%% after a header of Back bytes.
ext(<<_/binary>> = Bin, L, ?EXT_TUPLE, Back, N, Acc, D, S) ->
    tuple(Bin, L, Back, N, Acc, D, S);
ext(Bin, L, T, Back, N, Acc, D, S) ->
    case Bin of
        <<P:L/binary, R/binary>> ->
            case ext_value(T, P) of
                {error, Why} -> ext_failed(Why, Bin, Back);
                V -> d(R, N - 1, [V | Acc], D, S)
            end;
        _ ->
            ?FAIL_AT(truncated, Bin, Back)
    end.

%% A tuple's payload is exactly one array: its elements.
tuple(Bin, L, Back, N, Acc, D, S) when D < ?MAX_DEPTH ->
    Size = byte_size(Bin),
    Start = Size + Back,
    End = Size - L,
    Frame = {tuple, N - 1, Acc, End, Start},
    case Bin of
        _ when End < 0 ->
            ?FAIL_SIZE(truncated, Start);
        <<B, R/binary>> when B >= 16#90, B =< 16#9f ->
            d(R, B - 16#90, [], D + 1, [Frame | S]);
        <<16#dc, Len:16, R/binary>> ->
            d(R, Len, [], D + 1, [Frame | S]);
        <<16#dd, Len:32, R/binary>> ->
            d(R, Len, [], D + 1, [Frame | S]);
        _ ->
            ?FAIL_SIZE(bad_tuple, Start)
    end;
tuple(_, _, _, _, _, _, _) ->
    ?FAIL(too_deep).

%% The value of a non-tuple ext, or {error, Why}: no such value is a tuple.
ext_value(?EXT_ATOM, Name) ->
    try
        binary_to_atom(Name, utf8)
    catch
        %% Not UTF-8 (badarg) or longer than 255 characters (system_limit).
        error:_ -> {error, bad_atom}
    end;
ext_value(?EXT_BIGINT, <<0, M/binary>>) when M =/= <<>> ->
    magnitude(M, 1);
ext_value(?EXT_BIGINT, <<1, M/binary>>) when M =/= <<>> ->
    magnitude(M, -1);
ext_value(?EXT_BIGINT, _) ->
    {error, bad_bigint};
ext_value(?EXT_BYTES, B) ->
    B;
ext_value(?EXT_TERM, Etf) ->
    etf_handle(Etf);
ext_value(T, _) ->
    {error, {unknown_ext, T}}.

magnitude(M, Sign) ->
    Bits = bit_size(M),
    %% A magnitude too large for an Erlang integer does not match.
    case M of
        <<I:Bits>> -> Sign * I;
        _ -> {error, bad_bigint}
    end.

-spec ext_failed(term(), binary(), non_neg_integer()) -> no_return().
ext_failed({unknown_ext, _} = Why, _, _) -> ?FAIL(Why);
ext_failed(Tag, Bin, Back) -> ?FAIL_AT(Tag, Bin, Back).

non_finite(_, Fraction) when Fraction =/= 0 -> nan;
non_finite(0, 0) -> infinity;
non_finite(1, 0) -> neg_infinity.

%% Map from the reversed alternating values [Vn, Kn, ..., V1, K1]. Pairs go
%% to maps:from_list in wire order, so a repeated key keeps its last value,
%% as a Python dict built from the same pairs would.
to_map([V, K | T], Pairs) -> to_map(T, [{K, V} | Pairs]);
to_map([], Pairs) -> maps:from_list(Pairs).

%% Ext 5 carries only pids, references, ports and funs. Checking the outer
%% tag first keeps any other (possibly compressed, possibly huge) term from
%% being built at all; `safe' refuses to create atoms; `used' catches
%% trailing bytes, which binary_to_term/1 would ignore.
etf_handle(<<131, Tag, _/binary>> = Etf)
  when Tag =:= 88; Tag =:= 103;                 % NEW_PID, PID
       Tag =:= 90; Tag =:= 114; Tag =:= 101;    % NEWER_, NEW_, REFERENCE
       Tag =:= 120; Tag =:= 89; Tag =:= 102;    % V4_PORT, NEW_PORT, PORT
       Tag =:= 112; Tag =:= 113; Tag =:= 117 -> % NEW_FUN, EXPORT, FUN
    Size = byte_size(Etf),
    try binary_to_term(Etf, [safe, used]) of
        {Term, Size} when is_pid(Term); is_reference(Term);
                          is_port(Term); is_function(Term) ->
            Term;
        _ ->
            {error, bad_term}
    catch
        error:badarg -> {error, bad_term}
    end;
etf_handle(_) ->
    {error, bad_term}.

%%%===================================================================
%%% Frames
%%%===================================================================

frame_head(R0, N, Bin) when N >= 2 ->
    case uint(R0) of
        {ok, Kind, R1} ->
            case uint(R1) of
                {ok, Id, R2} -> {ok, Kind, Id, N - 2, R2};
                truncated -> {error, {bad_frame, {truncated, offset(R1, Bin)}}};
                error -> {error, {bad_frame, bad_id}}
            end;
        truncated ->
            {error, {bad_frame, {truncated, offset(R0, Bin)}}};
        error ->
            {error, {bad_frame, bad_kind}}
    end;
frame_head(_, 1, _) ->
    {error, {bad_frame, missing_id}};
frame_head(_, 0, _) ->
    {error, {bad_frame, missing_kind}}.

%% A non-negative integer in any msgpack int form.
uint(<<B, R/binary>>) when B < 16#80 -> {ok, B, R};
uint(<<16#cc, I, R/binary>>) -> {ok, I, R};
uint(<<16#cd, I:16, R/binary>>) -> {ok, I, R};
uint(<<16#ce, I:32, R/binary>>) -> {ok, I, R};
uint(<<16#cf, I:64, R/binary>>) -> {ok, I, R};
uint(<<16#d0, I:8/signed, R/binary>>) when I >= 0 -> {ok, I, R};
uint(<<16#d1, I:16/signed, R/binary>>) when I >= 0 -> {ok, I, R};
uint(<<16#d2, I:32/signed, R/binary>>) when I >= 0 -> {ok, I, R};
uint(<<16#d3, I:64/signed, R/binary>>) when I >= 0 -> {ok, I, R};
uint(<<>>) -> truncated;
uint(<<B, R/binary>>) when B >= 16#cc, B =< 16#d3 ->
    %% An int header: truncated if its bytes are missing, else negative.
    Width = 1 bsl ((B - 16#cc) band 3),
    if
        byte_size(R) < Width -> truncated;
        true -> error
    end;
uint(_) -> error.

%%%===================================================================
%%% Errors
%%%===================================================================

why({?MODULE, Why}, _) -> Why;
why({?MODULE, Tag, Remaining}, Bin) -> {Tag, byte_size(Bin) - Remaining}.

%% Offset of the remaining binary At within Bin, of which it is a suffix.
offset(At, Bin) ->
    byte_size(Bin) - byte_size(At).
