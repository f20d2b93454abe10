%% @doc Hornbeam's `hornbeam:start/1,2' and `stop/0' on pyport's HTTP
%% pools: Hornbeam's option names mapped onto pyport_http's (docs/http.md,
%% "Hornbeam"). hornbeam.erl delegates here.
-module(pyport_http_hornbeam).

-export([start/2, stop/0, options/2]).

%% Hornbeam's single listener.
-define(NAME, hornbeam_http).

%% @doc Starts `AppSpec' (`"module:callable"', the callable `application'
%% when left out) with Hornbeam's options as HTTP pool `hornbeam_http'.
-spec start(string() | binary() | map(), map()) -> {ok, pid()} | {error, term()}.
start(AppSpec, Opts) ->
    case options(AppSpec, Opts) of
        {ok, HttpOpts} -> pyport_http:start(?NAME, HttpOpts);
        {error, _} = Error -> Error
    end.

%% @doc Stops what start/2 started.
-spec stop() -> ok | {error, {no_http, hornbeam_http}}.
stop() ->
    pyport_http:stop(?NAME).

%% @doc pyport_http's options for Hornbeam's `AppSpec' and `Opts'.
-spec options(string() | binary() | map(), map()) -> {ok, map()} | {error, term()}.
options(#{mounts := _} = AppOpts, Opts) when is_map(Opts) ->
    %% `start(#{mounts => [...], ...})': no root app.
    case options("unused:application", maps:merge(AppOpts, Opts)) of
        {ok, Http} -> {ok, maps:remove(app, Http)};
        {error, _} = Error -> Error
    end;
options(AppSpec, Opts) when is_map(Opts) ->
    case pyport_config:to_binary(AppSpec) of
        {ok, <<_, _/binary>> = Spec} ->
            App = case binary:match(Spec, <<":">>) of
                      nomatch -> <<Spec/binary, ":application">>;
                      _ -> Spec
                  end,
            %% Hornbeam's defaults: WSGI, its bind and limits, its
            %% websocket_timeout of 60 s (see map_one/2).
            Base = #{app => App, interface => wsgi, bind => <<"127.0.0.1:8000">>,
                     max_request_line => 4094, max_header_bytes => 8190, max_headers => 100,
                     keepalive_timeout => 2000, request_timeout => 30000,
                     websocket_ping_interval => 30000, websocket_ping_timeout => 30000},
            case ssl(Opts) of
                {ok, Opts1} -> map_all(maps:to_list(Opts1), Base);
                {error, _} = Error -> Error
            end;
        _ ->
            {error, {invalid_hornbeam_app, AppSpec}}
    end;
options(_AppSpec, Opts) ->
    {error, {invalid_hornbeam_options, Opts}}.

map_all([], Acc) ->
    {ok, Acc};
map_all([{mounts, Mounts} | T], Acc) when is_list(Mounts) ->
    case mounts(Mounts, [], []) of
        {ok, Ms, Dirs} ->
            Path = maps:get(python_path, Acc, []) ++ Dirs,
            map_all(T, Acc#{mounts => Ms, python_path => Path});
        {error, _} = Error ->
            Error
    end;
map_all([{pythonpath, Dirs} | T], Acc) when is_list(Dirs) ->
    %% Before a mount's own directories.
    map_all(T, Acc#{python_path => Dirs ++ maps:get(python_path, Acc, [])});
map_all([{K, V} | T], Acc) ->
    case map_one(K, V) of
        {ok, Pairs} -> map_all(T, maps:merge(Acc, maps:from_list(Pairs)));
        ignore -> map_all(T, Acc);
        {error, _} = Error -> Error
    end.

map_one(bind, V) -> {ok, [{bind, V}]};
map_one(worker_class, wsgi) -> {ok, [{interface, wsgi}]};
map_one(worker_class, asgi) -> {ok, [{interface, asgi}]};
map_one(workers, N) -> {ok, [{workers, N}]};
map_one(num_contexts, N) -> {ok, [{workers, N}]};
map_one(pythonpath, Dirs) -> {ok, [{python_path, Dirs}]};
map_one(venv, Dir) -> {ok, [{venv, Dir}]};
map_one(lifespan, L) -> {ok, [{lifespan, L}]};
map_one(max_requests, N) -> {ok, [{max_requests, N}]};
%% Hornbeam's `timeout' (ms) bounds a request until its reply.
map_one(timeout, Ms) -> {ok, [{request_timeout, Ms}]};
%% Hornbeam's `keepalive' is in seconds (cowboy's idle_timeout).
map_one(keepalive, S) when is_integer(S), S > 0 -> {ok, [{keepalive_timeout, S * 1000}]};
map_one(max_request_line_size, N) -> {ok, [{max_request_line, N}]};
map_one(max_header_size, N) -> {ok, [{max_header_bytes, N}]};
map_one(max_headers, N) -> {ok, [{max_headers, N}]};
map_one(root_path, P) -> {ok, [{root_path, P}]};
%% No meaning here: every worker accepts on its own socket, and the app is
%% always loaded before the worker serves.
map_one(num_acceptors, N) when is_integer(N), N > 0 -> ignore;
map_one(preload_app, B) when is_boolean(B) -> ignore;
map_one(hooks, Hooks) -> {ok, [{hooks, Hooks}]};
%% Hornbeam's frame limit is cowboy's max_frame_size; libwslay joins
%% fragments, so the whole message is bounded (a tighter limit, never looser).
map_one(websocket_max_frame_size, N) when is_integer(N), N > 0 ->
    {ok, [{websocket_max_message_size, N}]};
map_one(websocket_max_frame_size, infinity) -> {ok, [{websocket_max_message_size, 0}]};
%% permessage-deflate (zlib over libwslay's RSV1), when the client offers it.
map_one(websocket_compress, B) when is_boolean(B) -> {ok, [{websocket_compress, B}]};
%% Hornbeam's websocket_timeout is cowboy's idle timeout: a peer silent
%% that long is dropped. Here: pinged after half of it, dropped when
%% silent through the other half too (a live peer answers the ping and
%% stays); `infinity': no pings, nobody dropped.
map_one(websocket_timeout, infinity) ->
    {ok, [{websocket_ping_interval, infinity}, {websocket_ping_timeout, infinity}]};
map_one(websocket_timeout, Ms) when is_integer(Ms), Ms >= 2, Ms =< 16#FFFFFFFF ->
    {ok, [{websocket_ping_interval, Ms div 2}, {websocket_ping_timeout, Ms - Ms div 2}]};
map_one(K, V) when K =:= certfile; K =:= keyfile; K =:= cacertfile -> {ok, [{K, V}]};
map_one(K, V) when K =:= routes; K =:= mounts; K =:= max_concurrent;
                   K =:= context_mode; K =:= lifespan_timeout ->
    {error, {unsupported_hornbeam_option, K, V}};
map_one(K, V) when K =:= worker_class; K =:= keepalive; K =:= num_acceptors;
                   K =:= preload_app; K =:= websocket_max_frame_size;
                   K =:= websocket_timeout; K =:= websocket_compress ->
    {error, {invalid_hornbeam_option, K, V}};
map_one(K, V) ->
    {error, {unknown_hornbeam_option, K, V}}.

%% Hornbeam's `ssl => true' needs `certfile' and `keyfile' (its
%% `missing_ssl_option' error); `ssl => false' serves plain HTTP, whatever
%% files are given. pyport_http checks the files themselves.
ssl(#{ssl := true} = Opts) ->
    case Opts of
        #{certfile := _, keyfile := _} -> {ok, maps:remove(ssl, Opts)};
        #{certfile := _} -> {error, {missing_ssl_option, keyfile}};
        #{} -> {error, {missing_ssl_option, certfile}}
    end;
ssl(#{ssl := false} = Opts) ->
    {ok, maps:without([ssl, certfile, keyfile, cacertfile], Opts)};
ssl(#{ssl := V}) ->
    {error, {invalid_hornbeam_option, ssl, V}};
ssl(Opts) ->
    {ok, Opts}.

%% Hornbeam's mounts: `{Prefix, AppSpec}' or `{Prefix, AppSpec, Opts}';
%% `worker_class' is the mount's interface, `pythonpath' joins the pool's
%% (one sys.path per worker, as in Hornbeam).
mounts([], Acc, Dirs) ->
    {ok, lists:reverse(Acc), Dirs};
mounts([{Prefix, Spec} | T], Acc, Dirs) ->
    mounts([{Prefix, Spec, #{}} | T], Acc, Dirs);
mounts([{Prefix, Spec0, MOpts} = M | T], Acc, Dirs) when is_map(MOpts) ->
    Spec = case pyport_config:to_binary(Spec0) of
               {ok, <<_, _/binary>> = B} ->
                   case binary:match(B, <<":">>) of
                       nomatch -> <<B/binary, ":application">>;
                       _ -> B
                   end;
               _ -> Spec0
           end,
    case maps:without([worker_class, pythonpath], MOpts) of
        Rest when map_size(Rest) > 0 ->
            [{K, V} | _] = maps:to_list(Rest),
            {error, {unsupported_hornbeam_option, {mounts, K}, V}};
        _ ->
            Iface = case maps:get(worker_class, MOpts, default) of
                        default -> #{};
                        WC -> #{interface => WC}
                    end,
            MDirs = maps:get(pythonpath, MOpts, []),
            case is_list(MDirs) of
                true -> mounts(T, [{Prefix, Spec, Iface} | Acc], Dirs ++ MDirs);
                false -> {error, {invalid_mount, M}}
            end
    end;
mounts([M | _], _, _) ->
    {error, {invalid_mount, M}}.
