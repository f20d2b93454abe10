%% @doc erlang_python's `py_asgi' on pyport: a thin facade over
%% {@link pyport_http_run} (docs/http.md, "py_asgi and py_wsgi").
-module(py_asgi).

-export([run/4, run/5, run_async/4, run_async/5, await_response/1, await_response/2,
         stream/4, stream/5, stream_cancel/1]).

-type response() :: {integer(), [{binary(), binary()}], binary()}.

%% @doc Runs the ASGI app `Module:Callable' on `Scope' and `Body' on the
%% default pool: `{ok, {Status, Headers, ResponseBody}}'.
-spec run(binary(), binary(), map(), binary()) -> {ok, response()} | {error, term()}.
run(Module, Callable, Scope, Body) ->
    run(Module, Callable, Scope, Body, #{}).

%% @doc As run/4, with `pool' and `timeout' options.
-spec run(binary(), binary(), map(), binary(), pyport_http_run:opts()) ->
          {ok, response()} | {error, term()}.
run(Module, Callable, Scope, Body, Opts) ->
    pyport_http_run:asgi(Module, Callable, Scope, Body, Opts).

%% @doc As run/4, returning `{ok, Ref}' at once; the caller then gets
%% `{py_result, Ref, {Status, Headers, Body}}' or `{py_error, Ref, Reason}'.
-spec run_async(binary(), binary(), map(), binary()) -> {ok, reference()} | {error, term()}.
run_async(Module, Callable, Scope, Body) ->
    run_async(Module, Callable, Scope, Body, #{}).

%% @doc As run_async/4, with `pool' and `timeout' (the app's deadline: then
%% it is cancelled and the message is `{py_error, Ref, timeout}').
-spec run_async(binary(), binary(), map(), binary(), pyport_http_run:opts()) ->
          {ok, reference()} | {error, term()}.
run_async(Module, Callable, Scope, Body, Opts) ->
    pyport_http_run:asgi_async(Module, Callable, Scope, Body, Opts).

%% @doc Waits up to 30 s for run_async's message.
-spec await_response(reference()) -> {ok, response()} | {error, term()}.
await_response(Ref) ->
    await_response(Ref, 30000).

%% @doc Waits up to `Timeout' ms for run_async's message: `{ok, Response}',
%% `{error, Reason}', or `{error, timeout}' (the message may still come).
-spec await_response(reference(), timeout()) -> {ok, response()} | {error, term()}.
await_response(Ref, Timeout) ->
    receive
        {py_result, Ref, Response} -> {ok, Response};
        {py_error, Ref, Reason} -> {error, Reason}
    after Timeout ->
            {error, timeout}
    end.

%% @doc Streams the app's response to the caller as it is sent:
%% `{py_stream, Ref, {data, {start, Status, Headers}}}', `{py_stream, Ref,
%% {data, {body, Chunk}}}' per piece, then `{py_stream, Ref, done}' or
%% `{py_stream, Ref, {error, Reason}}'; flow-controlled like
%% py:stream_start/4.
-spec stream(binary(), binary(), map(), binary()) -> {ok, py:stream_ref()} | {error, term()}.
stream(Module, Callable, Scope, Body) ->
    stream(Module, Callable, Scope, Body, #{}).

%% @doc As stream/4, with `pool' and `owner' (the process the messages go to).
-spec stream(binary(), binary(), map(), binary(), #{pool => atom(), owner => pid()}) ->
          {ok, py:stream_ref()} | {error, term()}.
stream(Module, Callable, Scope, Body, Opts) ->
    pyport_http_run:asgi_stream(Module, Callable, Scope, Body, Opts).

%% @doc Stops a stream: the app is cancelled; the last message is
%% `{py_stream, Ref, {error, <<"cancelled">>}}'.
-spec stream_cancel(py:stream_ref()) -> ok.
stream_cancel(Ref) ->
    py:stream_cancel(Ref).
