%% @doc One request's ASGI scope or WSGI environ run on a pool, for an HTTP
%% server that is already in Erlang: the work behind erlang_python's
%% `py_asgi:run/4,5' and `py_wsgi:run/3,4' (docs/http.md).
-module(pyport_http_run).

-export([asgi/5, wsgi/4]).

-type opts() :: #{pool => atom(), timeout => timeout()}.
-export_type([opts/0]).

%% @doc Runs `Module:Callable' (an ASGI app) on `Scope' and `Body'.
-spec asgi(binary() | string(), binary() | string(), map(), binary(), opts()) ->
          {ok, {integer(), [{binary(), binary()}], binary()}} | {error, term()}.
asgi(Module, Callable, Scope, Body, Opts) when is_map(Scope), is_binary(Body), is_map(Opts) ->
    call(run_asgi, [name(Module), name(Callable), Scope, Body], Opts).

%% @doc Runs `Module:Callable' (a WSGI app) on `Environ' (the body in
%% `<<"wsgi.input">>').
-spec wsgi(binary() | string(), binary() | string(), map(), opts()) ->
          {ok, {binary(), [{binary(), binary()}], binary()}} | {error, term()}.
wsgi(Module, Callable, Environ, Opts) when is_map(Environ), is_map(Opts) ->
    call(run_wsgi, [name(Module), name(Callable), Environ], Opts).

call(Function, Args, Opts) ->
    CallOpts = maps:with([pool, timeout], Opts),
    case py:call('erlang._http_run', Function, Args, #{}, CallOpts) of
        {ok, {Status, Headers, Body}} when is_list(Headers) -> {ok, {Status, Headers, Body}};
        {ok, Other} -> {error, {bad_response, Other}};
        {error, _} = Error -> Error
    end.

name(N) when is_binary(N) -> N;
name(N) when is_list(N) -> unicode:characters_to_binary(N);
name(N) when is_atom(N) -> atom_to_binary(N).
