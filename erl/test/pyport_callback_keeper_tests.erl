%% The callback keeper on its own, with `cat' as the worker: what a runner
%% writes to the port comes back to the test as the frame it wrote.
-module(pyport_callback_keeper_tests).

-include_lib("eunit/include/eunit.hrl").

-define(REPLY, 9).

with_keeper(Max, Test) ->
    process_flag(trap_exit, true),
    Port = open_port({spawn, "cat"}, [binary, stream]),
    {ok, Keeper} = pyport_callback_keeper:start_link(Max, #{}),
    try Test(Keeper, Port)
    after
        catch port_close(Port),
        {KPid, _, _} = Keeper,
        unlink(KPid),
        exit(KPid, kill)
    end.

hang() -> receive after infinity -> ok end.

wait_count(Keeper, N) -> wait_count(Keeper, N, 500).
wait_count(Keeper, N, 0) -> ?assertEqual(N, pyport_callback_keeper:count(Keeper));
wait_count(Keeper, N, Tries) ->
    case pyport_callback_keeper:count(Keeper) of
        N -> ok;
        _ -> timer:sleep(2), wait_count(Keeper, N, Tries - 1)
    end.

reply(Port) ->
    %% A stream, as worker ports are: the frame carries its own length.
    receive {Port, {data, <<Len:32, Bin:Len/binary>>}} ->
            {ok, ?REPLY, Id, 2, Rest} = pyport_codec:decode_frame_head(Bin),
            {ok, Fields} = pyport_codec:decode_fields(2, Rest),
            {Id, Fields}
    after 2000 -> error(no_reply)
    end.

a_killed_runner_is_answered_test() ->
    with_keeper(10, fun(Keeper, Port) ->
        Self = self(),
        ok = pyport_callback_keeper:run(Keeper, {Port, 7}, "erlang.call('f')", infinity,
                                        fun() -> Self ! {runner, self()}, hang() end),
        Pid = receive {runner, P} -> P after 2000 -> error(not_started) end,
        wait_count(Keeper, 1),
        exit(Pid, kill),
        ?assertMatch({7, [<<"error">>, [<<"ErlangError">>,
                                         <<"the Erlang process running erlang.call('f') exited: killed">>,
                                         {exit, killed}]]}, reply(Port)),
        wait_count(Keeper, 0)
    end).

max_callbacks_bounds_runners_test() ->
    with_keeper(2, fun(Keeper, Port) ->
        ok = pyport_callback_keeper:run(Keeper, {Port, 1}, "a", infinity, fun hang/0),
        ok = pyport_callback_keeper:run(Keeper, {cast, Port}, "b", infinity, fun hang/0),
        ?assertEqual({error, too_many},
                     pyport_callback_keeper:run(Keeper, {Port, 2}, "c", infinity, fun hang/0)),
        wait_count(Keeper, 2),
        ok = pyport_callback_keeper:cancel(Keeper, Port, 1),
        wait_count(Keeper, 1),
        ok = pyport_callback_keeper:run(Keeper, {Port, 3}, "d", infinity, fun hang/0)
    end).

a_cancel_before_the_runner_announces_itself_kills_it_test() ->
    with_keeper(10, fun({KPid, Count, _} = Keeper, Port) ->
        %% As run/5 does, in an order a busy machine may give: counted by
        %% the owner, cancelled (the owner's NOTIFY), then announced.
        atomics:add(Count, 1, 1),
        ok = pyport_callback_keeper:cancel(Keeper, Port, 9),
        _ = pyport_callback_keeper:count(KPid),                   % the cancel is in
        Pid = spawn(fun() ->
                            link(KPid),
                            KPid ! {'$pyport_runner', self(), {Port, 9}, "late", infinity},
                            hang()
                    end),
        wait_count(Keeper, 0),
        ?assertNot(is_process_alive(Pid)),
        receive {Port, {data, _}} = M -> error({answered, M}) after 50 -> ok end
    end).

the_port_closing_ends_answers_not_casts_test() ->
    with_keeper(10, fun(Keeper, Port) ->
        Self = self(),
        Tell = fun(What) -> fun() -> Self ! {What, self()}, hang() end end,
        ok = pyport_callback_keeper:run(Keeper, {Port, 1}, "call", infinity, Tell(call)),
        ok = pyport_callback_keeper:run(Keeper, {cast, Port}, "cast", infinity, Tell(cast)),
        Call = receive {call, C} -> C after 2000 -> error(not_started) end,
        Cast = receive {cast, K} -> K after 2000 -> error(not_started) end,
        wait_count(Keeper, 2),
        port_close(Port),
        wait_count(Keeper, 1),
        ?assertNot(is_process_alive(Call)),
        ?assert(is_process_alive(Cast)),
        exit(Cast, kill),
        wait_count(Keeper, 0)
    end).

a_deadline_ends_the_runner_with_a_timeout_error_test() ->
    with_keeper(10, fun(Keeper, Port) ->
        ok = pyport_callback_keeper:run(Keeper, {Port, 4}, "rpc_call m:f", 20, fun hang/0),
        ?assertMatch({4, [<<"error">>, [<<"TimeoutError">>,
                                         <<"rpc_call m:f did not answer within 20 ms">>, timeout]]},
                     reply(Port)),
        wait_count(Keeper, 0)
    end).

the_owner_ending_ends_every_runner_test() ->
    Self = self(),
    Owner = spawn(fun() ->
                          Port = open_port({spawn, "cat"}, [binary, stream]),
                          {ok, Keeper} = pyport_callback_keeper:start_link(10, #{}),
                          ok = pyport_callback_keeper:run(Keeper, {cast, Port}, "cast", infinity,
                                                          fun() -> Self ! {runner, self()}, hang() end),
                          hang()
                  end),
    Pid = receive {runner, P} -> P after 2000 -> error(not_started) end,
    exit(Owner, kill),
    Ref = monitor(process, Pid),
    receive {'DOWN', Ref, process, Pid, _} -> ok after 2000 -> error(runner_alive) end.

cancels_for_ids_nobody_serves_take_no_memory_test() ->
    with_keeper(10, fun({KPid, _, _} = Keeper, Port) ->
        [pyport_callback_keeper:cancel(Keeper, Port, Id) || Id <- lists:seq(1, 100000)],
        _ = pyport_callback_keeper:count(KPid),          % all handled
        ?assert(erts_debug:flat_size(sys:get_state(KPid)) < 1000),
        %% and a real one still works
        ok = pyport_callback_keeper:run(Keeper, {Port, 5}, "x", infinity, fun hang/0),
        wait_count(Keeper, 1),
        ok = pyport_callback_keeper:cancel(Keeper, Port, 5),
        wait_count(Keeper, 0)
    end).
