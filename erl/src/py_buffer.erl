%% @doc erlang_python's `py_buffer': a byte stream Erlang writes and Python
%% reads as a file (`erlang.PyBuffer', e.g. a request body). A thin facade
%% over {@link pyport_buffer}; see docs/channels.md.
%%
%% ```
%% {ok, Buf} = py_buffer:new(byte_size(Body)),
%% ok = py_buffer:write(Buf, Body),
%% ok = py_buffer:close(Buf),
%% {ok, Body} = py:eval(<<"erlang.PyBuffer(b).read()">>, #{b => Buf}).
%% '''
-module(py_buffer).

-export([new/0, new/1, write/2, write/3, close/1, info/1]).

-export_type([buffer/0]).

-type buffer() :: pyport_buffer:handle().

-define(WRITE_TIMEOUT, 30000).

%% @doc A buffer of unknown length, owned by the caller.
-spec new() -> {ok, buffer()} | {error, term()}.
new() ->
    new(undefined).

%% @doc `new(ContentLength)' (`undefined' if unknown: writes past a known
%% length are refused), or pyport's options map (`content_length',
%% `max_size': unread bytes held, default 8 MiB).
-spec new(undefined | non_neg_integer() | map()) -> {ok, buffer()} | {error, term()}.
new(undefined) ->
    pyport_buffer:new(#{});
new(Len) when is_integer(Len) ->
    pyport_buffer:new(#{content_length => Len});
new(Opts) when is_map(Opts) ->
    pyport_buffer:new(Opts);
new(Other) ->
    {error, {invalid_option, content_length, Other}}.

%% @doc Appends `Data'; waits (up to 30 s) while `max_size' unread bytes
%% are held. `{error, write_failed}' once Python or the writer closed it.
-spec write(buffer(), iodata()) ->
          ok | {error, write_failed | invalid_buffer | timeout
                | {content_length_exceeded, non_neg_integer()}}.
write(Buf, Data) ->
    write(Buf, Data, ?WRITE_TIMEOUT).

%% @doc {@link write/2} with a timeout of its own.
-spec write(buffer(), iodata(), timeout()) ->
          ok | {error, write_failed | invalid_buffer | timeout
                | {content_length_exceeded, non_neg_integer()}}.
write(Buf, Data, Timeout) ->
    pyport_buffer:write(Buf, Data, Timeout).

%% @doc End of file: Python's reads return what is left, then `b""'.
-spec close(buffer()) -> ok.
close(Buf) ->
    pyport_buffer:close(Buf).

%% @doc Unread and written bytes, the cap, end of file, closed by Python.
-spec info(buffer()) -> map() | {error, invalid_buffer}.
info(Buf) ->
    pyport_buffer:info(Buf).
