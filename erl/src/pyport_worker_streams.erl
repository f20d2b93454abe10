%% @doc Streams of a worker, for its port owner: each chunk goes to its
%% consumer, and the worker gets credit (at most ?STREAM_WINDOW chunks in
%% flight) only while the consumer's mailbox is short, so a slow consumer
%% suspends the Python producer instead of filling memory.
-module(pyport_worker_streams).

-include("pyport_worker.hrl").

-export([stream_chunk/3, stream_recheck/2]).

%% How often credit is reconsidered while a consumer is behind.
-define(STREAM_RECHECK_MS, 10).

%% @doc One chunk for its consumer; then credit, if it keeps up.
-spec stream_chunk(pos_integer(), binary(), #state{}) -> #state{}.
stream_chunk(Id, Rest, #state{pending = Pending} = State) ->
    case maps:get(Id, Pending, undefined) of
        {stream, Consumer, Ref, Credit, Checking} ->
            Msg = case pyport_codec:decode_fields(1, Rest) of
                      {ok, [Value]} -> {data, Value};
                      {error, _} = Error -> Error
                  end,
            Consumer ! {py_stream, Ref, Msg},
            Entry = {stream, Consumer, Ref, max(0, Credit - 1), Checking},
            top_up(Id, Entry, State#state{pending = Pending#{Id := Entry}});
        _ ->
            %% Cancelled meanwhile, or not a stream: nobody wants it.
            State
    end.

%% Grants credit back up to the window once half of it is used, unless the
%% consumer has a backlog: then it is looked at again shortly, and the
%% worker (out of credit) suspends its producer meanwhile.
top_up(_Id, {stream, _, _, _, true}, State) ->
    State;
top_up(Id, {stream, Consumer, Ref, Credit, false} = Entry0, State) when Credit =< ?STREAM_WINDOW div 2 ->
    case backlog(Consumer) of
        gone ->
            %% Nobody will read it: stop the producer.
            pyport_worker_requests:cancel_in_worker(Id, State),
            pyport_worker_requests:count_out(State),
            State#state{pending = maps:remove(Id, State#state.pending)};
        Backlog when Backlog < ?STREAM_WINDOW ->
            _ = pyport_worker_writer:send_frame(State#state.port,
                           pyport_codec:encode_frame(?STREAM_CREDIT, Id, [?STREAM_WINDOW - Credit])),
            Entry = {stream, Consumer, Ref, ?STREAM_WINDOW, false},
            State#state{pending = (State#state.pending)#{Id := Entry}};
        _ ->
            _ = erlang:send_after(?STREAM_RECHECK_MS, self(), {stream_recheck, Id}),
            Entry = setelement(5, Entry0, true),
            State#state{pending = (State#state.pending)#{Id := Entry}}
    end;
top_up(_Id, _Entry, State) ->
    State.

%% @doc A consumer that was behind is looked at again.
-spec stream_recheck(pos_integer(), #state{}) -> #state{}.
stream_recheck(Id, #state{pending = Pending} = State) ->
    case maps:get(Id, Pending, undefined) of
        {stream, Consumer, Ref, Credit, true} when State#state.status =:= up ->
            top_up(Id, {stream, Consumer, Ref, Credit, false}, State);
        _ ->
            State
    end.

%% Messages waiting in a local consumer's mailbox; `gone' if it exited; 0
%% on another node, where it cannot be looked at.
backlog(Pid) when node(Pid) =:= node() ->
    case erlang:process_info(Pid, message_queue_len) of
        {message_queue_len, N} -> N;
        undefined -> gone
    end;
backlog(_Pid) ->
    0.
