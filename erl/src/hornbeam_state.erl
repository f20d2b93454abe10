%% @doc Hornbeam's `hornbeam_state' on pyport: a thin facade over {@link
%% pyport_state}, the table Python's `state_*' functions use too, so a key
%% Python sets is the key Erlang reads. Return shapes are Hornbeam's:
%% values and `undefined', not `{ok, V}'.
%%
%% pyport bounds the table (`max_state_entries'): storing a new key in a
%% full table raises `error({state_full, Max})' (Hornbeam's table had no
%% bound).
-module(hornbeam_state).

-export([get/1, set/2, delete/1, incr/2, decr/2, get_multi/1, set_multi/1, keys/0, keys/1,
         clear/0, size/0]).

%% @doc The value under `Key', or `undefined'.
-spec get(term()) -> term() | undefined.
get(Key) ->
    case pyport_state:fetch(Key) of
        {ok, Value} -> Value;
        {error, not_found} -> undefined
    end.

%% @doc Stores `Value' under `Key'.
-spec set(term(), term()) -> ok.
set(Key, Value) ->
    stored(pyport_state:store(Key, Value)).

%% @doc Removes `Key'.
-spec delete(term()) -> ok.
delete(Key) ->
    pyport_state:remove(Key).

%% @doc Adds `Delta' to the integer under `Key' (a missing key counts as
%% 0), atomically; returns the new value. A value that is not an integer
%% raises `badarg'.
-spec incr(term(), integer()) -> integer().
incr(Key, Delta) when is_integer(Delta) ->
    case pyport_state:incr(Key, Delta) of
        {ok, N} -> N;
        {error, not_an_integer} -> erlang:error(badarg, [Key, Delta]);
        {error, Full} -> erlang:error(Full, [Key, Delta])
    end;
incr(Key, Delta) ->
    erlang:error(badarg, [Key, Delta]).

%% @doc `incr(Key, -Delta)'.
-spec decr(term(), integer()) -> integer().
decr(Key, Delta) when is_integer(Delta) ->
    incr(Key, -Delta);
decr(Key, Delta) ->
    erlang:error(badarg, [Key, Delta]).

%% @doc The keys of `Keys' that hold a value, with their values (missing
%% keys are left out).
-spec get_multi([term()]) -> #{term() => term()}.
get_multi(Keys) when is_list(Keys) ->
    pyport_state:fetch_found(Keys).

%% @doc Stores every `{Key, Value}'.
-spec set_multi([{term(), term()}]) -> ok.
set_multi(Pairs) when is_list(Pairs) ->
    stored(pyport_state:store_multi(Pairs)).

%% @doc Every key, of any type.
-spec keys() -> [term()].
keys() ->
    pyport_state:keys().

%% @doc The binary keys that start with `Prefix'.
-spec keys(binary()) -> [binary()].
keys(Prefix) when is_binary(Prefix) ->
    pyport_state:keys(Prefix).

%% @doc Removes every key.
-spec clear() -> ok.
clear() ->
    pyport_state:clear().

%% @doc The number of keys.
-spec size() -> non_neg_integer().
size() ->
    pyport_state:size().

stored(ok) -> ok;
stored({error, Full}) -> erlang:error(Full).
