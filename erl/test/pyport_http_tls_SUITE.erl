%% TLS on HTTP pools through pyport:start_http/2 (docs/http.md "TLS"): the
%% option checks and their errors, HTTPS served (Erlang's ssl as the
%% client), a bad key failing the start, TLS kept across reload_http/1,
%% and Hornbeam's ssl options. The certificate is made with openssl.
-module(pyport_http_tls_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 90}}].

all() ->
    [option_errors, https_served, bad_key_fails_start, reload_keeps_tls, hornbeam_ssl].

init_per_suite(Config) ->
    _ = application:load(pyport),
    {ok, _} = application:ensure_all_started(pyport),
    {ok, _} = application:ensure_all_started(ssl),
    Dir = ?config(priv_dir, Config),
    Cert = filename:join(Dir, "cert.pem"),
    Key = filename:join(Dir, "key.pem"),
    Out = os:cmd("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1"
                 " -keyout " ++ Key ++ " -out " ++ Cert ++ " 2>&1"),
    case filelib:is_regular(Key) andalso filelib:is_regular(Cert) of
        true -> [{cert, Cert}, {key, Key} | Config];
        false -> {fail, {openssl, Out}}
    end.

end_per_suite(_Config) ->
    _ = application:stop(pyport),
    ok.

opts(Config, More) ->
    maps:merge(#{app => "tls_ct_app:app", workers => 1,
                 python_path => [?config(data_dir, Config)],
                 certfile => ?config(cert, Config), keyfile => ?config(key, Config)},
               More).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

bind(Port) ->
    "127.0.0.1:" ++ integer_to_list(Port).

%% One HTTPS request; the server must present `Cert' (compared as DER:
%% Erlang's ssl refuses a self-signed CA certificate as a server's own).
https_get(Port, Cert) ->
    {ok, Pem} = file:read_file(Cert),
    [{'Certificate', Der, _}] = public_key:pem_decode(Pem),
    case ssl:connect({127, 0, 0, 1}, Port,
                     [binary, {active, false}, {verify, verify_none},
                      {server_name_indication, disable},
                      {alpn_advertised_protocols, [<<"http/1.1">>]}], 5000) of
        {ok, S} ->
            {ok, Der} = ssl:peercert(S),
            Alpn = ssl:negotiated_protocol(S),
            ok = ssl:send(S, <<"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n">>),
            R = read_all(S, <<>>),
            ssl:close(S),
            case R of
                {ok, <<"HTTP/1.1 ", Code:3/binary, _/binary>> = Resp} ->
                    [_, Body] = binary:split(Resp, <<"\r\n\r\n">>),
                    {ok, binary_to_integer(Code), Body, Alpn};
                Other -> {error, Other}
            end;
        {error, _} = E ->
            E
    end.

%% The response, read to its Content-Length (as HTTP clients do: Erlang's
%% ssl does not always report the server's close_notify in passive mode).
read_all(S, Acc) ->
    case binary:split(Acc, <<"\r\n\r\n">>) of
        [Head, Body] ->
            {match, [Len]} = re:run(Head, "content-length: *([0-9]+)",
                                    [caseless, {capture, all_but_first, binary}]),
            case byte_size(Body) >= binary_to_integer(Len) of
                true -> {ok, Acc};
                false -> read_more(S, Acc)
            end;
        [_] ->
            read_more(S, Acc)
    end.

read_more(S, Acc) ->
    case ssl:recv(S, 0, 5000) of
        {ok, B} -> read_all(S, <<Acc/binary, B/binary>>);
        {error, _} = E -> ct:log("after ~p: ~p", [Acc, E]), E
    end.

%%%===================================================================

option_errors(Config) ->
    Cert = ?config(cert, Config),
    Key = ?config(key, Config),
    B = bind(free_port()),
    Base = #{app => "tls_ct_app:app", bind => B, python_path => [?config(data_dir, Config)]},
    ?assertEqual({error, {missing_tls_option, keyfile}},
                 pyport:start_http(t_err, Base#{certfile => Cert})),
    ?assertEqual({error, {missing_tls_option, certfile}},
                 pyport:start_http(t_err, Base#{keyfile => Key})),
    ?assertEqual({error, {missing_tls_option, cacertfile}},
                 pyport:start_http(t_err, Base#{certfile => Cert, keyfile => Key,
                                                verify => verify_peer})),
    ?assertEqual({error, {invalid_tls_option, verify, maybe}},
                 pyport:start_http(t_err, Base#{certfile => Cert, keyfile => Key,
                                                verify => maybe})),
    Missing = filename:join(?config(priv_dir, Config), "nope.pem"),
    ?assertEqual({error, {tls_file_unreadable, list_to_binary(Missing), enoent}},
                 pyport:start_http(t_err, Base#{certfile => Cert, keyfile => Missing})),
    Dir = ?config(priv_dir, Config),
    ?assertEqual({error, {tls_file_unreadable, list_to_binary(Dir), eisdir}},
                 pyport:start_http(t_err, Base#{certfile => Dir, keyfile => Key})),
    ?assertEqual([], [P || P <- pyport:pools(), P =:= t_err]).

https_served(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(t_https, opts(Config, #{bind => bind(Port), workers => 2})),
    {ok, 200, <<"https ", _/binary>>, {ok, <<"http/1.1">>}} = https_get(Port, ?config(cert, Config)),
    %% Plain HTTP on the TLS port: no HTTP answer, the connection closed.
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, <<"GET / HTTP/1.1\r\nHost: t\r\n\r\n">>),
    Plain = plain_read(S, <<>>),
    gen_tcp:close(S),
    ?assertEqual(nomatch, binary:match(Plain, <<"HTTP/1.1">>)),
    {ok, 200, _, _} = https_get(Port, ?config(cert, Config)),
    ok = pyport:stop_http(t_https),
    %% WSGI: wsgi.url_scheme.
    {ok, _} = pyport:start_http(t_https, opts(Config, #{bind => bind(Port),
                                                        app => "tls_ct_app:wsgi_app",
                                                        interface => wsgi})),
    {ok, 200, <<"https ", _/binary>>, _} = https_get(Port, ?config(cert, Config)),
    ok = pyport:stop_http(t_https).

plain_read(S, Acc) ->
    case gen_tcp:recv(S, 0, 5000) of
        {ok, B} -> plain_read(S, <<Acc/binary, B/binary>>);
        {error, _} -> Acc  % closed (or reset): what a TLS server does to plain text
    end.

bad_key_fails_start(Config) ->
    Bad = filename:join(?config(priv_dir, Config), "bad.key"),
    ok = file:write_file(Bad, <<"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n">>),
    Port = free_port(),
    {error, {tls_error, Msg}} = pyport:start_http(t_bad, opts(Config, #{bind => bind(Port),
                                                                        keyfile => Bad})),
    ct:log("~s", [Msg]),
    ?assertNotEqual(nomatch, binary:match(Msg, list_to_binary("keyfile " ++ Bad))),
    ?assertEqual(false, lists:member(t_bad, pyport:pools())),
    %% Nothing holds the port.
    {ok, L} = gen_tcp:listen(Port, [{ip, {127, 0, 0, 1}}]),
    gen_tcp:close(L).

reload_keeps_tls(Config) ->
    Port = free_port(),
    Cert = ?config(cert, Config),
    {ok, _} = pyport:start_http(t_reload, opts(Config, #{bind => bind(Port), workers => 2})),
    {ok, 200, <<"https ", Pid0/binary>>, _} = https_get(Port, Cert),
    ok = pyport:reload_http(t_reload),
    Pids = [begin
                {ok, 200, <<"https ", P/binary>>, _} = https_get(Port, Cert),
                P
            end || _ <- lists:seq(1, 8)],
    ?assertNot(lists:member(Pid0, Pids)),
    ok = pyport:stop_http(t_reload).

hornbeam_ssl(Config) ->
    Cert = ?config(cert, Config),
    Key = ?config(key, Config),
    ?assertEqual({error, {missing_ssl_option, keyfile}},
                 hornbeam:start("m:a", #{ssl => true, certfile => Cert})),
    ?assertEqual({error, {missing_ssl_option, certfile}},
                 hornbeam:start("m:a", #{ssl => true})),
    {ok, Plain} = pyport_http_hornbeam:options("m:a", #{ssl => false, certfile => Cert}),
    ?assertNot(maps:is_key(certfile, Plain)),
    Port = free_port(),
    {ok, _} = hornbeam:start("tls_ct_app:wsgi_app",
                             #{bind => bind(Port), pythonpath => [?config(data_dir, Config)],
                               workers => 1, ssl => true, certfile => Cert, keyfile => Key}),
    {ok, 200, <<"https ", _/binary>>, _} = https_get(Port, Cert),
    ok = hornbeam:stop().
