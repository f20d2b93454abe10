%% @doc Tracing spans from Python (`with erlang.Span(...)',
%% `@erlang.trace()'), kept in an ETS table of the VM while tracing is
%% enabled (`py:enable_tracing/0'). Spans arriving while it is disabled are
%% dropped by the worker's owner. The table keeps at most ?MAX_SPANS spans;
%% later ones are dropped (and counted) until it is cleared.
-module(pyport_trace).

-export([new_table/0, enable/0, disable/0, enabled/0, record/2, spans/0, compat_spans/0, clear/0,
         dropped/0, fields/0]).

-define(TAB, pyport_traces).
-define(MAX_SPANS, 100000).

%% @doc Creates the table; called by the process that owns it ({@link pyport_state}).
-spec new_table() -> ok.
new_table() ->
    _ = ets:new(?TAB, [named_table, public, ordered_set, {write_concurrency, true}]),
    persistent_term:put({?MODULE, dropped}, counters:new(1, [write_concurrency])),
    ok.

%% @doc Starts keeping spans.
-spec enable() -> ok.
enable() ->
    persistent_term:put({?MODULE, enabled}, true).

%% @doc Stops keeping spans (those kept stay until {@link clear/0}).
-spec disable() -> ok.
disable() ->
    persistent_term:put({?MODULE, enabled}, false).

-spec enabled() -> boolean().
enabled() ->
    persistent_term:get({?MODULE, enabled}, false).

%% @doc Keeps a span (a map from Python) with `Meta' (the worker it came
%% from) merged in, if tracing is enabled.
-spec record(map(), map()) -> ok.
record(Span, Meta) when is_map(Span) ->
    case enabled() of
        false ->
            ok;
        true ->
            case ets:info(?TAB, size) < ?MAX_SPANS of
                true ->
                    Start = maps:get(<<"start_us">>, Span, 0),
                    Key = {Start, erlang:unique_integer([monotonic])},
                    true = ets:insert(?TAB, {Key, maps:merge(atom_keys(Span), Meta)}),
                    ok;
                false ->
                    counters:add(persistent_term:get({?MODULE, dropped}), 1, 1)
            end
    end;
record(_Other, _Meta) ->
    ok.

%% @doc The spans kept, oldest start first. Keys are atoms (`name',
%% `trace_id', `span_id', `parent_id', `start_us', `end_us', `duration_us',
%% `status', `attributes', `events', `error'), plus the worker's `pyport_pool',
%% `pyport_slot' and `os_pid' (and `domain').
-spec spans() -> [map()].
spans() ->
    [Span || {_, Span} <- ets:tab2list(?TAB)].

%% @doc The spans kept, oldest start first, with erlang_python's keys:
%% `name', `span_id', `parent_id' (`undefined' for a root span),
%% `attributes', `start_time' and `end_time' (µs), `duration_us', `status'
%% (`ok' or `error'), `end_attrs' (`#{<<"exception">> => Text}' for a span
%% that raised, else `#{}'), `events' (`[#{name, attrs, time}]', newest
%% first); pyport adds `trace_id' and the worker's `pyport_pool',
%% `pyport_slot' and `os_pid'.
-spec compat_spans() -> [map()].
compat_spans() ->
    [compat(Span) || Span <- spans()].

compat(Span) ->
    Extra = maps:with([trace_id, pyport_pool, pyport_slot, os_pid, domain], Span),
    EndAttrs = case Span of
                   #{error := Text} -> #{<<"exception">> => Text};
                   #{} -> #{}
               end,
    Events = [#{name => maps:get(<<"name">>, E, undefined),
                attrs => maps:get(<<"attributes">>, E, #{}),
                time => maps:get(<<"time_us">>, E, undefined)}
              || E <- maps:get(events, Span, []), is_map(E)],
    Extra#{name => maps:get(name, Span, undefined),
           span_id => maps:get(span_id, Span, undefined),
           parent_id => case maps:get(parent_id, Span, none) of
                            none -> undefined;
                            P -> P
                        end,
           attributes => maps:get(attributes, Span, #{}),
           start_time => maps:get(start_us, Span, undefined),
           end_time => maps:get(end_us, Span, undefined),
           duration_us => maps:get(duration_us, Span, undefined),
           status => case maps:get(status, Span, <<"ok">>) of
                         <<"error">> -> error;
                         error -> error;
                         _ -> ok
                     end,
           end_attrs => EndAttrs,
           events => lists:reverse(Events)}.

%% @doc Forgets every span kept.
-spec clear() -> ok.
clear() ->
    true = ets:delete_all_objects(?TAB),
    counters:put(persistent_term:get({?MODULE, dropped}), 1, 0),
    ok.

%% @doc Spans dropped because the table was full.
-spec dropped() -> non_neg_integer().
dropped() ->
    counters:get(persistent_term:get({?MODULE, dropped}), 1).

%% The span's own fields become atoms (a fixed set, which exist already);
%% attribute names stay binaries.
atom_keys(Span) ->
    maps:fold(fun(K, V, Acc) when is_binary(K) ->
                      try Acc#{binary_to_existing_atom(K, utf8) => V}
                      catch error:badarg -> Acc#{K => V}
                      end;
                 (K, V, Acc) ->
                      Acc#{K => V}
              end, #{}, Span).

%% @doc The fields of a span from Python. Listing them here makes these
%% atoms exist once this module is loaded, before any span is decoded.
-spec fields() -> [atom()].
fields() ->
    [name, trace_id, span_id, parent_id, start_us, end_us, duration_us, status,
     attributes, events, error].
