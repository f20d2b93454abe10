%% @doc Channels between Erlang and Python code in workers: the logic
%% behind `py_channel' (terms, Erlang to Python) and `py_byte_channel'
%% (raw bytes, both ways). See docs/channels.md.
%%
%% A channel is a process of the node, owned by the Erlang process that
%% made it (it ends when the owner exits). Its queues live here, never in
%% a worker: `send/2' answers `busy' once the queued bytes would pass
%% `max_size', so a slow reader costs the node at most that much, and a
%% worker that dies loses nothing but the item it was being handed. Python
%% pulls: `Channel.receive()' is a REQUEST the channel answers when an item
%% is there (a waiting receive runs in a process of the worker's callback
%% keeper, so the worker's owner never blocks). Any worker given the handle
%% may read; one receiver waits at a time per direction.
-module(pyport_channel).
-behaviour(gen_server).

-export([new/2, send/2, py_send/2, close/1, info/1, try_receive/1, recv/2]).
-export([py_request/4, default_max_size/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([handle/0, kind/0]).

-define(DEFAULT_MAX_SIZE, 16 * 1024 * 1024).
%% How long the worker's owner waits for a channel (which never blocks).
-define(CALL_TIMEOUT, 5000).

-type kind() :: channel | byte_channel.
-opaque handle() :: {py_channel | py_byte_channel, pid(), pyport_handles:token()}.
-type info() :: #{size := non_neg_integer(), max_size := non_neg_integer(),
                  closed := boolean()}.

-record(q, {items = queue:new() :: queue:queue({non_neg_integer(), term()}),
            bytes = 0 :: non_neg_integer(),
            waiter :: undefined | {gen_server:from(), reference(), reference() | undefined}}).
-record(st, {kind :: kind(), max :: pos_integer(), closed = false :: boolean(),
             python = #q{} :: #q{},          % Erlang -> Python
             erlang = #q{} :: #q{}}).        % Python -> Erlang (byte channels)

%% @doc Makes a channel owned by the caller. `max_size': the most bytes
%% queued in one direction (terms counted by their external size); 0 or
%% absent means the default (app env `channel_max_size', 16 MiB).
-spec new(kind(), map()) -> {ok, handle()} | {error, term()}.
new(Kind, Opts) when is_map(Opts) ->
    case max_size(maps:get(max_size, Opts, 0)) of
        {ok, Max} ->
            Token = pyport_handles:token(),
            case gen_server:start(?MODULE, {Kind, self(), Max, Token}, []) of
                {ok, Pid} -> {ok, {tag(Kind), Pid, Token}};
                {error, _} = Error -> Error
            end;
        error ->
            {error, {invalid_option, max_size, maps:get(max_size, Opts)}}
    end;
new(_Kind, Opts) ->
    {error, {invalid_options, Opts}}.

%% @doc The cap of a channel made with `max_size' 0.
-spec default_max_size() -> pos_integer().
default_max_size() ->
    case application:get_env(pyport, channel_max_size) of
        {ok, N} when is_integer(N), N > 0 -> N;
        _ -> ?DEFAULT_MAX_SIZE
    end.

%% @doc Queues `Term' for Python (for a byte channel, a binary).
-spec send(handle(), term()) -> ok | busy | {error, closed | {unsupported_term, term()}}.
send({py_byte_channel, Pid, _}, Bin) when is_binary(Bin) ->
    call(Pid, {send, python, byte_size(Bin), {bytes, Bin}});
send({py_byte_channel, _, _}, Other) ->
    {error, {unsupported_term, Other}};
send({py_channel, Pid, _}, Term) ->
    %% Checked here, where the sender can be told: a term with no wire
    %% form (an improper list) could never reach Python.
    try pyport_codec:encode(Term) of
        _ -> call(Pid, {send, python, erlang:external_size(Term), Term})
    catch error:{unsupported_term, T} -> {error, {unsupported_term, T}}
    end.

%% @doc Python's side of `send': queues bytes for Erlang (byte channels).
-spec py_send(pid(), binary()) -> ok | busy | {error, closed}.
py_send(Pid, Bin) ->
    call(Pid, {send, erlang, byte_size(Bin), Bin}).

%% @doc Closes the channel: receivers get what is queued, then `closed'.
-spec close(handle() | pid()) -> ok.
close({_, Pid, _}) ->
    close(Pid);
close(Pid) when is_pid(Pid) ->
    _ = call(Pid, close),
    ok.

%% @doc Queued bytes (towards Python), the cap, whether it is closed.
-spec info(handle()) -> info().
info({_, Pid, _}) ->
    case call(Pid, info) of
        #{} = Info -> Info;
        {error, closed} -> #{size => 0, max_size => 0, closed => true}
    end.

%% @doc Takes what Python sent, without waiting (byte channels).
-spec try_receive(handle()) -> {ok, binary()} | {error, empty | closed}.
try_receive({py_byte_channel, Pid, _}) ->
    case call(Pid, {take, erlang}) of
        {data, Bin} -> {ok, Bin};
        empty -> {error, empty};
        closed -> {error, closed};
        {error, closed} -> {error, closed}
    end.

%% @doc Waits up to `Timeout' for what Python sent (byte channels).
-spec recv(handle(), timeout()) -> {ok, binary()} | {error, closed | timeout | waiter_exists}.
recv({py_byte_channel, Pid, _}, Timeout) ->
    case wait(Pid, erlang, Timeout) of
        {data, Bin} -> {ok, Bin};
        Other -> {error, Other}
    end.

%% @doc Serves a Python request on channel `Pid' (see pyport_handles).
%% Only a byte channel carries bytes from Python.
-spec py_request(pid(), kind(), term(), [term()]) ->
          {reply, pyport_callback:result()}
          | {wait, unicode:chardata(), fun(() -> pyport_callback:result())}.
py_request(Pid, _Kind, <<"recv">>, [TimeoutMs]) when is_integer(TimeoutMs) ->
    case call(Pid, {take, python}) of
        empty when TimeoutMs =/= 0 ->
            Timeout = case TimeoutMs < 0 of true -> infinity; false -> TimeoutMs end,
            {wait, <<"a channel receive">>, fun() -> {ok, wait(Pid, python, Timeout)} end};
        {error, closed} ->
            {reply, {ok, closed}};
        Taken ->
            {reply, {ok, Taken}}
    end;
py_request(Pid, byte_channel, <<"send">>, [Data]) when is_binary(Data) ->
    {reply, {ok, case py_send(Pid, Data) of
                     {error, closed} -> closed;
                     Answer -> Answer
                 end}};
py_request(Pid, _Kind, <<"close">>, []) ->
    {reply, {ok, close(Pid)}};
py_request(Pid, _Kind, <<"info">>, []) ->
    {reply, {ok, case call(Pid, info) of
                     #{} = Info -> Info;
                     {error, closed} -> #{size => 0, max_size => 0, closed => true}
                 end}};
py_request(_Pid, _Kind, Verb, Args) ->
    {reply, {error, <<"ValueError">>,
             io_lib:format("unknown channel request ~0tp with ~0tp", [Verb, Args],
                           [{chars_limit, 200}]),
             bad_request}}.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init({kind(), pid(), pos_integer(), pyport_handles:token()}) ->
          {ok, #st{}} | {stop, term()}.
init({Kind, Owner, Max, Token}) ->
    case pyport_handles:add(Token, Kind, undefined) of
        ok ->
            _ = erlang:monitor(process, Owner),
            {ok, #st{kind = Kind, max = Max}};
        {error, Why} ->
            {stop, Why}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) ->
          {reply, term(), #st{}} | {noreply, #st{}} | {stop, normal, term(), #st{}}.
handle_call({send, _Dir, _Size, _Item}, _From, #st{closed = true} = S) ->
    {reply, {error, closed}, S};
handle_call({send, Dir, Size, Item}, _From, S) ->
    Q = queue_of(Dir, S),
    case Q#q.waiter of
        {WFrom, MRef, TRef} ->
            %% Someone waits: handed over at once, never queued.
            erlang:demonitor(MRef, [flush]),
            cancel_timer(TRef),
            gen_server:reply(WFrom, {data, Item}),
            {reply, ok, set_queue(Dir, Q#q{waiter = undefined}, S)};
        undefined when Q#q.bytes + Size > S#st.max ->
            {reply, busy, S};
        undefined ->
            Q1 = Q#q{items = queue:in({Size, Item}, Q#q.items), bytes = Q#q.bytes + Size},
            {reply, ok, set_queue(Dir, Q1, S)}
    end;
handle_call({take, Dir}, _From, S) ->
    {Answer, S1} = take(Dir, S),
    maybe_stop({reply, Answer, S1});
handle_call({wait, Dir, Timeout}, {Pid, _} = From, S) ->
    case take(Dir, S) of
        {empty, _} ->
            Q = queue_of(Dir, S),
            case Q#q.waiter of
                undefined ->
                    TRef = case Timeout of
                               infinity -> undefined;
                               _ -> erlang:start_timer(Timeout, self(), {timeout, Dir})
                           end,
                    Waiter = {From, erlang:monitor(process, Pid), TRef},
                    {noreply, set_queue(Dir, Q#q{waiter = Waiter}, S)};
                _ ->
                    {reply, waiter_exists, S}
            end;
        {Answer, S1} ->
            maybe_stop({reply, Answer, S1})
    end;
handle_call(close, _From, S) ->
    %% Waiters have nothing queued (else they would not wait): they end now.
    S1 = lists:foldl(fun(Dir, Acc) ->
                             Q = queue_of(Dir, Acc),
                             case Q#q.waiter of
                                 {WFrom, MRef, TRef} ->
                                     erlang:demonitor(MRef, [flush]),
                                     cancel_timer(TRef),
                                     gen_server:reply(WFrom, closed),
                                     set_queue(Dir, Q#q{waiter = undefined}, Acc);
                                 undefined ->
                                     Acc
                             end
                     end, S#st{closed = true}, [python, erlang]),
    maybe_stop({reply, ok, S1});
handle_call(info, _From, #st{python = Q} = S) ->
    {reply, #{size => Q#q.bytes, max_size => S#st.max, closed => S#st.closed}, S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, normal, #st{}}.
handle_info({timeout, TRef, {timeout, Dir}}, S) ->
    Q = queue_of(Dir, S),
    case Q#q.waiter of
        {WFrom, MRef, TRef} ->
            erlang:demonitor(MRef, [flush]),
            gen_server:reply(WFrom, timeout),
            {noreply, set_queue(Dir, Q#q{waiter = undefined}, S)};
        _ ->
            {noreply, S}
    end;
handle_info({'DOWN', MRef, process, _, _}, S) ->
    %% A waiter gone (its receive was cancelled, its worker died), or the
    %% owner: then the channel ends and Python's receivers see it closed.
    case [Dir || Dir <- [python, erlang],
                 element(2, waiter_of(Dir, S)) =:= MRef] of
        [Dir] ->
            {_, _, TRef} = waiter_of(Dir, S),
            cancel_timer(TRef),
            {noreply, set_queue(Dir, (queue_of(Dir, S))#q{waiter = undefined}, S)};
        [] ->
            {stop, normal, S}
    end;
handle_info(_Msg, S) ->
    {noreply, S}.

%%%===================================================================
%%% Internals
%%%===================================================================

tag(channel) -> py_channel;
tag(byte_channel) -> py_byte_channel.

max_size(0) -> {ok, default_max_size()};
max_size(N) when is_integer(N), N > 0 -> {ok, N};
max_size(_) -> error.

take(Dir, S) ->
    Q = queue_of(Dir, S),
    case queue:out(Q#q.items) of
        {{value, {Size, Item}}, Rest} ->
            {{data, Item}, set_queue(Dir, Q#q{items = Rest, bytes = Q#q.bytes - Size}, S)};
        {empty, _} when S#st.closed ->
            {closed, S};
        {empty, _} ->
            {empty, S}
    end.

%% A closed channel whose queues are drained has nothing left to give:
%% it ends (its handle then reads as closed everywhere).
maybe_stop({reply, Answer, #st{closed = true, python = #q{bytes = 0, waiter = undefined},
                               erlang = #q{bytes = 0, waiter = undefined}} = S}) ->
    case queue:is_empty(S#st.python#q.items) andalso queue:is_empty(S#st.erlang#q.items) of
        true -> {stop, normal, Answer, S};
        false -> {reply, Answer, S}
    end;
maybe_stop(Reply) ->
    Reply.

queue_of(python, S) -> S#st.python;
queue_of(erlang, S) -> S#st.erlang.

waiter_of(Dir, S) ->
    case (queue_of(Dir, S))#q.waiter of
        undefined -> {undefined, undefined, undefined};
        W -> W
    end.

set_queue(python, Q, S) -> S#st{python = Q};
set_queue(erlang, Q, S) -> S#st{erlang = Q}.

cancel_timer(undefined) -> ok;
cancel_timer(TRef) -> _ = erlang:cancel_timer(TRef), ok.

%% A channel that is gone (closed and drained, or its owner exited) reads
%% as closed.
call(Pid, Msg) ->
    try gen_server:call(Pid, Msg, ?CALL_TIMEOUT)
    catch exit:_ -> {error, closed}
    end.

wait(Pid, Dir, Timeout) ->
    try gen_server:call(Pid, {wait, Dir, Timeout}, infinity)
    catch exit:_ -> closed
    end.
