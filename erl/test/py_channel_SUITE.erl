%% py_channel and py_byte_channel (erlang_python's API, docs/channels.md):
%% return shapes, Python's Channel/ByteChannel, bounds, and what happens
%% when the owner or the reading worker dies.
-module(py_channel_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [new_send_info_close, python_receives_in_order, busy_when_full, receive_waits_for_send,
     receive_timeout_and_try, async_iteration, reply_to_sender, one_waiter_at_a_time,
     unsupported_term_refused, owner_exit_frees, forged_or_bad_handle,
     worker_killed_while_receiving, interrupted_receive_loses_nothing, hostile_requests,
     many_waiters_bounded, bytes_both_ways, bytes_bounds, bytes_erlang_recv, throughput,
     objects_end_with_pyport].

init_per_suite(Config) ->
    Data = ?config(data_dir, Config),
    ok = pyport_test_util:start(#{default => #{size => 2, python_path => [Data],
                                               kill_after => 2000}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

%% The previous case's process (the owner of its channels) is gone: so
%% are its channels.
init_per_testcase(_Case, Config) ->
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    Config.

ctx(N) -> py:context(N).

%% Runs the call in another process (so the test can send meanwhile).
async_call(F, Args) ->
    pyport_test_util:async(fun() -> py:call(ctx(1), chan_mod, F, Args) end).

new_send_info_close(_Config) ->
    {ok, Ch} = py_channel:new(),
    Default = pyport_channel:default_max_size(),
    ?assertEqual(#{size => 0, max_size => Default, closed => false}, py_channel:info(Ch)),
    ok = py_channel:send(Ch, {hello, <<"world">>}),
    #{size := Size} = py_channel:info(Ch),
    ?assertEqual(erlang:external_size({hello, <<"world">>}), Size),
    ok = py_channel:close(Ch),
    ?assertMatch(#{closed := true}, py_channel:info(Ch)),
    ?assertEqual({error, closed}, py_channel:send(Ch, more)),
    ok = py_channel:close(Ch),                  % idempotent
    %% The queued item is still delivered after close.
    ?assertEqual({ok, [{hello, <<"world">>}]}, py:call(ctx(1), chan_mod, collect, [Ch])),
    ?assertEqual({error, {invalid_option, max_size, -1}}, py_channel:new(#{max_size => -1})).

python_receives_in_order(_Config) ->
    {ok, Ch} = py_channel:new(#{max_size => 0}),
    Items = [1, <<"two">>, {three, 3}, #{four => [4]}, 1 bsl 70],
    [ok = py_channel:send(Ch, I) || I <- Items],
    ok = py_channel:close(Ch),
    ?assertEqual({ok, Items}, py:call(ctx(1), chan_mod, collect, [Ch])).

busy_when_full(_Config) ->
    {ok, Ch} = py_channel:new(#{max_size => 100}),
    ?assertEqual(busy, py_channel:send(Ch, binary:copy(<<"x">>, 200))),
    ok = py_channel:send(Ch, <<"small">>),
    Fill = fun F(N) -> case py_channel:send(Ch, N) of ok -> F(N + 1); busy -> N end end,
    Sent = Fill(1),
    #{size := Size} = py_channel:info(Ch),
    ?assert(Size =< 100),
    %% Reading makes room again.
    {ok, {<<"got">>, <<"small">>}} = py:call(ctx(1), chan_mod, recv_one, [Ch, 0]),
    ?assertEqual(ok, py_channel:send(Ch, Sent)),
    py_channel:close(Ch),
    {ok, Rest} = py:call(ctx(1), chan_mod, collect, [Ch]),
    ?assertEqual(lists:seq(1, Sent), Rest).

receive_waits_for_send(_Config) ->
    {ok, Ch} = py_channel:new(),
    Ref = async_call(recv_one, [Ch, -1]),
    timer:sleep(200),
    ok = py_channel:send(Ch, 42),
    ?assertEqual({ok, {<<"got">>, 42}}, pyport_test_util:await(Ref)),
    %% A waiting receive ends with close.
    Ref2 = async_call(recv_one, [Ch, -1]),
    timer:sleep(200),
    ok = py_channel:close(Ch),
    ?assertEqual({ok, <<"closed">>}, pyport_test_util:await(Ref2)).

receive_timeout_and_try(_Config) ->
    {ok, Ch} = py_channel:new(),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({ok, <<"timeout">>}, py:call(ctx(1), chan_mod, recv_one, [Ch, 100])),
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 100),
    ?assertEqual({ok, none}, py:call(ctx(1), chan_mod, try_one, [Ch])),
    ok = py_channel:send(Ch, x),
    ?assertEqual({ok, x}, py:call(ctx(1), chan_mod, try_one, [Ch])),
    %% The timed-out waiter is gone: a new receive is served.
    ok = py_channel:send(Ch, y),
    ?assertEqual({ok, {<<"got">>, y}}, py:call(ctx(1), chan_mod, recv_one, [Ch, 1000])),
    py_channel:close(Ch).

async_iteration(_Config) ->
    {ok, Ch} = py_channel:new(),
    Ref = async_call(async_collect, [Ch]),
    [ok = py_channel:send(Ch, N) || N <- lists:seq(1, 50)],
    timer:sleep(50),
    ok = py_channel:close(Ch),
    ?assertEqual({ok, lists:seq(1, 50)}, pyport_test_util:await(Ref)).

reply_to_sender(_Config) ->
    {ok, Ch} = py_channel:new(),
    Ref = async_call(serve, [Ch]),
    Answers = [begin
                   ok = py_channel:send(Ch, {self(), N}),
                   receive {<<"double">>, M} -> M after 5000 -> ct:fail(no_reply) end
               end || N <- [1, 2, 3]],
    ?assertEqual([2, 4, 6], Answers),
    ok = py_channel:close(Ch),
    ?assertEqual({ok, <<"done">>}, pyport_test_util:await(Ref)).

one_waiter_at_a_time(_Config) ->
    {ok, Ch} = py_channel:new(),
    Ref = async_call(recv_one, [Ch, -1]),
    timer:sleep(200),
    %% Another worker tries to wait on the same channel.
    ?assertMatch({error, {'RuntimeError', _}},
                 py:call(ctx(2), chan_mod, recv_one, [Ch, -1])),
    ok = py_channel:send(Ch, first),
    ?assertEqual({ok, {<<"got">>, first}}, pyport_test_util:await(Ref)),
    py_channel:close(Ch).

unsupported_term_refused(_Config) ->
    {ok, Ch} = py_channel:new(),
    ?assertMatch({error, {unsupported_term, _}}, py_channel:send(Ch, [a | b])),
    ?assertMatch(#{size := 0}, py_channel:info(Ch)),
    py_channel:close(Ch).

owner_exit_frees(_Config) ->
    Procs0 = erlang:system_info(process_count),
    Self = self(),
    Owner = spawn(fun() ->
                          {ok, Ch} = py_channel:new(),
                          ok = py_channel:send(Ch, queued),
                          Self ! {ch, Ch},
                          receive stop -> ok end
                  end),
    Ch = receive {ch, C} -> C end,
    ?assertEqual(1, pyport_handles:count()),
    Owner ! stop,
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    ?assertEqual({ok, <<"closed">>}, py:call(ctx(1), chan_mod, recv_one, [Ch, 0])),
    ?assertEqual({error, closed}, py_channel:send(Ch, x)),
    ?assertEqual(#{size => 0, max_size => 0, closed => true}, py_channel:info(Ch)),
    pyport_test_util:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 end).

forged_or_bad_handle(_Config) ->
    {ok, Ch} = py_channel:new(),
    ok = py_channel:send(Ch, secret),
    %% A token that was never issued reaches nothing (nor does a guess).
    ?assertEqual({ok, <<"closed">>}, py:call(ctx(1), chan_mod, forged, [<<"AAAAAAAAAAAAAAAAAAAAAA">>])),
    ?assertEqual({ok, <<"type_error">>}, py:call(ctx(1), chan_mod, not_a_handle, [])),
    ?assertMatch(#{size := S} when S > 0, py_channel:info(Ch)),
    py_channel:close(Ch).

worker_killed_while_receiving(_Config) ->
    Procs0 = erlang:system_info(process_count),
    Ets0 = length(ets:all()),
    {ok, Ch} = py_channel:new(),
    {ok, OsPid} = py:call(ctx(1), chan_mod, pid_of_worker, []),
    Ref = async_call(recv_one, [Ch, -1]),
    timer:sleep(300),
    pyport_os:kill(OsPid),
    ?assertMatch({error, {worker_exited, _}}, pyport_test_util:await(Ref)),
    %% The Erlang side still answers; the dead receiver's wait is gone.
    ?assertEqual(ok, py_channel:send(Ch, after_crash)),
    pyport_test_util:wait_until(fun() -> py:call(ctx(1), chan_mod, pid_of_worker, []) =/= {ok, OsPid}
                                             andalso element(1, py:call(ctx(1), chan_mod, pid_of_worker, [])) =:= ok
                                end),
    ?assertEqual({ok, {<<"got">>, after_crash}}, py:call(ctx(1), chan_mod, recv_one, [Ch, 1000])),
    ok = py_channel:close(Ch),
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    pyport_test_util:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 + 1 end),
    ?assertEqual(Ets0, length(ets:all())).

bytes_both_ways(_Config) ->
    {ok, Ch} = py_byte_channel:new(),
    Ref = async_call(upper_bytes, [Ch]),
    ok = py_byte_channel:send(Ch, <<"abc">>),
    ?assertEqual({ok, <<"ABC">>}, py_byte_channel:recv(Ch, 5000)),
    ok = py_byte_channel:send(Ch, <<"d", 0, 255>>),
    ?assertEqual({ok, <<"D", 0, 255>>}, py_byte_channel:recv(Ch)),
    ?assertEqual({error, empty}, py_byte_channel:try_receive(Ch)),
    ok = py_byte_channel:close(Ch),
    ?assertEqual({ok, 2}, pyport_test_util:await(Ref)),
    ?assertEqual({error, closed}, py_byte_channel:try_receive(Ch)),
    ?assertEqual({error, closed}, py_byte_channel:send(Ch, <<"x">>)),
    %% Bytes arrive as bytes even when they are valid UTF-8; async iteration.
    {ok, Ch2} = py_byte_channel:new(),
    ok = py_byte_channel:send(Ch2, <<"text">>),
    ?assertEqual({ok, {<<"bytes">>, <<"text">>}}, bytes_type(Ch2)),
    ok = py_byte_channel:send(Ch2, <<"a">>),
    ok = py_byte_channel:send(Ch2, <<"b">>),
    py_byte_channel:close(Ch2),
    ?assertEqual({ok, [<<"a">>, <<"b">>]}, py:call(ctx(1), chan_mod, byte_async, [Ch2])),
    ?assertMatch({error, {unsupported_term, 1}}, py_byte_channel:send(Ch2, 1)).

bytes_type(Ch) ->
    py:eval(ctx(1), <<"(lambda c: (lambda v: ('bytes' if type(v) is bytes else 'other', v))"
                      "(__import__('erlang').ByteChannel(c).try_receive_bytes()))(ch)">>, #{ch => Ch}).

bytes_bounds(_Config) ->
    {ok, Ch} = py_byte_channel:new(#{max_size => 1000}),
    %% Python -> Erlang is bounded too: Python is told, the node holds 1000 bytes at most.
    {ok, {Sent, Msg}} = py:call(ctx(1), chan_mod, send_bytes_until_full, [Ch, 300]),
    ?assertEqual(3, Sent),
    ?assertMatch({_, _}, binary:match(Msg, <<"full">>)),
    ?assertEqual(busy, py_byte_channel:send(Ch, binary:copy(<<"y">>, 1001))),
    {ok, B} = py_byte_channel:try_receive(Ch),
    ?assertEqual(300, byte_size(B)),
    py_byte_channel:close(Ch).

bytes_erlang_recv(_Config) ->
    {ok, Ch} = py_byte_channel:new(),
    ?assertEqual({error, timeout}, py_byte_channel:recv(Ch, 50)),
    Self = self(),
    Waiter = spawn(fun() -> Self ! {waited, py_byte_channel:recv(Ch, 5000)} end),
    timer:sleep(50),
    ?assertEqual({error, waiter_exists}, py_byte_channel:recv(Ch, 10)),
    {ok, _} = py:eval(ctx(1), <<"__import__('erlang').ByteChannel(c).send_bytes(b'hi')">>, #{c => Ch}),
    receive {waited, R} -> ?assertEqual({ok, <<"hi">>}, R) after 5000 -> ct:fail(no_recv) end,
    ?assertNot(is_process_alive(Waiter)),
    %% A waiter that exits is forgotten.
    W2 = spawn(fun() -> py_byte_channel:recv(Ch, infinity) end),
    timer:sleep(50),
    exit(W2, kill),
    timer:sleep(50),
    ?assertEqual({error, timeout}, py_byte_channel:recv(Ch, 10)),
    py_byte_channel:close(Ch).

interrupted_receive_loses_nothing(_Config) ->
    {ok, Ch} = py_channel:new(),
    %% The call times out: Python's wait is interrupted, its waiter ends.
    ?assertEqual({error, timeout}, py:call(chan_mod, recv_one, [Ch, -1], #{}, 300)),
    timer:sleep(100),
    ok = py_channel:send(Ch, kept),
    ?assertEqual({ok, {<<"got">>, kept}}, py:call(ctx(1), chan_mod, recv_one, [Ch, 1000])),
    py_channel:close(Ch).

hostile_requests(_Config) ->
    {ok, Ch} = py_channel:new(#{max_size => 1000}),
    {py_channel, _, Token} = Ch,
    Atoms0 = erlang:system_info(atom_count),
    Procs0 = erlang:system_info(process_count),
    {ok, Answers} = py:call(ctx(1), chan_mod, hostile, [Token]),
    ct:log("~p", [Answers]),
    %% Unknown token, junk verbs and arguments: ValueError (Channel turns an
    %% unknown token into ChannelClosed); a term channel takes no bytes from
    %% Python; a buffer verb on a channel is junk.
    ?assertEqual([<<"ValueError">>, <<"ValueError">>, <<"ValueError">>, <<"ValueError">>,
                  <<"ValueError">>, <<"ValueError">>, <<"ValueError">>], norm(Answers)),
    ?assertMatch(#{size := 0}, py_channel:info(Ch)),
    ?assertEqual(Atoms0, erlang:system_info(atom_count)),
    ?assert(erlang:system_info(process_count) =< Procs0 + 1),
    py_channel:close(Ch).

norm(Answers) ->
    [case A of
         closed -> <<"closed">>;
         B when is_binary(B) -> B;
         Other -> Other
     end || A <- Answers].

many_waiters_bounded(_Config) ->
    {ok, Ch} = py_channel:new(),
    Procs0 = erlang:system_info(process_count),
    Ref = async_call(many_waiters, [Ch, 20]),
    timer:sleep(500),
    %% One thread waits (one runner process in the node), 19 were refused.
    ?assert(erlang:system_info(process_count) =< Procs0 + 3),
    ok = py_channel:send(Ch, only),
    {ok, Results} = pyport_test_util:await(Ref),
    ?assertEqual({[{<<"got">>, only}], 19}, Results),
    py_channel:close(Ch).

throughput(_Config) ->
    %% Not a benchmark: a number for the record, and no item lost.
    N = 5000,
    {ok, Ch} = py_channel:new(),
    T0 = erlang:monotonic_time(microsecond),
    Ref = async_call(collect, [Ch]),
    [ok = py_channel:send(Ch, I) || I <- lists:seq(1, N)],
    ok = py_channel:close(Ch),
    ?assertEqual({ok, lists:seq(1, N)}, pyport_test_util:await(Ref)),
    Us = erlang:monotonic_time(microsecond) - T0,
    ct:log("~b items through a channel in ~b ms (~b items/s)", [N, Us div 1000, N * 1000000 div max(Us, 1)]).

%% Last: stops pyport. Objects do not outlive the application.
objects_end_with_pyport(_Config) ->
    {ok, Ch} = py_channel:new(),
    {ok, Buf} = py_buffer:new(),
    {ok, D} = py:shared_dict_new(),
    Pids = [element(2, Ch), element(2, Buf), element(2, D)],
    ?assert(lists:all(fun erlang:is_process_alive/1, Pids)),
    pyport_test_util:stop(),
    ?assertNot(lists:any(fun erlang:is_process_alive/1, Pids)),
    ?assertEqual({error, closed}, py_channel:send(Ch, x)),
    ok = pyport_test_util:start(#{default => #{size => 2}}).
