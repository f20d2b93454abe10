%% The Erlang processes that serve Python's calls into Erlang
%% (pyport_callback_keeper): none outlives the caller that gave up on it,
%% every way one fails reaches Python as an exception at once, and one
%% worker cannot have more than `max_callbacks' of them.
%%
%% Python helpers: pyport_callbacks_SUITE_data/cb_funcs.py.
-module(pyport_callbacks_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, cb_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [timed_out_callers_leave_no_process, cancelled_task_leaves_no_process,
     killed_callback_raises_at_once, crashed_callback_raises_at_once,
     oversize_answer_names_the_size, callback_limit, local_rpc_call_ends_at_its_timeout, worker_death_ends_its_callbacks,
     owner_death_ends_its_callbacks].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_callbacks_SUITE_data"),
    ok = pyport_test_util:start(#{default => #{size => 1, python_path => [Data],
                                               kill_after => 2000}}),
    [{data, Data} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Self = self(),
    ok = py:register_function(hang, fun(_) -> receive after infinity -> ok end end),
    ok = py:register_function(victim, fun(_) -> Self ! {victim, self()},
                                                receive after infinity -> ok end end),
    ok = py:register_function(slow, fun(_) -> timer:sleep(300), done end),
    ok = py:register_function(one, fun(_) -> 1 end),
    Config.

end_per_testcase(_Case, _Config) ->
    [py:unregister_function(N) || N <- [hang, victim, slow, big, one]],
    pyport_test_util:stop_other_pools(),
    ok.

%%%===================================================================
%%% Cases
%%%===================================================================

%% 100 erlang.call whose Python caller timed out (interrupted): the node
%% ends each serving process; the process count comes back to where it was.
timed_out_callers_leave_no_process(_Config) ->
    %% The module is imported without a deadline (KeyboardInterrupt in the
    %% middle of an import would leave it half-imported).
    ?assertEqual({ok, 1}, py:call(?F, call, [one])),
    %% One first, so that everything a call starts once exists already.
    {error, timeout} = py:call(?F, call, [hang], #{}, #{timeout => 50}),
    pyport_test_util:wait_until(fun() -> keeper_count(default) =:= 0 end),
    Before = length(processes()),
    OsPid = os_pid(default),
    [{error, timeout} = py:call(?F, call, [hang], #{}, #{timeout => 20}) || _ <- lists:seq(1, 100)],
    pyport_test_util:wait_until(fun() -> keeper_count(default) =:= 0 end),
    %% Python gave up (KeyboardInterrupt) and said so: the worker was not
    %% killed, which would also have ended them.
    ?assertEqual(OsPid, os_pid(default)),
    pyport_test_util:wait_until(fun() -> length(processes()) =< Before end),
    ct:log("processes: ~b before, ~b after 100 abandoned calls", [Before, length(processes())]),
    %% The worker serves, and its calls into Erlang work.
    ?assertEqual({ok, 1}, py:call(?F, call, [one])).

%% An asyncio task awaiting erlang.async_call is cancelled: same.
cancelled_task_leaves_no_process(_Config) ->
    Before = length(processes()),
    ?assertEqual({ok, <<"cancelled">>}, py:call(?F, async_call_cancelled, [victim, 0.1])),
    receive {victim, Pid} -> ok after 5000 -> Pid = ct:fail(never_called) end,
    pyport_test_util:wait_until(fun() -> not is_process_alive(Pid) end),
    pyport_test_util:wait_until(fun() -> keeper_count(default) =:= 0 end),
    pyport_test_util:wait_until(fun() -> length(processes()) =< Before end).

%% The process serving erlang.call is killed: Python raises at once, though
%% its call has no timeout.
killed_callback_raises_at_once(_Config) ->
    Ref = pyport_test_util:async(
            fun() -> py:call(?F, call_caught, [victim], #{}, #{timeout => infinity}) end),
    receive {victim, Pid} -> exit(Pid, kill) after 5000 -> ct:fail(never_called) end,
    {ok, [<<"ErlangError">>, Msg, Reason, Secs]} = pyport_test_util:await(Ref),
    ?assertEqual({exit, killed}, Reason),
    ?assertEqual(<<"the Erlang process running erlang.call('victim') exited: killed">>, Msg),
    ?assert(Secs < 2.0).

%% Any other exit without an answer, too.
crashed_callback_raises_at_once(_Config) ->
    Ref = pyport_test_util:async(
            fun() -> py:call(?F, call_caught, [victim], #{}, #{timeout => infinity}) end),
    receive {victim, Pid} -> exit(Pid, {shutdown, gone}) after 5000 -> ct:fail(never_called) end,
    {ok, [<<"ErlangError">>, _Msg, Reason, _Secs]} = pyport_test_util:await(Ref),
    ?assertEqual({exit, {shutdown, gone}}, Reason).

%% An answer the worker could not read: an error naming its size, at once.
oversize_answer_names_the_size(Config) ->
    {ok, _} = pyport:start_pool(small, #{size => 1, max_frame_size => 65536,
                                         python_path => [?config(data, Config)]}),
    ok = py:register_function(big, fun(_) -> binary:copy(<<"x">>, 100000) end),
    {ok, [<<"ValueError">>, Msg, {frame_too_large, Size, 65536}, Secs]} =
        py:call(?F, call_caught, [big], #{}, #{pool => small, timeout => infinity}),
    ?assert(Size > 100000),
    ?assertEqual(iolist_to_binary(io_lib:format("the answer is ~b bytes encoded, over the worker's "
                                                "max_frame_size (65536 bytes)", [Size])), Msg),
    ?assert(Secs < 2.0),
    %% An answer made inline (a state value) is checked the same way.
    ok = pyport_state:store(<<"huge">>, binary:copy(<<"y">>, 70000)),
    {ok, [<<"ValueError">>, _, {frame_too_large, _, 65536}]} =
        py:call(?F, state_get_caught, [<<"huge">>], #{}, #{pool => small}),
    pyport_state:remove(<<"huge">>),
    %% The worker carries on.
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, #{pool => small})).

%% At most max_callbacks at once per worker; past it, an error at once.
callback_limit(Config) ->
    {ok, _} = pyport:start_pool(bounded, #{size => 1, max_callbacks => 5,
                                           python_path => [?config(data, Config)]}),
    {ok, Results} = py:call(?F, many_async_calls, [slow, 8], #{}, #{pool => bounded}),
    ct:log("~p", [Results]),
    ?assertEqual(5, length([R || R <- Results, R =:= done])),
    Refused = [R || R <- Results, R =/= done],
    ?assertEqual(3, length(Refused)),
    [?assertMatch([<<"ErlangError">>, <<"erlang.call('slow') refused: this worker has 5 Erlang "
                                        "callback processes running already (max_callbacks)">>], R)
     || R <- Refused],
    %% Once they end, there is room again.
    pyport_test_util:wait_until(fun() -> keeper_count(bounded) =:= 0 end),
    ?assertEqual({ok, [done, done]}, py:call(?F, many_async_calls, [slow, 2], #{}, #{pool => bounded})).

%% A local rpc_call runs in its callback process, which ends at the
%% call's timeout: nothing is left running the function.
local_rpc_call_ends_at_its_timeout(_Config) ->
    Before = length(processes()),
    {ok, [<<"RpcTimeoutError">>, Msg, Secs]} = py:call(?F, local_rpc_timeout, [100]),
    ?assertEqual(iolist_to_binary(io_lib:format("rpc_call timer:sleep on ~p did not answer "
                                                "within 100 ms", [node()])), Msg),
    ?assert(Secs < 2.0),
    ?assertEqual(0, keeper_count(default)),
    pyport_test_util:wait_until(fun() -> length(processes()) =< Before end).

%% The worker's OS process dies: the processes serving it end.
worker_death_ends_its_callbacks(_Config) ->
    Ref = pyport_test_util:async(fun() -> py:call(?F, call, [victim], #{}, #{timeout => 10000}) end),
    receive {victim, Pid} -> ok after 5000 -> Pid = ct:fail(never_called) end,
    OsPid = os_pid(default),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    ?assertMatch({error, {worker_exited, _}}, pyport_test_util:await(Ref)),
    pyport_test_util:wait_until(fun() -> not is_process_alive(Pid) end),
    ?assertEqual(0, keeper_count(default)).

%% The worker's owner (gen_server) is killed: the processes serving its
%% worker end with it.
owner_death_ends_its_callbacks(Config) ->
    {ok, _} = pyport:start_pool(doomed, #{size => 1, python_path => [?config(data, Config)]}),
    _ = pyport_test_util:async(fun() -> py:call(?F, call, [victim], #{}, #{pool => doomed}) end),
    receive {victim, Pid} -> ok after 5000 -> Pid = ct:fail(never_called) end,
    {ok, Owner} = pyport_pool:worker(element(2, pyport_pool:info(doomed)), 1),
    Keeper = keeper(doomed),
    exit(Owner, kill),
    pyport_test_util:wait_until(fun() -> not is_process_alive(Pid) end),
    pyport_test_util:wait_until(fun() -> not is_process_alive(Keeper) end).

%%%===================================================================
%%% Helpers
%%%===================================================================

%% The keeper of slot 1 of Pool: the owner's linked pyport_callback_keeper.
keeper(Pool) ->
    {ok, Info} = pyport_pool:info(Pool),
    {ok, Owner} = pyport_pool:worker(Info, 1),
    {links, Links} = process_info(Owner, links),
    [Keeper] = [P || P <- Links, is_pid(P),
                     {'$initial_call', {pyport_callback_keeper, init, 1}} =:=
                         lists:keyfind('$initial_call', 1,
                                       element(2, process_info(P, dictionary)))],
    Keeper.

os_pid(Pool) ->
    {ok, Worker} = pyport_pool:worker(element(2, pyport_pool:info(Pool)), 1),
    pyport_worker:os_pid(Worker).

keeper_count(Pool) ->
    pyport_callback_keeper:count(keeper(Pool)).
