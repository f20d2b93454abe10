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
    [hornbeam_websocket_options, hornbeam_websocket_max_frame_size].

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
    %% No compression and no idle timeout: only the values that mean that.
    {ok, Plain} = O(#{}),
    ?assertEqual({ok, Plain}, O(#{websocket_compress => false, websocket_timeout => infinity})),
    ?assertEqual({error, {unsupported_hornbeam_option, websocket_compress, true}},
                 O(#{websocket_compress => true})),
    ?assertEqual({error, {unsupported_hornbeam_option, websocket_timeout, 60000}},
                 O(#{websocket_timeout => 60000})),
    ?assertEqual({error, {unsupported_hornbeam_option, websocket_timeout, 60000}},
                 hornbeam:start("m:app", #{websocket_timeout => 60000})).

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
