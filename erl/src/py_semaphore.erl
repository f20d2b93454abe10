%% @doc erlang_python's `py_semaphore': a node-wide counter of concurrent
%% slots. In pyport it does not gate `py:call' (each pool bounds its own
%% requests in flight with `max_inflight', see docs/pools.md): it is there
%% for code that takes and releases slots itself. The logic is {@link
%% pyport_semaphore}.
-module(py_semaphore).

-export([acquire/1, release/0, max_concurrent/0, current/0, set_max_concurrent/1]).

%% @doc Takes a slot, waiting up to `Timeout' ms (a non-positive or invalid
%% timeout means 30000).
-spec acquire(term()) -> ok | {error, max_concurrent}.
acquire(Timeout) ->
    pyport_semaphore:acquire(Timeout).

%% @doc Gives a slot back.
-spec release() -> ok.
release() ->
    pyport_semaphore:release().

-spec max_concurrent() -> pos_integer().
max_concurrent() ->
    pyport_semaphore:max().

-spec current() -> non_neg_integer().
current() ->
    pyport_semaphore:current().

-spec set_max_concurrent(pos_integer()) -> ok.
set_max_concurrent(N) ->
    pyport_semaphore:set_max(N).
