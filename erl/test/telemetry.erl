%% @doc A TEST DOUBLE of the hex `telemetry' library, written for pyport's
%% tests (no code of the library itself): only `attach/4', `detach/1' and
%% `execute/3', with the library's signatures and the behaviour pyport
%% relies on (handlers called in the emitting process; a handler that
%% raises is detached, never fails the emitter). pyport does not depend on
%% `telemetry' (there is no Debian package of it); this module stands in
%% for it in pyport_stats_SUITE, which loads it and purges it again.
-module(telemetry).

-export([attach/4, detach/1, execute/3, list_handlers/1]).

-define(KEY, {?MODULE, handlers}).

-type handler_id() :: term().
-type event_name() :: [atom()].
-type handler_function() :: fun((event_name(), map(), map(), term()) -> any()).

-spec attach(handler_id(), event_name(), handler_function(), term()) ->
          ok | {error, already_exists}.
attach(Id, Event, Fun, Config) when is_list(Event), is_function(Fun, 4) ->
    Handlers = handlers(),
    case lists:keymember(Id, 1, Handlers) of
        true -> {error, already_exists};
        false -> persistent_term:put(?KEY, [{Id, Event, Fun, Config} | Handlers])
    end.

-spec detach(handler_id()) -> ok | {error, not_found}.
detach(Id) ->
    Handlers = handlers(),
    case lists:keymember(Id, 1, Handlers) of
        true -> persistent_term:put(?KEY, lists:keydelete(Id, 1, Handlers));
        false -> {error, not_found}
    end.

-spec execute(event_name(), map(), map()) -> ok.
execute(Event, Measurements, Metadata) when is_map(Measurements), is_map(Metadata) ->
    lists:foreach(fun({Id, E, Fun, Config}) when E =:= Event ->
                          try Fun(Event, Measurements, Metadata, Config)
                          catch _:_ -> detach(Id)
                          end;
                     (_) ->
                          ok
                  end, handlers()).

%% @doc The handlers attached to events starting with `Prefix'.
-spec list_handlers(event_name()) -> [map()].
list_handlers(Prefix) ->
    [#{id => Id, event_name => E, function => Fun, config => Config}
     || {Id, E, Fun, Config} <- handlers(), lists:prefix(Prefix, E)].

handlers() ->
    persistent_term:get(?KEY, []).
