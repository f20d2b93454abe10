%% HTTP pools' `mounts' and `hooks' (docs/http.md "Mounts", "Hooks"),
%% through pyport:start_http/2. The apps are
%% pyport_http_ext_SUITE_data/http_mount_apps.py: each answers with what
%% it saw, as JSON.
-module(pyport_http_ext_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [mounts_route, mount_errors].

init_per_suite(Config) ->
    _ = application:load(pyport),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    ok.

opts(Config, More) ->
    maps:merge(#{workers => 1, python_path => [?config(data_dir, Config)]}, More).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

%% One request: {Status, Headers (lower-cased names), Body}.
request(Port, Method, Path, Headers) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, [Method, " ", Path, " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n",
                          [[K, ": ", V, "\r\n"] || {K, V} <- Headers], "\r\n"]),
    {ok, Resp} = read_all(S, <<>>),
    gen_tcp:close(S),
    [Head, Body0] = binary:split(Resp, <<"\r\n\r\n">>),
    [<<"HTTP/1.1 ", Code:3/binary, _/binary>> | Lines] = binary:split(Head, <<"\r\n">>, [global]),
    Hs = [begin [K, V] = binary:split(L, <<": ">>), {string:lowercase(K), V} end || L <- Lines],
    Body = case proplists:get_value(<<"transfer-encoding">>, Hs) of
               <<"chunked">> -> dechunk(Body0, <<>>);
               _ -> Body0
           end,
    {binary_to_integer(Code), Hs, Body}.

dechunk(B, Acc) ->
    [Size, Rest] = binary:split(B, <<"\r\n">>),
    case binary_to_integer(Size, 16) of
        0 -> Acc;
        N -> <<Chunk:N/binary, "\r\n", More/binary>> = Rest, dechunk(More, <<Acc/binary, Chunk/binary>>)
    end.

read_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 5000) of
        {ok, B} -> read_all(S, <<Acc/binary, B/binary>>);
        {error, closed} -> {ok, Acc};
        {error, _} = E -> E
    end.

%% The few fields the tests read, without a JSON library: "key": "value".
field(Body, Key) ->
    case re:run(Body, ["\"", Key, "\": (\"([^\"]*)\"|null)"], [{capture, [2], binary}]) of
        {match, [V]} -> V;
        nomatch -> nomatch
    end.

%%%===================================================================

%% Longest prefix wins, root_path is the mount, path stays whole, a WSGI
%% mount gets SCRIPT_NAME/PATH_INFO, no match is 404, lifespan ran in
%% every ASGI mount (its own state).
mounts_route(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_m, opts(Config, #{
        bind => Port, lifespan => on,
        mounts => [{"/api", "http_mount_apps:api"},
                   {<<"/api/admin">>, "http_mount_apps:admin", #{interface => asgi}},
                   {"/legacy", "http_mount_apps:wsgi", #{interface => wsgi}}]})),
    try
        {200, _, B1} = request(Port, "GET", "/api/admin/users", []),
        <<"admin">> = field(B1, "app"),
        <<"/api/admin/users">> = field(B1, "path"),
        <<"/api/admin">> = field(B1, "root_path"),
        <<"admin">> = field(B1, "state"),
        {200, _, B2} = request(Port, "GET", "/api/x", []),
        {<<"api">>, <<"/api">>, <<"api">>} = {field(B2, "app"), field(B2, "root_path"), field(B2, "state")},
        {200, _, B3} = request(Port, "GET", "/legacy/a", []),
        {<<"/legacy">>, <<"/a">>} = {field(B3, "SCRIPT_NAME"), field(B3, "PATH_INFO")},
        {404, _, _} = request(Port, "GET", "/apix", []),
        {404, _, _} = request(Port, "GET", "/", [])
    after
        ok = pyport:stop_http(web_m)
    end.

mount_errors(Config) ->
    Port = free_port(),
    S = fun(M) -> pyport:start_http(web_me, opts(Config, #{bind => Port, mounts => M})) end,
    {error, {invalid_mount, {"api", "m:a"}}} = S([{"api", "m:a"}]),
    {error, {invalid_mount, {"/api/", "m:a"}}} = S([{"/api/", "m:a"}]),
    {error, {invalid_mount, {"/a//b", "m:a"}}} = S([{"/a//b", "m:a"}]),
    {error, {invalid_mount, {"/a", "nocolon"}}} = S([{"/a", "nocolon"}]),
    {error, {invalid_mount, {"/a", "m:a", _}}} = S([{"/a", "m:a", #{interface => x}}]),
    {error, {invalid_mount, {"/a", "m:a", _}}} = S([{"/a", "m:a", #{other => 1}}]),
    {error, {invalid_mount, bad}} = S([bad]),
    {error, {invalid_mount, notalist}} = S(notalist),
    {error, {duplicate_mount_prefix, <<"/a">>}} = S([{"/a", "m:a"}, {<<"/a">>, "m:b"}]),
    {error, {duplicate_mount_prefix, <<"/">>}} =
        pyport:start_http(web_me, opts(Config, #{bind => Port, app => "m:a",
                                                 mounts => [{"/", "m:b"}]})),
    %% A mount whose app cannot be loaded fails the start, naming it.
    {error, {app_failed, web_me, Msg}} = S([{"/a", "http_mount_apps:nope"}]),
    {match, _} = re:run(Msg, "nope"),
    {error, {no_http, web_me}} = pyport:stop_http(web_me),
    ok.
