%% @doc Untrusted jobs on a sandboxed pool: {@link pyport:run_job/2}.
%%
%% A job is Python source run like a notebook cell by `erlang._jobs.run_job'
%% in one of the pool's workers: in the worker itself (a warm sandboxed
%% worker), or, on a `fresh_worker' pool, in a child the worker (a zygote)
%% forks for this job alone. The call goes through the normal request path
%% (a call to one slot), so it is answered exactly once.
%%
%% Where it runs: never in the worker, which holds the port's descriptors,
%% but in a runner process of its own that the worker starts from its job
%% template (python_runtime/erlang/_runner.py), confined further, that
%% runs this one job and exits. A runner speaks only to its worker, which
%% alone writes frames: a job can only ever answer its own request.
%%
%% Timeouts: the worker enforces a job's timeout itself (SIGKILL to the
%% runner) and answers `{error, timeout}' with what the job printed; the
%% call waits a little longer so that the worker's answer comes first. The
%% worker stays: no job code ran in it, so a failed job never costs a
%% worker (the next job gets a fresh runner anyway).
-module(pyport_job).

-export([run/2, shape/2, map_reply/2]).

-export_type([job/0, stats/0, reason/0]).

-type job() :: #{code := iodata(), input => term(), timeout => timeout()}.
-type stats() :: #{stdout := binary(), stderr := binary(), cpu_ms := non_neg_integer(),
                   max_rss := non_neg_integer(), wall_ms := non_neg_integer()}.
-type reason() :: timeout
                | {memory_limit, pos_integer()}
                | {cpu_limit, pos_integer()}
                | {file_size_limit, pos_integer()}
                | {output_limit, pos_integer()}
                | {process_limit, pos_integer()}
                | {forbidden, binary()}
                | {exception, #{type := binary(), message := binary(), traceback := binary(),
                                stdout := binary(), stderr := binary()}}
                | {crashed, map()}
                | {no_runner, binary()}
                | {bad_job, binary()}
                | {no_pool, term()}
                | {not_sandboxed, atom()}
                | {no_workers, atom()}
                | {worker_exited, term()}
                | term().

-define(CALL, 1).
%% How much longer than a job's timeout the call waits for the worker's
%% own timeout answer.
-define(GRACE_MS, 2000).

%% @doc Runs a job on pool `Pool'; see {@link pyport:run_job/2}.
-spec run(atom(), job()) -> {ok, term(), stats()} | {error, reason()}.
run(Pool, Job) ->
    case pyport_pool:info(Pool) of
        {ok, #{opts := #{sandbox := false}}} ->
            {error, {not_sandboxed, Pool}};
        {ok, #{opts := Opts} = Info} ->
            case shape(Job, Opts) of
                {ok, Fields, CallTimeout} -> run(Info, Fields, CallTimeout);
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

run(#{name := Pool, opts := Opts} = Info, Fields, CallTimeout) ->
    case pyport_pool:pick(Info) of
        {ok, Slot, Pid} ->
            Start = erlang:monotonic_time(),
            pyport_telemetry:job_start(Pool, Slot, Start),
            Reply = pyport_request:call({slot, Pool, Slot}, ?CALL, Fields, CallTimeout),
            Result = map_reply(Reply, Opts),
            pyport_telemetry:job_stop(Pool, Slot, Start, Result),
            after_job(Result, Pid),
            Result;
        {error, _} = Error ->
            Error
    end.

%% @doc The fields of the CALL frame for a job, and how long the call
%% waits; or `{error, {bad_job, Why}}'. Exported for tests.
-spec shape(term(), pyport_config:pool_opts()) ->
          {ok, [term()], timeout()} | {error, {bad_job, binary()}}.
shape(#{code := Code} = Job, #{call_timeout := DefaultTimeout, fresh_worker := Fresh,
                               sandbox := #{max_output := MaxOutput}}) ->
    case [K || K <- lists:sort(maps:keys(Job)), not lists:member(K, [code, input, timeout])] of
        [Unknown | _] ->
            bad_job("unknown job key: ~0tp", [Unknown]);
        [] ->
            Timeout = maps:get(timeout, Job, DefaultTimeout),
            case {code(Code), Timeout} of
                {error, _} ->
                    bad_job("code must be a string: ~0tp", [Code]);
                {_, T} when T =/= infinity, not (is_integer(T) andalso T > 0) ->
                    bad_job("timeout must be a positive integer (ms) or infinity: ~0tp", [T]);
                {{ok, Src}, _} ->
                    Options0 = #{fresh => Fresh, max_output => MaxOutput},
                    Options = case Timeout of
                                  infinity -> Options0;
                                  _ -> Options0#{timeout => Timeout}
                              end,
                    Fields = pyport_args:call_fields(<<"erlang._jobs">>, <<"run_job">>,
                                            [Src, maps:get(input, Job, none), Options], #{}),
                    {ok, Fields, call_timeout(Timeout)}
            end
    end;
shape(Job, _Opts) when is_map(Job) ->
    bad_job("the job has no code", []);
shape(Job, _Opts) ->
    bad_job("a job is a map with code, input and timeout: ~0tp", [Job]).

call_timeout(infinity) -> infinity;
call_timeout(Ms) -> Ms + ?GRACE_MS.

code(Code) ->
    try unicode:characters_to_binary(Code) of
        Bin when is_binary(Bin) -> {ok, Bin};
        _ -> error
    catch
        error:_ -> error
    end.

bad_job(Format, Args) ->
    {error, {bad_job, iolist_to_binary(io_lib:format(Format, Args))}}.

%% @doc What a job's call answered, as {@link pyport:run_job/2} returns it.
%% Exported for tests.
-spec map_reply({ok, term()} | {error, term()}, pyport_config:pool_opts()) ->
          {ok, term(), stats()} | {error, reason()}.
map_reply({ok, {ok, Result, Stats}}, _Opts) when is_map(Stats) ->
    {ok, Result, Stats};
map_reply({ok, {error, {exception, Info}, Stats}}, _Opts) when is_map(Info), is_map(Stats) ->
    %% What the job printed before it raised is part of its error.
    {error, {exception, maps:merge(Info, maps:with([stdout, stderr], Stats))}};
map_reply({ok, {error, Reason, Stats}}, _Opts) when is_map(Stats) ->
    {error, Reason};
map_reply({ok, Other}, _Opts) ->
    {error, {bad_job_reply, Other}};
map_reply({error, {'KeyboardInterrupt', _}}, _Opts) ->
    %% The interrupt of a job whose timeout passed, answered in a race
    %% with the caller's own timeout.
    {error, timeout};
map_reply({error, {worker_exited, {signal, sigxcpu}}}, Opts) ->
    %% A warm worker that ran out of its CPU seconds mid-job.
    {error, {cpu_limit, pyport_sandbox:effective_limit(cpu_seconds, Opts)}};
map_reply({error, {worker_exited, {signal, sigxfsz}}}, #{sandbox := #{max_file_size := Max}}) ->
    {error, {file_size_limit, Max}};
map_reply({error, {worker_exited, {signal, sigsys}}}, _Opts) ->
    %% The filter kills the process for a call it cannot name (another
    %% ABI's, e.g. x32), as a zygote reports for a fresh job.
    {error, {forbidden, <<"unknown">>}};
map_reply({error, _} = Error, _Opts) ->
    Error.

%% A worker that cannot start runners any more (its template is gone, or
%% it is out of processes) is replaced, gracefully; a failed job costs
%% nothing else.
after_job({error, {no_runner, _}}, Pid) ->
    pyport_worker:recycle_async(Pid, no_runner);
after_job(_Result, _Pid) ->
    ok.
