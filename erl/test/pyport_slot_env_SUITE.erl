%% A pool's `env' per worker slot (pyport_slot_env): `{slot}'/`{index}'
%% templates (usable from sys.config), `{Module, Function}' and funs, each
%% worker's OS processes keeping theirs across restarts; and the errors of
%% a bad one.
-module(pyport_slot_env_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [templates, templates_from_sys_config, module_function, fun_per_slot, kept_across_restarts,
     bad_specs_are_refused, failing_function_fails_the_start].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

end_per_testcase(_Case, _Config) ->
    pyport_test_util:stop_other_pools().

%% What `Module:Function(Slot)' gives: one GPU per worker.
gpu_env(Slot) ->
    #{"CUDA_VISIBLE_DEVICES" => integer_to_list(Slot - 1), "PYPORT_UNSET_ME" => false}.

getenv(Pool, Slot, Name) ->
    {ok, Value} = py:call(py:context(Pool, Slot), os, getenv, [Name]),
    Value.

%%%===================================================================
%%% Cases
%%%===================================================================

templates(_Config) ->
    {ok, _} = pyport:start_pool(gpus, #{size => 3,
                                        env => #{"CUDA_VISIBLE_DEVICES" => "{index}",
                                                 "WORKER_NAME" => "w{slot}-of-pool",
                                                 "PLAIN" => "{not a template}"}}),
    ?assertEqual([<<"0">>, <<"1">>, <<"2">>],
                 [getenv(gpus, S, <<"CUDA_VISIBLE_DEVICES">>) || S <- [1, 2, 3]]),
    ?assertEqual([<<"w1-of-pool">>, <<"w2-of-pool">>, <<"w3-of-pool">>],
                 [getenv(gpus, S, <<"WORKER_NAME">>) || S <- [1, 2, 3]]),
    ?assertEqual(<<"{not a template}">>, getenv(gpus, 2, <<"PLAIN">>)).

templates_from_sys_config(_Config) ->
    %% What a sys.config holds: plain terms (a list of pairs, a {M, F}).
    {ok, Pools} = pyport_config:validate_pools(
                    #{a => #{size => 2, env => [{"CUDA_VISIBLE_DEVICES", "{index}"}]},
                      b => #{size => 2, env => {?MODULE, gpu_env}}}),
    ?assertMatch(#{a := #{env := [{"CUDA_VISIBLE_DEVICES", "{index}"}]},
                   b := #{env := {?MODULE, gpu_env}}}, Pools),
    {ok, _} = pyport:start_pool(a, maps:get(a, Pools)),
    ?assertEqual(<<"1">>, getenv(a, 2, <<"CUDA_VISIBLE_DEVICES">>)).

module_function(_Config) ->
    os:putenv("PYPORT_UNSET_ME", "inherited"),
    try
        {ok, _} = pyport:start_pool(mf, #{size => 2, env => {?MODULE, gpu_env}}),
        ?assertEqual([<<"0">>, <<"1">>], [getenv(mf, S, <<"CUDA_VISIBLE_DEVICES">>) || S <- [1, 2]]),
        %% false unsets, as in a fixed env.
        ?assertEqual(none, getenv(mf, 1, <<"PYPORT_UNSET_ME">>))
    after
        os:unsetenv("PYPORT_UNSET_ME")
    end.

fun_per_slot(_Config) ->
    Fun = fun(Slot) -> [{"PORT", integer_to_list(8000 + Slot)}] end,
    {ok, _} = pyport:start_pool(funs, #{size => 2, env => Fun}),
    ?assertEqual([<<"8001">>, <<"8002">>], [getenv(funs, S, <<"PORT">>) || S <- [1, 2]]).

kept_across_restarts(_Config) ->
    {ok, _} = pyport:start_pool(kept, #{size => 2, env => #{"GPU" => "{index}"}}),
    OsPid = pyport_test_util:os_pid({kept, 2}),
    pyport_os:kill(OsPid),
    pyport_test_util:wait_until(fun() ->
                                        P = pyport_test_util:os_pid({kept, 2}),
                                        P =/= undefined andalso P =/= OsPid
                                end),
    ?assertEqual(<<"1">>, getenv(kept, 2, <<"GPU">>)),
    %% The gen_server too.
    {ok, Workers} = pyport:workers(kept),
    exit(proplists:get_value(2, Workers), kill),
    pyport_test_util:wait_until(fun() -> pyport_test_util:os_pid({kept, 2}) =/= undefined end),
    ?assertEqual(<<"1">>, getenv(kept, 2, <<"GPU">>)).

bad_specs_are_refused(_Config) ->
    Bad = fun(Env) ->
                  ?assertEqual({error, {invalid_pool_option, p, env, Env}},
                               pyport_config:validate_pool(p, #{env => Env}))
          end,
    Bad({no_such_module_here, env}),       % not loadable
    Bad({?MODULE, no_such_function}),      % not exported
    Bad(fun() -> [] end),                   % arity 0
    Bad(#{"A=B" => "x"}),                   % '=' in a name
    Bad(#{"A" => "nul\0"}),
    Bad(env).

failing_function_fails_the_start(_Config) ->
    %% Called when each worker starts: its failure names the slot.
    Crash = fun(2) -> error(no_gpu_for_slot_2); (_) -> [] end,
    {error, Crashed} = pyport:start_pool(crash, #{size => 2, env => Crash}),
    ct:pal("~p", [Crashed]),
    ?assert(contains(Crashed, {invalid_env, 2, {error, no_gpu_for_slot_2}})),
    {error, Returned} = pyport:start_pool(crash, #{size => 1, env => fun(_) -> [{"A", 1}] end}),
    ?assert(contains(Returned, {invalid_env, 1, {bad_return, [{"A", 1}]}})),
    ?assertEqual([default], pyport:pools()).

%% Whether Term holds Part somewhere (start errors come wrapped by the
%% supervisors).
contains(Part, Part) -> true;
contains(Term, Part) when is_tuple(Term) -> contains(tuple_to_list(Term), Part);
contains([H | T], Part) -> contains(H, Part) orelse contains(T, Part);
contains(_, _) -> false.
