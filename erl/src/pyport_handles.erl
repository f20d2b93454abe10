%% @doc The node-side objects Python reaches through a handle: channels,
%% byte channels, buffers and shared dicts (docs/channels.md).
%%
%% Each object is a process of its own, made by an Erlang caller (Python
%% never makes one) and owned by it: it ends when its owner exits, and
%% with this server (so at pyport's stop). Python
%% holds only the object's token, 128 random bits that stand for it: a
%% worker reaches the objects whose handle it was given, and no other (it
%% cannot guess a token, and a pid it names is never messaged). This
%% server owns the table from token to object and forgets an object when
%% its process ends, so nothing outlives it.
%%
%% Python's requests arrive as REQUEST `handle' `[Verb, Token, Args]'
%% (proto/PROTOCOL.md) and are dispatched here by the object's kind.
-module(pyport_handles).
-behaviour(gen_server).

-export([start_link/0, add/3, lookup/1, token/0, request/3, count/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([kind/0, token/0]).

-define(TAB, ?MODULE).

-type kind() :: channel | byte_channel | buffer | shared_dict.
-type token() :: binary().
%% What a REQUEST `handle' needs: an answer now, or a wait in a process of
%% its own (pyport_callback runs it, counted against `max_callbacks').
-type action() :: {reply, pyport_callback:result()}
                | {wait, unicode:chardata(), fun(() -> pyport_callback:result())}.

%% @doc Starts the table's owner (pyport_sup does).
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc A new unguessable token (32 hex digits: a Python `str').
-spec token() -> token().
token() ->
    Bytes = try crypto:strong_rand_bytes(16)
            catch error:_ -> rand:bytes(16)      % no crypto in this release
            end,
    binary:encode_hex(Bytes).

%% @doc Makes `Token' stand for the calling object process, of `Kind',
%% with `Extra' (what Python's requests need besides the pid).
-spec add(token(), kind(), term()) -> ok | {error, pyport_not_started}.
add(Token, Kind, Extra) ->
    try gen_server:call(?MODULE, {add, Token, Kind, self(), Extra})
    catch exit:{noproc, _} -> {error, pyport_not_started}
    end.

%% @doc The object a token stands for.
-spec lookup(term()) -> {ok, kind(), pid(), term()} | error.
lookup(Token) when is_binary(Token) ->
    try ets:lookup(?TAB, Token) of
        [{_, Kind, Pid, Extra}] -> {ok, Kind, Pid, Extra};
        [] -> error
    catch error:badarg -> error
    end;
lookup(_) ->
    error.

%% @doc How many objects exist (tests and operators).
-spec count() -> non_neg_integer().
count() ->
    ets:info(?TAB, size).

%% @doc Serves Python's REQUEST `handle' `[Verb, Token, Args]' from a
%% worker. An unknown token (closed and drained, destroyed, owner gone, or
%% never made) is a `ValueError' with reason `unknown_handle'.
-spec request(term(), term(), [term()]) -> action().
request(Verb, Token, Args) ->
    case lookup(Token) of
        {ok, channel, Pid, _} -> pyport_channel:py_request(Pid, channel, Verb, Args);
        {ok, byte_channel, Pid, _} -> pyport_channel:py_request(Pid, byte_channel, Verb, Args);
        {ok, buffer, Pid, _} -> pyport_buffer:py_request(Pid, Verb, Args);
        {ok, shared_dict, Pid, Tab} -> pyport_shared_dict:py_request(Pid, Tab, Verb, Args);
        error -> {reply, unknown_handle()}
    end.

unknown_handle() ->
    {error, <<"ValueError">>,
     <<"no such channel, buffer or shared dict (closed, destroyed, or its owner exited)">>,
     unknown_handle}.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init([]) -> {ok, #{reference() => token()}}.
init([]) ->
    %% Objects are linked: they end with this server (at pyport's stop, or
    %% if it fails and its table is lost); their own ends are 'DOWN's.
    process_flag(trap_exit, true),
    _ = ets:new(?TAB, [named_table, protected, set, {read_concurrency, true}]),
    {ok, #{}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({add, Token, Kind, Pid, Extra}, _From, Refs) ->
    true = ets:insert_new(?TAB, {Token, Kind, Pid, Extra}),
    true = link(Pid),
    {reply, ok, Refs#{erlang:monitor(process, Pid) => Token}};
handle_call(_Request, _From, Refs) ->
    {reply, {error, unknown_call}, Refs}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, Refs) ->
    {noreply, Refs}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'DOWN', Ref, process, _, _}, Refs) ->
    case maps:take(Ref, Refs) of
        {Token, Rest} ->
            ets:delete(?TAB, Token),
            {noreply, Rest};
        error ->
            {noreply, Refs}
    end;
handle_info({'EXIT', _, _}, Refs) ->
    {noreply, Refs};
handle_info(_Msg, Refs) ->
    {noreply, Refs}.
