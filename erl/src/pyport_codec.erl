%% @doc The pyport wire codec: Erlang terms to msgpack and back, as specified
%% in proto/PROTOCOL.md ("Values" and "Frames").
%%
%% Pure Erlang on purpose: a NIF could crash the VM, and the VM must survive
%% anything a worker sends. Decoding never raises for bad input; it returns
%% `{error, {bad_msgpack, Why}}' (or `{bad_frame, Why}' for a frame head).
%% Nor does it cost the node more than its limits (pyport_limits): new
%% atoms only within a budget (`{error, {atom_limit, Name, Limit}}' past
%% it) and a decoded value no larger than `max_result_terms' and
%% `max_decoded_bytes' (`{error, {result_too_large, Key, Limit}}'),
%% refused before it is built.
%%
%% Encoding appends to one binary; large payload binaries are kept by
%% reference beside it, so a large binary is never copied here.
%% Decoding walks the binary left to right in one loop, dispatching on each
%% type byte, and returns sub-binaries that share the input (no data is
%% copied).
-module(pyport_codec).

-export([encode/1, decode/1, decode/2,
         encode_frame/3, encode_batch/1, encode_with/3, decode_frame_head/1, decode_fields/2,
         decode_fields/3]).

-export_type([frame_kind/0, frame_id/0, decode_error/0]).

%% A value that is not msgpack (or not ours), or one past the limits: a
%% new atom past the atom budget (pyport_atoms), a value with more
%% elements or more heap than the decode may build (pyport_limits).
-type decode_error() :: {bad_msgpack, Why :: term()}
                      | {atom_limit, Name :: binary(), Limit :: non_neg_integer()}
                      | {result_too_large, max_result_terms | max_decoded_bytes,
                         Limit :: pos_integer()}.

-type frame_kind() :: 0..127.
-type frame_id() :: 0..16#FFFFFFFFFFFFFFFF.

%% Extension type codes (PROTOCOL.md, "Extension types").
-define(EXT_ATOM, 1).
-define(EXT_TUPLE, 2).
-define(EXT_BIGINT, 3).
-define(EXT_BYTES, 4).
-define(EXT_TERM, 5).
%% Erlang -> worker only: an object the worker keeps (8-byte id).
-define(EXT_OBJECT, 6).
%% Bytes in the worker's payload file (pyport_payloads): form, offset, length.
-define(EXT_PAYLOAD, 7).

%% Containers (arrays, maps, tuples) nest at most this deep.
-define(MAX_DEPTH, 512).

%% Binaries up to this size are copied into the encoder's output, larger
%% ones are referenced: measured, copying 4 KiB costs less than a part of
%% the output more (and the port copies small parts anyway).
-define(INLINE_MAX, 4096).

-define(U64_MAX, 16#FFFFFFFFFFFFFFFF).
-define(I64_MIN, -16#8000000000000000).

%% Integers written as a positive fixint, and as a uint 16.
-define(IS_FIXINT(I), is_integer(I), I >= 0, I < 16#80).
-define(IS_U16(I), is_integer(I), I >= 16#100, I < 16#10000).

%% Thrown inside the decoder, caught by the exported functions.
%% `{?MODULE, Why}' is reported as is; `{?MODULE, Tag, Remaining}' becomes
%% `{Tag, Offset}' where Offset is where the bad value starts, Remaining
%% bytes before the end of the input. FAIL_AT finds Remaining from the
%% binary At that follows the value's first Back bytes.
-define(FAIL(Why), throw({?MODULE, Why})).
-define(FAIL_SIZE(Tag, Remaining), throw({?MODULE, Tag, Remaining})).
-define(FAIL_AT(Tag, At, Back), ?FAIL_SIZE(Tag, byte_size(At) + (Back))).
%% Thrown with a limit's error, returned as is.
-define(LIMIT, pyport_codec_limit).
%% Where run/2 and pair_run/2 leave their end (process dictionary key).
-define(RUN, '$pyport_codec_run').

%%%===================================================================
%%% API
%%%===================================================================

%% @doc Encode one term to iodata per proto/PROTOCOL.md (canonical shortest forms).
%% Raises `error({unsupported_term, T})' for a term with no wire form
%% (an improper list, a bitstring that is not a binary); T is the offending part.
-spec encode(term()) -> iodata().
encode(Term) ->
    e(Term, <<>>, [], 0, []).

%% @doc Decode exactly one value occupying the whole binary, within this
%% process's limits ({@link pyport_limits:process/0}).
-spec decode(binary()) -> {ok, term()} | {error, decode_error()}.
decode(Bin) when is_binary(Bin) ->
    decode(Bin, pyport_limits:process()).

%% @doc Decode exactly one value occupying the whole binary, within `Limits':
%% past them the error names the atom or the limit, and nothing larger
%% than the limits allow was built.
-spec decode(binary(), pyport_limits:limits()) -> {ok, term()} | {error, decode_error()}.
decode(Bin, Limits) when is_binary(Bin) ->
    case decode_values(1, Bin, Limits) of
        {ok, [Value]} -> {ok, Value};
        {error, _} = Error -> Error
    end.

%% @doc Encode a whole frame, msgpack array `[Kind, Id | Fields]', without the
%% 4-byte length (pyport_framer:frame/1 adds it when the frame is written).
-spec encode_frame(Kind :: frame_kind(), Id :: frame_id(), Fields :: [term()]) ->
          iodata().
encode_frame(Kind, Id, Fields)
  when is_integer(Kind), Kind >= 0, Kind =< 127,
       is_integer(Id), Id >= 0, Id =< ?U64_MAX ->
    Head = array_header(list_length(Fields) + 2, <<>>),
    el(Fields, int(Id, <<Head/binary, Kind>>), [], 0, []).

%% @doc Several encoded frames as one BATCH frame `[12, 0, [Frame, ...]]',
%% each frame a bin (proto/PROTOCOL.md): the worker handles them as if
%% they had come one by one.
-spec encode_batch([iodata()]) -> iodata().
encode_batch(Frames) ->
    [array_header(length(Frames), <<16#93, 12, 0>>)
     | [[bin_header(iolist_size(F)), F] || F <- Frames]].

%% @doc A WITH frame `[13, Id, Options, Frame]' (proto/PROTOCOL.md): the
%% encoded CALL or EVAL `Frame' (same id) run with `Options', a map of
%% binary keys.
-spec encode_with(frame_id(), #{binary() => term()}, iodata()) -> iodata().
encode_with(Id, Options, Frame) when is_map(Options) ->
    [int(Id, <<16#94, 13>>), encode(Options), bin_header(iolist_size(Frame)), Frame].

bin_header(N) when N < 16#100 -> <<16#c4, N>>;
bin_header(N) when N < 16#10000 -> <<16#c5, N:16>>;
bin_header(N) when N < 16#100000000 -> <<16#c6, N:32>>.

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
%% (the fields after a frame head), within this process's limits.
%% Offsets in errors count from Rest's start.
-spec decode_fields(non_neg_integer(), binary()) -> {ok, [term()]} | {error, decode_error()}.
decode_fields(N, Bin) ->
    decode_fields(N, Bin, pyport_limits:process()).

%% @doc {@link decode_fields/2} within `Limits'.
-spec decode_fields(non_neg_integer(), binary(), pyport_limits:limits()) ->
          {ok, [term()]} | {error, decode_error()}.
decode_fields(N, Bin, Limits) when is_integer(N), N >= 0, is_binary(Bin) ->
    case decode_values(N, Bin, Limits) of
        {ok, Reversed} -> {ok, lists:reverse(Reversed)};
        {error, _} = Error -> Error
    end.

decode_values(N, Bin, #{payloads := _} = Limits) ->
    %% The answer regions read are given back, whatever the outcome.
    try decode_values1(N, Bin, Limits)
    after pyport_payloads:done()
    end;
decode_values(N, Bin, Limits) ->
    decode_values1(N, Bin, Limits).

decode_values1(N, Bin, #{max_terms := Terms, max_bytes := Bytes} = Limits) ->
    try d(Bin, N, [], 0, [], #{'$limits' => Limits}, budget(Terms), budget(Bytes) bsr 3) of
        {Reversed, <<>>} ->
            {ok, Reversed};
        {_, Rest} ->
            {error, {bad_msgpack, {trailing_bytes, byte_size(Rest)}}}
    catch
        throw:{?LIMIT, Reason} ->
            {error, Reason};
        throw:Failure when element(1, Failure) =:= ?MODULE ->
            {error, {bad_msgpack, why(Failure, Bin)}}
    end.

%% `infinity' as a number that stays a small integer as it is counted down.
budget(infinity) -> 1 bsl 58;
budget(N) -> N.

%%%===================================================================
%%% Encoding
%%%===================================================================

%% The encoder appends to one binary, which the runtime extends in place, so
%% a scalar costs the bytes written rather than a small binary and a cons
%% cell per header, and a large output is not a large iolist for the
%% garbage collector to copy. What cannot be appended is kept aside as a
%% part to insert at an offset of that binary: a payload larger than
%% ?INLINE_MAX bytes (so it is never copied), and the ext header of a tuple
%% holding containers, whose size is known only once they are written.
%%
%%   e(Term, Acc, Parts, X, K)
%%
%% appends Term to Acc, then goes on with K, the stack of what remains of
%% the enclosing containers (see k/4). Parts holds {Offset, Part}, newest
%% first (a tuple's own parts are nested in a list, see k/4); X counts the
%% bytes in Parts. The loop is tail-recursive so that it can carry all of
%% this without returning it from every value.
e(T, Acc, P, X, K) ->
    case scalar(T, Acc) of
        false -> container(T, Acc, P, X, K);
        Acc1 -> k(K, Acc1, P, X)
    end.

%% Acc with the scalar T appended, or false for anything else (containers,
%% binaries of 256 bytes or more, ext 4 and 5, bad terms).
scalar(I, Acc) when is_integer(I) -> int(I, Acc);
scalar(B, Acc) when is_binary(B), byte_size(B) < 16#100 ->
    <<Acc/binary, 16#c4, (byte_size(B)), B/binary>>;
scalar(A, Acc) when is_atom(A) -> atom(A, Acc);
scalar(F, Acc) when is_float(F) -> <<Acc/binary, 16#cb, F/float>>;
scalar(_, _) -> false.

container(L, Acc, P, X, K) when is_list(L) ->
    el(L, array_header(list_length(L), Acc), P, X, K);
container(M, Acc, P, X, K) when is_map(M) ->
    pairs(maps:to_list(M), map_header(map_size(M), Acc), P, X, K);
container({bytes, B}, Acc, P, X, K) when is_binary(B) ->
    case offload(B, 1) of
        false -> payload(?EXT_BYTES, B, B, Acc, P, X, K);
        Placeholder -> k(K, <<Acc/binary, Placeholder/binary>>, P, X)
    end;
container({'$pyport_object', _, _, _, _, _} = H, Acc, P, X, K) ->
    %% A handle the calling process owns (pyport_objects) is its object's
    %% id; anything else shaped like one is refused, never sent.
    case pyport_objects:encode_ref(H) of
        {ok, Id} -> k(K, <<Acc/binary, 16#d7, ?EXT_OBJECT, Id:64>>, P, X);
        error -> error({unsupported_term, H})
    end;
container(T, Acc, P, X, K) when is_tuple(T) ->
    N = tuple_size(T),
    case scalars_size(T, N, header_size(N)) of
        false ->
            %% The tuple's parts start afresh, so that k/4 finds them to
            %% put its header in front.
            el(tuple_to_list(T), array_header(N, Acc), [], X,
               [{tuple, T, byte_size(Acc), X, P} | K]);
        Size ->
            k(K, scalars(T, 1, N, tuple_header(Size, N, T, Acc)), P, X)
    end;
container(B, Acc, P, X, K) when is_binary(B) ->
    case offload(B, 0) of
        false -> big_binary(B, Acc, P, X, K);
        Placeholder -> k(K, <<Acc/binary, Placeholder/binary>>, P, X)
    end;
container(T, Acc, P, X, K) when is_pid(T); is_reference(T); is_port(T); is_function(T) ->
    %% minor_version 1 is term_to_binary/1's format on OTP 25 and keeps the
    %% bytes stable on later releases (which default to UTF-8 atom tags).
    payload(?EXT_TERM, term_to_binary(T, [{minor_version, 1}]), T, Acc, P, X, K);
container(T, _, _, _, _) ->
    error({unsupported_term, T}).

%% A binary of 256 bytes or more in a frame whose big binaries go off the
%% pipe (pyport_payloads): an ext 7 placeholder instead, or false.
offload(B, Form) ->
    case get('$pyport_payload_blobs') of
        undefined -> false;
        _ -> pyport_payloads:placeholder(B, Form)
    end.

big_binary(B, Acc, P, X, K) ->
    case byte_size(B) of
        N when N < 16#10000 -> data(B, <<Acc/binary, 16#c5, N:16>>, P, X, K);
        N when N < 16#100000000 -> data(B, <<Acc/binary, 16#c6, N:32>>, P, X, K);
        _ -> error({unsupported_term, B})
    end.

%% The elements of a list. Scalars, the most frequent elements, skip the
%% trip through K. Neighbouring integers of the same small form (a list of
%% numbers) and floats share one append: each append costs a few heap
%% words (the new binary term) and each segment a call into the runtime,
%% so 8 uint 16 go as four 48-bit segments (?CD(A, B) is uint 16 A then
%% uint 16 B) and 8 positive fixints as two 32-bit ones.
-define(CD(A, B), ((16#cd bsl 40) bor (A bsl 24) bor (16#cd bsl 16) bor B):48).
-define(FIX4(A, B, C, D), ((A bsl 24) bor (B bsl 16) bor (C bsl 8) bor D):32).
el([A, B, C, D, E, F, G, H | T], Acc, P, X, K)
  when ?IS_U16(A), ?IS_U16(B), ?IS_U16(C), ?IS_U16(D),
       ?IS_U16(E), ?IS_U16(F), ?IS_U16(G), ?IS_U16(H) ->
    el(T, <<Acc/binary, ?CD(A, B), ?CD(C, D), ?CD(E, F), ?CD(G, H)>>, P, X, K);
el([A, B | T], Acc, P, X, K) when ?IS_U16(A), ?IS_U16(B) ->
    el(T, <<Acc/binary, ?CD(A, B)>>, P, X, K);
el([A, B, C, D, E, F, G, H | T], Acc, P, X, K)
  when ?IS_FIXINT(A), ?IS_FIXINT(B), ?IS_FIXINT(C), ?IS_FIXINT(D),
       ?IS_FIXINT(E), ?IS_FIXINT(F), ?IS_FIXINT(G), ?IS_FIXINT(H) ->
    el(T, <<Acc/binary, ?FIX4(A, B, C, D), ?FIX4(E, F, G, H)>>, P, X, K);
el([A, B | T], Acc, P, X, K) when ?IS_FIXINT(A), ?IS_FIXINT(B) ->
    el(T, <<Acc/binary, ((A bsl 8) bor B):16>>, P, X, K);
el([A, B, C, D | T], Acc, P, X, K)
  when is_float(A), is_float(B), is_float(C), is_float(D) ->
    el(T, <<Acc/binary, 16#cb, A/float, 16#cb, B/float, 16#cb, C/float, 16#cb, D/float>>,
       P, X, K);
el([H | T], Acc, P, X, K) ->
    case scalar(H, Acc) of
        false -> container(H, Acc, P, X, [T | K]);
        Acc1 -> el(T, Acc1, P, X, K)
    end;
el([], Acc, P, X, K) ->
    k(K, Acc, P, X).

%% The pairs of a map, likewise; a pair of uint 16 (a map of numbers) in
%% one segment.
pairs([{Key, V} | T], Acc, P, X, K) when ?IS_U16(Key), ?IS_U16(V) ->
    pairs(T, <<Acc/binary, ?CD(Key, V)>>, P, X, K);
pairs([{Key, V} | T], Acc, P, X, K) when ?IS_FIXINT(Key), ?IS_FIXINT(V) ->
    pairs(T, <<Acc/binary, ((Key bsl 8) bor V):16>>, P, X, K);
pairs([{Key, V} | T], Acc, P, X, K) ->
    case scalar(Key, Acc) of
        false ->
            container(Key, Acc, P, X, [[V], {pairs, T} | K]);
        Acc1 ->
            case scalar(V, Acc1) of
                false -> container(V, Acc1, P, X, [{pairs, T} | K]);
                Acc2 -> pairs(T, Acc2, P, X, K)
            end
    end;
pairs([], Acc, P, X, K) ->
    k(K, Acc, P, X).

%% Continue after a complete value with the rest of its container.
k([L | K], Acc, P, X) when is_list(L) ->
    el(L, Acc, P, X, K);
k([{pairs, T} | K], Acc, P, X) ->
    pairs(T, Acc, P, X, K);
k([{tuple, T, Start, StartX, OuterP} | K], Acc, P, X) ->
    Header = ext_header(?EXT_TUPLE, byte_size(Acc) - Start + X - StartX, T),
    %% Nesting the tuple's parts keeps this O(1); parts/3 flattens them.
    Inserted = case P of
                   [] -> [{Start, Header} | OuterP];
                   _ -> [P, {Start, Header} | OuterP]
               end,
    k(K, Acc, Inserted, X + byte_size(Header));
k([], Acc, [], _) ->
    Acc;
k([], Acc, P, _) ->
    parts(Acc, 0, oldest_first(P, [])).

%% Acc cut at the parts' offsets, with the parts in between.
parts(Acc, From, [{From, Part} | T]) ->
    [Part | parts(Acc, From, T)];
parts(Acc, From, [{At, Part} | T]) ->
    [binary:part(Acc, From, At - From), Part | parts(Acc, At, T)];
parts(Acc, From, []) when From =:= byte_size(Acc) ->
    [];
parts(Acc, From, []) ->
    [binary:part(Acc, From, byte_size(Acc) - From)].

%% Parts in the order they go out. A nested list (a tuple's parts) is newer
%% than the tuple's header that follows it in P, and goes after it.
oldest_first([L | T], Out) when is_list(L) -> oldest_first(T, oldest_first(L, Out));
oldest_first([Part | T], Out) -> oldest_first(T, [Part | Out]);
oldest_first([], Out) -> Out.

%% The encoded size of elements 1..I of T plus Size when they are all
%% scalars that scalar/2 would append, else false. Lets a tuple of scalars
%% (the usual tuple) get its header before its elements.
scalars_size(_, 0, Size) ->
    Size;
scalars_size(T, I, Size) ->
    case element(I, T) of
        E when is_integer(E), E >= -16#20, E < 16#80 -> scalars_size(T, I - 1, Size + 1);
        E when is_integer(E), E >= -16#80, E < 16#100 -> scalars_size(T, I - 1, Size + 2);
        E when is_integer(E), E >= -16#8000, E < 16#10000 -> scalars_size(T, I - 1, Size + 3);
        E when is_integer(E), E >= -16#80000000, E < 16#100000000 -> scalars_size(T, I - 1, Size + 5);
        E when is_integer(E), E >= ?I64_MIN, E =< ?U64_MAX -> scalars_size(T, I - 1, Size + 9);
        E when is_float(E) -> scalars_size(T, I - 1, Size + 9);
        E when is_binary(E), byte_size(E) < 16#100 -> scalars_size(T, I - 1, Size + 2 + byte_size(E));
        E when E =:= true; E =:= false; E =:= none; E =:= nil; E =:= undefined ->
            scalars_size(T, I - 1, Size + 1);
        E when is_atom(E) ->
            L = byte_size(atom_to_binary(E, utf8)),
            scalars_size(T, I - 1, Size + L + byte_size(ext_header(?EXT_ATOM, L, E)));
        _ -> false
    end.

%% Acc with elements I..N of T appended, all scalars.
scalars(T, I, N, Acc) when I =< N -> scalars(T, I + 1, N, scalar(element(I, T), Acc));
scalars(_, _, _, Acc) -> Acc.

%% Acc with the headers of a tuple of N elements, Size bytes with its array
%% header: the usual small tuple's in one segment.
tuple_header(Size, N, _, Acc) when Size < 16#100, N < 16#10 ->
    Tail = (?EXT_TUPLE bsl 8) bor 16#90 bor N,
    case Size of
        1 -> <<Acc/binary, ((16#d4 bsl 16) bor Tail):24>>;
        2 -> <<Acc/binary, ((16#d5 bsl 16) bor Tail):24>>;
        4 -> <<Acc/binary, ((16#d6 bsl 16) bor Tail):24>>;
        8 -> <<Acc/binary, ((16#d7 bsl 16) bor Tail):24>>;
        16 -> <<Acc/binary, ((16#d8 bsl 16) bor Tail):24>>;
        _ -> <<Acc/binary, ((16#c7 bsl 24) bor (Size bsl 16) bor Tail):32>>
    end;
tuple_header(Size, N, T, Acc) ->
    array_header(N, <<Acc/binary, (ext_header(?EXT_TUPLE, Size, T))/binary>>).

%% The size of array_header(N, _).
header_size(N) when N < 16#10 -> 1;
header_size(N) when N < 16#10000 -> 3;
header_size(_) -> 5.

%% Each form up to 5 bytes is one integer segment: on OTP 25 a binary
%% costs per segment, not per byte.
int(I, Acc) when I >= 0 ->
    if
        I < 16#80 -> <<Acc/binary, I>>;
        I < 16#100 -> <<Acc/binary, (16#cc00 bor I):16>>;
        I < 16#10000 -> <<Acc/binary, (16#cd0000 bor I):24>>;
        I < 16#100000000 -> <<Acc/binary, ((16#ce bsl 32) bor I):40>>;
        I =< ?U64_MAX -> <<Acc/binary, 16#cf, I:64>>;
        true -> bigint(I, Acc)
    end;
int(I, Acc) ->
    if
        I >= -16#20 -> <<Acc/binary, I>>;
        I >= -16#80 -> <<Acc/binary, (16#d000 bor (I band 16#ff)):16>>;
        I >= -16#8000 -> <<Acc/binary, (16#d10000 bor (I band 16#ffff)):24>>;
        I >= -16#80000000 -> <<Acc/binary, ((16#d2 bsl 32) bor (I band 16#ffffffff)):40>>;
        I >= ?I64_MIN -> <<Acc/binary, 16#d3, I:64>>;
        true -> bigint(I, Acc)
    end.

%% An integer beyond 64 bits: ext 3, sign byte then the magnitude.
bigint(I, Acc) when I > 0 -> ext(?EXT_BIGINT, <<0, (binary:encode_unsigned(I))/binary>>, I, Acc);
bigint(I, Acc) -> ext(?EXT_BIGINT, <<1, (binary:encode_unsigned(-I))/binary>>, I, Acc).

%% Ext Code with payload B.
payload(Code, B, _, Acc, P, X, K) when byte_size(B) =< ?INLINE_MAX ->
    k(K, ext(Code, B, B, Acc), P, X);
payload(Code, B, Term, Acc, P, X, K) ->
    data(B, <<Acc/binary, (ext_header(Code, byte_size(B), Term))/binary>>, P, X, K).

%% Acc followed by B: copied when small, else referenced.
data(B, Acc, P, X, K) when byte_size(B) =< ?INLINE_MAX ->
    k(K, <<Acc/binary, B/binary>>, P, X);
data(B, Acc, P, X, K) ->
    k(K, Acc, [{byte_size(Acc), B} | P], X + byte_size(B)).

atom(true, Acc) -> <<Acc/binary, 16#c3>>;
atom(false, Acc) -> <<Acc/binary, 16#c2>>;
atom(none, Acc) -> <<Acc/binary, 16#c0>>;
atom(nil, Acc) -> <<Acc/binary, 16#c0>>;
atom(undefined, Acc) -> <<Acc/binary, 16#c0>>;
atom(A, Acc) ->
    %% At most 255 characters: always copied.
    ext(?EXT_ATOM, atom_to_binary(A, utf8), A, Acc).

list_length(L) ->
    try length(L)
    catch error:badarg -> error({unsupported_term, L})
    end.

array_header(N, Acc) when N < 16#10 -> <<Acc/binary, (16#90 bor N)>>;
array_header(N, Acc) when N < 16#10000 -> <<Acc/binary, 16#dc, N:16>>;
array_header(N, Acc) when N < 16#100000000 -> <<Acc/binary, 16#dd, N:32>>.

map_header(N, Acc) when N < 16#10 -> <<Acc/binary, (16#80 bor N)>>;
map_header(N, Acc) when N < 16#10000 -> <<Acc/binary, 16#de, N:16>>;
map_header(N, Acc) when N < 16#100000000 -> <<Acc/binary, 16#df, N:32>>.

%% Acc with ext Code appended, header and payload P in one go for the
%% frequent sizes (atoms); Term is what an error names.
ext(Code, P, Term, Acc) ->
    case byte_size(P) of
        1 -> <<Acc/binary, 16#d4, Code, P/binary>>;
        2 -> <<Acc/binary, 16#d5, Code, P/binary>>;
        4 -> <<Acc/binary, 16#d6, Code, P/binary>>;
        8 -> <<Acc/binary, 16#d7, Code, P/binary>>;
        16 -> <<Acc/binary, 16#d8, Code, P/binary>>;
        N when N < 16#100 -> <<Acc/binary, 16#c7, N, Code, P/binary>>;
        N -> <<Acc/binary, (ext_header(Code, N, Term))/binary, P/binary>>
    end.

%% The header of an N-byte ext payload.
ext_header(Code, 1, _) -> <<16#d4, Code>>;
ext_header(Code, 2, _) -> <<16#d5, Code>>;
ext_header(Code, 4, _) -> <<16#d6, Code>>;
ext_header(Code, 8, _) -> <<16#d7, Code>>;
ext_header(Code, 16, _) -> <<16#d8, Code>>;
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
%%   d(Bin, N, Acc, D, Stack, C, T, W)
%%
%% N values are still to be read into Acc (reversed) for the container being
%% filled, D containers are open, Stack holds the open containers' parents as
%% {array | map, N, Acc, Prefix} or {tuple, N, Acc, End, Start}, where
%% Prefix is what run/2, float_run/2 or pair_run/2 read at the container's start: its
%% first elements, or pairs, in order. The outermost
%% "container" is the caller's list of N values with an empty Stack.
%% C is a cache of atoms (see ext/11) which also holds the limits under
%% '$limits'; T and W are what is left of the budgets: values (elements
%% of containers) and heap words.
%%
%% Budget: a container is charged when its header is read, before any of
%% its elements is built: one value per element, and the words its cells
%% take (2 per list cell, 1 per tuple element, 2 per map key or value, and
%% a few for the container). A scalar that takes heap words (a float, a
%% binary, a large integer) is charged as it is read. A fixint, nil, a
%% boolean or an atom takes none. So no value past the budget is ever
%% built: a 30 MB array of fixints is refused at its header.
%%
%% The type byte is read once and dispatched by one case on its value; a
%% clause per format would make the compiler try the formats one after the
%% other. A value whose bytes are missing is reported truncated
%% where it starts: ?TRUNC(R) for R following its one type byte.
-define(TRUNC(R), ?FAIL_AT(truncated, R, 1)).

%% Heap words of a binary of L bytes matched out of the input: a copy on
%% the heap up to 64 bytes, a sub-binary of the input above.
-define(BIN_WORDS(L), (case (L) =< 64 of true -> 2 + (((L) + 7) bsr 3); false -> 6 end)).

%% The branches of d/8 for one format, R following its type byte: a value V
%% that Pattern reads, leaving R1 (taking Words heap words); an ext whose
%% header Pattern reads (length L, or Len when fixed, and type T) in Back
%% bytes with the type byte; a container whose header is an L of Bits
%% bits, opened by Open (?ARRAY(R1, L) or ?MAP(R1, L): one macro per
%% kind, so no clause of it is dead code for the other).
-define(VALUE(Pattern),
        case R of
            Pattern -> d(R1, N - 1, [V | Acc], D, S, C, T, W);
            _ -> ?TRUNC(R)
        end).
-define(VALUE(Pattern, Words),
        case R of
            Pattern ->
                case W - (Words) of
                    W1 when W1 >= 0 -> d(R1, N - 1, [V | Acc], D, S, C, T, W1);
                    _ -> too_large(max_decoded_bytes, C)
                end;
            _ -> ?TRUNC(R)
        end).
-define(EXT(Pattern, Back),
        case R of
            Pattern -> ext(R1, L, Ty, Back, N, Acc, D, S, C, T, W);
            _ -> ?TRUNC(R)
        end).
-define(EXT(Pattern, Len, Back),
        case R of
            Pattern -> ext(R1, Len, Ty, Back, N, Acc, D, S, C, T, W);
            _ -> ?TRUNC(R)
        end).
-define(OPEN(Bits, Open),
        case R of
            <<L:Bits, R1/binary>> when D < ?MAX_DEPTH ->
                Open;
            <<_:Bits, _/binary>> ->
                ?FAIL(too_deep);
            _ ->
                ?TRUNC(R)
        end).
%% Heap words charged for the values of a container of L: a list cell is 2
%% words; a flatmap is 2 words a pair and a few, a hash map nearer 4; a
%% tuple 1 word an element and its header.
-define(ARRAY_WORDS(L), (2 * (L))).
-define(MAP_WORDS(L), (4 * (L) + 4)).
%% The first byte of an integer that run/2 reads.
-define(IS_INT_BYTE(B), (B < 16#80 orelse B >= 16#e0 orelse
                         (B >= 16#cc andalso B =< 16#d2 andalso B =/= 16#cf))).
%% Containers this long or longer that start with an integer are read by
%% run/2 or pair_run/2; shorter ones by ints/3, whose reversed result costs
%% less than a trip through the process dictionary.
-define(RUN_MIN, 8).
%% An array of L values, as ?CHARGE: the integers at its start in order
%% (run/2), or its float 64s (float_run/2); all of it when they are all it
%% holds, the usual list of numbers, which then needs no frame and no
%% reverse (ran/10).
-define(ARRAY(R1, L),
        case R1 of
            <<IB, _/binary>> when L >= ?RUN_MIN, ?IS_INT_BYTE(IB),
                                  L =< T, ?ARRAY_WORDS(L) =< W ->
                Run = run(R1, L),
                {IR, IN} = erase(?RUN),
                ran(Run, IR, IN, N, Acc, D, S, C, T - L, W - ?ARRAY_WORDS(L));
            <<16#cb, _/binary>> when L >= ?RUN_MIN, L =< T, 2 * ?ARRAY_WORDS(L) =< W ->
                %% Floats take 2 words each: read when all L could be.
                Run = float_run(R1, L),
                {IR, IN} = erase(?RUN),
                ran(Run, IR, IN, N, Acc, D, S, C, T - L, W - ?ARRAY_WORDS(L) - 2 * (L - IN));
            _ ->
                ?CHARGE(R1, L, L, ?ARRAY_WORDS(L), {array, N - 1, Acc, []})
        end).
%% A map of L pairs, likewise: its integer pairs at the start in order
%% (pair_run/2), given to maps:from_list/1 as they are.
-define(MAP(R1, L),
        case R1 of
            <<IB, _/binary>> when L >= ?RUN_MIN, ?IS_INT_BYTE(IB),
                                  2 * L =< T, ?MAP_WORDS(L) =< W ->
                Run = pair_run(R1, L),
                {IR, IN, IAcc} = erase(?RUN),
                d(IR, IN, IAcc, D + 1, [{map, N - 1, Acc, Run} | S], C,
                  T - 2 * L, W - ?MAP_WORDS(L));
            _ ->
                ?CHARGE(R1, 2 * L, 2 * L, ?MAP_WORDS(L), {map, N - 1, Acc, []})
        end).
%% Opens a container of Count values, Terms and Words within the budgets,
%% as d/8 goes on with R1. Inline, so that the match context is kept.
-define(CHARGE(R1, Count, Terms, Words, Frame),
        case (Terms) =< T andalso (Words) =< W of
            true ->
                {IR, IN, IAcc} = ints(R1, Count, []),
                d(IR, IN, IAcc, D + 1, [Frame | S], C, T - (Terms), W - (Words));
            false ->
                charge(R1, Count, Terms, Words, Frame, D, S, C, T, W)
        end).
%% A float takes 2 heap words.
-define(FLOAT(V, R1),
        case W >= 2 of
            true -> d(R1, N - 1, [V | Acc], D, S, C, T, W - 2);
            false -> too_large(max_decoded_bytes, C)
        end).

d(<<_/binary>> = Bin, 0, Acc, _, [], _, _, _) ->
    {Acc, Bin};
d(<<_/binary>> = Bin, 0, Acc, D, [{array, N, PAcc, Prefix} | S], C, T, W) ->
    d(Bin, N, [Prefix ++ lists:reverse(Acc) | PAcc], D - 1, S, C, T, W);
d(<<_/binary>> = Bin, 0, Acc, D, [{map, N, PAcc, Prefix} | S], C, T, W) ->
    d(Bin, N, [to_map(Acc, Prefix) | PAcc], D - 1, S, C, T, W);
d(<<_/binary>> = Bin, 0, Acc, D, [{tuple, N, PAcc, End, Start} | S], C, T, W) ->
    %% The array must fill the ext payload exactly.
    case byte_size(Bin) of
        End -> d(Bin, N, [list_to_tuple(lists:reverse(Acc)) | PAcc], D - 1, S, C, T, W);
        _ -> ?FAIL_SIZE(bad_tuple, Start)
    end;
d(<<B, R/binary>>, N, Acc, D, S, C, T, W) when B < 16#80 ->
    d(R, N - 1, [B | Acc], D, S, C, T, W);
d(<<B, R/binary>>, N, Acc, D, S, C, T, W) when B >= 16#c0 ->
    case B of
        16#c0 -> d(R, N - 1, [none | Acc], D, S, C, T, W);
        16#c2 -> d(R, N - 1, [false | Acc], D, S, C, T, W);
        16#c3 -> d(R, N - 1, [true | Acc], D, S, C, T, W);
        16#c4 -> ?VALUE(<<L, V:L/binary, R1/binary>>, ?BIN_WORDS(L));
        16#c5 -> ?VALUE(<<L:16, V:L/binary, R1/binary>>, ?BIN_WORDS(L));
        16#c6 -> ?VALUE(<<L:32, V:L/binary, R1/binary>>, ?BIN_WORDS(L));
        16#c7 -> ?EXT(<<L, Ty:8/signed, R1/binary>>, 3);
        16#c8 -> ?EXT(<<L:16, Ty:8/signed, R1/binary>>, 4);
        16#c9 -> ?EXT(<<L:32, Ty:8/signed, R1/binary>>, 6);
        16#ca ->
            case R of
                <<V:32/float, R1/binary>> ->
                    ?FLOAT(V, R1);
                <<Sign:1, 16#ff:8, Fraction:23, R1/binary>> ->
                    %% NaN and the infinities do not match as a float.
                    d(R1, N - 1, [non_finite(Sign, Fraction) | Acc], D, S, C, T, W);
                _ ->
                    ?TRUNC(R)
            end;
        16#cb ->
            case R of
                <<V:64/float, R1/binary>> ->
                    ?FLOAT(V, R1);
                <<Sign:1, 16#7ff:11, Fraction:52, R1/binary>> ->
                    d(R1, N - 1, [non_finite(Sign, Fraction) | Acc], D, S, C, T, W);
                _ ->
                    ?TRUNC(R)
            end;
        16#cc -> ?VALUE(<<V, R1/binary>>);
        16#cd -> ?VALUE(<<V:16, R1/binary>>);
        16#ce -> ?VALUE(<<V:32, R1/binary>>);
        %% Beyond 59 bits an integer is 2 words on the heap.
        16#cf -> ?VALUE(<<V:64, R1/binary>>, 2);
        16#d0 -> ?VALUE(<<V:8/signed, R1/binary>>);
        16#d1 -> ?VALUE(<<V:16/signed, R1/binary>>);
        16#d2 -> ?VALUE(<<V:32/signed, R1/binary>>);
        16#d3 -> ?VALUE(<<V:64/signed, R1/binary>>, 2);
        16#d4 -> ?EXT(<<Ty:8/signed, R1/binary>>, 1, 2);
        16#d5 -> ?EXT(<<Ty:8/signed, R1/binary>>, 2, 2);
        16#d6 -> ?EXT(<<Ty:8/signed, R1/binary>>, 4, 2);
        16#d7 -> ?EXT(<<Ty:8/signed, R1/binary>>, 8, 2);
        16#d8 -> ?EXT(<<Ty:8/signed, R1/binary>>, 16, 2);
        16#d9 -> ?VALUE(<<L, V:L/binary, R1/binary>>, ?BIN_WORDS(L));
        16#da -> ?VALUE(<<L:16, V:L/binary, R1/binary>>, ?BIN_WORDS(L));
        16#db -> ?VALUE(<<L:32, V:L/binary, R1/binary>>, ?BIN_WORDS(L));
        16#dc -> ?OPEN(16, ?ARRAY(R1, L));
        16#dd -> ?OPEN(32, ?ARRAY(R1, L));
        16#de -> ?OPEN(16, ?MAP(R1, L));
        16#df -> ?OPEN(32, ?MAP(R1, L));
        16#c1 ->
            ?FAIL({reserved_byte, 16#c1});
        _ ->
            %% 16#e0..16#ff: negative fixint.
            d(R, N - 1, [B - 16#100 | Acc], D, S, C, T, W)
    end;
d(<<B, R/binary>>, N, Acc, D, S, C, T, W) when B >= 16#a0 ->
    L = B - 16#a0,
    %% At most 31 bytes: copied to the heap.
    ?VALUE(<<V:L/binary, R1/binary>>, 2 + ((L + 7) bsr 3));
d(<<B, R/binary>>, N, Acc, D, S, C, T, W) when B < 16#90, D < ?MAX_DEPTH ->
    L = B - 16#80,
    ?MAP(R, L);
d(<<B, R/binary>>, N, Acc, D, S, C, T, W) when D < ?MAX_DEPTH ->
    L = B - 16#90,
    ?ARRAY(R, L);
d(<<_, _/binary>>, _, _, _, _, _, _, _) ->
    ?FAIL(too_deep);
d(<<>>, _, _, _, _, _, _, _) ->
    ?FAIL_SIZE(truncated, 0).

%% The integers of up to 32 bits at the start of a container's values (a
%% list of numbers is all of them), read in a loop of three arguments
%% rather than d/8's eight: they take no heap words beyond the cells the
%% container was charged. Returns where the others start, for d/8.
ints(<<B, R/binary>>, N, Acc) when B < 16#80, N > 0 -> ints(R, N - 1, [B | Acc]);
ints(<<16#cd, V:16, R/binary>>, N, Acc) when N > 0 -> ints(R, N - 1, [V | Acc]);
ints(<<16#cc, V, R/binary>>, N, Acc) when N > 0 -> ints(R, N - 1, [V | Acc]);
ints(<<16#ce, V:32, R/binary>>, N, Acc) when N > 0 -> ints(R, N - 1, [V | Acc]);
ints(<<B, R/binary>>, N, Acc) when B >= 16#e0, N > 0 -> ints(R, N - 1, [B - 16#100 | Acc]);
ints(<<16#d1, V:16/signed, R/binary>>, N, Acc) when N > 0 -> ints(R, N - 1, [V | Acc]);
ints(<<16#d2, V:32/signed, R/binary>>, N, Acc) when N > 0 -> ints(R, N - 1, [V | Acc]);
ints(<<16#d0, V:8/signed, R/binary>>, N, Acc) when N > 0 -> ints(R, N - 1, [V | Acc]);
ints(Bin, N, Acc) -> {Bin, N, Acc}.

%% The integers of up to 32 bits at the start of an array's N values, in
%% order: built from the front by body recursion, so that a list of
%% numbers costs its own cells and nothing else (reading them reversed
%% costs as many cells again, and the garbage collections they bring:
%% measured, a third of the decode of 10,000 integers). Where they end
%% and how many values are left go through the process dictionary
%% (?RUN, taken at once by ?ARRAY), as returning them from every level
%% would cost a tuple each.
run(<<16#cd, A:16, 16#cd, B:16, 16#cd, C:16, 16#cd, V:16, R/binary>>, N) when N >= 4 ->
    [A, B, C, V | run(R, N - 4)];
run(<<A, B, C, V, R/binary>>, N) when A < 16#80, B < 16#80, C < 16#80, V < 16#80, N >= 4 ->
    [A, B, C, V | run(R, N - 4)];
run(<<B, R/binary>>, N) when B < 16#80, N > 0 -> [B | run(R, N - 1)];
run(<<16#cd, V:16, R/binary>>, N) when N > 0 -> [V | run(R, N - 1)];
run(<<16#cc, V, R/binary>>, N) when N > 0 -> [V | run(R, N - 1)];
run(<<16#ce, V:32, R/binary>>, N) when N > 0 -> [V | run(R, N - 1)];
run(<<B, R/binary>>, N) when B >= 16#e0, N > 0 -> [B - 16#100 | run(R, N - 1)];
run(<<16#d1, V:16/signed, R/binary>>, N) when N > 0 -> [V | run(R, N - 1)];
run(<<16#d2, V:32/signed, R/binary>>, N) when N > 0 -> [V | run(R, N - 1)];
run(<<16#d0, V:8/signed, R/binary>>, N) when N > 0 -> [V | run(R, N - 1)];
run(Bin, N) ->
    _ = put(?RUN, {Bin, N}),
    [].

%% Where an array's run ends, R with Left of its values unread: the
%% array is the run when none are, else a frame is opened for them with
%% the run as its prefix.
ran(Run, R, 0, N, Acc, D, S, C, T, W) ->
    d(R, N - 1, [Run | Acc], D, S, C, T, W);
ran(Run, R, Left, N, Acc, D, S, C, T, W) ->
    d(R, Left, [], D + 1, [{array, N - 1, Acc, Run} | S], C, T, W).

%% The float 64s at the start of an array's N values, likewise (a list of
%% numbers from numpy or an embedding). NaN and the infinities do not
%% match as floats: d/8 reads them, and what follows them.
float_run(<<16#cb, A/float, 16#cb, B/float, 16#cb, C/float, 16#cb, V/float, R/binary>>, N)
  when N >= 4 ->
    [A, B, C, V | float_run(R, N - 4)];
float_run(<<16#cb, V/float, R/binary>>, N) when N > 0 -> [V | float_run(R, N - 1)];
float_run(Bin, N) ->
    _ = put(?RUN, {Bin, N}),
    [].

%% The pairs of integers at the start of a map's N pairs, in order, as
%% {Key, Value}, likewise. ?RUN gets where they end, the values left and
%% the reversed values read past them: [] or a key whose value is not an
%% integer.
pair_run(<<B, R/binary>>, N) when B < 16#80, N > 0 -> pair_value(R, B, N);
pair_run(<<16#cd, K:16, R/binary>>, N) when N > 0 -> pair_value(R, K, N);
pair_run(<<16#cc, K, R/binary>>, N) when N > 0 -> pair_value(R, K, N);
pair_run(<<16#ce, K:32, R/binary>>, N) when N > 0 -> pair_value(R, K, N);
pair_run(<<B, R/binary>>, N) when B >= 16#e0, N > 0 -> pair_value(R, B - 16#100, N);
pair_run(<<16#d1, K:16/signed, R/binary>>, N) when N > 0 -> pair_value(R, K, N);
pair_run(<<16#d2, K:32/signed, R/binary>>, N) when N > 0 -> pair_value(R, K, N);
pair_run(<<16#d0, K:8/signed, R/binary>>, N) when N > 0 -> pair_value(R, K, N);
pair_run(Bin, N) ->
    _ = put(?RUN, {Bin, 2 * N, []}),
    [].

pair_value(<<B, R/binary>>, K, N) when B < 16#80 -> [{K, B} | pair_run(R, N - 1)];
pair_value(<<16#cd, V:16, R/binary>>, K, N) -> [{K, V} | pair_run(R, N - 1)];
pair_value(<<16#cc, V, R/binary>>, K, N) -> [{K, V} | pair_run(R, N - 1)];
pair_value(<<16#ce, V:32, R/binary>>, K, N) -> [{K, V} | pair_run(R, N - 1)];
pair_value(<<B, R/binary>>, K, N) when B >= 16#e0 -> [{K, B - 16#100} | pair_run(R, N - 1)];
pair_value(<<16#d1, V:16/signed, R/binary>>, K, N) -> [{K, V} | pair_run(R, N - 1)];
pair_value(<<16#d2, V:32/signed, R/binary>>, K, N) -> [{K, V} | pair_run(R, N - 1)];
pair_value(<<16#d0, V:8/signed, R/binary>>, K, N) -> [{K, V} | pair_run(R, N - 1)];
pair_value(Bin, K, N) ->
    _ = put(?RUN, {Bin, 2 * N - 1, [K]}),
    [].

%% A container past a budget, unless its header claims more values than
%% there are bytes left (each takes at least one): then it is truncated,
%% and only the values the bytes can hold are charged, so that the decode
%% finds the truncation where the bytes end, having built no more.
charge(R, Count, Terms, Words, Frame, D, S, C, T, W) ->
    Fit = byte_size(R),
    {Terms1, Words1} = case Count > Fit of
                           true -> {min(Terms, Fit), Words * Fit div max(1, Count) + 4};
                           false -> {Terms, Words}
                       end,
    if
        Terms1 > T -> too_large(max_result_terms, C);
        Words1 > W -> too_large(max_decoded_bytes, C);
        true -> d(R, Count, [], D + 1, [Frame | S], C, T - Terms1, W - Words1)
    end.

%% An ext value of type Ty with an L-byte payload at the start of Bin,
%% after a header of Back bytes.
ext(<<_/binary>> = Bin, L, ?EXT_TUPLE, Back, N, Acc, D, S, C, T, W) ->
    tuple(Bin, L, Back, N, Acc, D, S, C, T, W);
ext(Bin, L, ?EXT_ATOM, Back, N, Acc, D, S, C, T, W) ->
    %% C caches the atoms made so far: binary_to_atom/2 locks the atom
    %% table, and a list of records repeats the same few names.
    case Bin of
        <<Name:L/binary, R/binary>> ->
            case C of
                #{Name := A} ->
                    d(R, N - 1, [A | Acc], D, S, C, T, W);
                #{'$limits' := #{atoms := Budget}} ->
                    case pyport_atoms:to_atom(Name, Budget) of
                        {ok, A} -> d(R, N - 1, [A | Acc], D, S, C#{Name => A}, T, W);
                        {error, bad_atom} -> ext_failed(bad_atom, Bin, Back);
                        {error, {atom_limit, _, _} = Limit} -> throw({?LIMIT, Limit})
                    end
            end;
        _ ->
            ?FAIL_AT(truncated, Bin, Back)
    end;
ext(Bin, 17, ?EXT_PAYLOAD, Back, N, Acc, D, S, C, T, W) ->
    case C of
        #{'$limits' := #{payloads := Source} = Limits} ->
            case Bin of
                <<_Form, Offset:64, Length:64, R/binary>> when W >= 6 ->
                    %% Bytes the worker put in an answer region: read once
                    %% checked, within what one frame may carry.
                    Mode = maps:get(payload_mode, Limits, read),
                    case pyport_payloads:read(Source, Offset, Length,
                                              maps:get('$payload_left', C, undefined), Mode) of
                        {ok, V, Left} ->
                            d(R, N - 1, [V | Acc], D, S, C#{'$payload_left' => Left}, T, W - 6);
                        {error, _} = Bad ->
                            throw({?LIMIT, element(2, Bad)})
                    end;
                <<_:17/binary, _/binary>> ->
                    too_large(max_decoded_bytes, C);
                _ ->
                    ?FAIL_AT(truncated, Bin, Back)
            end;
        #{} ->
            ?FAIL({unknown_ext, ?EXT_PAYLOAD})
    end;
ext(Bin, L, Ty, Back, N, Acc, D, S, C, T, W) ->
    case Bin of
        <<P:L/binary, R/binary>> ->
            Words = ext_words(Ty, P),
            if
                Words > W -> too_large(max_decoded_bytes, C);
                true ->
                    case ext_value(Ty, P) of
                        {error, Why} -> ext_failed(Why, Bin, Back);
                        V -> d(R, N - 1, [V | Acc], D, S, C, T, W - Words)
                    end
            end;
        _ ->
            ?FAIL_AT(truncated, Bin, Back)
    end.

%% Heap words of an ext value, known before it is built: for a fun (whose
%% environment may hold any term) the most its external format can expand
%% to, 2 words a byte.
ext_words(?EXT_BIGINT, P) -> 1 + ((byte_size(P) + 6) bsr 3);
ext_words(?EXT_BYTES, P) -> ?BIN_WORDS(byte_size(P));
ext_words(?EXT_TERM, <<131, Tag, _/binary>> = P)
  when Tag =:= 112; Tag =:= 113; Tag =:= 117 -> 8 + 2 * byte_size(P);
ext_words(_, _) -> 8.

%% A tuple's payload is exactly one array: its elements.
tuple(Bin, L, Back, N, Acc, D, S, C, T, W) when D < ?MAX_DEPTH ->
    Size = byte_size(Bin),
    Start = Size + Back,
    End = Size - L,
    Frame = {tuple, N - 1, Acc, End, Start},
    case Bin of
        _ when End < 0 ->
            ?FAIL_SIZE(truncated, Start);
        <<B, R/binary>> when B >= 16#90, B =< 16#9f ->
            ?CHARGE(R, B - 16#90, B - 16#90, B - 16#90 + 1, Frame);
        <<16#dc, Len:16, R/binary>> ->
            ?CHARGE(R, Len, Len, Len + 1, Frame);
        <<16#dd, Len:32, R/binary>> ->
            ?CHARGE(R, Len, Len, Len + 1, Frame);
        _ ->
            ?FAIL_SIZE(bad_tuple, Start)
    end;
tuple(_, _, _, _, _, _, _, _, _, _) ->
    ?FAIL(too_deep).

-spec too_large(max_result_terms | max_decoded_bytes, map()) -> no_return().
too_large(Key, #{'$limits' := #{max_terms := Terms, max_bytes := Bytes}}) ->
    Max = case Key of
              max_result_terms -> Terms;
              max_decoded_bytes -> Bytes
          end,
    throw({?LIMIT, {result_too_large, Key, Max}}).

%% The value of a non-tuple, non-atom ext, or {error, Why}: no such value
%% is a tuple.
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

%% Map from the pairs Prefix, then the reversed alternating values [Vn,
%% Kn, ..., V1, K1] that followed them. Pairs go to maps:from_list in wire
%% order, so a repeated key keeps its last value, as a Python dict built
%% from the same pairs would.
to_map([], Prefix) -> maps:from_list(Prefix);
to_map(Reversed, Prefix) -> maps:from_list(Prefix ++ pairs_of(Reversed, [])).

pairs_of([V, K | T], Pairs) -> pairs_of(T, [{K, V} | Pairs]);
pairs_of([], Pairs) -> Pairs.

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
