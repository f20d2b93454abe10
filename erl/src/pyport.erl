%% @doc Application-level API of pyport: starting it from a shell, pools,
%% and what the workers report about themselves.
-module(pyport).

-export([start/0, start_pool/2, stop_pool/1, pools/0, workers/1, worker_info/1, pool_info/1,
         run_job/2]).
-export([resize_pool/2]).
-export([stats/0, stats/1]).
%% HTTP pools (pyport_http, docs/http.md).
-export([start_http/2, stop_http/1, http_info/1, reload_http/1]).

%% How long introspection waits for a worker's gen_server.
-define(INFO_TIMEOUT_MS, 1000).

%% @doc Starts pyport and what it needs (for shells and scripts).
-spec start() -> {ok, [atom()]} | {error, term()}.
start() ->
    application:ensure_all_started(pyport).

%% @doc Starts a pool at run time, with the options of a pool in
%% `sys.config' (see docs/configuration.md).
-spec start_pool(atom(), map()) -> {ok, pid()} | {error, term()}.
start_pool(Name, Opts) when is_atom(Name) ->
    case pyport_config:validate_pool(Name, Opts) of
        {ok, Valid} -> pyport_pools_sup:start_pool(Name, Valid);
        {error, _} = Error -> Error
    end.

%% @doc Stops a pool; requests in flight on it are answered first where the
%% workers finish them within their shutdown grace period.
-spec stop_pool(atom()) -> ok | {error, {no_pool, atom()}}.
stop_pool(Name) ->
    Stopped = pyport_pools_sup:stop_pool(Name),
    %% Its stats went with it (pyport_stats).
    _ = pyport_stats:stats(Name),
    Stopped.

%% @doc Counters of every running pool, by name: see {@link stats/1}.
-spec stats() -> #{atom() => pyport_stats:pool_stats()}.
stats() ->
    pyport_stats:stats().

%% @doc Counters of a pool since it started, in total and per worker
%% (`workers'): calls, `ok', `errors' by kind, `timeouts', `interrupts',
%% OS-process `restarts' and `recycles' with their reasons, requests
%% `in_flight' and `queued' now, and a latency histogram. They survive
%% worker restarts and go when the pool stops. See docs/metrics.md.
-spec stats(atom()) -> {ok, pyport_stats:pool_stats()} | {error, {no_pool, atom()}}.
stats(Pool) ->
    pyport_stats:stats(Pool).

%% @doc Resizes a pool at run time to `N' workers (docs/pools.md,
%% "Resizing"): growing returns once the new workers take requests;
%% shrinking returns at once, the leaving workers finishing what they hold
%% before they stop. Errors: `{no_pool, Pool}', `{invalid_pool_size, Pool,
%% N}' (not an integer), `{pool_size_out_of_range, Pool, N, {Lo, Hi}}',
%% `{worker_start_failed, Slot, Detail}' (the pool keeps its size).
-spec resize_pool(atom(), pos_integer()) -> ok | {error, term()}.
resize_pool(Pool, N) ->
    pyport_pool:resize(Pool, N).

%% @doc The names of the running pools.
-spec pools() -> [atom()].
pools() ->
    [Name || Name <- pyport_pools_sup:pool_names(),
             element(1, pyport_pool:info(Name)) =:= ok].

%% @doc The worker gen_servers of a pool, by slot.
-spec workers(atom()) -> {ok, [{pos_integer(), pid()}]} | {error, {no_pool, atom()}}.
workers(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{size := Size} = Info} ->
            {ok, [{Slot, Pid} || Slot <- lists:seq(1, Size),
                                 {ok, Pid} <- [pyport_pool:worker(Info, Slot)]]};
        {error, _} = Error ->
            Error
    end.

%% @doc What each worker of a pool is doing: per slot its gen_server pid,
%% OS pid, status, requests in flight, requests served (all its OS
%% processes), OS-process restarts and recycles, and resident memory; for
%% a sandboxed pool also `sandbox': the confinement the worker reported it
%% got (docs/security.md), `undefined' while it has not reported.
-spec pool_info(atom()) -> {ok, #{name := atom(), size := pos_integer(),
                                  workers := [#{atom() => term()}]}} |
                           {error, {no_pool, atom()}}.
pool_info(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{size := Size, counters := C} = Info} ->
            Sandboxed = maps:get(sandbox, maps:get(opts, Info)) =/= false,
            Workers = [worker_summary(Slot, pyport_pool:worker(Info, Slot), C, Sandboxed)
                       || Slot <- lists:seq(1, Size)],
            {ok, #{name => Pool, size => Size, workers => Workers}};
        {error, _} = Error ->
            Error
    end.

worker_summary(Slot, {ok, Pid}, C, Sandboxed) ->
    Base = #{slot => Slot, pid => Pid, in_flight => counters:get(C, Slot)},
    case ask_worker(Pid) of
        {ok, #{os_pid := OsPid, status := Status, served := Served, restarts := Restarts,
               recycles := Recycles, sandbox := Sandbox}} ->
            Summary = Base#{os_pid => OsPid, status => Status, served => Served,
                            restarts => Restarts, recycles => Recycles,
                            rss_bytes => pyport_os:rss_bytes(OsPid)},
            case Sandboxed of
                true -> Summary#{sandbox => Sandbox};
                false -> Summary
            end;
        {busy, Status} ->
            Base#{status => Status};
        {down, Reason} ->
            Base#{status => {down, Reason}}
    end;
worker_summary(Slot, error, _C, _Sandboxed) ->
    #{slot => Slot, status => down}.

%% @doc Runs untrusted Python source on a sandboxed pool (docs/security.md).
%%
%% The job is a map: `code' (required: Python source, run like a notebook
%% cell with `input' bound to the job's `input'; its value is that of the
%% last statement if it is an expression, else the variable `result', else
%% None), `input' (any term, default `none'), `timeout' (ms; default: the
%% pool's `call_timeout').
%%
%% Returns `{ok, Result, Stats}' with `Stats' = `#{stdout, stderr, cpu_ms,
%% max_rss, wall_ms}', or `{error, Reason}': `timeout', `{memory_limit,
%% Bytes}', `{cpu_limit, Seconds}', `{file_size_limit, Bytes}',
%% `{output_limit, Bytes}', `{process_limit, N}', `{forbidden, Syscall}',
%% `{exception, #{type, message, traceback, stdout, stderr}}', `{crashed,
%% Detail}', `{bad_job, Why}', `{no_pool, Pool}', `{not_sandboxed, Pool}',
%% `{worker_exited, Detail}'.
%%
%% ```
%% {ok, 42, #{stdout := <<"hi\n">>}} =
%%     pyport:run_job(jobs, #{code => <<"print('hi')\ninput * 2">>, input => 21}).
%% '''
-spec run_job(atom(), pyport_job:job()) ->
          {ok, term(), pyport_job:stats()} | {error, pyport_job:reason()}.
run_job(Pool, Job) ->
    pyport_job:run(Pool, Job).

%% @doc What the worker behind a context (or `{Pool, Slot}') reports: its
%% OS pid, Python version, status, requests pending and queued, restarts.
%% Answers in every state: `{error, {no_worker, Pool, Slot}}' while the
%% slot has no gen_server, `{error, {worker_exited, Reason}}' if it died
%% just before, and only `pool', `slot', `pid' and `status' (`starting',
%% `stopping' or `busy') while its gen_server starts or stops an OS
%% process and cannot answer within a second.
-spec worker_info(py:context() | {atom(), pos_integer()}) ->
          {ok, #{atom() => term()}} | {error, term()}.
worker_info({Pool, Slot}) when is_atom(Pool), is_integer(Slot) ->
    case pyport_pool:info(Pool) of
        {ok, Info} ->
            case pyport_pool:worker(Info, Slot) of
                {ok, Pid} ->
                    case ask_worker(Pid) of
                        {ok, _} = Answer -> Answer;
                        {busy, Status} ->
                            {ok, #{pool => Pool, slot => Slot, pid => Pid, status => Status}};
                        {down, Reason} -> {error, {worker_exited, Reason}}
                    end;
                error ->
                    {error, {no_worker, Pool, Slot}}
            end;
        {error, _} = Error ->
            Error
    end;
worker_info(Ctx) ->
    worker_info(py:context_slot(Ctx)).

%% A worker's gen_server answers between messages; while it starts its
%% first OS process (init/1) or stops one (terminate/2) it cannot, and is
%% reported as doing that rather than waited for.
ask_worker(Pid) ->
    try {ok, gen_server:call(Pid, info, ?INFO_TIMEOUT_MS)}
    catch
        exit:{timeout, _} -> {busy, busy_status(Pid)};
        exit:{Reason, _} -> {down, Reason};
        exit:Reason -> {down, Reason}
    end.

busy_status(Pid) ->
    case erlang:process_info(Pid, current_stacktrace) of
        {current_stacktrace, Stack} ->
            Functions = [{M, F} || {M, F, _, _} <- Stack],
            case {lists:member({pyport_worker, init}, Functions),
                  lists:member({pyport_worker, terminate}, Functions)} of
                {true, _} -> starting;
                {_, true} -> stopping;
                _ -> busy
            end;
        undefined ->
            busy
    end.

%% ---- HTTP pools (docs/http.md) ----

%% @doc Starts an HTTP pool: a pool whose workers serve the ASGI app
%% `app => "module:attr"' on `bind' (see pyport_http:start/2).
-spec start_http(atom(), map()) -> {ok, pid()} | {error, pyport_http:error_reason()}.
start_http(Name, Opts) ->
    pyport_http:start(Name, Opts).

%% @doc Stops an HTTP pool started by start_http/2.
-spec stop_http(atom()) -> ok | {error, {no_http, atom()}}.
stop_http(Name) ->
    pyport_http:stop(Name).

%% @doc Replaces an HTTP pool's workers one at a time, losing no request
%% (docs/http.md "Reload").
-spec reload_http(atom()) -> ok | {error, term()}.
reload_http(Name) ->
    pyport_http:reload(Name).

%% @doc The app, address and workers of an HTTP pool.
-spec http_info(atom()) -> {ok, map()} | {error, {no_http, atom()}}.
http_info(Name) ->
    pyport_http:info(Name).
