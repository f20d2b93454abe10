%% @doc erlang_python's `py_channel': a queue of terms from Erlang to
%% Python code in a worker (`erlang.Channel'). A thin facade over
%% {@link pyport_channel}; see docs/channels.md.
%%
%% ```
%% {ok, Ch} = py_channel:new(#{max_size => 65536}),
%% ok = py_channel:send(Ch, {job, 1}),
%% {ok, _} = py:call(consumer, run, [Ch]),   % Python: erlang.Channel(ch)
%% ok = py_channel:close(Ch).
%% '''
-module(py_channel).

-export([new/0, new/1, send/2, close/1, info/1]).

-export_type([channel/0]).

-type channel() :: pyport_channel:handle().

%% @doc A channel owned by the caller, with the default cap.
-spec new() -> {ok, channel()} | {error, term()}.
new() ->
    new(#{}).

%% @doc `#{max_size => Bytes}': the most bytes queued (terms counted by
%% their external size); 0 means the default cap (16 MiB), never unbounded.
-spec new(map()) -> {ok, channel()} | {error, term()}.
new(Opts) ->
    pyport_channel:new(channel, Opts).

%% @doc Queues `Term'; `busy' when the queue would pass `max_size'.
-spec send(channel(), term()) -> ok | busy | {error, closed | {unsupported_term, term()}}.
send(Ch, Term) ->
    pyport_channel:send(Ch, Term).

%% @doc Closes it: Python receives what is queued, then `ChannelClosed'.
-spec close(channel()) -> ok.
close(Ch) ->
    pyport_channel:close(Ch).

%% @doc `#{size => QueuedBytes, max_size => Cap, closed => boolean()}'.
-spec info(channel()) -> #{size := non_neg_integer(), max_size := non_neg_integer(),
                           closed := boolean()}.
info(Ch) ->
    pyport_channel:info(Ch).
