%% @doc `telemetry' events of pyport (docs/metrics.md), emitted only when
%% the `telemetry' library is loaded: pyport does not depend on it.
%%
%% Whether it is loaded is asked of the runtime at each event with
%% `erlang:function_exported(telemetry, execute, 3)': a lookup in the
%% export table, no code server round trip and no message, as cheap as a
%% `persistent_term' read and never stale. So a `telemetry' loaded after
%% pyport started (an application started later, a handler attached from
%% a shell) is used from its next event on, with no refresh to arrange.
%% It is never loaded by pyport: the check is false for a module not in
%% memory, and an application that attached a handler has loaded it. When
%% it is absent an event costs that one check; measurements and metadata
%% are not even built.
%%
%% A handler that raises must not fail a call: the real library detaches
%% it; pyport also catches whatever escapes.
-module(pyport_telemetry).

-export([enabled/0, call_start/5, call_stop/6, worker_ready/5, worker_event/3, job_start/3, job_stop/4]).

%% @doc Whether events are emitted now (`telemetry' is loaded).
-spec enabled() -> boolean().
enabled() ->
    erlang:function_exported(telemetry, execute, 3).

%% @doc `[pyport, call, start]': a call was sent to a worker.
%% `Meta' holds `pool', `slot', `request' (call, eval or exec), `module'
%% and `function' (binaries for a call, undefined otherwise).
-spec call_start(atom(), pos_integer(), pos_integer(), [term()], integer()) -> ok.
call_start(Pool, Slot, Kind, Fields, StartTime) ->
    case enabled() of
        true ->
            execute([pyport, call, start],
                    #{monotonic_time => StartTime, system_time => erlang:system_time()},
                    meta(Pool, Slot, Kind, Fields));
        false ->
            ok
    end.

%% @doc `[pyport, call, stop]' for `{ok, _}', `[pyport, call, exception]'
%% (with `kind' and `reason') for `{error, _}'.
-spec call_stop(atom(), pos_integer(), pos_integer(), [term()], integer(),
                {ok, term()} | {error, term()}) -> ok.
call_stop(Pool, Slot, Kind, Fields, StartTime, Result) ->
    case enabled() of
        true ->
            Now = erlang:monotonic_time(),
            Measurements = #{duration => Now - StartTime, monotonic_time => Now},
            Meta = meta(Pool, Slot, Kind, Fields),
            case Result of
                {ok, _} ->
                    execute([pyport, call, stop], Measurements, Meta);
                {error, Reason} ->
                    execute([pyport, call, exception], Measurements,
                            Meta#{kind => pyport_stats:error_kind(Reason), reason => Reason})
            end;
        false ->
            ok
    end.

%% @doc `[pyport, worker, start]': an OS process is ready, `Ms' after it
%% was spawned.
-spec worker_ready(atom(), pos_integer(), non_neg_integer() | undefined, binary() | undefined,
                   integer()) -> ok.
worker_ready(Pool, Slot, OsPid, PythonVersion, Ms) ->
    worker_event(start, #{duration_ms => Ms},
                 #{pool => Pool, slot => Slot, os_pid => OsPid, python_version => PythonVersion}).

%% @doc `[pyport, worker, Event]' (`start', `exit' or `recycle') with
%% `Meta' (pool, slot, os_pid, ...).
-spec worker_event(start | exit | recycle, map(), map()) -> ok.
worker_event(Event, Measurements, Meta) ->
    case enabled() of
        true ->
            execute([pyport, worker, Event],
                    Measurements#{system_time => erlang:system_time()}, Meta);
        false ->
            ok
    end.

%% @doc `[pyport, job, start]'.
-spec job_start(atom(), pos_integer(), integer()) -> ok.
job_start(Pool, Slot, StartTime) ->
    case enabled() of
        true ->
            execute([pyport, job, start],
                    #{monotonic_time => StartTime, system_time => erlang:system_time()},
                    #{pool => Pool, slot => Slot});
        false ->
            ok
    end.

%% @doc `[pyport, job, stop]', with `result' (`ok' or `error') and, for
%% an error, `reason'.
-spec job_stop(atom(), pos_integer() | undefined, integer(), {ok, term(), map()} | {error, term()}) ->
          ok.
job_stop(Pool, Slot, StartTime, Result) ->
    case enabled() of
        true ->
            Now = erlang:monotonic_time(),
            Meta = case Result of
                       {ok, _, _} -> #{pool => Pool, slot => Slot, result => ok};
                       {error, Reason} -> #{pool => Pool, slot => Slot, result => error,
                                            reason => Reason}
                   end,
            execute([pyport, job, stop], #{duration => Now - StartTime, monotonic_time => Now},
                    Meta);
        false ->
            ok
    end.

meta(Pool, Slot, 1, [Module, Function | _]) ->
    #{pool => Pool, slot => Slot, request => call, module => Module, function => Function};
meta(Pool, Slot, Kind, _Fields) ->
    #{pool => Pool, slot => Slot, module => undefined, function => undefined,
      request => case Kind of
                     3 -> eval;
                     4 -> exec;
                     _ -> other
                 end}.

execute(Event, Measurements, Meta) ->
    try
        erlang:apply(library(), execute, [Event, Measurements, Meta])
    catch
        _:_ -> ok
    end,
    ok.

%% Named through a function: `telemetry' is not there when pyport is
%% built, and a static call would be an undefined function to xref.
library() ->
    telemetry.
