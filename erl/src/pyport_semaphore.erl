%% @doc A node-wide counting semaphore (`py_semaphore'): an `atomics'
%% counter, no process. The limit defaults to app env `max_concurrent',
%% else schedulers * 2 + 1, as erlang_python's.
-module(pyport_semaphore).

-export([acquire/1, release/0, max/0, current/0, set_max/1]).

-define(KEY, {?MODULE, counter}).
-define(DEFAULT_TIMEOUT, 30000).

%% @doc Takes a slot within `Timeout' ms (backing off 5 to 50 ms).
-spec acquire(term()) -> ok | {error, max_concurrent}.
acquire(Timeout) when is_integer(Timeout), Timeout > 0 ->
    try_acquire(erlang:monotonic_time(millisecond) + Timeout, 5);
acquire(_) ->
    acquire(?DEFAULT_TIMEOUT).

try_acquire(Deadline, Backoff) ->
    C = counter(),
    case atomics:add_get(C, 1, 1) =< max() of
        true ->
            ok;
        false ->
            atomics:sub(C, 1, 1),
            Left = Deadline - erlang:monotonic_time(millisecond),
            case Left > 0 of
                true ->
                    timer:sleep(min(Backoff, Left)),
                    try_acquire(Deadline, min(Backoff * 2, 50));
                false ->
                    {error, max_concurrent}
            end
    end.

%% @doc Gives a slot back (never below zero).
-spec release() -> ok.
release() ->
    C = counter(),
    case atomics:sub_get(C, 1, 1) < 0 of
        true -> atomics:add(C, 1, 1);
        false -> ok
    end.

-spec max() -> pos_integer().
max() ->
    case persistent_term:get({?MODULE, max}, undefined) of
        undefined ->
            case application:get_env(pyport, max_concurrent) of
                {ok, N} when is_integer(N), N > 0 -> N;
                _ -> erlang:system_info(schedulers) * 2 + 1
            end;
        N ->
            N
    end.

-spec current() -> non_neg_integer().
current() ->
    max(0, atomics:get(counter(), 1)).

-spec set_max(pos_integer()) -> ok.
set_max(N) when is_integer(N), N > 0 ->
    persistent_term:put({?MODULE, max}, N).

counter() ->
    case persistent_term:get(?KEY, undefined) of
        undefined ->
            %% The first use makes it; a racing first use keeps one.
            global:trans({?MODULE, self()},
                         fun() ->
                                 case persistent_term:get(?KEY, undefined) of
                                     undefined -> persistent_term:put(?KEY, atomics:new(1, [{signed, true}]));
                                     _ -> ok
                                 end
                         end, [node()]),
            persistent_term:get(?KEY);
        C ->
            C
    end.
