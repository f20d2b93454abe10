%% @doc erlang_python's `py_state': the shared state table behind
%% `py:state_*' and Python's `erlang.state_*'. A thin facade over {@link
%% pyport_state} (through `py', with the same terms).
-module(py_state).

-export([fetch/1, store/2, remove/1, keys/0, clear/0, incr/1, incr/2, decr/1, decr/2]).

-spec fetch(term()) -> {ok, term()} | {error, not_found}.
fetch(Key) -> py:state_fetch(Key).

-spec store(term(), term()) -> ok | {error, term()}.
store(Key, Value) -> py:state_store(Key, Value).

-spec remove(term()) -> ok.
remove(Key) -> py:state_remove(Key).

-spec keys() -> [term()].
keys() -> py:state_keys().

-spec clear() -> ok.
clear() -> py:state_clear().

-spec incr(term()) -> integer() | {error, term()}.
incr(Key) -> py:state_incr(Key).

-spec incr(term(), integer()) -> integer() | {error, term()}.
incr(Key, N) -> py:state_incr(Key, N).

-spec decr(term()) -> integer() | {error, term()}.
decr(Key) -> py:state_decr(Key).

-spec decr(term(), integer()) -> integer() | {error, term()}.
decr(Key, N) -> py:state_decr(Key, N).
