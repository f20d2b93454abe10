%% The Erlang side of sandboxed pools without a worker: validation of the
%% `sandbox' and `fresh_worker' options, the exact worker command line they
%% become, how a job is shaped into a request, and how answers map to
%% run_job's results.
-module(pyport_sandbox_tests).

-include_lib("eunit/include/eunit.hrl").

-define(MIB, 1048576).

pool(Opts) ->
    {ok, Valid} = pyport_config:validate_pool(p, Opts),
    Valid.

%% The command line after `--runtime Dir', without the log rate flags
%% (pyport_worker_log_tests checks those).
argv(Opts) ->
    ["--runtime", _ | Rest] = pyport_os:args(pool(Opts)),
    without_log_rate(Rest).

without_log_rate([Flag, _ | Rest]) when Flag =:= "--log-lines"; Flag =:= "--log-bytes" ->
    without_log_rate(Rest);
without_log_rate([Arg | Rest]) ->
    [Arg | without_log_rate(Rest)];
without_log_rate([]) ->
    [].

defaults_test() ->
    #{sandbox := false, fresh_worker := false} = pool(#{}),
    #{sandbox := Sandbox} = pool(#{sandbox => true}),
    ?assertEqual(#{network => false, exec => false, fork => false, filesystem => false,
                   namespaces => false, seccomp => false, privileges => false,
                   max_memory => 1024 * ?MIB, cpu_seconds => 60, max_open_files => 256,
                   max_file_size => 64 * ?MIB, max_processes => 256, max_output => ?MIB,
                   max_disk => 64 * ?MIB,
                   workdir_parent => undefined, env_keep => []}, Sandbox),
    %% A map keeps the defaults for what it does not name.
    #{sandbox := Relaxed} = pool(#{sandbox => #{network => true, max_output => 10}}),
    ?assertEqual(Sandbox#{network := true, max_output := 10}, Relaxed).

unsandboxed_argv_unchanged_test() ->
    ?assertEqual(["--max-frame-size", "67108864"], argv(#{})),
    ?assertEqual(["--max-frame-size", "67108864", "--max-memory", "100000000",
                  "--cpu-seconds", "5", "--max-open-files", "64"],
                 argv(#{max_memory => 100000000, cpu_seconds => 5, max_open_files => 64})).

sandbox_true_argv_test() ->
    ?assertEqual(["--max-frame-size", "67108864",
                  "--max-memory", "1073741824", "--cpu-seconds", "60", "--max-open-files", "256",
                  "--sandbox",
                  "--max-file-size", "67108864", "--max-processes", "256",
                  "--max-output", "1048576", "--max-disk", "67108864", "--env-stdin"],
                 argv(#{sandbox => true})).

fresh_worker_argv_test() ->
    ["--max-frame-size", _, "--max-memory", _, "--cpu-seconds", _, "--max-open-files", _,
     Mode | _] = argv(#{sandbox => true, fresh_worker => true}),
    ?assertEqual("--zygote", Mode).

relaxations_argv_test() ->
    Dir = filename:absname("."),
    Argv = argv(#{sandbox => #{privileges => true, network => true, seccomp => true,
                               exec => true, fork => true, filesystem => true,
                               namespaces => true, max_file_size => infinity,
                               max_processes => 8, max_output => 100, max_disk => infinity,
                               workdir_parent => Dir, env_keep => ["LANG", 'TZ']},
                  imports => [json, "os.path"],
                  env => [{"A", "1"}, {"B", false}]}),
    ?assertEqual(["--sandbox",
                  "--sandbox-allow", "network", "--sandbox-allow", "exec",
                  "--sandbox-allow", "fork", "--sandbox-allow", "filesystem",
                  "--sandbox-allow", "namespaces", "--sandbox-allow", "seccomp",
                  "--sandbox-allow", "privileges",
                  "--max-processes", "8", "--max-output", "100",
                  "--workdir-parent", Dir,
                  "--preload", "json", "--preload", "os.path",
                  "--env-stdin",
                  "--env-keep", "LANG", "--env-keep", "TZ"],
                 lists:nthtail(8, Argv)).

%% A sandboxed worker clears its environment: the pool's `env' and a
%% venv's variables reach it, but never on the command line (/proc shows it to every local user): it is
%% the first frame on the worker's stdin.
env_passed_on_stdin_test() ->
    Argv = argv(#{sandbox => true, env => #{"LANG" => "C"}}),
    ?assertEqual(["--env-stdin"], lists:nthtail(length(Argv) - 1, Argv)),
    ?assertNot(lists:any(fun(A) -> string:find(A, "LANG") =/= nomatch end, Argv)),
    ?assertEqual(<<"LANG=C", 0, "X=", 195, 169>>,  % UTF-8, as open_port encodes env
                 pyport_sandbox:env_frame([{"LANG", "C"}, {"B", false}, {"X", [233]}])),
    Venv = filename:join(filename:basedir(user_cache, "pyport-test"),
                         "venv-" ++ os:getpid()),
    ok = filelib:ensure_dir(filename:join(Venv, "x")),
    ok = file:write_file(filename:join(Venv, "pyvenv.cfg"), <<>>),
    try
        {ok, Opts} = pyport_config:validate_pool(t, #{sandbox => true, venv => Venv}),
        Frame = pyport_sandbox:env_frame(pyport_os:environment(Opts)),
        ?assertMatch([<<"VIRTUAL_ENV=", _/binary>>, <<"PATH=", _/binary>>],
                     binary:split(Frame, <<0>>, [global]))
    after
        file:del_dir_r(Venv)
    end.

%% One rule: every limit given anywhere holds (the smaller wins).
limits_stricter_wins_test() ->
    Opts = pool(#{sandbox => #{max_memory => 512 * ?MIB, cpu_seconds => infinity},
                  max_memory => 2048 * ?MIB, cpu_seconds => 7, max_open_files => 32}),
    ?assertEqual(512 * ?MIB, pyport_sandbox:effective_limit(max_memory, Opts)),
    ?assertEqual(7, pyport_sandbox:effective_limit(cpu_seconds, Opts)),
    ?assertEqual(32, pyport_sandbox:effective_limit(max_open_files, Opts)),
    Lifted = pool(#{sandbox => #{max_memory => infinity, cpu_seconds => infinity,
                                 max_open_files => infinity}}),
    ?assertEqual(["--max-frame-size", "67108864", "--sandbox"],
                 lists:sublist(argv(#{sandbox => #{max_memory => infinity, cpu_seconds => infinity,
                                                   max_open_files => infinity}}), 3)),
    ?assertEqual(infinity, pyport_sandbox:effective_limit(max_memory, Lifted)),
    %% Without a sandbox the pool's own limits.
    ?assertEqual(infinity, pyport_sandbox:effective_limit(max_memory, pool(#{}))).

config_errors_test() ->
    Err = fun(Opts) -> pyport_config:validate_pool(jobs, Opts) end,
    ?assertEqual({error, {invalid_pool_option, jobs, sandbox, yes}}, Err(#{sandbox => yes})),
    ?assertEqual({error, {unknown_sandbox_option, jobs, netwrk}},
                 Err(#{sandbox => #{netwrk => true}})),
    [?assertEqual({error, {invalid_pool_option, jobs, {sandbox, K}, V}}, Err(#{sandbox => #{K => V}}))
     || {K, V} <- [{network, 1}, {exec, "true"}, {seccomp, undefined},
                   {max_memory, 1000}, {max_memory, -1}, {cpu_seconds, 0},
                   {max_open_files, 3}, {max_file_size, 1.5}, {max_processes, 0},
                   {max_processes, 7},
                   {max_output, 0}, {max_output, infinity},
                   {workdir_parent, "relative/dir"}, {workdir_parent, "/no/such/dir/here"},
                   {workdir_parent, 42}, {env_keep, "LANG"}, {env_keep, ["A=B"]},
                   {env_keep, [""]}]],
    ?assertEqual({error, {invalid_pool_option, jobs, fresh_worker, maybe}},
                 Err(#{fresh_worker => maybe})),
    ?assertEqual({error, {pool_option_requires, jobs, fresh_worker, sandbox}},
                 Err(#{fresh_worker => true})),
    ?assertMatch({ok, #{fresh_worker := true}}, Err(#{fresh_worker => true, sandbox => true})).

%% Only a directory that looks like a worker's own is ever removed.
workdir_test() ->
    Default = pool(#{sandbox => true}),
    In = pool(#{sandbox => #{workdir_parent => "/tmp"}}),
    ?assertEqual(<<"/tmp/pyport-job-ab12CD">>,
                 pyport_sandbox:workdir(#{workdir => <<"/tmp/pyport-job-ab12CD">>}, Default)),
    ?assertEqual(<<"/var/tmp/pyport-job-x">>,
                 pyport_sandbox:workdir(#{<<"workdir">> => <<"/var/tmp/pyport-job-x">>}, Default)),
    ?assertEqual(<<"/tmp/pyport-job-x">>,
                 pyport_sandbox:workdir(#{workdir => <<"/tmp/pyport-job-x">>}, In)),
    [?assertEqual(undefined, pyport_sandbox:workdir(#{workdir => D}, Opts))
     || {D, Opts} <- [{<<"/">>, Default}, {<<"/tmp">>, Default}, {<<"/home/user">>, Default},
                      {<<"pyport-job-x">>, Default}, {<<"/tmp/../pyport-job-x">>, Default},
                      {<<"/tmp/pyport-job-x/..">>, Default},
                      {<<"/pyport-job-x">>, Default},
                      {<<"/var/tmp/pyport-job-x">>, In}, {42, Default}]],
    ?assertEqual(undefined, pyport_sandbox:workdir(undefined, Default)),
    ?assertEqual(undefined, pyport_sandbox:workdir(#{workdir => <<"/tmp/pyport-job-x">>}, pool(#{}))).

report_test() ->
    ?assertEqual(#{mode => worker}, pyport_sandbox:report(#{<<"sandbox">> => #{mode => worker}})),
    ?assertEqual(#{mode => zygote}, pyport_sandbox:report(#{sandbox => #{mode => zygote}})),
    ?assertEqual(undefined, pyport_sandbox:report(#{<<"max_frame_size">> => 1})).

shape_test() ->
    Warm = pool(#{sandbox => true, call_timeout => 4000}),
    Fresh = pool(#{sandbox => #{max_output => 99}, fresh_worker => true}),
    ?assertEqual({ok, [<<"erlang._jobs">>, <<"run_job">>,
                       [<<"x = 1">>, none, #{fresh => false, max_output => ?MIB, timeout => 4000}],
                       #{}], 6000},
                 pyport_job:shape(#{code => "x = 1"}, Warm)),
    ?assertEqual({ok, [<<"erlang._jobs">>, <<"run_job">>,
                       [<<"input">>, {1, 2}, #{fresh => true, max_output => 99, timeout => 500}],
                       #{}], 2500},
                 pyport_job:shape(#{code => [<<"in">>, "put"], input => {1, 2}, timeout => 500},
                                  Fresh)),
    ?assertEqual({ok, [<<"erlang._jobs">>, <<"run_job">>,
                       [<<"1">>, none, #{fresh => true, max_output => 99}], #{}], infinity},
                 pyport_job:shape(#{code => <<"1">>, timeout => infinity}, Fresh)),
    [?assertMatch({error, {bad_job, <<_, _/binary>>}}, pyport_job:shape(J, Warm))
     || J <- [#{}, #{input => 1}, #{code => 42}, #{code => <<"1">>, timeout => 0},
              #{code => <<"1">>, timeout => -5}, #{code => <<"1">>, timeout => "1"},
              #{code => <<"1">>, tiemout => 1}, not_a_map]],
    ?assertEqual({error, {bad_job, <<"unknown job key: tiemout">>}},
                 pyport_job:shape(#{code => <<"1">>, tiemout => 1}, Warm)),
    ?assertEqual({error, {bad_job, <<"the job has no code">>}}, pyport_job:shape(#{}, Warm)).

map_reply_test() ->
    Opts = pool(#{sandbox => #{cpu_seconds => 9, max_file_size => 1000}}),
    Stats = #{stdout => <<"out">>, stderr => <<"err">>, cpu_ms => 1, max_rss => 2, wall_ms => 3},
    ?assertEqual({ok, 42, Stats}, pyport_job:map_reply({ok, {ok, 42, Stats}}, Opts)),
    ?assertEqual({error, {exception, #{type => <<"ValueError">>, message => <<"m">>,
                                       traceback => <<"tb">>, stdout => <<"out">>,
                                       stderr => <<"err">>}}},
                 pyport_job:map_reply({ok, {error, {exception, #{type => <<"ValueError">>,
                                                                 message => <<"m">>,
                                                                 traceback => <<"tb">>}},
                                            Stats}}, Opts)),
    ?assertEqual({error, {forbidden, <<"socket">>}},
                 pyport_job:map_reply({ok, {error, {forbidden, <<"socket">>}, Stats}}, Opts)),
    ?assertEqual({error, timeout}, pyport_job:map_reply({error, timeout}, Opts)),
    ?assertEqual({error, timeout},
                 pyport_job:map_reply({error, {'KeyboardInterrupt', <<>>}}, Opts)),
    ?assertEqual({error, {cpu_limit, 9}},
                 pyport_job:map_reply({error, {worker_exited, {signal, sigxcpu}}}, Opts)),
    ?assertEqual({error, {file_size_limit, 1000}},
                 pyport_job:map_reply({error, {worker_exited, {signal, sigxfsz}}}, Opts)),
    ?assertEqual({error, {forbidden, <<"unknown">>}},
                 pyport_job:map_reply({error, {worker_exited, {signal, sigsys}}}, Opts)),
    ?assertEqual({error, {worker_exited, {signal, sigkill}}},
                 pyport_job:map_reply({error, {worker_exited, {signal, sigkill}}}, Opts)),
    ?assertEqual({error, {bad_job_reply, 7}}, pyport_job:map_reply({ok, 7}, Opts)).

%% What RLIMIT_CPU counts, read for the CPU budget of warm workers.
cpu_seconds_test() ->
    Used = pyport_os:cpu_seconds(list_to_integer(os:getpid())),
    ?assert(is_float(Used) andalso Used >= 0.0),
    ?assertEqual(undefined, pyport_os:cpu_seconds(undefined)),
    ?assertEqual(undefined, pyport_os:cpu_seconds(999999999)).

%% A tree with a link to outside it: the link goes, its target stays.
remove_tree_test() ->
    Base = filename:join(filename:basedir(user_cache, "pyport-test"), "rm-" ++ os:getpid()),
    Outside = filename:join(Base, "outside"),
    Tree = filename:join(Base, "pyport-job-x"),
    ok = filelib:ensure_dir(filename:join([Tree, "sub", "x"])),
    ok = filelib:ensure_dir(filename:join(Outside, "x")),
    ok = file:write_file(filename:join(Outside, "keep"), <<"k">>),
    ok = file:write_file(filename:join([Tree, "sub", "f"]), <<"f">>),
    ok = file:make_symlink(Outside, filename:join(Tree, "link")),
    try
        ok = pyport_os:remove_tree(list_to_binary(Tree)),
        ?assertNot(filelib:is_dir(Tree)),
        ?assert(filelib:is_regular(filename:join(Outside, "keep")))
    after
        file:del_dir_r(Base)
    end.
