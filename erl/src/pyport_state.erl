%% @doc The shared state: an ETS table in the VM that every worker's Python
%% code and any Erlang process read and write (`state_get'/`state_set' in
%% Python, `py:state_fetch/1'/`py:state_store/2' in Erlang), so it is shared
%% by all workers and survives their crashes.
%%
%% The table is public with read and write concurrency: operations run in
%% the calling process (for Python, the worker's port owner), never through
%% this gen_server, which only owns the table (and the traces table of
%% {@link pyport_trace}). Counters use `ets:update_counter/4', so they are
%% exact under any concurrency.
%%
%% `max_state_entries' (application environment, a positive integer or
%% `infinity', the default) bounds the number of keys: storing a new key in
%% a full table fails with `{error, {state_full, Max}}'. Under concurrent
%% inserts of new keys the table may pass the limit by the number of
%% writers racing.
-module(pyport_state).
-behaviour(gen_server).

-export([start_link/0, store/2, fetch/1, remove/1, keys/0, keys/1, clear/0,
         incr/2, get_multi/1, max_entries/0]).
%% For hornbeam_state: the keys found, many at once, the size.
-export([fetch_found/1, store_multi/1, size/0]).
-export([init/1, handle_call/3, handle_cast/2]).

-define(TAB, pyport_state).

%% @doc Starts the owner of the tables (pyport_sup does, before any pool).
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stores `Value' under `Key'.
-spec store(term(), term()) -> ok | {error, {state_full, pos_integer()}}.
store(Key, Value) ->
    case room_for(Key) of
        ok ->
            true = ets:insert(?TAB, {Key, Value}),
            ok;
        Full ->
            Full
    end.

%% @doc The value under `Key'.
-spec fetch(term()) -> {ok, term()} | {error, not_found}.
fetch(Key) ->
    case ets:lookup(?TAB, Key) of
        [{_, Value}] -> {ok, Value};
        [] -> {error, not_found}
    end.

%% @doc The values under `Keys', `undefined' where there is none.
-spec get_multi([term()]) -> [term()].
get_multi(Keys) ->
    [case ets:lookup(?TAB, K) of [{_, V}] -> V; [] -> undefined end || K <- Keys].

%% @doc The keys of `Keys' that hold a value, with their values.
-spec fetch_found([term()]) -> #{term() => term()}.
fetch_found(Keys) ->
    lists:foldl(fun(K, Acc) ->
                        case ets:lookup(?TAB, K) of
                            [{_, V}] -> Acc#{K => V};
                            [] -> Acc
                        end
                end, #{}, Keys).

%% @doc Stores every `{Key, Value}' at once; none if the new keys among them
%% do not fit under `max_state_entries'.
-spec store_multi([{term(), term()}]) -> ok | {error, {state_full, pos_integer()}}.
store_multi(Pairs) when is_list(Pairs) ->
    New = length(lists:usort([K || {K, _} <- Pairs, not ets:member(?TAB, K)])),
    case max_entries() of
        Max when is_integer(Max), New > 0 ->
            case ets:info(?TAB, size) + New =< Max of
                true -> insert(Pairs);
                false -> {error, {state_full, Max}}
            end;
        _ ->
            insert(Pairs)
    end.

insert(Pairs) ->
    true = ets:insert(?TAB, [{K, V} || {K, V} <- Pairs]),
    ok.

%% @doc How many keys the table holds.
-spec size() -> non_neg_integer().
size() ->
    ets:info(?TAB, size).

%% @doc Removes `Key'.
-spec remove(term()) -> ok.
remove(Key) ->
    true = ets:delete(?TAB, Key),
    ok.

%% @doc Every key.
-spec keys() -> [term()].
keys() ->
    ets:select(?TAB, [{{'$1', '_'}, [], ['$1']}]).

%% @doc The binary keys that start with `Prefix', sorted.
-spec keys(binary()) -> [binary()].
keys(<<>>) ->
    lists:sort([K || K <- keys(), is_binary(K)]);
keys(Prefix) when is_binary(Prefix) ->
    N = byte_size(Prefix),
    lists:sort(ets:foldl(fun({K, _}, Acc) when is_binary(K), byte_size(K) >= N,
                                               binary_part(K, 0, N) =:= Prefix ->
                                 [K | Acc];
                            (_, Acc) ->
                                 Acc
                         end, [], ?TAB)).

%% @doc Removes every key.
-spec clear() -> ok.
clear() ->
    true = ets:delete_all_objects(?TAB),
    ok.

%% @doc Adds `Amount' to the integer under `Key' (a missing key counts as
%% 0) atomically, and returns the new value.
-spec incr(term(), integer()) ->
          {ok, integer()} | {error, not_an_integer | {state_full, pos_integer()}}.
incr(Key, Amount) when is_integer(Amount) ->
    try {ok, ets:update_counter(?TAB, Key, Amount)}
    catch
        error:badarg ->
            %% Either no such key (create it) or a value that is no integer.
            case ets:lookup(?TAB, Key) of
                [] ->
                    case room_for(Key) of
                        ok ->
                            try {ok, ets:update_counter(?TAB, Key, Amount, {Key, 0})}
                            catch error:badarg -> {error, not_an_integer}
                            end;
                        Full ->
                            Full
                    end;
                [_] ->
                    {error, not_an_integer}
            end
    end.

%% @doc The configured bound on the number of keys.
-spec max_entries() -> pos_integer() | infinity.
max_entries() ->
    persistent_term:get({?MODULE, max_entries}, infinity).

room_for(Key) ->
    case max_entries() of
        infinity ->
            ok;
        Max ->
            case ets:info(?TAB, size) < Max orelse ets:member(?TAB, Key) of
                true -> ok;
                false -> {error, {state_full, Max}}
            end
    end.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init([]) -> {ok, []} | {stop, term()}.
init([]) ->
    case pyport_config:max_state_entries() of
        {ok, Max} ->
            persistent_term:put({?MODULE, max_entries}, Max),
            _ = ets:new(?TAB, [named_table, public, set,
                               {read_concurrency, true}, {write_concurrency, true}]),
            pyport_trace:new_table(),
            {ok, []};
        {error, Reason} ->
            {stop, Reason}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), []) -> {reply, {error, unknown_call}, []}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), []) -> {noreply, []}.
handle_cast(_Msg, State) ->
    {noreply, State}.
