%% @doc erlang_python's `py_asgi' on pyport: a thin facade over
%% {@link pyport_http_run} (docs/http.md, "py_asgi and py_wsgi").
-module(py_asgi).

-export([run/4, run/5]).

%% @doc Runs the ASGI app `Module:Callable' on `Scope' and `Body' on the
%% default pool: `{ok, {Status, Headers, ResponseBody}}'.
-spec run(binary(), binary(), map(), binary()) ->
          {ok, {integer(), [{binary(), binary()}], binary()}} | {error, term()}.
run(Module, Callable, Scope, Body) ->
    run(Module, Callable, Scope, Body, #{}).

%% @doc As run/4, with `pool' and `timeout' options.
-spec run(binary(), binary(), map(), binary(), pyport_http_run:opts()) ->
          {ok, {integer(), [{binary(), binary()}], binary()}} | {error, term()}.
run(Module, Callable, Scope, Body, Opts) ->
    pyport_http_run:asgi(Module, Callable, Scope, Body, Opts).
