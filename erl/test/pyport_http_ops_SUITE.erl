%% HTTP pools' operations: who may ask for a graceful recycle
%% (pyport.http_recycle), max_rss recycles through the listener hand-off,
%% WebSocket idle pings from the node's options.
-module(pyport_http_ops_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [recycle_refused_unless_caller, max_rss_recycles_through_handoff, max_rss_errors,
     ws_ping_options, ws_ping_option_errors, hornbeam_websocket_timeout, ws_compress_option].

init_per_suite(Config) ->
    _ = application:load(pyport),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    ok.

opts(Config, More) ->
    maps:merge(#{workers => 1, python_path => [?config(data_dir, Config)],
                 app => "http_ops_app:app"}, More).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

os_pids(Name) ->
    {ok, Ws} = pyport:workers(Name),
    [pyport_worker:os_pid(P) || {_, P} <- Ws].

ask(Ctx, Pool, OsPid) ->
    {ok, Answer} = py:call(Ctx, http_ops_app, ask_recycle, [Pool, OsPid]),
    Answer.

%% pyport.http_recycle replaces the calling worker only: a worker of
%% another pool, or of the same pool naming its sibling's OS pid, is
%% refused with a clear error and nothing is recycled; a worker naming
%% itself is replaced (the control that shows the refusals are refusals).
recycle_refused_unless_caller(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_rc, opts(Config, #{bind => Port, workers => 2,
                                                       max_requests => 1000000})),
    {ok, _} = pyport:start_pool(other_rc, #{size => 1, python_path => [?config(data_dir, Config)]}),
    try
        [P1, P2] = OsPids0 = os_pids(web_rc),
        Other = ask(py:context(other_rc, 1), <<"web_rc">>, P1),
        Sibling = ask(py:context(web_rc, 1), <<"web_rc">>, P2),
        NoSuchPid = ask(py:context(web_rc, 1), <<"web_rc">>, 1),
        NotHttp = ask(py:context(web_rc, 1), <<"other_rc">>, P1),
        NoAtom = ask(py:context(web_rc, 1), <<"no_such_pool_atom_xyz_rc">>, P1),
        ct:pal("refusals:~n ~ts~n ~ts~n ~ts~n ~ts~n ~ts",
               [Other, Sibling, NoSuchPid, NotHttp, NoAtom]),
        [?assertMatch({match, _}, re:run(A, "http_recycle_refused")) ||
            A <- [Other, Sibling, NoSuchPid, NotHttp, NoAtom]],
        ?assertMatch({match, _}, re:run(Other, "not_the_caller")),
        ?assertMatch({match, _}, re:run(Sibling, "not_the_caller")),
        ?assertMatch({match, _}, re:run(NoSuchPid, "not_a_worker")),
        ?assertMatch({match, _}, re:run(NotHttp, "no_http")),
        %% A pool name the node does not know makes no atom (asked again:
        %% the first round loaded code, whose atoms do not count).
        Atoms0 = erlang:system_info(atom_count),
        [NoAtom = ask(py:context(web_rc, 1), <<"no_such_pool_atom_xyz_rc">>, P1)
         || _ <- lists:seq(1, 3)],
        ?assertEqual(Atoms0, erlang:system_info(atom_count)),
        timer:sleep(2000),
        ?assertEqual(OsPids0, os_pids(web_rc)),
        %% The control: worker 2 asks for itself, and only it is replaced.
        <<"ok">> = ask(py:context(web_rc, 2), <<"web_rc">>, P2),
        ok = wait_until(fun() -> lists:nth(2, os_pids(web_rc)) =/= P2 end, 30000),
        ?assertEqual(P1, hd(os_pids(web_rc))),
        {ok, <<"ok">>} = get(Port, "/")
    after
        ok = pyport:stop_http(web_rc),
        ok = pyport:stop_pool(other_rc)
    end.

%% A worker above max_rss is replaced through the listener hand-off: under
%% load from clients (keep-alive and a connection per request) on a
%% one-worker pool, no request fails, though for a moment no process
%% accepts (the connections wait in the held socket's queue).
max_rss_recycles_through_handoff(Config) ->
    Port = free_port(),
    %% The limit: the worker's RSS as started, plus 40 MB; /grow adds 64 MiB.
    {ok, _} = pyport:start_http(web_rss, opts(Config, #{bind => Port, max_rss => infinity})),
    [Pid0] = os_pids(web_rss),
    Base = pyport_os:rss_bytes(Pid0),
    ok = pyport:stop_http(web_rss),
    Max = Base + 40000000,
    {ok, _} = pyport:start_http(web_rss, opts(Config, #{bind => Port, max_rss => Max})),
    try
        [OsPid0] = os_pids(web_rss),
        Procs0 = length(processes()),
        Self = self(),
        Clients = [spawn_link(fun() -> pyport_http_load:client(Self, Port, "/r", Kind) end)
                   || Kind <- [keepalive, keepalive, fresh, fresh, fresh]],
        timer:sleep(500),
        {ok, <<"grown">>} = get(Port, "/grow"),
        T0 = erlang:monotonic_time(millisecond),
        ok = wait_until(fun() -> os_pids(web_rss) =/= [OsPid0] end, 20000),
        Took = erlang:monotonic_time(millisecond) - T0,
        timer:sleep(500),
        [C ! stop || C <- Clients],
        Results = [receive {C, R} -> R after 70000 -> ct:fail(client_stuck) end || C <- Clients],
        {Ok, Failed} = lists:foldl(fun({O, F}, {A, B}) -> {A + O, B + F} end, {0, 0}, Results),
        [OsPid1] = os_pids(web_rss),
        Rss1 = pyport_os:rss_bytes(OsPid1),
        ct:pal("max_rss ~b (base ~b): replaced ~b ms after /grow, ~b requests answered, "
               "~b failed; the new worker's RSS ~b", [Max, Base, Took, Ok, Failed, Rss1]),
        ?assertEqual(0, Failed),
        ?assert(Ok > 100),
        ?assert(Rss1 < Max),
        %% Replaced once (the new worker is below the limit), and the
        %% watcher and the replacement left no process behind.
        timer:sleep(1500),
        ?assertEqual([OsPid1], os_pids(web_rss)),
        ?assert(length(processes()) =< Procs0 + 2),
        {ok, <<"ok">>} = get(Port, "/")
    after
        ok = pyport:stop_http(web_rss)
    end,
    ok.

%% A bad max_rss is the pool's error, as before; the watcher ends with the
%% pool, stopped either way.
max_rss_errors(Config) ->
    Port = free_port(),
    {error, _} = pyport:start_http(web_rss_bad, opts(Config, #{bind => Port, max_rss => -1})),
    {error, _} = pyport:start_http(web_rss_bad, opts(Config, #{bind => Port, max_rss => "big"})),
    {ok, _} = pyport:start_http(web_rss_w, opts(Config, #{bind => Port, max_rss => 1 bsl 40})),
    #{rss_watcher := W} = persistent_term:get({pyport_http, web_rss_w}),
    true = is_process_alive(W),
    {ok, Info} = pyport:http_info(web_rss_w),
    false = maps:is_key(rss_watcher, Info),
    %% The pool stopped by stop_pool/1, not stop_http/1: the watcher goes too.
    Ref = monitor(process, W),
    ok = pyport:stop_pool(web_rss_w),
    receive {'DOWN', Ref, process, W, _} -> ok after 5000 -> ct:fail(watcher_left) end,
    ok.

%% websocket_ping_interval/_timeout reach the workers: a client that
%% answers nothing gets a ping, then close 1011, then the TCP close.
ws_ping_options(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_ping, opts(Config, #{bind => Port,
                                                         websocket_ping_interval => 300,
                                                         websocket_ping_timeout => 400})),
    try
        silent_client_closed(Port)
    after
        ok = pyport:stop_http(web_ping)
    end.

%% The same through hornbeam:start/2's websocket_timeout (half, half).
hornbeam_websocket_timeout(Config) ->
    Port = free_port(),
    {ok, _} = hornbeam:start("http_ops_app:app",
                             #{bind => Port, worker_class => asgi, workers => 1,
                               pythonpath => [?config(data_dir, Config)],
                               websocket_timeout => 800}),
    try
        silent_client_closed(Port)
    after
        ok = hornbeam:stop()
    end.

silent_client_closed(Port) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n"),
    T0 = erlang:monotonic_time(millisecond),
    All = recv_all(S, <<>>),
    Took = erlang:monotonic_time(millisecond) - T0,
    gen_tcp:close(S),
    [<<"HTTP/1.1 101 ", _/binary>>, Frames] = binary:split(All, <<"\r\n\r\n">>),
    %% A ping (0x89, empty), then close 1011 (0x88, 2 + 22 bytes).
    <<16#89, 0, 16#88, 24, 1011:16, "keepalive ping timeout">> = Frames,
    ct:pal("silent client closed after ~b ms", [Took]),
    ?assert(Took < 8000),
    ok.

%% websocket_compress => true (and Hornbeam's) answers a client's
%% permessage-deflate offer; left out, the offer is not taken.
ws_compress_option(Config) ->
    Port = free_port(),
    Offer = fun() -> ws_extensions(Port) end,
    {ok, _} = pyport:start_http(web_zc, opts(Config, #{bind => Port, websocket_compress => true})),
    try
        ?assertEqual([<<"permessage-deflate">>], Offer())
    after
        ok = pyport:stop_http(web_zc)
    end,
    {ok, _} = pyport:start_http(web_zc, opts(Config, #{bind => Port})),
    try ?assertEqual([], Offer()) after ok = pyport:stop_http(web_zc) end,
    {ok, _} = hornbeam:start("http_ops_app:app",
                             #{bind => Port, worker_class => asgi, workers => 1,
                               pythonpath => [?config(data_dir, Config)],
                               websocket_compress => true}),
    try ?assertEqual([<<"permessage-deflate">>], Offer()) after ok = hornbeam:stop() end,
    ?assertEqual({error, {invalid_http_option, web_zc, websocket_compress, yes}},
                 pyport:start_http(web_zc, opts(Config, #{bind => Port, websocket_compress => yes}))),
    ok.

ws_extensions(Port) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n"
                         "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"),
    Head = recv_head(S, <<>>),
    gen_tcp:close(S),
    [<<"HTTP/1.1 101 ", _/binary>> | Lines] = binary:split(Head, <<"\r\n">>, [global]),
    [V || <<"sec-websocket-extensions: ", V/binary>> <- Lines].

recv_head(S, Acc) ->
    case binary:split(Acc, <<"\r\n\r\n">>) of
        [Head, _] -> Head;
        [_] -> {ok, B} = gen_tcp:recv(S, 0, 5000), recv_head(S, <<Acc/binary, B/binary>>)
    end.

ws_ping_option_errors(Config) ->
    Port = free_port(),
    [?assertEqual({error, {invalid_http_option, web_pe, K, V}},
                  pyport:start_http(web_pe, opts(Config, #{bind => Port, K => V})))
     || K <- [websocket_ping_interval, websocket_ping_timeout],
        V <- [0, -1, 1 bsl 33, "20", 1.5]],
    ok.

wait_until(Fun, Ms) when Ms =< 0 ->
    case Fun() of true -> ok; false -> timeout end;
wait_until(Fun, Ms) ->
    case Fun() of
        true -> ok;
        false -> timer:sleep(100), wait_until(Fun, Ms - 100)
    end.

get(Port, Path) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, ["GET ", Path, " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]),
    R = recv_all(S, <<>>),
    gen_tcp:close(S),
    case binary:split(R, <<"\r\n\r\n">>) of
        [<<"HTTP/1.1 200 ", _/binary>>, Body] -> {ok, Body};
        _ -> {error, R}
    end.

recv_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 10000) of
        {ok, B} -> recv_all(S, <<Acc/binary, B/binary>>);
        {error, _} -> Acc
    end.
