%% @doc Dicts shared by Erlang and every worker (`py:shared_dict_*',
%% Python's `erlang.SharedDict'). See docs/channels.md.
%%
%% Workers are separate OS processes, so a shared dict lives in the node:
%% an ETS table owned by a process of its own, itself owned by the Erlang
%% process that made it (both go when that process exits, or at
%% `destroy'). Reads go straight to the table; writes go through the owning
%% process, which keeps the dict within its limits on entries and bytes
%% (keys and values counted by their external size), so a worker filling
%% it gets an error, not the node's memory. Keys are binaries (a Python
%% `str' or `bytes'); values are terms (anything that converts both ways),
%% never pickles: a pickle one worker wrote would run code in the next.
-module(pyport_shared_dict).
-behaviour(gen_server).

-export([new/1, get/3, set/3, del/2, keys/1, destroy/1, info/1, py_request/4]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([handle/0]).

-define(DEFAULT_MAX_ENTRIES, 100000).
-define(DEFAULT_MAX_BYTES, 64 * 1024 * 1024).
-define(CALL_TIMEOUT, 5000).

-opaque handle() :: {py_shared_dict, pid(), ets:tid(), pyport_handles:token()}.
-type full() :: {shared_dict_full, entries | bytes, pos_integer()}.

-record(st, {tab :: ets:tid(), max_entries :: pos_integer(), max_bytes :: pos_integer(),
             bytes = 0 :: non_neg_integer()}).

%% @doc Makes a dict owned by the caller. Options: `max_entries' (default
%% app env `shared_dict_max_entries', 100000) and `max_bytes' (default app
%% env `shared_dict_max_bytes', 64 MiB).
-spec new(map()) -> {ok, handle()} | {error, term()}.
new(Opts) when is_map(Opts) ->
    case {limit(max_entries, Opts, ?DEFAULT_MAX_ENTRIES), limit(max_bytes, Opts, ?DEFAULT_MAX_BYTES)} of
        {{ok, MaxE}, {ok, MaxB}} ->
            Token = pyport_handles:token(),
            case gen_server:start(?MODULE, {self(), MaxE, MaxB, Token}, []) of
                {ok, Pid} ->
                    {ok, Tab} = gen_server:call(Pid, table),
                    {ok, {py_shared_dict, Pid, Tab, Token}};
                {error, _} = Error ->
                    Error
            end;
        {{error, _} = Error, _} -> Error;
        {_, {error, _} = Error} -> Error
    end.

%% @doc The value of `Key', or `Default'. A destroyed dict raises `badarg'.
-spec get(handle(), binary(), term()) -> term().
get({py_shared_dict, _, Tab, _}, Key, Default) when is_binary(Key) ->
    case ets:lookup(Tab, Key) of
        [{_, Value, _}] -> Value;
        [] -> Default
    end;
get(_, _, _) ->
    erlang:error(badarg).

%% @doc Sets `Key' to `Value' (within the dict's limits).
-spec set(handle(), binary(), term()) -> ok | {error, full() | {unsupported_term, term()}}.
set({py_shared_dict, Pid, _, _}, Key, Value) when is_binary(Key) ->
    try pyport_codec:encode(Value) of
        _ -> checked_call(Pid, {set, Key, Value})
    catch error:{unsupported_term, T} -> {error, {unsupported_term, T}}
    end;
set(_, _, _) ->
    erlang:error(badarg).

%% @doc Removes `Key' (ok if absent).
-spec del(handle(), binary()) -> ok.
del({py_shared_dict, Pid, _, _}, Key) when is_binary(Key) ->
    {ok, _} = checked_call(Pid, {del, Key}),
    ok;
del(_, _) ->
    erlang:error(badarg).

%% @doc The keys (unordered).
-spec keys(handle()) -> [binary()].
keys({py_shared_dict, _, Tab, _}) ->
    ets:select(Tab, [{{'$1', '_', '_'}, [], ['$1']}]);
keys(_) ->
    erlang:error(badarg).

%% @doc Frees the dict now (idempotent). Later use raises `badarg' in
%% Erlang and `RuntimeError' in Python.
-spec destroy(handle()) -> ok.
destroy({py_shared_dict, Pid, _, _}) ->
    try gen_server:call(Pid, destroy, ?CALL_TIMEOUT)
    catch exit:_ -> ok
    end;
destroy(_) ->
    erlang:error(badarg).

%% @doc Entries, bytes and the limits.
-spec info(handle()) -> #{entries := non_neg_integer(), bytes := non_neg_integer(),
                          max_entries := pos_integer(), max_bytes := pos_integer()}.
info({py_shared_dict, Pid, _, _}) ->
    checked_call(Pid, info).

%% @doc Serves a Python request on the dict (see pyport_handles). `get'
%% answers `{found, V}' or `missing'; `del' whether the key was there.
-spec py_request(pid(), ets:tid(), term(), [term()]) -> {reply, pyport_callback:result()}.
py_request(_Pid, Tab, <<"get">>, [Key]) when is_binary(Key) ->
    {reply, try ets:lookup(Tab, Key) of
                [{_, Value, _}] -> {ok, {found, Value}};
                [] -> {ok, missing}
            catch error:badarg -> destroyed()
            end};
py_request(_Pid, Tab, <<"keys">>, []) ->
    {reply, try {ok, ets:select(Tab, [{{'$1', '_', '_'}, [], ['$1']}])}
            catch error:badarg -> destroyed()
            end};
py_request(Pid, _Tab, <<"set">>, [Key, Value]) when is_binary(Key) ->
    {reply, case call(Pid, {set, Key, Value}) of
                ok -> {ok, none};
                {error, {shared_dict_full, What, Max}} = Full ->
                    {error, <<"ValueError">>,
                     io_lib:format("the shared dict is full: it holds its most ~ts (~b)",
                                   [What, Max]), element(2, Full)};
                {error, gone} -> destroyed()
            end};
py_request(Pid, _Tab, <<"del">>, [Key]) when is_binary(Key) ->
    {reply, case call(Pid, {del, Key}) of
                {ok, Found} -> {ok, Found};
                {error, gone} -> destroyed()
            end};
py_request(Pid, _Tab, <<"destroy">>, []) ->
    _ = call(Pid, destroy),
    {reply, {ok, none}};
py_request(_Pid, _Tab, Verb, Args) when Verb =:= <<"get">>; Verb =:= <<"set">>;
                                         Verb =:= <<"del">> ->
    {reply, {error, <<"TypeError">>,
             io_lib:format("shared dict keys are str or bytes, not ~0tp",
                           [hd(Args ++ [none])], [{chars_limit, 200}]), bad_key}};
py_request(_Pid, _Tab, Verb, Args) ->
    {reply, {error, <<"ValueError">>,
             io_lib:format("unknown shared dict request ~0tp with ~0tp", [Verb, Args],
                           [{chars_limit, 200}]), bad_request}}.

destroyed() ->
    {error, <<"ErlangError">>, <<"the shared dict was destroyed">>, destroyed}.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init({pid(), pos_integer(), pos_integer(), pyport_handles:token()}) ->
          {ok, #st{}} | {stop, term()}.
init({Owner, MaxE, MaxB, Token}) ->
    Tab = ets:new(?MODULE, [set, protected, {read_concurrency, true}]),
    case pyport_handles:add(Token, shared_dict, Tab) of
        ok ->
            _ = erlang:monitor(process, Owner),
            {ok, #st{tab = Tab, max_entries = MaxE, max_bytes = MaxB}};
        {error, Why} ->
            {stop, Why}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #st{}) ->
          {reply, term(), #st{}} | {stop, normal, ok, #st{}}.
handle_call(table, _From, S) ->
    {reply, {ok, S#st.tab}, S};
handle_call({set, Key, Value}, _From, #st{tab = Tab} = S) ->
    Size = byte_size(Key) + erlang:external_size(Value),
    {Old, New} = case ets:lookup(Tab, Key) of
                     [{_, _, OldSize}] -> {OldSize, false};
                     [] -> {0, true}
                 end,
    Bytes = S#st.bytes - Old + Size,
    Entries = ets:info(Tab, size),
    if
        New, Entries >= S#st.max_entries ->
            {reply, {error, {shared_dict_full, entries, S#st.max_entries}}, S};
        Bytes > S#st.max_bytes ->
            {reply, {error, {shared_dict_full, bytes, S#st.max_bytes}}, S};
        true ->
            true = ets:insert(Tab, {Key, Value, Size}),
            {reply, ok, S#st{bytes = Bytes}}
    end;
handle_call({del, Key}, _From, #st{tab = Tab} = S) ->
    case ets:take(Tab, Key) of
        [{_, _, Size}] -> {reply, {ok, true}, S#st{bytes = S#st.bytes - Size}};
        [] -> {reply, {ok, false}, S}
    end;
handle_call(info, _From, #st{tab = Tab} = S) ->
    {reply, #{entries => ets:info(Tab, size), bytes => S#st.bytes,
              max_entries => S#st.max_entries, max_bytes => S#st.max_bytes}, S};
handle_call(destroy, _From, S) ->
    {stop, normal, ok, S};
handle_call(_Request, _From, S) ->
    {reply, {error, unknown_call}, S}.

%% @private
-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, normal, #st{}}.
handle_info({'DOWN', _, process, _, _}, S) ->
    {stop, normal, S};                          % the owner exited
handle_info(_Msg, S) ->
    {noreply, S}.

%%%===================================================================
%%% Internals
%%%===================================================================

limit(Key, Opts, Default) ->
    case maps:get(Key, Opts, app_default(Key, Default)) of
        N when is_integer(N), N > 0 -> {ok, N};
        Other -> {error, {invalid_option, Key, Other}}
    end.

app_default(Key, Default) ->
    EnvKey = case Key of
                 max_entries -> shared_dict_max_entries;
                 max_bytes -> shared_dict_max_bytes
             end,
    case application:get_env(pyport, EnvKey) of
        {ok, N} when is_integer(N), N > 0 -> N;
        _ -> Default
    end.

%% From Erlang callers: a destroyed dict raises badarg, like a table.
checked_call(Pid, Msg) ->
    try gen_server:call(Pid, Msg, ?CALL_TIMEOUT)
    catch exit:_ -> erlang:error(badarg)
    end.

%% From a worker's owner, which must not crash.
call(Pid, Msg) ->
    try gen_server:call(Pid, Msg, ?CALL_TIMEOUT)
    catch exit:_ -> {error, gone}
    end.
