%% @doc How a worker's port owner writes frames to its port.
%%
%% A closed port raises badarg; its exit status is then already on its way
%% to the owner and will answer the request. Requests that reach the owner
%% together go to the worker in one write (a BATCH frame), so that it reads
%% them at once; any other frame first sends what is held, so frames always
%% reach the worker in the order they were sent.
-module(pyport_worker_writer).

-export([send_frame/2, send_request/3, flush/0]).

%% Requests held to go out together (send_request/3) fit in this many
%% bytes, and in the pool's max_frame_size.
-define(BATCH_MAX_BYTES, 262144).
-define(HELD, '$pyport_held').
-define(FLUSH_SENT, '$pyport_flush_sent').

%% @doc Writes a frame, after any requests held (see send_request/3);
%% `false' if the port is closed.
-spec send_frame(port(), iodata()) -> true | false.
send_frame(Port, Frame) ->
    flush_held(),
    write(Port, Frame).

write(Port, Frame) ->
    try port_command(Port, pyport_framer:frame(Frame))
    catch error:badarg -> false
    end.

%% Requests that arrive together reach the worker in one write, which it
%% reads at once: while more messages wait in the mailbox, a request's
%% frame is held (in the process dictionary: it is not state, only a write
%% put off within this burst of messages). The held frames go out as one
%% BATCH frame once the mailbox is empty (the '$pyport_flush' message sent
%% to self when the first was held), or before any other frame
%% (send_frame/2), so frames always reach the worker in the order they
%% were sent.
-spec send_request(port(), iodata(), pos_integer()) -> ok | true | false.
send_request(Port, Frame, Max) ->
    case process_info(self(), message_queue_len) of
        {message_queue_len, 0} ->
            send_frame(Port, Frame);
        _ ->
            hold(Port, Frame, iolist_size(Frame) + 5, min(Max, ?BATCH_MAX_BYTES) - 8)
    end.

hold(Port, Frame, Size, Limit) ->
    case get(?HELD) of
        {Port, Bytes, Frames} when Bytes + Size =< Limit ->
            put(?HELD, {Port, Bytes + Size, [Frame | Frames]});
        _ when Size > Limit ->
            send_frame(Port, Frame);
        _ ->
            flush_held(),
            put(?HELD, {Port, Size, [Frame]}),
            case get(?FLUSH_SENT) of
                true -> ok;
                _ -> put(?FLUSH_SENT, true), self() ! '$pyport_flush'
            end
    end,
    ok.

flush_held() ->
    case erase(?HELD) of
        undefined -> ok;
        {Port, _, [Frame]} -> write(Port, Frame);
        {Port, _, Frames} -> write(Port, pyport_codec:encode_batch(lists:reverse(Frames)))
    end.
%% @doc The owner's mailbox is empty (its '$pyport_flush' message came):
%% the held requests go out.
-spec flush() -> ok.
flush() ->
    erase(?FLUSH_SENT),
    flush_held().
