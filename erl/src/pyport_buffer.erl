%% @doc A byte stream Erlang writes and Python reads as a file
%% (`erlang.PyBuffer'): the logic behind `py_buffer', e.g. a request body
%% streamed to a WSGI app. See docs/channels.md.
%%
%% The bytes wait in this process, owned by the Erlang process that made
%% it (it ends when the owner exits). At most `max_size' unread bytes are
%% held: a write that does not fit waits (backpressure) until Python reads,
%% up to the writer's timeout. Python pulls with `read' requests; a read
%% that finds nothing waits in a process of the worker's callback keeper
%% until bytes come or the writer closes (end of file).
-module(pyport_buffer).
-behaviour(gen_server).

-export([new/1, write/3, close/1, info/1, py_request/3, default_max_size/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([handle/0]).

-define(DEFAULT_MAX_SIZE, 8 * 1024 * 1024).
%% The most bytes one read answer carries (well under any max_frame_size).
-define(MAX_READ, 1024 * 1024).
-define(CALL_TIMEOUT, 5000).

-opaque handle() :: {py_buffer, pid(), pyport_handles:token()}.

-record(st, {max :: pos_integer(),
             content_length :: non_neg_integer() | undefined,
             chunks = queue:new() :: queue:queue(binary()),
             size = 0 :: non_neg_integer(),         % unread bytes held
             written = 0 :: non_neg_integer(),      % all bytes accepted
             eof = false :: boolean(),              % the writer closed
             py_closed = false :: boolean(),        % Python closed it
             reader :: undefined | {{gen_server:from(), non_neg_integer()}, reference()},
             %% Writes waiting for room, oldest first.
             writers = queue:new() :: queue:queue({gen_server:from(), binary(),
                                                  reference() | undefined})}).

%% @doc Makes a buffer owned by the caller. Options: `content_length'
%% (what the body will hold, if known: a write past it is refused) and
%% `max_size' (unread bytes held; default app env `buffer_max_size', 8 MiB).
-spec new(map()) -> {ok, handle()} | {error, term()}.
new(Opts) when is_map(Opts) ->
    case {maps:get(max_size, Opts, default_max_size()), maps:get(content_length, Opts, undefined)} of
        {Max, _} when not is_integer(Max); Max =< 0 ->
            {error, {invalid_option, max_size, Max}};
        {_, Len} when Len =/= undefined, not (is_integer(Len) andalso Len >= 0) ->
            {error, {invalid_option, content_length, Len}};
        {Max, Len} ->
            Token = pyport_handles:token(),
            case gen_server:start(?MODULE, {self(), Max, Len, Token}, []) of
                {ok, Pid} -> {ok, {py_buffer, Pid, Token}};
                {error, _} = Error -> Error
            end
    end.

%% @doc The default of `max_size'.
-spec default_max_size() -> pos_integer().
default_max_size() ->
    case application:get_env(pyport, buffer_max_size) of
        {ok, N} when is_integer(N), N > 0 -> N;
        _ -> ?DEFAULT_MAX_SIZE
    end.

%% @doc Appends `Bin', waiting up to `Timeout' for room.
-spec write(handle(), iodata(), timeout()) ->
          ok | {error, write_failed | invalid_buffer | timeout
                | {content_length_exceeded, non_neg_integer()}}.
write({py_buffer, Pid, _}, Data, Timeout) ->
    try iolist_to_binary(Data) of
        Bin ->
            try gen_server:call(Pid, {write, Bin, Timeout}, infinity)
            catch exit:_ -> {error, invalid_buffer}
            end
    catch error:badarg -> {error, invalid_buffer}
    end;
write(_, _, _) ->
    {error, invalid_buffer}.

%% @doc End of file for Python's readers, once they read what is held.
-spec close(handle()) -> ok.
close({py_buffer, Pid, _}) ->
    _ = call(Pid, close),
    ok.

%% @doc Unread bytes, bytes written, and whether it is closed.
-spec info(handle()) -> #{size := non_neg_integer(), written := non_neg_integer(),
                          max_size := pos_integer(), eof := boolean(),
                          closed_by_python := boolean()} | {error, invalid_buffer}.
info({py_buffer, Pid, _}) ->
    case call(Pid, info) of
        {error, gone} -> {error, invalid_buffer};
        Info -> Info
    end.

%% @doc Serves a Python request on buffer `Pid' (see pyport_handles):
%% `read' `[Max, Wait]' answers `{Bytes, Eof}' (waits for a byte or end of
%% file when `Wait' and nothing is there); `close' `[]'.
-spec py_request(pid(), term(), [term()]) ->
          {reply, pyport_callback:result()}
          | {wait, unicode:chardata(), fun(() -> pyport_callback:result())}.
py_request(Pid, <<"read">>, [Max0, Wait]) when is_integer(Max0), is_boolean(Wait) ->
    Max = case Max0 < 0 orelse Max0 > ?MAX_READ of
              true -> ?MAX_READ;
              false -> Max0
          end,
    case call(Pid, {read, Max}) of
        {{bytes, <<>>}, false} when Wait, Max > 0 ->
            {wait, <<"a buffer read">>,
             fun() ->
                     case call(Pid, {wait_read, Max}, infinity) of
                         {error, gone} -> gone();
                         reader_exists ->
                             {error, <<"RuntimeError">>,
                              <<"another read of this buffer is waiting">>, reader_exists};
                         Answer -> {ok, Answer}
                     end
             end};
        {error, gone} ->
            {reply, gone()};
        Answer ->
            {reply, {ok, Answer}}
    end;
py_request(Pid, <<"close">>, []) ->
    _ = call(Pid, py_close),
    {reply, {ok, none}};
py_request(_Pid, Verb, Args) ->
    {reply, {error, <<"ValueError">>,
             io_lib:format("unknown buffer request ~0tp with ~0tp", [Verb, Args],
                           [{chars_limit, 200}]),
             bad_request}}.

gone() ->
    {error, <<"ValueError">>, <<"the buffer is gone (its owner exited)">>, unknown_handle}.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init({pid(), pos_integer(), non_neg_integer() | undefined, pyport_handles:token()}) ->
          {ok, #st{}} | {stop, term()}.
init({Owner, Max, Len, Token}) ->
    case pyport_handles:add(Token, buffer, undefined) of
        ok ->
            _ = erlang:monitor(process, Owner),
            {ok, #st{max = Max, content_length = Len}};
        {error, Why} ->
            {stop, Why}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) ->
          {reply, term(), #st{}} | {noreply, #st{}}.
handle_call({write, _Bin, _Timeout}, _From, #st{py_closed = true} = S) ->
    {reply, {error, write_failed}, S};
handle_call({write, _Bin, _Timeout}, _From, #st{eof = true} = S) ->
    {reply, {error, write_failed}, S};
handle_call({write, Bin, _Timeout}, _From, #st{content_length = Len, written = W} = S)
  when Len =/= undefined, W + byte_size(Bin) > Len ->
    {reply, {error, {content_length_exceeded, Len}}, S};
handle_call({write, Bin, Timeout}, From, S) ->
    TRef = case Timeout of
               infinity -> undefined;
               _ -> erlang:start_timer(Timeout, self(), {write_timeout, From})
           end,
    %% Counted as written now: a later write cannot pass content_length
    %% while this one waits.
    S1 = S#st{writers = queue:in({From, Bin, TRef}, S#st.writers),
              written = S#st.written + byte_size(Bin)},
    {noreply, serve_reader(admit(S1))};
handle_call(close, _From, S) ->
    {reply, ok, serve_reader(S#st{eof = true})};
handle_call(py_close, _From, S) ->
    %% Python will read no more: held bytes go, waiting writers fail.
    [reply_writer(W, {error, write_failed}) || W <- queue:to_list(S#st.writers)],
    {reply, ok, S#st{py_closed = true, chunks = queue:new(), size = 0,
                     writers = queue:new()}};
handle_call({read, Max}, _From, S) ->
    {Answer, S1} = read(Max, S),
    {reply, Answer, S1};
handle_call({wait_read, Max}, {Pid, _} = From, S) ->
    case read(Max, S) of
        {{{bytes, <<>>}, false}, S1} when S1#st.reader =:= undefined ->
            {noreply, S1#st{reader = {{From, Max}, erlang:monitor(process, Pid)}}};
        {{{bytes, <<>>}, false}, S1} ->
            {reply, reader_exists, S1};
        {Answer, S1} ->
            {reply, Answer, S1}
    end;
handle_call(info, _From, S) ->
    {reply, #{size => S#st.size, written => S#st.written, max_size => S#st.max,
              eof => S#st.eof, closed_by_python => S#st.py_closed}, S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, normal, #st{}}.
handle_info({timeout, TRef, {write_timeout, From}}, S) ->
    case lists:partition(fun({F, _, T}) -> F =:= From andalso T =:= TRef end,
                         queue:to_list(S#st.writers)) of
        {[{_, Rest, _}], Others} ->
            gen_server:reply(From, {error, timeout}),
            %% What was not admitted was never written.
            {noreply, S#st{writers = queue:from_list(Others),
                           written = S#st.written - byte_size(Rest)}};
        {[], _} ->
            {noreply, S}
    end;
handle_info({'DOWN', MRef, process, _, _}, #st{reader = {_, MRef}} = S) ->
    {noreply, S#st{reader = undefined}};
handle_info({'DOWN', _, process, _, _}, S) ->
    %% The owner exited: the buffer goes with it.
    [reply_writer(W, {error, invalid_buffer}) || W <- queue:to_list(S#st.writers)],
    {stop, normal, S};
handle_info(_Msg, S) ->
    {noreply, S}.

%%%===================================================================
%%% Internals
%%%===================================================================

%% Moves waiting writes into the buffer while there is room (a write
%% larger than the room goes in pieces).
admit(#st{size = Size, max = Max} = S) when Size >= Max ->
    S;
admit(S) ->
    case queue:out(S#st.writers) of
        {empty, _} ->
            S;
        {{value, {From, Bin, TRef}}, Rest} ->
            Room = S#st.max - S#st.size,
            case byte_size(Bin) =< Room of
                true ->
                    reply_writer({From, Bin, TRef}, ok),
                    admit(S#st{writers = Rest, chunks = queue:in(Bin, S#st.chunks),
                               size = S#st.size + byte_size(Bin)});
                false ->
                    <<Part:Room/binary, More/binary>> = Bin,
                    S#st{writers = queue:in_r({From, More, TRef}, Rest),
                         chunks = queue:in(Part, S#st.chunks), size = S#st.max}
            end
    end.

reply_writer({From, _, TRef}, Answer) ->
    case TRef of
        undefined -> ok;
        _ -> _ = erlang:cancel_timer(TRef), ok
    end,
    gen_server:reply(From, Answer).

%% Up to Max bytes of what is held, and whether the end has been reached.
read(Max, S) ->
    {Parts, Chunks, Taken} = take(Max, S#st.chunks, [], 0),
    S1 = admit(S#st{chunks = Chunks, size = S#st.size - Taken}),
    Bin = iolist_to_binary(lists:reverse(Parts)),
    Eof = S1#st.eof andalso S1#st.size =:= 0 andalso queue:is_empty(S1#st.writers),
    %% bytes in Python even when they are valid UTF-8
    {{{bytes, Bin}, Eof}, S1}.

take(0, Chunks, Acc, N) ->
    {Acc, Chunks, N};
take(Max, Chunks, Acc, N) ->
    case queue:out(Chunks) of
        {empty, _} ->
            {Acc, Chunks, N};
        {{value, C}, Rest} when byte_size(C) =< Max ->
            take(Max - byte_size(C), Rest, [C | Acc], N + byte_size(C));
        {{value, C}, Rest} ->
            <<Part:Max/binary, More/binary>> = C,
            {[Part | Acc], queue:in_r(More, Rest), N + Max}
    end.

%% A waiting reader gets what came, or the end of file.
serve_reader(#st{reader = undefined} = S) ->
    S;
serve_reader(#st{reader = {{From, Max}, MRef}} = S) ->
    case read(Max, S) of
        {{{bytes, <<>>}, false}, S1} ->
            S1;
        {Answer, S1} ->
            erlang:demonitor(MRef, [flush]),
            gen_server:reply(From, Answer),
            S1#st{reader = undefined}
    end.

call(Pid, Msg) ->
    call(Pid, Msg, ?CALL_TIMEOUT).

call(Pid, Msg, Timeout) ->
    try gen_server:call(Pid, Msg, Timeout)
    catch exit:_ -> {error, gone}
    end.
