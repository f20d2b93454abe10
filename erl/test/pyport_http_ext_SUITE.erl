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
    [mounts_route, mount_errors, hook_auth_rejection, hook_rewrites_request, hook_on_response_streamed,
     hook_on_error, hook_failures, hook_errors, hornbeam_mounts_and_hooks,
     hook_dispatch_hostile,
     reload_under_load, reload_one_worker_under_load, reload_errors, max_requests_recycles].

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

%% ---- hooks ----------------------------------------------------------------

seen(Name) ->
    {ok, Seen} = py:call(py:context(Name, 1), http_mount_apps, seen, []),
    Seen.

hooks_pool(Config, Name, Hooks, More) ->
    Port = maps:get(bind, More, free_port()),
    {ok, _} = pyport:start_http(Name, opts(Config, maps:merge(#{
        bind => Port, hooks => Hooks, mounts => [{"/api", "http_mount_apps:api"}]}, More))),
    Port.

%% on_request answers without Python: the app never ran.
hook_auth_rejection(Config) ->
    Auth = fun(#{headers := H} = Req) ->
                   case lists:keyfind(<<"authorization">>, 1, H) of
                       {_, <<"Bearer good">>} -> Req;
                       _ -> {respond, 401, [{<<"www-authenticate">>, "Bearer"}], <<"no entry">>}
                   end
           end,
    Port = hooks_pool(Config, web_h1, #{on_request => Auth}, #{}),
    try
        {401, H, <<"no entry">>} = request(Port, "GET", "/api/secret", []),
        <<"Bearer">> = proplists:get_value(<<"www-authenticate">>, H),
        [] = seen(web_h1),
        {200, _, B} = request(Port, "GET", "/api/secret", [{"Authorization", "Bearer good"}]),
        <<"api">> = field(B, "app"),
        [<<"/api/secret">>] = seen(web_h1)
    after
        ok = pyport:stop_http(web_h1)
    end.

%% on_request rewrites method, path (routed after the hook) and headers:
%% the app sees the result.
hook_rewrites_request(Config) ->
    Rewrite = fun(#{path := <<"/old", Rest/binary>>, headers := H} = Req) ->
                      Req#{path => <<"/api", Rest/binary>>, method => <<"PUT">>,
                           headers => [{<<"X-User">>, <<"alice">>} | H]};
                 (Req) -> Req
              end,
    %% {M, F}, as sys.config gives it.
    Port = hooks_pool(Config, web_h2, #{on_request => {?MODULE, rewrite_hook}}, #{}),
    {200, _, B0} = request(Port, "GET", "/api/mf", []),
    <<"PATCH">> = field(B0, "method"),
    ok = pyport:stop_http(web_h2),
    Port = hooks_pool(Config, web_h2, #{on_request => Rewrite}, #{bind => Port}),
    try
        {200, _, B} = request(Port, "GET", "/old/x", []),
        {<<"api">>, <<"/api/x">>, <<"PUT">>} = {field(B, "app"), field(B, "path"), field(B, "method")},
        {match, _} = re:run(B, "\\[\"x-user\", \"alice\"\\]")
    after
        ok = pyport:stop_http(web_h2)
    end.

rewrite_hook(Req) -> Req#{method => <<"PATCH">>}.

%% on_response sees and rewrites status and headers of a streamed
%% (chunked) ASGI response, and of the 404 of no mount.
hook_on_response_streamed(Config) ->
    Self = self(),
    OnResp = fun(#{status := S, headers := H, path := P} = Resp) ->
                     Self ! {resp, S, P},
                     Resp#{status => S + 1, headers => [{<<"x-hooked">>, <<"yes">>} | H]}
             end,
    Port = hooks_pool(Config, web_h3, #{on_response => OnResp}, #{}),
    try
        {201, H, B} = request(Port, "GET", "/api/stream", []),
        <<"yes">> = proplists:get_value(<<"x-hooked">>, H),
        <<"1">> = proplists:get_value(<<"x-app">>, H),
        <<"chunked">> = proplists:get_value(<<"transfer-encoding">>, H),
        <<"/api/stream">> = field(B, "path"),
        receive {resp, 200, <<"/api/stream">>} -> ok after 5000 -> ct:fail(no_hook_call) end,
        {405, H2, _} = request(Port, "GET", "/nowhere", []),
        <<"yes">> = proplists:get_value(<<"x-hooked">>, H2)
    after
        ok = pyport:stop_http(web_h3)
    end.

%% on_error turns the app's failure into a response; `default' keeps 500.
hook_on_error(Config) ->
    OnError = fun(#{type := <<"RuntimeError">>, message := M}, #{path := <<"/api/fail">>}) ->
                      {503, [{<<"content-type">>, <<"text/plain">>}], [<<"sorry: ">>, M]};
                 (_, _) -> default
              end,
    Port = hooks_pool(Config, web_h4, #{on_error => OnError}, #{}),
    try
        {503, _, <<"sorry: the app failed on purpose">>} = request(Port, "GET", "/api/fail", []),
        {500, _, _} = request(Port, "GET", "/api/x/fail", []),
        {200, _, _} = request(Port, "GET", "/api/x", [])
    after
        ok = pyport:stop_http(web_h4)
    end.

%% A hook that crashes, hangs past hook_timeout or answers garbage: 500,
%% never a hung connection; the pool serves on.
hook_failures(Config) ->
    OnReq = fun(#{path := <<"/api/crash">>}) -> error(boom);
               (#{path := <<"/api/hang">>}) -> timer:sleep(60000);
               (#{path := <<"/api/garbage">>}) -> {respond, 42, nope, self()};
               (#{path := <<"/api/badheader">>} = R) -> R#{headers => [{<<"x">>, <<"a\r\nb">>}]};
               (#{path := <<"/api/badpath">>} = R) -> R#{path => <<"no-slash">>};
               (R) -> R
            end,
    Port = hooks_pool(Config, web_h5, #{on_request => OnReq}, #{hook_timeout => 300}),
    Procs0 = erlang:system_info(process_count),
    try
        [{500, _, _} = request(Port, "GET", P, []) ||
            P <- ["/api/crash", "/api/hang", "/api/garbage", "/api/badheader", "/api/badpath"]],
        [] = seen(web_h5),
        {200, _, _} = request(Port, "GET", "/api/fine", []),
        %% The hang was killed: no process left behind.
        ?assert(erlang:system_info(process_count) =< Procs0 + 2)
    after
        ok = pyport:stop_http(web_h5)
    end.

hook_errors(Config) ->
    Port = free_port(),
    S = fun(H) -> pyport:start_http(web_he, opts(Config, #{bind => Port, app => "http_mount_apps:api",
                                                            hooks => H})) end,
    {error, {invalid_http_option, web_he, hooks, _}} = S(#{on_request => fun(_, _) -> ok end}),
    {error, {invalid_http_option, web_he, hooks, _}} = S(#{on_error => fun(_) -> ok end}),
    {error, {invalid_http_option, web_he, hooks, _}} = S(#{on_other => fun(_) -> ok end}),
    {error, {invalid_http_option, web_he, hooks, _}} = S(#{on_request => "m:f"}),
    {error, {invalid_http_option, web_he, hooks, _}} = S([]),
    {error, {invalid_http_option, web_he, hook_timeout, 0}} =
        pyport:start_http(web_he, opts(Config, #{bind => Port, app => "http_mount_apps:api",
                                                 hook_timeout => 0})),
    ok.

%% Hornbeam's start(#{mounts => ...}) with an ASGI mount and lifespan (the
%% case Hornbeam itself crashes on) and its hooks.
hornbeam_mounts_and_hooks(Config) ->
    Port = free_port(),
    Hook = fun(#{path := <<"/w/deny">>}) -> {respond, 403, [], <<"denied">>}; (R) -> R end,
    {ok, _} = hornbeam:start(#{mounts => [{"/api", "http_mount_apps:api", #{worker_class => asgi}},
                                          {"/w", "http_mount_apps:wsgi"}]},
                             #{bind => Port, pythonpath => [?config(data_dir, Config)],
                               workers => 1, lifespan => on,
                               hooks => #{on_request => Hook,
                                          on_response => fun(#{headers := H} = R) ->
                                                                 R#{headers => [{"x-seen", "1"} | H]}
                                                         end}}),
    try
        {200, _, B} = request(Port, "GET", "/api/x", []),
        {<<"api">>, <<"api">>} = {field(B, "app"), field(B, "state")},
        {200, H2, B2} = request(Port, "GET", "/w/y", []),
        <<"1">> = proplists:get_value(<<"x-seen">>, H2),  % on_response on a WSGI response
        {<<"/w">>, <<"/y">>} = {field(B2, "SCRIPT_NAME"), field(B2, "PATH_INFO")},
        {403, _, <<"denied">>} = request(Port, "GET", "/w/deny", [])
    after
        ok = hornbeam:stop()
    end.

%% ---- reload ---------------------------------------------------------------

reload_under_load(Config) ->
    reload_load(Config, web_r2, 2).

%% One worker: while it is replaced nobody accepts, the connections wait in
%% the held socket's queue, none is refused or reset.
reload_one_worker_under_load(Config) ->
    reload_load(Config, web_r1, 1).

reload_load(Config, Name, Workers) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(Name, opts(Config, #{bind => Port, workers => Workers,
                                                     app => "http_mount_apps:api"})),
    try
        OsPids0 = os_pids(Name),
        Self = self(),
        Clients = [spawn_link(fun() -> pyport_http_load:client(Self, Port, "/api/r", Kind) end)
                   || Kind <- [keepalive, keepalive, keepalive, fresh, fresh, fresh]],
        timer:sleep(500),
        T0 = erlang:monotonic_time(millisecond),
        ok = pyport:reload_http(Name),
        Took = erlang:monotonic_time(millisecond) - T0,
        timer:sleep(500),
        [C ! stop || C <- Clients],
        Results = [receive {C, R} -> R after 70000 -> ct:fail(client_stuck) end || C <- Clients],
        {Ok, Failed} = lists:foldl(fun({O, F}, {A, B}) -> {A + O, B + F} end, {0, 0}, Results),
        OsPids1 = os_pids(Name),
        ct:pal("reload of ~b workers: ~b ms, ~b requests answered, ~b failed", [Workers, Took, Ok, Failed]),
        ?assertEqual(0, Failed),
        ?assert(Ok > 100),
        [?assertNotEqual(A, B) || {A, B} <- lists:zip(OsPids0, OsPids1)],
        {200, _, _} = request(Port, "GET", "/api/after", [])
    after
        ok = pyport:stop_http(Name)
    end.

os_pids(Name) ->
    {ok, Ws} = pyport:workers(Name),
    [pyport_worker:os_pid(P) || {_, P} <- Ws].

reload_errors(_Config) ->
    {error, {no_http, nope}} = pyport:reload_http(nope),
    ok.

%% max_requests counts HTTP requests: the worker is replaced as by
%% reload_http/1, under load, without a failed request.
max_requests_recycles(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_mr, opts(Config, #{bind => Port, workers => 2,
                                                       max_requests => 1500,
                                                       app => "http_mount_apps:api"})),
    try
        OsPids0 = os_pids(web_mr),
        Self = self(),
        Clients = [spawn_link(fun() -> pyport_http_load:client(Self, Port, "/api/r", Kind) end)
                   || Kind <- [keepalive, keepalive, keepalive, fresh, fresh, fresh]],
        Deadline = erlang:monotonic_time(millisecond) + 20000,
        Replaced = fun Wait() ->
                           Now = os_pids(web_mr),
                           Changed = length([x || {A, B} <- lists:zip(OsPids0, Now), A =/= B]),
                           case Changed =:= length(Now) orelse
                               erlang:monotonic_time(millisecond) > Deadline of
                               true -> Changed;
                               false -> timer:sleep(100), Wait()
                           end
                   end(),
        timer:sleep(300),
        [C ! stop || C <- Clients],
        Results = [receive {C, R} -> R after 70000 -> ct:fail(client_stuck) end || C <- Clients],
        {Ok, Failed} = lists:foldl(fun({O, F}, {A, B}) -> {A + O, B + F} end, {0, 0}, Results),
        ct:pal("max_requests 1500: ~b workers replaced, ~b requests answered, ~b failed",
               [Replaced, Ok, Failed]),
        ?assertEqual(2, Replaced),
        ?assertEqual(0, Failed)
    after
        ok = pyport:stop_http(web_mr)
    end.

%% What a worker sends pyport.http_hook is hostile: junk is answered with
%% an error or the hook sees a well-formed request, never a crash, and no
%% atom is made.
hook_dispatch_hostile(_Config) ->
    Self = self(),
    ok = pyport_http_hooks:install(web_hd, #{on_request => fun(R) -> Self ! {saw, R}, R end,
                                             on_error => fun(_, _) -> default end}, 1000),
    try
        Atoms0 = erlang:system_info(atom_count),
        Junk = [[], [1, 2, 3], [<<"web_hd">>], [<<"web_hd">>, <<"on_request">>],
                [<<"nope_pool_xyz">>, <<"on_request">>, #{}],
                [<<"web_hd">>, <<"on_other_xyz">>, #{}],
                [<<"web_hd">>, <<"on_error">>, #{}],
                [<<"web_hd">>, <<"on_response">>, #{}]],
        [[<<"error">>, _] = pyport_http_hooks:dispatch(J) || J <- Junk],
        %% Ill-formed requests reach the hook well-formed (unknown keys
        %% dropped, bad values emptied), and its answer is checked.
        [<<"error">>, _] = pyport_http_hooks:dispatch([<<"web_hd">>, <<"on_request">>,
                                                       #{<<"method">> => 1, <<"path">> => self(),
                                                         <<"evil_key_xyz">> => 1}]),
        receive {saw, #{method := <<>>, path := <<>>} = R} -> false = maps:is_key(evil_key_xyz, R)
        after 2000 -> ct:fail(no_hook_call) end,
        [<<"continue">>, <<"GET">>, <<"/a">>, {bytes, <<"q=1">>}, [{{bytes, <<"h">>}, {bytes, <<"v">>}}]] =
            pyport_http_hooks:dispatch([<<"web_hd">>, <<"on_request">>,
                                        #{<<"method">> => <<"GET">>, <<"path">> => <<"/a">>,
                                          <<"query_string">> => <<"q=1">>,
                                          <<"headers">> => [{<<"h">>, <<"v">>}, junk]}]),
        [<<"default">>] = pyport_http_hooks:dispatch([<<"web_hd">>, <<"on_error">>, junk, junk]),
        ?assertEqual(Atoms0, erlang:system_info(atom_count))
    after
        pyport_http_hooks:uninstall(web_hd)
    end.
