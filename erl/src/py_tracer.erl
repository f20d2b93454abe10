%% @doc erlang_python's `py_tracer': spans from Python's `erlang.Span' and
%% `erlang.trace'. A thin facade over {@link pyport_trace} (through `py').
-module(py_tracer).

-export([enable/0, disable/0, get_spans/0, clear/0]).

-spec enable() -> ok.
enable() -> py:enable_tracing().

-spec disable() -> ok.
disable() -> py:disable_tracing().

%% @doc `{ok, Spans}', as `py:get_traces/0'.
-spec get_spans() -> {ok, [map()]}.
get_spans() ->
    case py:get_traces() of
        {ok, Spans} -> {ok, Spans};
        Spans when is_list(Spans) -> {ok, Spans}
    end.

-spec clear() -> ok.
clear() -> py:clear_traces().
