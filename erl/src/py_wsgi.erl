%% @doc erlang_python's `py_wsgi' on pyport: a thin facade over
%% {@link pyport_http_run} (docs/http.md, "py_asgi and py_wsgi").
-module(py_wsgi).

-export([run/3, run/4]).

%% @doc Runs the WSGI app `Module:Callable' on `Environ' (the request body
%% in `<<"wsgi.input">>') on the default pool:
%% `{ok, {StatusLine, Headers, ResponseBody}}'.
-spec run(binary(), binary(), map()) ->
          {ok, {binary(), [{binary(), binary()}], binary()}} | {error, term()}.
run(Module, Callable, Environ) ->
    run(Module, Callable, Environ, #{}).

%% @doc As run/3, with `pool' and `timeout' options.
-spec run(binary(), binary(), map(), pyport_http_run:opts()) ->
          {ok, {binary(), [{binary(), binary()}], binary()}} | {error, term()}.
run(Module, Callable, Environ, Opts) ->
    pyport_http_run:wsgi(Module, Callable, Environ, Opts).
