%% The rest of issue 12's Erlang surface (docs/http.md): Hornbeam's
%% `websocket_*' options through hornbeam:start/2, and py_asgi's
%% run_async/4,5 and stream/4,5.
-module(pyport_http_rest_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [hornbeam_websocket_options, hornbeam_websocket_max_frame_size,
     {group, runners}].

groups() ->
    [{runners, [], [run_async_ok, run_async_app_error, run_async_timeout,
                    run_async_caller_gone, stream_ok, stream_app_error,
                    stream_flow_control, stream_cancel, stream_owner_gone]}].

init_per_group(runners, Config) ->
    {ok, _} = pyport:start_pool(rest_run, #{size => 1, python_path => [data_dir(Config)]}),
    Config.

end_per_group(runners, _Config) ->
    ok = pyport:stop_pool(rest_run).

init_per_suite(Config) ->
    _ = application:load(pyport),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    _ = application:stop(pyport),
    ok.

data_dir(Config) ->
    ?config(data_dir, Config).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

%%%===================================================================
%%% Hornbeam's websocket_* options
%%%===================================================================

hornbeam_websocket_options(_Config) ->
    O = fun(Opts) -> pyport_http_hornbeam:options("m:app", Opts) end,
    ?assertMatch({ok, #{websocket_max_message_size := 1024}},
                 O(#{websocket_max_frame_size => 1024})),
    ?assertMatch({ok, #{websocket_max_message_size := 0}},
                 O(#{websocket_max_frame_size => infinity})),
    ?assertEqual({error, {invalid_hornbeam_option, websocket_max_frame_size, -1}},
                 O(#{websocket_max_frame_size => -1})),
    %% websocket_compress: permessage-deflate when offered.
    {ok, Plain} = O(#{}),
    ?assertEqual({ok, Plain#{websocket_compress => false}}, O(#{websocket_compress => false})),
    ?assertEqual({ok, Plain#{websocket_compress => true}}, O(#{websocket_compress => true})),
    ?assertEqual({error, {invalid_hornbeam_option, websocket_compress, yes}},
                 O(#{websocket_compress => yes})),
    %% websocket_timeout: pinged after half, dropped after the other half.
    ?assertEqual({ok, Plain#{websocket_ping_interval => 30000, websocket_ping_timeout => 30000}},
                 O(#{websocket_timeout => 60000})),
    ?assertEqual({ok, Plain#{websocket_ping_interval => 1000, websocket_ping_timeout => 1001}},
                 O(#{websocket_timeout => 2001})),
    ?assertEqual({ok, Plain#{websocket_ping_interval => infinity,
                             websocket_ping_timeout => infinity}},
                 O(#{websocket_timeout => infinity})),
    [?assertEqual({error, {invalid_hornbeam_option, websocket_timeout, V}},
                  O(#{websocket_timeout => V})) || V <- [0, 1, -5, "60000", 1 bsl 40]],
    ?assertEqual({error, {invalid_hornbeam_option, websocket_timeout, 0}},
                 hornbeam:start("m:app", #{websocket_timeout => 0})).

%% A message above websocket_max_frame_size is refused with close 1009;
%% one at the limit is echoed.
hornbeam_websocket_max_frame_size(Config) ->
    Port = free_port(),
    {ok, _} = hornbeam:start("rest_apps:ws_echo",
                             #{bind => Port, worker_class => asgi, workers => 1,
                               pythonpath => [data_dir(Config)],
                               websocket_max_frame_size => 1000,
                               websocket_compress => false}),
    try
        S = ws_connect(Port),
        ok = gen_tcp:send(S, ws_frame(2, binary:copy(<<"a">>, 1000))),
        ?assertEqual({2, binary:copy(<<"a">>, 1000)}, ws_recv(S)),
        ok = gen_tcp:send(S, ws_frame(2, binary:copy(<<"b">>, 1001))),
        {8, <<1009:16, _/binary>>} = ws_recv(S),
        gen_tcp:close(S)
    after
        ok = hornbeam:stop()
    end.

ws_connect(Port) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, ["GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"]),
    {ok, <<"HTTP/1.1 101", _/binary>>} = recv_head(S, <<>>),
    S.

recv_head(S, Acc) ->
    case binary:match(Acc, <<"\r\n\r\n">>) of
        {_, _} -> {ok, Acc};
        nomatch ->
            {ok, B} = gen_tcp:recv(S, 0, 5000),
            recv_head(S, <<Acc/binary, B/binary>>)
    end.

%% A masked client frame (FIN set).
ws_frame(Opcode, Payload) ->
    Mask = <<1, 2, 3, 4>>,
    Len = byte_size(Payload),
    LenBits = if Len < 126 -> <<1:1, Len:7>>;
                 Len < 65536 -> <<1:1, 126:7, Len:16>>;
                 true -> <<1:1, 127:7, Len:64>>
              end,
    [<<1:1, 0:3, Opcode:4>>, LenBits, Mask, mask(Payload, Mask)].

mask(Payload, <<M:32>>) ->
    Pad = (4 - byte_size(Payload) rem 4) rem 4,
    Padded = <<Payload/binary, 0:(Pad * 8)>>,
    Masked = << <<(W bxor M):32>> || <<W:32>> <= Padded >>,
    binary:part(Masked, 0, byte_size(Payload)).

%% One unmasked server frame: {Opcode, Payload}.
ws_recv(S) ->
    {ok, <<_:4, Op:4, 0:1, L0:7>>} = gen_tcp:recv(S, 2, 5000),
    Len = case L0 of
              126 -> {ok, <<L:16>>} = gen_tcp:recv(S, 2, 5000), L;
              127 -> {ok, <<L:64>>} = gen_tcp:recv(S, 8, 5000), L;
              _ -> L0
          end,
    {ok, P} = case Len of 0 -> {ok, <<>>}; _ -> gen_tcp:recv(S, Len, 5000) end,
    {Op, P}.

%%%===================================================================
%%% py_asgi:run_async/4,5 and stream/4,5
%%%===================================================================

-define(OPTS, #{pool => rest_run}).
-define(SCOPE, #{type => <<"http">>, method => <<"POST">>, path => <<"/">>}).

run_async_ok(_Config) ->
    {ok, Ref} = py_asgi:run_async(<<"rest_apps">>, <<"hello">>, ?SCOPE, <<"body">>, ?OPTS),
    ?assert(is_reference(Ref)),
    receive
        {py_result, Ref, {200, [{<<"content-type">>, <<"text/plain">>}], <<"hello body">>}} -> ok
    after 10000 -> ct:fail(no_result)
    end,
    {ok, Ref2} = py_asgi:run_async(<<"rest_apps">>, <<"hello">>, ?SCOPE, <<"2">>, ?OPTS),
    ?assertEqual({ok, {200, [{<<"content-type">>, <<"text/plain">>}], <<"hello 2">>}},
                 py_asgi:await_response(Ref2, 10000)),
    ?assertEqual({error, timeout}, py_asgi:await_response(make_ref(), 0)).

run_async_app_error(_Config) ->
    {ok, Ref} = py_asgi:run_async(<<"rest_apps">>, <<"failing">>, ?SCOPE, <<>>, ?OPTS),
    receive
        {py_error, Ref, Reason} ->
            ?assertNotEqual(nomatch, string:find(io_lib:format("~p", [Reason]), "the app broke"))
    after 10000 -> ct:fail(no_error)
    end,
    {ok, Ref2} = py_asgi:run_async(<<"no_such_module_x">>, <<"app">>, ?SCOPE, <<>>, ?OPTS),
    ?assertMatch({error, _}, py_asgi:await_response(Ref2, 10000)),
    %% Bad options: refused at once, nothing started.
    ?assertEqual({error, {invalid_option, timeout, -1}},
                 py_asgi:run_async(<<"rest_apps">>, <<"hello">>, ?SCOPE, <<>>, #{timeout => -1})),
    ?assertEqual({error, {bad_option, colour}},
                 py_asgi:run_async(<<"rest_apps">>, <<"hello">>, ?SCOPE, <<>>, #{colour => red})),
    %% No such pool: an answer, not silence.
    {ok, Ref3} = py_asgi:run_async(<<"rest_apps">>, <<"hello">>, ?SCOPE, <<>>,
                                   #{pool => no_such_pool_x}),
    ?assertMatch({error, _}, py_asgi:await_response(Ref3, 10000)).

run_async_timeout(_Config) ->
    T0 = erlang:monotonic_time(millisecond),
    {ok, Ref} = py_asgi:run_async(<<"rest_apps">>, <<"slow">>, ?SCOPE, <<>>,
                                  ?OPTS#{timeout => 300}),
    ?assertEqual({error, timeout}, py_asgi:await_response(Ref, 10000)),
    %% The app's own deadline, not the 30 s sleep.
    ?assert(erlang:monotonic_time(millisecond) - T0 < 8000),
    %% The worker goes on serving.
    {ok, R2} = py_asgi:run_async(<<"rest_apps">>, <<"hello">>, ?SCOPE, <<>>, ?OPTS),
    ?assertMatch({ok, {200, _, _}}, py_asgi:await_response(R2, 10000)).

run_async_caller_gone(_Config) ->
    {ok, Before} = py:call(rest_apps, cancelled, [], #{}, ?OPTS),
    Procs0 = erlang:system_info(process_count),
    {Caller, Mon} = spawn_monitor(
                      fun() ->
                              {ok, _} = py_asgi:run_async(<<"rest_apps">>, <<"forever">>, ?SCOPE,
                                                          <<>>, ?OPTS#{timeout => infinity}),
                              timer:sleep(200)
                      end),
    receive {'DOWN', Mon, process, Caller, normal} -> ok after 10000 -> ct:fail(caller_stuck) end,
    %% The app was cancelled in the worker, and the relay is gone.
    ok = wait_until(fun() -> {ok, Before + 1} =:= py:call(rest_apps, cancelled, [], #{}, ?OPTS) end),
    ok = wait_until(fun() -> erlang:system_info(process_count) =< Procs0 end).

stream_ok(_Config) ->
    Scope = ?SCOPE#{query_string => <<"50">>},
    {ok, Ref} = py_asgi:stream(<<"rest_apps">>, <<"chunks">>, Scope, <<>>, ?OPTS),
    receive
        {py_stream, Ref, {data, {start, 200, [{<<"x-n">>, <<"50">>}]}}} -> ok
    after 10000 -> ct:fail(no_start)
    end,
    Chunks = stream_body(Ref, []),
    ?assertEqual(50, length(Chunks)),
    ?assertEqual([binary:copy(<<(65 + I rem 26)>>, 1000) || I <- lists:seq(0, 49)], Chunks).

stream_app_error(_Config) ->
    {ok, Ref} = py_asgi:stream(<<"rest_apps">>, <<"stream_then_fail">>, ?SCOPE, <<>>, ?OPTS),
    receive {py_stream, Ref, {data, {start, 200, []}}} -> ok after 10000 -> ct:fail(no_start) end,
    receive {py_stream, Ref, {data, {body, <<"part">>}}} -> ok after 10000 -> ct:fail(no_body) end,
    receive
        {py_stream, Ref, {error, Reason}} ->
            ?assertNotEqual(nomatch, string:find(io_lib:format("~p", [Reason]), "broke mid-stream"))
    after 10000 -> ct:fail(no_error)
    end.

%% A consumer that reads nothing suspends the app: its mailbox stays
%% bounded while the app has 20 MB to send.
stream_flow_control(_Config) ->
    Scope = ?SCOPE#{query_string => <<"20000">>},
    {ok, Ref} = py_asgi:stream(<<"rest_apps">>, <<"chunks">>, Scope, <<>>, ?OPTS),
    timer:sleep(1500),
    {message_queue_len, Queued} = process_info(self(), message_queue_len),
    ct:pal("queued while not reading: ~p messages", [Queued]),
    ?assert(Queued < 1000),
    receive {py_stream, Ref, {data, {start, 200, _}}} -> ok after 10000 -> ct:fail(no_start) end,
    ?assertEqual(20000, length(stream_body(Ref, []))).

stream_cancel(_Config) ->
    {ok, Before} = py:call(rest_apps, cancelled, [], #{}, ?OPTS),
    {ok, Ref} = py_asgi:stream(<<"rest_apps">>, <<"forever">>, ?SCOPE, <<>>, ?OPTS),
    receive {py_stream, Ref, {data, {body, <<"x">>}}} -> ok after 10000 -> ct:fail(no_body) end,
    ok = py_asgi:stream_cancel(Ref),
    ok = wait_until(fun() -> {ok, Before + 1} =:= py:call(rest_apps, cancelled, [], #{}, ?OPTS) end),
    flush_stream(Ref).

stream_owner_gone(_Config) ->
    {ok, Before} = py:call(rest_apps, cancelled, [], #{}, ?OPTS),
    {Owner, Mon} = spawn_monitor(
                     fun() ->
                             {ok, Ref} = py_asgi:stream(<<"rest_apps">>, <<"forever">>, ?SCOPE,
                                                        <<>>, ?OPTS),
                             receive {py_stream, Ref, {data, {body, _}}} -> ok end
                     end),
    receive {'DOWN', Mon, process, Owner, normal} -> ok after 10000 -> ct:fail(owner_stuck) end,
    ok = wait_until(fun() -> {ok, Before + 1} =:= py:call(rest_apps, cancelled, [], #{}, ?OPTS) end).

stream_body(Ref, Acc) ->
    receive
        {py_stream, Ref, {data, {body, B}}} -> stream_body(Ref, [B | Acc]);
        {py_stream, Ref, done} -> lists:reverse(Acc);
        {py_stream, Ref, Other} -> ct:fail({unexpected, Other})
    after 10000 -> ct:fail({stream_stuck, length(Acc)})
    end.

flush_stream(Ref) ->
    receive {py_stream, Ref, _} -> flush_stream(Ref) after 200 -> ok end.

wait_until(F) ->
    wait_until(F, 100).

wait_until(_F, 0) ->
    {error, deadline};
wait_until(F, N) ->
    case F() of
        true -> ok;
        false -> timer:sleep(100), wait_until(F, N - 1)
    end.
