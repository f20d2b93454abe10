%% @doc One request's ASGI scope or WSGI environ run on a pool, for an HTTP
%% server that is already in Erlang: the work behind erlang_python's
%% `py_asgi:run/4,5' and `py_wsgi:run/3,4' (docs/http.md).
-module(pyport_http_run).

-export([asgi/5, wsgi/4, asgi_async/5, asgi_stream/5]).

-define(CALL, 1).

-type opts() :: #{pool => atom(), timeout => timeout()}.
-export_type([opts/0]).

%% @doc Runs `Module:Callable' (an ASGI app) on `Scope' and `Body'.
-spec asgi(binary() | string(), binary() | string(), map(), binary(), opts()) ->
          {ok, {integer(), [{binary(), binary()}], binary()}} | {error, term()}.
asgi(Module, Callable, Scope, Body, Opts) when is_map(Scope), is_binary(Body), is_map(Opts) ->
    call(run_asgi, [name(Module), name(Callable), Scope, Body], Opts).

%% @doc Starts `Module:Callable' (an ASGI app) on `Scope' and `Body' and
%% returns at once; the caller gets `{py_result, Ref, {Status, Headers,
%% Body}}' or `{py_error, Ref, Reason}' (erlang_python's messages). A small
%% relay process turns the task's result into that message, and cancels the
%% task in the worker if the caller exits first.
-spec asgi_async(binary() | string(), binary() | string(), map(), binary(), opts()) ->
          {ok, reference()} | {error, term()}.
asgi_async(Module, Callable, Scope, Body, Opts) when is_map(Scope), is_binary(Body), is_map(Opts) ->
    case async_options(maps:to_list(Opts), default, default) of
        {ok, Pool, Timeout} ->
            Fields = pyport_args:call_fields('erlang._http_run', run_asgi,
                                    [name(Module), name(Callable), Scope, Body], #{}),
            Caller = self(),
            Ref = make_ref(),
            _ = spawn(fun() -> relay(Caller, Ref, {pool, Pool}, Fields, Timeout) end),
            {ok, Ref};
        {error, _} = Error ->
            Error
    end.

%% Checked here, so the relay cannot fail before it answers.
async_options([], Pool, Timeout) ->
    {ok, Pool, Timeout};
async_options([{pool, P} | T], _, Timeout) when is_atom(P) ->
    async_options(T, P, Timeout);
async_options([{timeout, To} | T], Pool, _)
  when To =:= infinity; is_integer(To), To >= 0 ->
    async_options(T, Pool, To);
async_options([{K, V} | _], _, _) when K =:= pool; K =:= timeout ->
    {error, {invalid_option, K, V}};
async_options([{K, _} | _], _, _) ->
    {error, {bad_option, K}}.

relay(Caller, Ref, Target, Fields, Timeout) ->
    Mon = erlang:monitor(process, Caller),
    Task = try pyport_async:start_task(Target, async_result, {?CALL, Fields}, Timeout)
           catch Class:Crash -> pyport_async:failed_task(async_result, {Class, Crash})
           end,
    receive
        {async_result, Task, {ok, {Status, Headers, Body}}} when is_list(Headers) ->
            Caller ! {py_result, Ref, {Status, Headers, Body}};
        {async_result, Task, {ok, Other}} ->
            Caller ! {py_error, Ref, {bad_response, Other}};
        {async_result, Task, {error, Reason}} ->
            Caller ! {py_error, Ref, Reason};
        {'DOWN', Task, process, _, Why} ->
            Caller ! {py_error, Ref, {worker_exited, Why}};
        {'DOWN', Mon, process, _, _} ->
            %% Nobody wants the response: stop the app.
            pyport_async:cancel(Task)
    end.

%% @doc Starts `Module:Callable' (an ASGI app) on `Scope' and `Body',
%% streaming its response to the caller as it is sent: `{py_stream, Ref,
%% {data, {start, Status, Headers}}}', then `{py_stream, Ref, {data, {body,
%% Chunk}}}' per piece, then `{py_stream, Ref, done}' or `{py_stream, Ref,
%% {error, Reason}}' (py:stream_start/4's messages and flow control: an
%% owner that does not read suspends the app's `send').
-spec asgi_stream(binary() | string(), binary() | string(), map(), binary(),
                  #{pool => atom(), owner => pid()}) ->
          {ok, py:stream_ref()} | {error, term()}.
asgi_stream(Module, Callable, Scope, Body, Opts) when is_map(Scope), is_binary(Body), is_map(Opts) ->
    py:stream_start('erlang._http_run', stream_asgi,
                    [name(Module), name(Callable), Scope, Body], maps:with([pool, owner], Opts)).

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
