%% @doc erlang_python's `py_byte_channel': raw bytes between Erlang and
%% Python (`erlang.ByteChannel'), each direction a queue of its own. A
%% thin facade over {@link pyport_channel}; see docs/channels.md.
-module(py_byte_channel).

-export([new/0, new/1, send/2, try_receive/1, recv/1, recv/2, close/1, info/1]).

-export_type([channel/0]).

-type channel() :: pyport_channel:handle().

%% @doc A byte channel owned by the caller, with the default cap.
-spec new() -> {ok, channel()} | {error, term()}.
new() ->
    new(#{}).

%% @doc `#{max_size => Bytes}': the most bytes queued in each direction
%% (0: the default cap, 16 MiB).
-spec new(map()) -> {ok, channel()} | {error, term()}.
new(Opts) ->
    pyport_channel:new(byte_channel, Opts).

%% @doc Queues `Bin' for Python; `busy' past `max_size'.
-spec send(channel(), binary()) -> ok | busy | {error, closed | {unsupported_term, term()}}.
send(Ch, Bin) ->
    pyport_channel:send(Ch, Bin).

%% @doc What Python sent (`ByteChannel.send_bytes'), without waiting.
-spec try_receive(channel()) -> {ok, binary()} | {error, empty | closed}.
try_receive(Ch) ->
    pyport_channel:try_receive(Ch).

%% @doc Waits for what Python sends.
-spec recv(channel()) -> {ok, binary()} | {error, closed | waiter_exists}.
recv(Ch) ->
    recv(Ch, infinity).

%% @doc Waits up to `Timeout' ms; one receiver waits at a time.
-spec recv(channel(), timeout()) -> {ok, binary()} | {error, closed | timeout | waiter_exists}.
recv(Ch, Timeout) ->
    pyport_channel:recv(Ch, Timeout).

%% @doc Closes both directions (what is queued is still delivered).
-spec close(channel()) -> ok.
close(Ch) ->
    pyport_channel:close(Ch).

%% @doc As {@link py_channel:info/1} (bytes queued towards Python).
-spec info(channel()) -> #{size := non_neg_integer(), max_size := non_neg_integer(),
                           closed := boolean()}.
info(Ch) ->
    pyport_channel:info(Ch).
