%% Round trips without needless wake-ups: a caller whose last worker is idle
%% goes back to it (least-loaded still: nothing is less loaded), a busy one
%% is left for the least-loaded, and an elastic pool keeps its own rule.
-module(pyport_roundtrips_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [sequential_caller_keeps_its_worker, busy_worker_is_left, unavailable_worker_is_left].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 3}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

%% 200 sequential calls of one process: one worker (before: spread over
%% all three at random).
sequential_caller_keeps_its_worker(_Config) ->
    Pids = [Pid || _ <- lists:seq(1, 200), {ok, Pid} <- [py:call(os, getpid, [])]],
    ?assertEqual(200, length(Pids)),
    ?assertMatch([_], lists:usort(Pids)).

%% While the caller's last worker runs another request, the caller goes to
%% an idle one.
busy_worker_is_left(_Config) ->
    {ok, Mine} = py:call(os, getpid, []),
    Slot = get({pyport_request, last_slot, default}),
    Busy = pyport_test_util:async(fun() -> py:call(py:context(Slot), ?F, sleep, [1.0, done]) end),
    pyport_test_util:wait_until(fun() -> in_flight(Slot) =:= 1 end),
    {ok, Other} = py:call(os, getpid, []),
    ?assertNotEqual(Mine, Other),
    ?assertEqual({ok, done}, pyport_test_util:await(Busy)).

%% A slot that takes no least-loaded calls (recycling, or stuck in code
%% whose caller gave up) is left too.
unavailable_worker_is_left(_Config) ->
    {ok, Mine} = py:call(os, getpid, []),
    Slot = get({pyport_request, last_slot, default}),
    {ok, Info} = pyport_pool:info(default),
    pyport_pool:set_available(Info, Slot, false),
    try
        {ok, Other} = py:call(os, getpid, []),
        ?assertNotEqual(Mine, Other)
    after
        pyport_pool:set_available(Info, Slot, true)
    end.

in_flight(Slot) ->
    {ok, #{counters := C}} = pyport_pool:info(default),
    counters:get(C, Slot).
