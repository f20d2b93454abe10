%% @doc HTTP pools: a pyport pool whose every worker serves an ASGI app
%% over HTTP/1.1 itself, on its own event loop (docs/http.md).
%%
%% Erlang only starts, supervises and stops the workers: each worker binds
%% the pool's address with SO_REUSEPORT from its init code
%% (`erlang._http.start', proto/PROTOCOL.md "HTTP pools"), so the kernel
%% spreads connections over the workers and a request never crosses the
%% port. A worker that dies costs its own connections only; its slot is
%% restarted by the pool and binds again.
-module(pyport_http).

-export([start/2, stop/1, info/1, parse_bind/1, reload/1, handoff/1]).

-export_type([bind/0, error_reason/0]).

-type bind() :: string() | binary() | inet:port_number().
-type error_reason() :: {missing_http_option, atom(), app}
                      | {invalid_http_option, atom(), atom(), term()}
                      | {bad_bind, atom(), term(), string()}
                      | {address_in_use, atom(), binary()}
                      | {already_started, atom()}
                      | {app_failed, atom(), binary()}
                      | {invalid_mount, term()}
                      | {duplicate_mount_prefix, binary()}
                      | pyport_http_tls:error_reason()
                      | term().

%% The server's own options, their defaults (`erlang._http.DEFAULTS' has
%% the same) and checks; every other key is a pool option.
-define(HTTP_KEYS, [app, bind, workers, max_request_line, max_headers, max_header_bytes,
                    max_body, header_timeout, body_timeout, keepalive_timeout, write_timeout, request_timeout, backlog,
                    root_path, lifespan, access_log, interface, wsgi_threads, mounts,
                    hooks, hook_timeout, websocket_max_message_size,
                    websocket_ping_interval, websocket_ping_timeout, websocket_compress,
                    certfile, keyfile, cacertfile, verify]).

-define(REGISTRY(Name), {?MODULE, Name}).
-define(START_TIMEOUT_MS, 10000).
%% How long stop/1 lets requests in flight finish.
-define(STOP_GRACE_MS, 5000).
-define(HOOK_TIMEOUT_MS, 5000).

%% @doc Starts HTTP pool `Name': `Opts' are the pool's options (docs/
%% configuration.md; `workers' is the pool's `size') plus the server's
%% (docs/http.md). Returns once every worker serves, or an error naming
%% what is wrong (a bad option or address, an address in use, an app that
%% cannot be imported).
-spec start(atom(), map()) -> {ok, pid()} | {error, error_reason()}.
start(Name, Opts) when is_atom(Name), is_map(Opts) ->
    case persistent_term:get(?REGISTRY(Name), undefined) of
        undefined ->
            start_new(Name, Opts);
        Reg ->
            case lists:member(Name, pyport:pools()) of
                true ->
                    {error, {already_started, Name}};
                false ->
                    %% Its pool is gone (stopped with stop_pool/1, or given
                    %% up by its supervisor): the name is free again.
                    persistent_term:erase(?REGISTRY(Name)),
                    pyport_http_reload:remove_dir(maps:get(handoff, Reg, undefined)),
                    start_new(Name, Opts)
            end
    end;
start(Name, Opts) ->
    {error, {invalid_http_option, Name, options, Opts}}.

start_new(Name, Opts) ->
    {Http, Pool0} = maps:fold(fun(K, V, {H, P}) ->
                                      case lists:member(K, ?HTTP_KEYS) of
                                          true -> {H#{K => V}, P};
                                          false -> {H, P#{K => V}}
                                      end
                                  end, {#{}, #{}}, Opts),
    maybe_start(Name, Http, Pool0).

maybe_start(Name, Http, Pool0) ->
    case check_http(Name, Http) of
        {ok, App, Bind, Server} ->
            case probe(Name, Bind) of
                ok ->
                    Pool1 = case Http of
                                #{workers := W} -> Pool0#{size => W};
                                #{} -> Pool0
                            end,
                    Handoff = pyport_http_reload:handoff_dir(Name),
                    %% max_requests counts HTTP requests (the worker asks
                    %% for its graceful recycle), not the pool's calls.
                    %% max_rss: the pool's own recycle would close the
                    %% listener as a crash does; pyport_http_rss replaces
                    %% the worker through the hand-off instead.
                    {MaxRss, Pool1b} = pyport_http_rss:split(Pool1),
                    {Server1, Pool2} =
                        case Pool1b of
                            #{max_requests := Max} when is_integer(Max), Max > 0 ->
                                pyport_http_reload:install(),
                                {Server#{max_requests => Max}, maps:remove(max_requests, Pool1b)};
                            #{} ->
                                {Server, Pool1b}  % infinity, or a bad value the pool refuses
                        end,
                    Pool = Pool2#{
                             init_code => init_code(maps:get(init_code, Pool1, undefined), App, Bind,
                                                    Server1#{handoff => Handoff,
                                                             pool => atom_to_binary(Name)})},
                    case Http of
                        #{hooks := Hooks} when map_size(Hooks) > 0 ->
                            pyport_http_hooks:install(Name, Hooks,
                                                      maps:get(hook_timeout, Http, ?HOOK_TIMEOUT_MS));
                        #{} ->
                            ok
                    end,
                    case start_pool(Name, App, Bind, Handoff, Pool, MaxRss) of
                        {ok, _} = Ok ->
                            Ok;
                        {error, _} = Error ->
                            pyport_http_hooks:uninstall(Name),
                            pyport_http_reload:remove_dir(Handoff),
                            Error
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

start_pool(Name, App, Bind, Handoff, Pool, MaxRss) ->
    case pyport:start_pool(Name, Pool) of
        {ok, Pid} ->
            %% Each worker listens once its lifespan startup is done: wait
            %% for all, so a startup.failed fails the start.
            Timeout = maps:get(start_timeout, Pool, ?START_TIMEOUT_MS),
            case wait_serving(Name, Timeout) of
                ok ->
                    Watcher = pyport_http_rss:start(Name, Pid, MaxRss, Handoff),
                    persistent_term:put(?REGISTRY(Name), #{app => App, bind => Bind,
                                                           handoff => Handoff,
                                                           rss_watcher => Watcher}),
                    {ok, Pid};
                {error, Reason} ->
                    _ = pyport:stop_pool(Name),
                    {error, start_error(Name, Reason)}
            end;
        {error, Reason} ->
            {error, start_error(Name, Reason)}
    end.

wait_serving(Name, Timeout) ->
    {ok, Workers} = pyport:workers(Name),
    case [E || {error, _} = E <- each_worker(Name, Workers, wait_serving, [], Timeout)] of
        [] -> ok;
        [Error | _] -> Error
    end.

%% The pool reports the init code's exception; say it is the app's start.
start_error(Name, Reason) ->
    case find_message(Reason, 6) of
        {ok, Message} ->
            case pyport_http_tls:start_error(Message) of
                {ok, TlsError} -> TlsError;
                error -> {app_failed, Name, Message}
            end;
        error -> Reason
    end.

find_message(_, 0) ->
    error;
find_message(#{message := M}, _) when is_binary(M) -> {ok, M};
find_message(#{<<"message">> := M}, _) when is_binary(M) -> {ok, M};
find_message({init_failed, init_code, {_Type, M}}, _) when is_binary(M) -> {ok, M};
find_message({python_error, _Type, M, _Tb}, _) when is_binary(M) -> {ok, M};
find_message(T, N) when is_tuple(T) ->
    find_message(tuple_to_list(T), N - 1);
find_message([H | T], N) ->
    case find_message(H, N - 1) of
        {ok, _} = Ok -> Ok;
        error -> find_message(T, N)
    end;
find_message(M, _) when is_binary(M), byte_size(M) > 0 ->
    case binary:match(M, [<<"app ">>, <<"bind ">>, <<"lifespan">>, <<"TLS: ">>]) of
        nomatch -> error;
        _ -> {ok, M}
    end;
find_message(_, _) ->
    error.

%% @doc Stops HTTP pool `Name': its workers close their listeners and exit.
-spec stop(atom()) -> ok | {error, {no_http, atom()}}.
stop(Name) when is_atom(Name) ->
    case persistent_term:get(?REGISTRY(Name), undefined) of
        undefined ->
            {error, {no_http, Name}};
        Reg ->
            persistent_term:erase(?REGISTRY(Name)),
            %% Listeners closed, requests in flight finished (up to the
            %% grace period), lifespan shutdown run; then the pool stops.
            Grace = ?STOP_GRACE_MS,
            _ = case pyport:workers(Name) of
                    {ok, Workers} ->
                        each_worker(Name, Workers, stop, [Grace / 1000], Grace + 2000);
                    {error, _} ->
                        ok
                end,
            pyport_http_rss:stop(maps:get(rss_watcher, Reg, undefined)),
            _ = pyport:stop_pool(Name),
            pyport_http_reload:stop_holder(Name),
            pyport_http_reload:remove_dir(maps:get(handoff, Reg, undefined)),
            pyport_http_hooks:uninstall(Name)
    end.

%% @doc Replaces every worker of HTTP pool `Name', one at a time, without
%% losing a request (pyport_http_reload, docs/http.md "Reload"): the new
%% OS processes load the app's code afresh.
-spec reload(atom()) -> ok | {error, {no_http, atom()} | {reload_failed, atom(), pos_integer(), term()}}.
reload(Name) when is_atom(Name) ->
    case persistent_term:get(?REGISTRY(Name), undefined) of
        undefined ->
            {error, {no_http, Name}};
        #{handoff := Dir} ->
            case pyport:workers(Name) of
                {ok, Workers} -> pyport_http_reload:reload(Name, Workers, Dir);
                {error, _} -> {error, {no_http, Name}}
            end
    end.

%% @doc The app, address and workers of HTTP pool `Name'.
-spec info(atom()) -> {ok, #{app := binary(), bind := binary(), workers := [map()]}}
                    | {error, {no_http, atom()}}.
info(Name) when is_atom(Name) ->
    case persistent_term:get(?REGISTRY(Name), undefined) of
        undefined ->
            {error, {no_http, Name}};
        Info ->
            case pyport:pool_info(Name) of
                {ok, #{workers := Workers}} ->
                    {ok, (maps:without([handoff, rss_watcher], Info))#{workers => Workers}};
                {error, _} -> {error, {no_http, Name}}
            end
    end.

%% Calls erlang._http:Function(Args...) on every worker at once. Each call
%% runs in a process that exits with its result, on purpose.
-dialyzer({nowarn_function, each_worker/5}).
each_worker(Name, Workers, Function, Args, Timeout) ->
    Ctxs = [py:context(Name, Slot) || {Slot, _} <- Workers],
    Monitors = [spawn_monitor(fun() ->
                                      exit({result, py:call(Ctx, 'erlang._http', Function, Args,
                                                            #{}, #{timeout => Timeout})})
                              end) || Ctx <- Ctxs],
    [receive
         {'DOWN', Ref, process, Pid, {result, R}} -> R;
         {'DOWN', Ref, process, Pid, Other} -> {error, Other}
     end || {Pid, Ref} <- Monitors].

%% ---- options ---------------------------------------------------------------

check_http(Name, #{app := App0} = Http) ->
    Bind0 = maps:get(bind, Http, <<"127.0.0.1:8000">>),
    AppOk = case Http of
                #{mounts := _} when App0 =:= mounts_only -> {ok, <<>>};
                #{} -> pyport_http_mounts:app(App0)
            end,
    case {AppOk, parse_bind(Bind0)} of
        {error, _} ->
            {error, {invalid_http_option, Name, app, App0}};
        {_, {error, Why}} ->
            {error, {bad_bind, Name, Bind0, Why}};
        {{ok, App}, {ok, Bind, _Address}} ->
            Rest = maps:without([app, bind, mounts | pyport_http_tls:keys()], Http),
            case check_server(Name, maps:to_list(Rest), #{}) of
                {ok, Server0} ->
                    case {pyport_http_mounts:check(maps:get(mounts, Http, []), App),
                          pyport_http_tls:check(Http)} of
                        {{error, _} = Error, _} -> Error;
                        {_, {error, _} = Error} -> Error;
                        {{ok, []}, {ok, Tls}} -> {ok, App, Bind, maps:merge(Server0, Tls)};
                        {{ok, Mounts}, {ok, Tls}} ->
                            {ok, App, Bind, maps:merge(Server0#{mounts => Mounts}, Tls)}
                    end;
                {error, _} = Error ->
                    Error
            end
    end;
check_http(Name, #{mounts := M} = Http) when M =/= [] ->
    check_http(Name, Http#{app => mounts_only});
check_http(Name, _) ->
    {error, {missing_http_option, Name, app}}.

check_server(_, [], Acc) ->
    {ok, Acc};
check_server(Name, [{workers, N} | T], Acc) when is_integer(N), N > 0 ->
    check_server(Name, T, Acc);
check_server(Name, [{K, N} | T], Acc)
  when (K =:= max_request_line orelse K =:= max_headers orelse K =:= max_header_bytes
        orelse K =:= max_body orelse K =:= backlog), is_integer(N), N >= 0, N < 1 bsl 40 ->
    check_server(Name, T, Acc#{K => N});
check_server(Name, [{K, Ms} | T], Acc)
  when (K =:= header_timeout orelse K =:= body_timeout orelse K =:= keepalive_timeout
        orelse K =:= write_timeout orelse K =:= request_timeout),
       is_integer(Ms), Ms > 0, Ms =< 16#FFFFFFFF ->
    %% Milliseconds here, seconds in Python.
    check_server(Name, T, Acc#{K => {float, Ms / 1000}});
check_server(Name, [{interface, I} | T], Acc) when I =:= asgi; I =:= wsgi; I =:= auto ->
    check_server(Name, T, Acc#{interface => atom_to_binary(I)});
check_server(Name, [{wsgi_threads, N} | T], Acc) when is_integer(N), N > 0, N =< 1024 ->
    check_server(Name, T, Acc#{wsgi_threads => N});
check_server(Name, [{websocket_max_message_size, N} | T], Acc)
  when is_integer(N), N >= 0, N < 1 bsl 40 ->
    check_server(Name, T, Acc#{websocket_max_message_size => N});
check_server(Name, [{K, infinity} | T], Acc)
  when K =:= websocket_ping_interval; K =:= websocket_ping_timeout ->
    check_server(Name, T, Acc#{K => none});
check_server(Name, [{K, Ms} | T], Acc)
  when (K =:= websocket_ping_interval orelse K =:= websocket_ping_timeout),
       is_integer(Ms), Ms > 0, Ms =< 16#FFFFFFFF ->
    check_server(Name, T, Acc#{K => {float, Ms / 1000}});
check_server(Name, [{hooks, Hooks} | T], Acc) ->
    case pyport_http_hooks:check(Name, Hooks) of
        {ok, []} -> check_server(Name, T, Acc);
        {ok, Names} -> check_server(Name, T, Acc#{hooks => Names, hook_pool => atom_to_binary(Name)});
        {error, _} = Error -> Error
    end;
check_server(Name, [{hook_timeout, Ms} | T], Acc) when is_integer(Ms), Ms > 0, Ms =< 600000 ->
    check_server(Name, T, Acc#{hook_timeout => {float, Ms / 1000}});
check_server(Name, [{websocket_compress, B} | T], Acc) when is_boolean(B) ->
    check_server(Name, T, Acc#{websocket_compress => B});
check_server(Name, [{access_log, B} | T], Acc) when is_boolean(B) ->
    check_server(Name, T, Acc#{access_log => B});
check_server(Name, [{request_timeout, infinity} | T], Acc) ->
    check_server(Name, T, Acc#{request_timeout => 0});
check_server(Name, [{lifespan, L} | T], Acc) when L =:= auto; L =:= on; L =:= off ->
    check_server(Name, T, Acc#{lifespan => atom_to_binary(L)});
check_server(Name, [{root_path, P} | T], Acc) ->
    case pyport_config:to_binary(P) of
        {ok, <<>>} -> check_server(Name, T, Acc#{root_path => <<>>});
        {ok, <<"/", _/binary>> = Bin} ->
            case binary:last(Bin) of
                $/ -> {error, {invalid_http_option, Name, root_path, P}};
                _ -> check_server(Name, T, Acc#{root_path => Bin})
            end;
        _ -> {error, {invalid_http_option, Name, root_path, P}}
    end;
check_server(Name, [{K, V} | _], _) ->
    {error, {invalid_http_option, Name, K, V}}.

%% @doc Checks an address to listen on: `"host:port"', `"[v6]:port"', a
%% port, `"unix:/path"' or an absolute path. Returns the form the workers
%% get and the parsed address.
-spec parse_bind(bind()) -> {ok, binary(), {inet:ip_address(), inet:port_number()}
                                            | {local, binary()}}
                            | {error, string()}.
parse_bind(Port) when is_integer(Port), Port > 0, Port < 65536 ->
    parse_bind(<<"127.0.0.1:", (integer_to_binary(Port))/binary>>);
parse_bind(Bind) ->
    case pyport_config:to_binary(Bind) of
        {ok, <<"unix:/", _/binary>> = B} -> {ok, B, {local, binary:part(B, 5, byte_size(B) - 5)}};
        {ok, <<"/", _/binary>> = B} -> {ok, <<"unix:", B/binary>>, {local, B}};
        {ok, <<"[", Rest/binary>> = B} ->
            case binary:split(Rest, <<"]:">>) of
                [Host, Port] -> host_port(B, Host, Port, inet6);
                _ -> {error, "expected \"[address]:port\""}
            end;
        {ok, B} ->
            case binary:split(B, <<":">>, [global]) of
                [Port] -> host_port(<<"127.0.0.1:", Port/binary>>, <<"127.0.0.1">>, Port, inet);
                [Host, Port] -> host_port(B, Host, Port, inet);
                _ -> {error, "expected \"host:port\", \"[v6]:port\", a port or a unix path"}
            end;
        error ->
            {error, "not a string or a port number"}
    end.

host_port(B, Host, Port, Family) ->
    case {inet:parse_strict_address(binary_to_list(Host)), catch binary_to_integer(Port)} of
        {{ok, IP}, P} when is_integer(P), P > 0, P < 65536 ->
            case {Family, tuple_size(IP)} of
                {inet, 4} -> {ok, B, {IP, P}};
                {inet6, 8} -> {ok, B, {IP, P}};
                _ -> {error, "address family does not match the form"}
            end;
        {{ok, _}, _} -> {error, "bad port"};
        {_, _} -> {error, "bad IP address (numeric addresses only)"}
    end.

%% Whether the address can be listened on: a clear `address_in_use' before
%% any worker starts (the workers' SO_REUSEPORT sockets could otherwise
%% join another program's listener of the same user).
probe(Name, Bind) ->
    {ok, _, Address} = parse_bind(Bind),
    case Address of
        {local, _} ->
            ok;
        {IP, Port} ->
            case gen_tcp:listen(Port, [{ip, IP}, {reuseaddr, true}]) of
                {ok, S} ->
                    gen_tcp:close(S),
                    ok;
                {error, eaddrinuse} ->
                    {error, {address_in_use, Name, Bind}};
                {error, Why} ->
                    {error, {bad_bind, Name, Bind, inet:format_error(Why)}}
            end
    end.

%% The worker's init code: the pool's own first, then the server's start.
%% Strings travel hex-encoded, so no quoting can break out of the literal.
init_code(User, App, Bind, Server0) ->
    %% The WebSocket idle check and compression are erlang._websocket's,
    %% set before the start.
    WsKeys = [websocket_ping_interval, websocket_ping_timeout, websocket_compress],
    Ws = maps:with(WsKeys, Server0),
    Server = maps:without(WsKeys, Server0),
    Opts = [["'", atom_to_binary(K), "': ", py_value(V), ", "] || {K, V} <- maps:to_list(Server)],
    Configure = case map_size(Ws) of
                    0 -> [];
                    _ -> ["import erlang._websocket as _ws\n_ws.configure(",
                          py_value(maps:get(websocket_ping_interval, Ws, {float, 20.0})), ", ",
                          py_value(maps:get(websocket_ping_timeout, Ws, {float, 20.0})), ", ",
                          py_value(maps:get(websocket_compress, Ws, false)), ")\n"]
                end,
    Start = iolist_to_binary([Configure, "import erlang._http\n",
                              "erlang._http.start(", py_str(App), ", ", py_str(Bind), ", {",
                              Opts, "})\n"]),
    case pyport_config:to_binary(User) of
        {ok, U} when User =/= undefined -> <<U/binary, "\n", Start/binary>>;
        _ -> Start
    end.

py_value({float, F}) -> float_to_binary(F, [short]);
py_value(true) -> <<"True">>;
py_value(none) -> <<"None">>;
py_value(false) -> <<"False">>;
py_value(N) when is_integer(N) -> integer_to_binary(N);
py_value(B) when is_binary(B) -> py_str(B);
py_value(L) when is_list(L) -> ["[", [[py_value(V), ", "] || V <- L], "]"].

py_str(B) ->
    ["bytes.fromhex('", binary:encode_hex(B), "').decode()"].

%% @doc The hand-off directory of HTTP pool `Name' (pyport_http_reload).
-spec handoff(atom()) -> {ok, binary()} | error.
handoff(Name) ->
    case persistent_term:get(?REGISTRY(Name), undefined) of
        #{handoff := Dir} -> {ok, Dir};
        _ -> error
    end.
