%% HTTP pools through the Erlang API (pyport:start_http/2, stop_http/1,
%% http_info/1; docs/http.md): the forms of `bind', every start error, and
%% a worker killed under load while the other keeps serving. The protocol
%% itself is tested in tests/harness/test_http.py.
-module(pyport_http_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [serve_info_stop, bind_forms, start_errors, lifespan_startup_failed, access_log,
     from_app_env, wsgi_pool, hornbeam_start, py_asgi_and_py_wsgi, worker_killed_under_load].

init_per_suite(Config) ->
    _ = application:load(pyport),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    _ = application:stop(pyport),
    ok.

data_dir(Config) ->
    ?config(data_dir, Config).

opts(Config, More) ->
    maps:merge(#{app => "http_ct_app:app", workers => 1, python_path => [data_dir(Config)]},
               More).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

%% One request on a fresh connection: {ok, Status, Body} or {error, Why}.
get(Address, Port, Path) ->
    Family = case Address of
                 {local, _} -> [local];
                 {_, _, _, _, _, _, _, _} -> [inet6];
                 _ -> []
             end,
    case gen_tcp:connect(Address, Port, [binary, {active, false} | Family], 5000) of
        {ok, S} ->
            ok = gen_tcp:send(S, ["GET ", Path, " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]),
            R = read_all(S, <<>>),
            gen_tcp:close(S),
            case R of
                {ok, <<"HTTP/1.1 ", Code:3/binary, _/binary>> = Resp} ->
                    [_, Body] = binary:split(Resp, <<"\r\n\r\n">>),
                    {ok, binary_to_integer(Code), Body};
                {ok, Other} -> {error, {bad_response, Other}};
                {error, _} = E -> E
            end;
        {error, _} = E ->
            E
    end.

read_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 5000) of
        {ok, B} -> read_all(S, <<Acc/binary, B/binary>>);
        {error, closed} -> {ok, Acc};
        {error, _} = E -> E
    end.

%%%===================================================================

serve_info_stop(Config) ->
    Port = free_port(),
    Bind = "127.0.0.1:" ++ integer_to_list(Port),
    Ports0 = length(erlang:ports()),
    Procs0 = erlang:system_info(process_count),
    {ok, _} = pyport:start_http(web_a, opts(Config, #{bind => Bind, workers => 2})),
    {ok, 200, Pid} = get({127, 0, 0, 1}, Port, "/"),
    ?assert(binary_to_integer(Pid) > 0),
    {ok, Info} = pyport:http_info(web_a),
    ?assertMatch(#{app := <<"http_ct_app:app">>, bind := <<"127.0.0.1:", _/binary>>}, Info),
    ?assertEqual(2, length(maps:get(workers, Info))),
    ?assertEqual({error, {already_started, web_a}},
                 pyport:start_http(web_a, opts(Config, #{bind => Bind}))),
    %% A pool stopped by stop_pool/1 frees the name.
    ok = pyport:stop_pool(web_a),
    {ok, _} = pyport:start_http(web_a, opts(Config, #{bind => Bind, workers => 2})),
    OsPids = [pyport_test_util:os_pid({web_a, S}) || S <- [1, 2]],
    ok = pyport:stop_http(web_a),
    ?assertEqual({error, {no_http, web_a}}, pyport:http_info(web_a)),
    ?assertEqual({error, {no_http, web_a}}, pyport:stop_http(web_a)),
    ?assertEqual({error, econnrefused}, get({127, 0, 0, 1}, Port, "/")),
    ?assertNot(lists:member(web_a, pyport:pools())),
    %% Nothing left: ports, processes, OS processes.
    pyport_test_util:wait_until(fun() -> length(erlang:ports()) =< Ports0 end),
    pyport_test_util:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 + 2 end),
    pyport_test_util:wait_until(
      fun() -> lists:all(fun(P) -> not filelib:is_dir("/proc/" ++ integer_to_list(P)) end, OsPids)
      end).

bind_forms(Config) ->
    %% A port number alone is 127.0.0.1:Port.
    P1 = free_port(),
    {ok, _} = pyport:start_http(web_b1, opts(Config, #{bind => P1})),
    {ok, 200, _} = get({127, 0, 0, 1}, P1, "/"),
    ok = pyport:stop_http(web_b1),
    %% A unix socket path.
    %% (priv_dir is too long for sun_path's 108 bytes)
    Path = "/tmp/pyport-http-" ++ integer_to_list(erlang:unique_integer([positive])) ++ ".sock",
    {ok, _} = pyport:start_http(web_b2, opts(Config, #{bind => Path})),
    {ok, 200, _} = get({local, Path}, 0, "/"),
    ok = pyport:stop_http(web_b2),
    file:delete(Path),
    %% IPv6, where the host has it.
    case gen_tcp:listen(0, [inet6, {ip, {0, 0, 0, 0, 0, 0, 0, 1}}]) of
        {ok, S6} ->
            {ok, P6} = inet:port(S6),
            gen_tcp:close(S6),
            {ok, _} = pyport:start_http(web_b3,
                                        opts(Config, #{bind => "[::1]:" ++ integer_to_list(P6)})),
            {ok, 200, _} = get({0, 0, 0, 0, 0, 0, 0, 1}, P6, "/"),
            ok = pyport:stop_http(web_b3);
        {error, _} ->
            ct:comment("no IPv6 loopback: [::1] not tried")
    end.

start_errors(Config) ->
    Port = free_port(),
    Bind = "127.0.0.1:" ++ integer_to_list(Port),
    ?assertEqual({error, {missing_http_option, web_e, app}},
                 pyport:start_http(web_e, maps:remove(app, opts(Config, #{bind => Bind})))),
    ?assertEqual({error, {invalid_http_option, web_e, app, "no_colon"}},
                 pyport:start_http(web_e, opts(Config, #{app => "no_colon", bind => Bind}))),
    [?assertMatch({error, {bad_bind, web_e, B, _}},
                  pyport:start_http(web_e, opts(Config, #{bind => B})))
     || B <- ["127.0.0.1:notaport", "300.1.1.1:80", "example.com:80", "127.0.0.1:0",
              "[::1:80", 70000]],
    ?assertEqual({error, {invalid_http_option, web_e, max_body, -1}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind, max_body => -1}))),
    ?assertEqual({error, {invalid_http_option, web_e, interface, cgi}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind, interface => cgi}))),
    ?assertEqual({error, {invalid_http_option, web_e, wsgi_threads, 0}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind, wsgi_threads => 0}))),
    ?assertEqual({error, {invalid_http_option, web_e, access_log, yes}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind, access_log => yes}))),
    ?assertEqual({error, {invalid_http_option, web_e, request_timeout, 0}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind, request_timeout => 0}))),
    ?assertEqual({error, {invalid_http_option, web_e, lifespan, maybe}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind, lifespan => maybe}))),
    %% Pool options are the pool's to check.
    ?assertMatch({error, {invalid_pool_option, web_e, size, 0}},
                 pyport:start_http(web_e, maps:remove(workers,
                                                       opts(Config, #{bind => Bind, size => 0})))),
    %% In use by another program.
    {ok, L} = gen_tcp:listen(Port, [{ip, {127, 0, 0, 1}}]),
    ?assertEqual({error, {address_in_use, web_e, list_to_binary(Bind)}},
                 pyport:start_http(web_e, opts(Config, #{bind => Bind}))),
    gen_tcp:close(L),
    %% The app: module missing, attribute missing, not callable.
    {error, {app_failed, web_e, M1}} =
        pyport:start_http(web_e, opts(Config, #{bind => Bind, app => "no_such_mod_q:app"})),
    ?assertNotEqual(nomatch, string:find(M1, "cannot import module 'no_such_mod_q'")),
    {error, {app_failed, web_e, M2}} =
        pyport:start_http(web_e, opts(Config, #{bind => Bind, app => "http_ct_app:nope"})),
    ?assertNotEqual(nomatch, string:find(M2, "has no attribute 'nope'")),
    {error, {app_failed, web_e, M3}} =
        pyport:start_http(web_e, opts(Config, #{bind => Bind, app => "http_ct_app:not_callable"})),
    ?assertNotEqual(nomatch, string:find(M3, "is not callable")),
    %% Nothing left behind: no pool, and the address is free.
    ?assertNot(lists:member(web_e, pyport:pools())),
    ?assertEqual({error, {no_http, web_e}}, pyport:http_info(web_e)),
    {ok, L2} = gen_tcp:listen(Port, [{ip, {127, 0, 0, 1}}]),
    gen_tcp:close(L2).

lifespan_startup_failed(Config) ->
    Port = free_port(),
    Opts = opts(Config, #{bind => Port, app => "http_ct_app:failing_startup", lifespan => on,
                          workers => 2}),
    {error, {app_failed, web_l, Message}} = pyport:start_http(web_l, Opts),
    ?assertNotEqual(nomatch, string:find(Message, "the cache is unreachable")),
    ?assertNot(lists:member(web_l, pyport:pools())),
    ?assertEqual({error, econnrefused}, get({127, 0, 0, 1}, Port, "/")).

%% `{http, #{Name => Opts}}' in pyport's environment: started with pyport,
%% stopped with it; a pool that cannot start fails pyport's start.
from_app_env(Config) ->
    ok = application:stop(pyport),
    Port = free_port(),
    try
        application:set_env(pyport, http, #{web_env => opts(Config, #{bind => Port})}),
        {ok, _} = application:ensure_all_started(pyport),
        {ok, 200, _} = get({127, 0, 0, 1}, Port, "/"),
        {ok, #{app := <<"http_ct_app:app">>}} = pyport:http_info(web_env),
        ok = application:stop(pyport),
        ?assertEqual({error, econnrefused}, get({127, 0, 0, 1}, Port, "/")),
        application:set_env(pyport, http,
                            #{web_env => opts(Config, #{bind => Port, app => "nope_zz:app"})}),
        {error, {pyport, Why}} = application:ensure_all_started(pyport),
        ?assertMatch({{shutdown, {failed_to_start_child, pyport_http_boot,
                                  {http, web_env, {app_failed, web_env, _}}}}, _},
                     Why),
        ?assertEqual({error, econnrefused}, get({127, 0, 0, 1}, Port, "/"))
    after
        application:unset_env(pyport, http),
        {ok, _} = application:ensure_all_started(pyport)
    end.

%% A WSGI app, detected (interface => auto) and forced.
wsgi_pool(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_w, opts(Config, #{bind => Port,
                                                      app => "http_ct_app:wsgi_app"})),
    {ok, 200, <<"wsgi ", _/binary>>} = get({127, 0, 0, 1}, Port, "/"),
    ok = pyport:stop_http(web_w),
    {ok, _} = pyport:start_http(web_w, opts(Config, #{bind => Port, interface => wsgi,
                                                      wsgi_threads => 2,
                                                      app => "http_ct_app:wsgi_app"})),
    {ok, 200, <<"wsgi ", _/binary>>} = get({127, 0, 0, 1}, Port, "/"),
    ok = pyport:stop_http(web_w).

%% Hornbeam's entry points and option names.
hornbeam_start(Config) ->
    Port = free_port(),
    Dir = data_dir(Config),
    %% WSGI by default, `application' by default.
    ?assertMatch({ok, #{app := <<"http_ct_app:application">>, interface := wsgi,
                        keepalive_timeout := 3000, workers := 2, python_path := [Dir],
                        request_timeout := 5000}},
                 pyport_http_hornbeam:options("http_ct_app", #{keepalive => 3, num_contexts => 2,
                                                               pythonpath => [Dir],
                                                               timeout => 5000,
                                                               num_acceptors => 100})),
    ?assertEqual({error, {unsupported_hornbeam_option, routes, []}},
                 hornbeam:start("m:a", #{routes => []})),
    %% Mounts: worker_class per mount, pythonpath joined to the pool's.
    ?assertMatch({ok, #{mounts := [{"/a", <<"m:application">>, #{interface := asgi}},
                                   {"/b", <<"n:app">>, #{}}],
                        python_path := ["/top", "/ma"], hooks := #{}}},
                 pyport_http_hornbeam:options(#{mounts => [{"/a", "m", #{worker_class => asgi,
                                                                         pythonpath => ["/ma"]}},
                                                           {"/b", "n:app"}]},
                                              #{pythonpath => ["/top"], hooks => #{}})),
    ?assertEqual({error, {unsupported_hornbeam_option, {mounts, venv}, "/v"}},
                 hornbeam:start(#{mounts => [{"/a", "m", #{venv => "/v"}}]})),
    ?assertEqual({error, {unknown_hornbeam_option, colour, blue}},
                 hornbeam:start("m:a", #{colour => blue})),
    {ok, _} = hornbeam:start("http_ct_app:wsgi_app",
                             #{bind => "127.0.0.1:" ++ integer_to_list(Port), pythonpath => [Dir],
                               workers => 1}),
    {ok, 200, <<"wsgi ", _/binary>>} = get({127, 0, 0, 1}, Port, "/"),
    ok = hornbeam:stop(),
    {ok, _} = hornbeam:start("http_ct_app:app", #{bind => Port, worker_class => asgi,
                                                  pythonpath => [Dir], workers => 1}),
    {ok, 200, _} = get({127, 0, 0, 1}, Port, "/"),
    ok = hornbeam:stop(),
    ?assertEqual({error, {no_http, hornbeam_http}}, hornbeam:stop()).

%% erlang_python's runners: one request on a pool, for an Erlang server.
py_asgi_and_py_wsgi(Config) ->
    {ok, _} = pyport:start_pool(web_run, #{size => 1, python_path => [data_dir(Config)]}),
    try
        Scope = #{type => <<"http">>, method => <<"post">>, path => <<"/p">>,
                  query_string => <<"a=1">>,
                  headers => [[<<"X-Thing">>, <<"v">>], [<<"host">>, <<"h">>]]},
        {ok, {201, Headers, Body}} =
            py_asgi:run(<<"http_ct_app">>, <<"asgi_echo">>, Scope, <<"hello">>,
                        #{pool => web_run}),
        ?assertEqual([{<<"x-a">>, <<"1">>}, {<<"x-a">>, <<"2">>}], Headers),
        ?assertEqual($!, binary:last(Body)),
        Json = binary:part(Body, 0, byte_size(Body) - 1),
        ?assertNotEqual(nomatch, binary:match(Json, <<"\"body\": \"hello\"">>)),
        ?assertNotEqual(nomatch, binary:match(Json, <<"\"method\": \"POST\"">>)),
        ?assertNotEqual(nomatch, binary:match(Json, <<"\"qs_is_bytes\": true">>)),
        ?assertNotEqual(nomatch, binary:match(Json, <<"[\"x-thing\", \"v\"]">>)),
        ?assertMatch({error, _}, py_asgi:run(<<"http_ct_app">>, <<"nope">>, Scope, <<>>,
                                             #{pool => web_run})),
        Environ = #{<<"REQUEST_METHOD">> => <<"POST">>, <<"PATH_INFO">> => <<"/p">>,
                    <<"HTTP_X_THING">> => <<"t">>, <<"wsgi.input">> => <<"body!">>},
        {ok, {<<"202 Accepted">>, WHeaders, <<"/p;t;body!">>}} =
            py_wsgi:run(<<"http_ct_app">>, <<"wsgi_echo">>, Environ, #{pool => web_run}),
        ?assertEqual([<<"a=1">>, <<"b=2">>], [V || {<<"Set-Cookie">>, V} <- WHeaders])
    after
        ok = pyport:stop_pool(web_run)
    end.

%% access_log => true: one record per response in the node's logger.
access_log(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_log, opts(Config, #{bind => Port, access_log => true})),
    #{level := Primary} = logger:get_primary_config(),
    ok = logger:set_primary_config(level, info),
    ok = logger:add_handler(http_access_capture, ?MODULE,
                            #{level => info, config => #{pid => self()}}),
    try
        {ok, 200, _} = get({127, 0, 0, 1}, Port, "/?x=1"),
        Line = receive_access_line(5000),
        ?assertNotEqual(nomatch, string:find(Line, "\"GET /?x=1 HTTP/1.1\" 200 "), Line)
    after
        _ = logger:remove_handler(http_access_capture),
        logger:set_primary_config(level, Primary)
    end,
    ok = pyport:stop_http(web_log).

receive_access_line(Timeout) ->
    receive
        {access_event, #{msg := Msg} = E} ->
            Text = case Msg of
                       {string, S} -> unicode:characters_to_binary(S);
                       {report, _} -> <<>>;
                       {Format, Args} -> unicode:characters_to_binary(io_lib:format(Format, Args))
                   end,
            case string:find(Text, "HTTP/1.1\" ") of
                nomatch -> receive_access_line(Timeout);
                _ -> ct:pal("~p", [E]), Text
            end
    after Timeout ->
        ct:fail(no_access_log_record)
    end.

%% logger handler callback (access_log/1).
log(Event, #{config := #{pid := Pid}}) ->
    Pid ! {access_event, Event}.

%% Two workers under load from 8 clients; one worker's OS process is
%% killed. Only connections that worker held fail; the other worker serves
%% on, and the pool's replacement serves again.
worker_killed_under_load(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_k, opts(Config, #{bind => Port, workers => 2})),
    Victim = pyport_test_util:os_pid({web_k, 1}),
    Other = pyport_test_util:os_pid({web_k, 2}),
    Self = self(),
    Stop = erlang:monotonic_time(millisecond) + 3000,
    Clients = [spawn_link(fun() -> Self ! {self(), load(Port, Stop, [])} end)
               || _ <- lists:seq(1, 8)],
    timer:sleep(1000),
    os:cmd("kill -9 " ++ integer_to_list(Victim)),
    KilledAt = erlang:monotonic_time(millisecond),
    Results = lists:append([receive {C, R} -> R after 20000 -> ct:fail(client_stuck) end
                            || C <- Clients]),
    Errors = [E || {_, {error, _} = E} <- Results],
    After = [binary_to_integer(P) || {T, {ok, 200, P}} <- Results, T > KilledAt + 100],
    ct:comment("~b requests, ~b failed", [length(Results), length(Errors)]),
    %% At most the connections the killed worker held or had queued.
    ?assert(length(Errors) =< 16, Errors),
    %% The other worker answered after the kill.
    ?assert(lists:member(Other, After)),
    ?assertNot(lists:member(Victim, After)),
    %% The slot came back and serves.
    pyport_test_util:wait_until(fun() ->
                                        P = pyport_test_util:os_pid({web_k, 1}),
                                        P =/= undefined andalso P =/= Victim
                                end),
    New = pyport_test_util:os_pid({web_k, 1}),
    pyport_test_util:wait_until(
      fun() -> lists:member(integer_to_binary(New), [B || _ <- lists:seq(1, 10),
                                                          {ok, 200, B} <- [get({127, 0, 0, 1}, Port, "/")]])
      end, 100),
    ok = pyport:stop_http(web_k).

load(Port, Stop, Acc) ->
    case erlang:monotonic_time(millisecond) > Stop of
        true -> Acc;
        false ->
            R = get({127, 0, 0, 1}, Port, "/slow"),
            load(Port, Stop, [{erlang:monotonic_time(millisecond), R} | Acc])
    end.
