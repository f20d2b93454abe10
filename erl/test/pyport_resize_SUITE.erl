%% Pools that resize: pyport:resize_pool/2 (grow at once, shrink by
%% draining), elastic pools (min/max, workers started on demand and
%% stopped after idle_timeout), shard stability (jump hashing), bindings
%% whose slot drains, recycling during a drain, sandboxed pools.
-module(pyport_resize_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(M, resize_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [grow_under_load, shrink_with_calls_in_flight, on_demand_growth_and_idle_shrink,
     overloaded_elastic_pool_grows,
     shard_movement_bound, shard_routing_follows_the_size, resize_errors,
     failed_grow_keeps_the_size, affinity_moves_when_its_slot_drains,
     recycle_during_drain_does_not_resurrect, grow_back_while_draining,
     leaving_worker_cancels_a_stream_that_never_ends, sandboxed_pool_resized].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools().

%%%===================================================================
%%% Cases
%%%===================================================================

%% 8 clients call without pause while the pool grows from 2 to 6: every
%% call is answered once, with its own value; the new workers take calls.
grow_under_load(Config) ->
    {ok, _} = start(grow, #{size => 2}, Config),
    Self = self(),
    Clients = 8,
    PerClient = 30,
    _ = [spawn_link(fun() ->
                            R = [py:call(?M, work, [0.02, C * 1000 + I], #{}, #{pool => grow})
                                 || I <- lists:seq(1, PerClient)],
                            %% A second answer to any call would wait here.
                            timer:sleep(200),
                            {message_queue_len, Stray} = process_info(self(), message_queue_len),
                            Self ! {done, C, R, Stray}
                    end) || C <- lists:seq(1, Clients)],
    wait_until(fun() -> in_flight(grow, 2) > 0 end),
    T0 = erlang:monotonic_time(microsecond),
    ok = pyport:resize_pool(grow, 6),
    GrowMs = (erlang:monotonic_time(microsecond) - T0) / 1000,
    ?assertEqual(6, pool_size(grow)),
    Answers = [receive {done, C, R, Stray} -> {C, R, Stray} after 50000 -> ct:fail({no_answer, C})
               end || C <- lists:seq(1, Clients)],
    Lost = lists:sum([length([x || {I, Reply} <- lists:zip(lists:seq(1, PerClient), R),
                                   not answered(Reply, C * 1000 + I)])
                      || {C, R, _} <- Answers]),
    ?assertEqual(0, Lost),
    ?assertEqual([0], lists:usort([Stray || {_, _, Stray} <- Answers])),
    OsPids = lists:usort([P || {_, R, _} <- Answers, {ok, [P, _]} <- R]),
    ?assert(length(OsPids) > 2),
    ?assertEqual(6, children(grow)),
    ?assertEqual(6, length(pg:get_local_members(pyport, {pyport_pool, grow}))),
    ct:pal("grow by 4 workers under load: ~.1f ms; calls: ~b, lost: ~b", [GrowMs, Clients * PerClient, Lost]),
    {comment, io_lib:format("grow 2->6: ~.1f ms, ~b calls, 0 lost", [GrowMs, Clients * PerClient])}.

%% Shrinking from 4 to 1 while every worker runs 1 s calls: resize
%% returns before they end, every call is answered by the worker it went
%% to, new calls go to slot 1 only, and the leaving workers then stop
%% (their ports, OS processes, pg membership and children gone).
shrink_with_calls_in_flight(Config) ->
    %% A short shutdown_timeout: stopping a worker that still runs a call
    %% would kill it, so only the drain can answer these calls.
    {ok, _} = start(shrink, #{size => 4, shutdown_timeout => 100}, Config),
    Slots = [1, 2, 3, 4],
    OsPids = [pyport_test_util:os_pid({shrink, S}) || S <- Slots],
    Ports = length(erlang:ports()),
    Ctx3 = py:context(shrink, 3),
    Refs = [pyport_test_util:async(
              fun() -> py:call(py:context(shrink, S), ?M, work, [1.0, {S, I}]) end)
            || S <- Slots, I <- [1, 2]],
    wait_until(fun() -> lists:sum([in_flight(shrink, S) || S <- Slots]) =:= 8 end),
    ok = pyport:resize_pool(shrink, 1),
    %% Returned at once: no call has been answered yet.
    ?assertEqual([], [R || {R, _} <- messages(), is_reference(R)]),
    ?assertEqual(1, pool_size(shrink)),
    %% New calls: slot 1 only, the others out of routing.
    {ok, [P1, _]} = py:call(?M, work, [0, new], #{}, #{pool => shrink}),
    ?assertEqual(hd(OsPids), P1),
    %% A context made before the shrink names a slot the pool no longer has.
    ?assertEqual({error, {no_worker, shrink, 3}}, py:call(Ctx3, os, getpid, [])),
    Replies = [pyport_test_util:await(R) || R <- Refs],
    Expected = [{ok, [lists:nth(S, OsPids), {S, I}]} || S <- Slots, I <- [1, 2]],
    ?assertEqual(Expected, Replies),
    wait_until(fun() -> children(shrink) =:= 1 end),
    ?assertEqual(1, length(pg:get_local_members(pyport, {pyport_pool, shrink}))),
    ?assertEqual(Ports - 3, length(erlang:ports())),
    [wait_until(fun() -> not os_alive(P) end) || P <- tl(OsPids)],
    ?assertEqual([0, 0, 0, 0], [in_flight(shrink, S) || S <- Slots]).

%% min 1, max 4: busy clients make the pool grow to 4, one worker at a
%% time; once they stop, the pool is back at 1 after idle_timeout (1 s).
on_demand_growth_and_idle_shrink(Config) ->
    {ok, _} = start(elastic, #{min => 1, max => 4, idle_timeout => 1000}, Config),
    ?assertEqual(1, pool_size(elastic)),
    ?assertEqual(1, children(elastic)),
    Self = self(),
    Stop = erlang:monotonic_time(millisecond) + 4000,
    Clients = [spawn_link(fun() -> Self ! {done, self(), busy_loop(Stop, [])} end)
               || _ <- lists:seq(1, 6)],
    wait_until(fun() -> pool_size(elastic) =:= 4 end),
    Results = lists:append([receive {done, C, R} -> R after 30000 -> ct:fail(no_answer) end
                            || C <- Clients]),
    ?assertEqual([], [R || R <- Results, not is_tuple(R) orelse element(1, R) =/= ok]),
    ?assertEqual(4, length(lists:usort([P || {ok, [P, _]} <- Results]))),
    ?assertEqual(4, children(elastic)),
    %% Idle: back to min, the leaving workers stopped.
    T0 = erlang:monotonic_time(millisecond),
    wait_until(fun() -> pool_size(elastic) =:= 1 andalso children(elastic) =:= 1 end),
    IdleMs = erlang:monotonic_time(millisecond) - T0,
    ?assert(IdleMs >= 500),
    ?assertEqual(1, length(pg:get_local_members(pyport, {pyport_pool, elastic}))),
    ?assertMatch({ok, [_, after_idle]}, py:call(?M, work, [0, after_idle], #{}, #{pool => elastic})),
    {comment, io_lib:format("~b calls on up to 4 workers; back to 1 in ~b ms", [length(Results), IdleMs])}.

busy_loop(Stop, Acc) ->
    case erlang:monotonic_time(millisecond) < Stop of
        true -> busy_loop(Stop, [py:call(?M, work, [0.05, x], #{}, #{pool => elastic}) | Acc]);
        false -> Acc
    end.

%% Every worker at max_inflight: the call is refused (overloaded), and
%% the pool grows, so that the next one is taken.
overloaded_elastic_pool_grows(Config) ->
    {ok, _} = start(capped, #{min => 1, max => 2, max_inflight => 1, idle_timeout => 60000}, Config),
    H = py:spawn_call(?M, work, [1.0, first], #{}, #{pool => capped}),
    ?assertEqual({error, overloaded}, py:call(?M, work, [0, second], #{}, #{pool => capped})),
    wait_until(fun() -> pool_size(capped) =:= 2 end),
    ?assertMatch({ok, [_, second]}, py:call(?M, work, [0, second], #{}, #{pool => capped})),
    ?assertMatch({ok, [_, first]}, py:await(H)).

%% Jump hashing: from N to N + 1 slots, about 1/(N + 1) of the keys move,
%% and only to the new slot.
shard_movement_bound(_Config) ->
    Keys = [{user, I} || I <- lists:seq(1, 20000)],
    lists:foreach(
      fun(N) ->
              Moved = [{pyport_pool:shard_slot(K, N), New}
                       || K <- Keys, New <- [pyport_pool:shard_slot(K, N + 1)],
                          New =/= pyport_pool:shard_slot(K, N)],
              ?assertEqual([N + 1], lists:usort([New || {_, New} <- Moved])),
              Fraction = length(Moved) / length(Keys),
              ?assert(abs(Fraction - 1 / (N + 1)) < 0.02, {N, Fraction})
      end, lists:seq(1, 12)).

%% Shard calls follow the published size: after a grow from 2 to 3 each
%% key's calls reach the worker of shard_slot(Key, 3).
shard_routing_follows_the_size(Config) ->
    {ok, _} = start(shard, #{size => 2}, Config),
    ok = pyport:resize_pool(shard, 3),
    OsPids = maps:from_list([{S, pyport_test_util:os_pid({shard, S})} || S <- [1, 2, 3]]),
    Keys = lists:seq(1, 30),
    [?assertEqual({ok, [maps:get(pyport_pool:shard_slot(K, 3), OsPids), K]},
                  py:call(?M, work, [0, K], #{}, #{pool => shard, shard => K}))
     || K <- Keys],
    ok.

resize_errors(Config) ->
    Cap = pyport_pool:capacity(),
    ?assertEqual({error, {no_pool, nope}}, pyport:resize_pool(nope, 2)),
    ?assertEqual({error, {no_pool, "nope"}}, pyport:resize_pool("nope", 2)),
    {ok, _} = start(errs, #{size => 1}, Config),
    ?assertEqual({error, {pool_size_out_of_range, errs, 0, {1, Cap}}}, pyport:resize_pool(errs, 0)),
    ?assertEqual({error, {pool_size_out_of_range, errs, -3, {1, Cap}}}, pyport:resize_pool(errs, -3)),
    ?assertEqual({error, {pool_size_out_of_range, errs, Cap + 1, {1, Cap}}},
                 pyport:resize_pool(errs, Cap + 1)),
    [?assertEqual({error, {invalid_pool_size, errs, V}}, pyport:resize_pool(errs, V))
     || V <- [two, 1.5, "2", <<"2">>]],
    ?assertEqual(ok, pyport:resize_pool(errs, 1)),
    ?assertEqual(1, pool_size(errs)),
    %% An elastic pool resizes within its bounds.
    {ok, _} = start(errs_elastic, #{min => 1, max => 3, idle_timeout => 60000}, Config),
    ?assertEqual({error, {pool_size_out_of_range, errs_elastic, 4, {1, 3}}},
                 pyport:resize_pool(errs_elastic, 4)),
    ?assertEqual(ok, pyport:resize_pool(errs_elastic, 3)),
    ?assertEqual(3, pool_size(errs_elastic)),
    %% Options.
    ?assertEqual({error, {invalid_pool_option, p, min, 3}},
                 pyport_config:validate_pool(p, #{min => 3, max => 2})),
    ?assertEqual({error, {invalid_pool_option, p, size, 5}},
                 pyport_config:validate_pool(p, #{min => 1, max => 4, size => 5})),
    [?assertEqual({error, {invalid_pool_option, p, K, V}}, pyport_config:validate_pool(p, #{K => V}))
     || {K, V} <- [{min, 0}, {max, -1}, {idle_timeout, 0}, {idle_timeout, x}, {max, Cap + 1}]],
    ?assertMatch({ok, #{size := 2, min := 2, max := 5}},
                 pyport_config:validate_pool(p, #{min => 2, max => 5})),
    ?assertMatch({ok, #{size := 3, min := 3, max := 3}},
                 pyport_config:validate_pool(p, #{size => 3, min => 3})),
    ?assertMatch({ok, #{size := 2, min := 2, max := 4}},
                 pyport_config:validate_pool(p, #{max => 4, size => 2})),
    ?assertMatch({ok, #{size := 1, min := 1, max := 4}},
                 pyport_config:validate_pool(p, #{max => 4})),
    ?assertMatch({ok, #{size := 2, min := undefined, max := undefined}},
                 pyport_config:validate_pool(p, #{size => 2})).

%% A worker that cannot start undoes the grow: the pool keeps its size.
failed_grow_keeps_the_size(Config) ->
    Flag = pyport_test_util:flag(Config),
    Init = <<"import os\nif os.path.exists(", (quote(Flag))/binary, "):\n"
             "    raise RuntimeError('no more workers')\n">>,
    {ok, _} = start(failing, #{size => 1, init_code => Init}, Config),
    ok = file:write_file(Flag, <<>>),
    ?assertMatch({error, {worker_start_failed, 2, {init_failed, init_code, {<<"RuntimeError">>, _}}}},
                 pyport:resize_pool(failing, 3)),
    ?assertEqual(1, pool_size(failing)),
    ?assertEqual(1, children(failing)),
    ?assertMatch({ok, [_, ok]}, py:call(?M, work, [0, ok], #{}, #{pool => failing})).

%% A process bound to a slot that drains moves to a slot the pool has, as
%% if its worker had restarted: its namespace starts again empty.
affinity_moves_when_its_slot_drains(Config) ->
    {ok, _} = start(aff, #{size => 3}, Config),
    Self = self(),
    {Pid, Mon} = spawn_monitor(fun() -> bound_on_top(Self, 200) end),
    receive {bound, Pid, 3} -> ok after 20000 -> ct:fail(never_bound_to_slot_3) end,
    ok = pyport:resize_pool(aff, 2),
    Pid ! go,
    receive
        {moved, Pid, Slot, NameError, Pids} ->
            ?assert(Slot =< 2),
            ?assertMatch({error, {'NameError', _}}, NameError),
            ?assertMatch([_], lists:usort(Pids))
    after 20000 -> ct:fail(no_answer)
    end,
    receive {'DOWN', Mon, _, _, _} -> ok end,
    wait_until(fun() -> children(aff) =:= 2 end).

bound_on_top(Parent, 0) ->
    exit({never_on_slot_3, Parent});
bound_on_top(Parent, Tries) ->
    ok = py:bind(aff),
    case pyport_affinity:bound_slot(aff) of
        3 ->
            ok = py:exec(<<"here = 1">>, #{pool => aff}),
            {ok, 1} = py:eval(<<"here">>, none, #{pool => aff}),
            Parent ! {bound, self(), 3},
            receive go -> ok end,
            NameError = py:eval(<<"here">>, none, #{pool => aff}),
            Pids = [P || _ <- [1, 2, 3], {ok, [P, _]} <- [py:call(?M, work, [0, x], #{}, #{pool => aff})]],
            Parent ! {moved, self(), pyport_affinity:bound_slot(aff), NameError, Pids};
        _ ->
            ok = py:unbind(aff),
            bound_on_top(Parent, Tries - 1)
    end.

%% A slot being recycled (here: asked, and waiting for a long call) when
%% the pool shrinks below it answers the call, then stops: no new OS
%% process, and the slot does not come back.
recycle_during_drain_does_not_resurrect(Config) ->
    {ok, _} = start(recyc, #{size => 2, shutdown_timeout => 100}, Config),
    {ok, W2} = pyport_pool:worker(element(2, pyport_pool:info(recyc)), 2),
    Os2 = pyport_test_util:os_pid({recyc, 2}),
    Ref = pyport_test_util:async(fun() -> py:call(py:context(recyc, 2), ?M, work, [0.8, long]) end),
    wait_until(fun() -> in_flight(recyc, 2) =:= 1 end),
    ok = pyport_worker:recycle_async(W2, test),
    wait_until(fun() -> maps:get(status, pyport_worker:info(W2)) =:= draining end),
    ok = pyport:resize_pool(recyc, 1),
    ?assertEqual({ok, [Os2, long]}, pyport_test_util:await(Ref)),
    Mon = erlang:monitor(process, W2),
    %% Until it is gone, it never starts another OS process.
    Seen = watch_statuses(W2, Mon, []),
    ?assertEqual([], [S || S <- Seen, lists:member(S, [starting, initializing, up, waiting])]),
    wait_until(fun() -> not os_alive(Os2) end),
    %% Still one slot, a while later.
    timer:sleep(300),
    ?assertEqual(1, pool_size(recyc)),
    ?assertEqual(1, children(recyc)),
    ?assertEqual(1, length(pg:get_local_members(pyport, {pyport_pool, recyc}))),
    ?assertEqual(0, in_flight(recyc, 2)).

watch_statuses(Pid, Mon, Acc) ->
    receive
        {'DOWN', Mon, _, _, _} -> lists:usort(Acc)
    after 5 ->
            Status = try maps:get(status, pyport_worker:info(Pid)) catch exit:_ -> gone end,
            watch_statuses(Pid, Mon, [Status | Acc])
    end.

%% Growing again while a slot drains takes that worker back.
grow_back_while_draining(Config) ->
    {ok, _} = start(back, #{size => 2, shutdown_timeout => 100}, Config),
    {ok, W2} = pyport_pool:worker(element(2, pyport_pool:info(back)), 2),
    Ref = pyport_test_util:async(fun() -> py:call(py:context(back, 2), ?M, work, [0.8, x]) end),
    wait_until(fun() -> in_flight(back, 2) =:= 1 end),
    ok = pyport:resize_pool(back, 1),
    wait_until(fun() -> maps:get(leaving, pyport_worker:info(W2)) end),
    ok = pyport:resize_pool(back, 2),
    ?assertMatch({ok, [_, x]}, pyport_test_util:await(Ref)),
    timer:sleep(400),
    ?assert(is_process_alive(W2)),
    ?assertEqual({ok, W2}, pyport_pool:worker(element(2, pyport_pool:info(back)), 2)),
    ?assertMatch(#{leaving := false, status := up}, pyport_worker:info(W2)),
    ?assertEqual(2, length(pg:get_local_members(pyport, {pyport_pool, back}))).

%% A stream that never ends cannot keep a leaving worker: it is
%% cancelled shutdown_timeout ms after the drain began; the stream on the
%% slot that stays goes on.
leaving_worker_cancels_a_stream_that_never_ends(Config) ->
    {ok, _} = start(streams, #{size => 2, shutdown_timeout => 500}, Config),
    {ok, S1} = py:stream_start(?M, forever, [], #{pool => streams}),
    wait_until(fun() -> in_flight(streams, 1) + in_flight(streams, 2) =:= 1 end),
    {ok, S2} = py:stream_start(?M, forever, [], #{pool => streams}),
    wait_until(fun() -> {in_flight(streams, 1), in_flight(streams, 2)} =:= {1, 1} end),
    T0 = erlang:monotonic_time(millisecond),
    ok = pyport:resize_pool(streams, 1),
    {Ended, Error} = receive {py_stream, R, {error, E}} -> {R, E} after 20000 -> ct:fail(never_cancelled) end,
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 400),
    ?assertMatch({'CancelledError', _}, Error),
    wait_until(fun() -> children(streams) =:= 1 end),
    [Other] = [S || S <- [S1, S2], S =/= Ended],
    %% The other stream still flows (once this mailbox is emptied: credit
    %% is granted only to a consumer that keeps up).
    flush_stream(Ended),
    flush_stream(Other),
    receive {py_stream, Other, {data, 1}} -> ok after 5000 -> ct:fail(other_stream_stopped) end,
    ok = py:stream_cancel(Other),
    flush_stream(Other),
    flush_stream(Ended).

flush_stream(Ref) ->
    receive {py_stream, Ref, _} -> flush_stream(Ref) after 0 -> ok end.

%% A sandboxed pool grows and shrinks like any other, when sandboxing is
%% available here.
sandboxed_pool_resized(Config) ->
    case start(boxed, #{size => 1, sandbox => true}, Config) of
        {ok, _} ->
            ok = pyport:resize_pool(boxed, 3),
            Jobs = [pyport:run_job(boxed, #{code => <<"input * 2">>, input => I})
                    || I <- lists:seq(1, 6)],
            ?assertEqual([{ok, I * 2} || I <- lists:seq(1, 6)], [{ok, R} || {ok, R, _} <- Jobs]),
            ?assertMatch({ok, #{size := 3, workers := [#{sandbox := _}, _, _]}},
                         pyport:pool_info(boxed)),
            ok = pyport:resize_pool(boxed, 1),
            wait_until(fun() -> children(boxed) =:= 1 end),
            ?assertMatch({ok, 10, _}, pyport:run_job(boxed, #{code => <<"input * 2">>, input => 5}));
        {error, Reason} ->
            {skip, io_lib:format("no sandboxed pool here: ~p", [Reason])}
    end.

%%%===================================================================
%%% Helpers
%%%===================================================================

start(Name, Opts, Config) ->
    pyport:start_pool(Name, maps:merge(#{python_path => [?config(data_dir, Config)]}, Opts)).

pool_size(Pool) ->
    {ok, #{size := Size}} = pyport_pool:info(Pool),
    Size.

in_flight(Pool, Slot) ->
    {ok, #{counters := C}} = pyport_pool:info(Pool),
    counters:get(C, Slot).

%% The worker children of a pool's supervisor.
children(Pool) ->
    [PoolSup] = [P || {{pool, N}, P, _, _} <- supervisor:which_children(pyport_pools_sup), N =:= Pool],
    [WorkersSup] = [P || {workers, P, _, _} <- supervisor:which_children(PoolSup)],
    length(supervisor:which_children(WorkersSup)).

answered({ok, [_, V]}, V) -> true;
answered(_, _) -> false.

messages() ->
    {messages, Ms} = process_info(self(), messages),
    Ms.

os_alive(OsPid) ->
    filelib:is_dir("/proc/" ++ integer_to_list(OsPid)).

wait_until(Cond) ->
    pyport_test_util:wait_until(Cond).

quote(Bin) ->
    <<"'", Bin/binary, "'">>.
