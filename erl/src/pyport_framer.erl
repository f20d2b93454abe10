%% @doc The frame channel's framing, done by the owner rather than by the
%% port: a 4-byte big-endian length, then that many bytes (proto/PROTOCOL.md).
%%
%% The port runs in `stream' mode because `{packet, 4}' lets the VM buffer
%% whatever length a worker's header claims (up to 4 GB) before the owner
%% sees a byte. Here a header is checked against the pool's
%% `max_frame_size' as soon as its 4 bytes arrive, before any of its body
%% is kept, so a hostile or broken worker costs the node at most one
%% frame of `max_frame_size' (plus the read it arrived in).
%%
%% Reassembly never copies more than once: the pieces of a frame that spans
%% reads are kept in a list and joined when the last one arrives; frames
%% that arrive whole are sub-binaries of the read. A small frame cut from a
%% much larger read is copied, so that a caller keeping it does not keep
%% the whole read alive.
-module(pyport_framer).

-export([new/1, feed/2, frame/1, buffered/1]).

-export_type([state/0]).

%% The largest length a 4-byte header can express.
-define(MAX_LENGTH, 16#FFFFFFFF).

-record(framer, {
          max :: non_neg_integer(),
          %% 0: between frames, `head' holds the first bytes (fewer than
          %% 4) of the next header. N > 0: a header of N bytes was read,
          %% `body' holds `have' bytes of its body, newest first.
          need = 0 :: non_neg_integer(),
          head = <<>> :: binary(),
          body = [] :: [binary()],
          have = 0 :: non_neg_integer()
         }).

-opaque state() :: #framer{}.

%% @doc A framer for a channel whose frames are at most `Max' bytes long
%% (not counting the 4 header bytes).
-spec new(non_neg_integer()) -> state().
new(Max) when is_integer(Max), Max >= 0 ->
    #framer{max = Max}.

%% @doc Takes the bytes of one read: returns the frames it completes, in
%% order, and the state holding what is left; or, at a header above the
%% maximum, that header's size together with the complete frames that came
%% before it (the worker sent those whole, so they are still answers).
-spec feed(binary(), state()) ->
          {ok, [binary()], state()}
        | {error, {frame_too_large, non_neg_integer(), non_neg_integer()}, [binary()]}.
feed(<<>>, State) ->
    {ok, [], State};
feed(Data, #framer{need = 0, head = <<>>} = State) ->
    split(Data, State, []);
feed(Data, #framer{need = 0, head = Head} = State) ->
    %% A header cut across reads: at most 3 bytes to join.
    split(<<Head/binary, Data/binary>>, State#framer{head = <<>>}, []);
feed(Data, #framer{need = Need, have = Have, body = Body} = State)
  when Have + byte_size(Data) < Need ->
    {ok, [], State#framer{body = [Data | Body], have = Have + byte_size(Data)}};
feed(Data, #framer{need = Need, have = Have, body = Body} = State) ->
    Missing = Need - Have,
    <<Last:Missing/binary, Rest/binary>> = Data,
    Frame = case Body of
                [] -> Last;
                _ -> iolist_to_binary(lists:reverse(Body, [Last]))
            end,
    split(Rest, State#framer{need = 0, body = [], have = 0}, [keep(Frame)]).

%% @doc The frame bytes for a payload: the 4-byte length, then the payload,
%% as an iolist (nothing is copied). A payload that no header can express
%% raises `badarg', as a `{packet, 4}' port did.
-spec frame(iodata()) -> iodata().
frame(Payload) ->
    case iolist_size(Payload) of
        Size when Size =< ?MAX_LENGTH -> [<<Size:32>> | Payload];
        _ -> error(badarg)
    end.

%% @doc Bytes held for frames not yet complete.
-spec buffered(state()) -> non_neg_integer().
buffered(#framer{need = 0, head = Head}) -> byte_size(Head);
buffered(#framer{have = Have}) -> 4 + Have.

%%%===================================================================
%%% Internals
%%%===================================================================

%% Cuts the complete frames off the front of Bin, checking each header
%% before anything of its body is kept.
split(<<Size:32, _/binary>>, #framer{max = Max}, Acc) when Size > Max ->
    {error, {frame_too_large, Size, Max}, lists:reverse(Acc)};
split(<<Size:32, Frame:Size/binary, Rest/binary>>, State, Acc) ->
    split(Rest, State, [keep(Frame) | Acc]);
split(<<Size:32, Part/binary>>, State, Acc) ->
    Body = case Part of
               <<>> -> [];
               _ -> [Part]
           end,
    {ok, lists:reverse(Acc), State#framer{need = Size, body = Body, have = byte_size(Part)}};
split(Head, State, Acc) ->
    %% At most 3 bytes: not worth keeping the read they came in alive.
    {ok, lists:reverse(Acc), State#framer{head = binary:copy(Head)}}.

%% A frame that is a small part of the binary it was cut from is copied:
%% its reader may keep it (or values matched out of it) long after the
%% rest of that read is garbage.
keep(Frame) ->
    case binary:referenced_byte_size(Frame) > 2 * byte_size(Frame) + 64 of
        true -> binary:copy(Frame);
        false -> Frame
    end.
