%% A sandboxed pool's Python code reaches nothing in Erlang that its pool
%% was not granted (docs/security.md, "Grants"), whatever it sends: each
%% attack is made through py:call on the pool (the pool's own code, which
%% holds the frame channel), and each case checks the exact error and that
%% the node was not touched (init alive, no os:cmd ran, no function ran, no
%% state written, no message published). Jobs (pyport:run_job/2) run in
%% runner processes with no channel at all: every attack made from a job,
%% warm or fresh, on a pool granted nothing or granted much, reaches
%% nothing (jobs_reach_nothing).
%%
%% Attacks live in pyport_grants_SUITE_data/grants_attacks.py.
-module(pyport_grants_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(A, grants_attacks).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [{group, call}, jobs_reach_nothing, granted_names_work, schedule_of_a_function_not_granted,
     pool_without_sandbox_is_granted_all, grants_option_is_validated].

groups() ->
    Attacks = [rpc_call_os_cmd, rpc_cast_os_cmd, notify_frame_written_to_the_channel,
               send_to_init, state_set, publish, call_a_function_not_granted],
    [{call, [], Attacks}].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_grants_SUITE_data"),
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    {ok, _} = pyport:start_pool(jobs, #{size => 1, sandbox => true, python_path => [Data]}),
    {ok, _} = pyport:start_pool(granted,
                                #{size => 1, sandbox => true, python_path => [Data],
                                  grants => #{functions => [double],
                                              state_prefixes => [<<"job:">>],
                                              topics => [news],
                                              send => [grants_sink],
                                              rpc => [{lists, reverse}]}}),
    [{data, Data}, {init_status, element(1, init:get_status())} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_group(Group, Config) ->
    [{via, Group} | Config].

end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Self = self(),
    ok = py:register_function(secret_fn, fun(Args) -> Self ! {secret_fn_ran, Args}, ran end),
    ok = py:register_function(double, fun([X]) -> 2 * X end),
    Marker = filename:join(?config(priv_dir, Config),
                           "marker-" ++ integer_to_list(erlang:unique_integer([positive]))),
    [{marker, list_to_binary(Marker)} | Config].

end_per_testcase(_Case, _Config) ->
    _ = py:unregister_function(secret_fn),
    _ = py:unregister_function(double),
    ok.

%%%===================================================================
%%% Attacks (py:call on the pool)
%%%===================================================================

rpc_call_os_cmd(Config) ->
    Marker = ?config(marker, Config),
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted rpc_call os:cmd">>],
                 attack(Config, rpc_call_os_cmd, [Marker])),
    %% To another node name: refused before any node is looked at.
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted rpc_call erlang:halt">>],
                 attack(Config, rpc_call, [<<"erlang">>, <<"halt">>, []])),
    %% Uncaught, the call fails with the exception.
    ?assertEqual({error, {'PermissionError', <<"pool jobs is not granted rpc_call os:cmd">>}},
                 py:eval(<<"__import__('erlang').rpc_call(__import__('erlang').node(), "
                           "'os', 'cmd', ['id'])">>, #{}, #{pool => jobs})),
    node_untouched(Config).

rpc_cast_os_cmd(Config) ->
    Marker = ?config(marker, Config),
    Before = refused(jobs),
    %% A NOTIFY has no answer: it is dropped, and counted.
    ?assertEqual([<<"ok">>, none], attack(Config, rpc_cast_os_cmd, [Marker])),
    pyport_test_util:wait_until(fun() -> refused(jobs) =:= Before + 1 end),
    node_untouched(Config).

notify_frame_written_to_the_channel(Config) ->
    Marker = ?config(marker, Config),
    Before = refused(jobs),
    %% Two frames (rpc_cast os:cmd, cast secret_fn) to every writable pipe.
    Wrote = attack(Config, notify_by_fd, [atom_to_binary(node()), Marker]),
    ct:log("the attack wrote to ~p descriptors", [Wrote]),
    case Wrote of
        0 ->
            %% The code holds no channel descriptor (jobs run apart from
            %% the frame channel): nothing to refuse.
            ok;
        _ ->
            %% The frames reached the node, which refused both.
            pyport_test_util:wait_until(fun() -> refused(jobs) >= Before + 2 end)
    end,
    node_untouched(Config),
    %% The worker still serves.
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, #{pool => jobs})).

send_to_init(Config) ->
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted send to init">>],
                 attack(Config, send_init, [])),
    %% The distributed form, {Name, Node}, is the same name.
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted send to init">>],
                 attack(Config, send, [{init, node()}, {stop, stop}])),
    %% A pid (a forged one would do as well) is a send target too.
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted send to a pid">>],
                 attack(Config, send_pid, [whereis(init), {stop, stop}])),
    node_untouched(Config).

state_set(Config) ->
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted state_set secret">>],
                 attack(Config, state_set, [<<"secret">>, 1])),
    ok = pyport_state:store(<<"visible">>, 1),
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted state_get visible">>],
                 attack(Config, state_get, [<<"visible">>])),
    ?assertEqual({error, not_found}, pyport_state:fetch(<<"secret">>)),
    node_untouched(Config).

publish(Config) ->
    ok = pyport_pubsub:subscribe(<<"news">>),
    try
        ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted publish on topic news">>],
                     attack(Config, publish, [<<"news">>, hello])),
        receive {pubsub, _, _} = M -> ct:fail({published, M}) after 100 -> ok end
    after
        pyport_pubsub:unsubscribe(<<"news">>)
    end,
    node_untouched(Config).

call_a_function_not_granted(Config) ->
    ?assertEqual([<<"PermissionError">>, <<"pool jobs is not granted function secret_fn">>],
                 attack(Config, call, [secret_fn, 1])),
    %% A cast is a NOTIFY: dropped.
    ?assertEqual([<<"ok">>, none], attack(Config, cast, [secret_fn, 1])),
    %% Not granted, it is not there at all.
    ?assertEqual([<<"ok">>, false], attack(Config, registered, [secret_fn])),
    ?assertEqual([<<"ok">>, false], attack(Config, registered, [double])),
    ?assertEqual([<<"AttributeError">>,
                  <<"module 'erlang' has no attribute 'secret_fn' (and no Erlang function is "
                    "registered as 'secret_fn')">>],
                 attack(Config, attribute, [secret_fn])),
    node_untouched(Config).

%%%===================================================================
%%% Granted names, schedule, defaults, config
%%%===================================================================

granted_names_work(Config) ->
    Call = fun(F, A) -> {ok, R} = py:call(?A, F, A, #{}, #{pool => granted}), R end,
    ?assertEqual([<<"ok">>, 42], Call(call, [double, 21])),
    ?assertEqual([<<"PermissionError">>, <<"pool granted is not granted function secret_fn">>],
                 Call(call, [secret_fn, 1])),
    ?assertEqual([<<"ok">>, none], Call(state_set, [<<"job:a">>, 7])),
    ?assertEqual({ok, 7}, pyport_state:fetch(<<"job:a">>)),
    ?assertEqual([<<"ok">>, 7], Call(state_get, [<<"job:a">>])),
    ?assertEqual([<<"PermissionError">>, <<"pool granted is not granted state_set jobs">>],
                 Call(state_set, [<<"jobs">>, 1])),
    ok = pyport_pubsub:subscribe(<<"news">>),
    ?assertEqual([<<"ok">>, 1], Call(publish, [<<"news">>, hello])),
    receive {pubsub, <<"news">>, hello} -> ok after 5000 -> ct:fail(not_published) end,
    pyport_pubsub:unsubscribe(<<"news">>),
    ?assertEqual([<<"PermissionError">>, <<"pool granted is not granted publish on topic other">>],
                 Call(publish, [<<"other">>, hello])),
    true = register(grants_sink, self()),
    try
        ?assertEqual([<<"ok">>, none], Call(send, [grants_sink, hi])),
        receive hi -> ok after 5000 -> ct:fail(not_sent) end
    after
        unregister(grants_sink)
    end,
    ?assertEqual([<<"PermissionError">>, <<"pool granted is not granted send to init">>],
                 Call(send_init, [])),
    ?assertEqual([<<"ok">>, [3, 2, 1]], Call(rpc_call, [<<"lists">>, <<"reverse">>, [[1, 2, 3]]])),
    ?assertEqual([<<"PermissionError">>, <<"pool granted is not granted rpc_call os:cmd">>],
                 Call(rpc_call_os_cmd, [?config(marker, Config)])),
    %% A job of the pool has no channel to the node: not even the grants.
    ?assertMatch({error, {exception, #{type := <<"RuntimeError">>}}},
                 pyport:run_job(granted, #{code => <<"import erlang\nerlang.call('double', 21)">>})),
    node_untouched(Config).

%% Every attack, from a job: warm and fresh, on a pool granted nothing and
%% on one granted functions, state, topics, sends and RPC.
jobs_reach_nothing(Config) ->
    Marker = ?config(marker, Config),
    Attacks = [{rpc_call_os_cmd, [Marker]}, {rpc_call, [<<"lists">>, <<"reverse">>, [[1]]]},
               {rpc_cast_os_cmd, [Marker]}, {send_init, []}, {send, [grants_sink, hi]},
               {state_set, [<<"job:x">>, 1]}, {publish, [<<"news">>, hi]},
               {call, [double, 1]}, {cast, [secret_fn, 1]}],
    %% Pools of their own: the call group's attacks write frames into
    %% every pipe of the `jobs' worker, its job template's included.
    Data = ?config(data, Config),
    Grants = #{functions => [double, secret_fn], state_prefixes => [<<"job:">>],
               topics => [news], send => [grants_sink], rpc => true},
    {ok, _} = pyport:start_pool(warm_jobs, #{size => 1, sandbox => true, python_path => [Data]}),
    {ok, _} = pyport:start_pool(granted_jobs, #{size => 1, sandbox => true, python_path => [Data],
                                                grants => Grants}),
    {ok, _} = pyport:start_pool(fresh_jobs, #{size => 1, sandbox => true, fresh_worker => true,
                                              python_path => [Data], grants => Grants}),
    try
        [begin
             Code = iolist_to_binary(["import grants_attacks\n"
                                      "result = grants_attacks.", atom_to_binary(F), "(*input)"]),
             {ok, R, _} = pyport:run_job(Pool, #{code => Code, input => Args}),
             ?assertMatch({_, _, [<<"RuntimeError">>, _]}, {Pool, F, R}),
             %% Frames written to every pipe the job can find reach no
             %% node: the only pipes a job holds are its own (the frames
             %% can spoil only its own outcome).
             Refused = refused(Pool),
             Wrote = pyport:run_job(Pool, #{code => <<"import grants_attacks\n"
                                                     "result = grants_attacks.notify_by_fd(*input)">>,
                                            input => [atom_to_binary(node()), Marker]}),
             ct:log("~p: notify_by_fd as a job: ~p", [Pool, Wrote]),
             timer:sleep(20),
             ?assertEqual({Pool, Refused}, {Pool, refused(Pool)})
         end || Pool <- [warm_jobs, granted_jobs, fresh_jobs], {F, Args} <- Attacks]
    after
        [pyport:stop_pool(P) || P <- [warm_jobs, granted_jobs, fresh_jobs]]
    end,
    ?assertEqual({error, not_found}, pyport_state:fetch(<<"job:x">>)),
    node_untouched(Config).

schedule_of_a_function_not_granted(Config) ->
    %% erlang.schedule hands the function to the caller: refused there.
    ?assertEqual({error, {'PermissionError', <<"pool jobs is not granted function secret_fn">>}},
                 py:call(?A, schedule, [secret_fn, 1], #{}, #{pool => jobs})),
    ?assertEqual({ok, 8}, py:call(?A, schedule, [double, 4], #{}, #{pool => granted})),
    node_untouched(Config).

pool_without_sandbox_is_granted_all(Config) ->
    {ok, _} = pyport:start_pool(open, #{size => 1, python_path => [?config(data, Config)]}),
    try
        {ok, #{grants := all}} = pyport_pool:info(open),
        ?assertEqual({ok, [<<"ok">>, ran]}, py:call(?A, call, [secret_fn, 1], #{}, #{pool => open})),
        receive {secret_fn_ran, [1]} -> ok after 5000 -> ct:fail(not_run) end
    after
        pyport:stop_pool(open)
    end.

grants_option_is_validated(_Config) ->
    ?assertEqual({error, {unknown_grants_option, bad, function}},
                 pyport_config:validate_pool(bad, #{grants => #{function => [f]}})),
    ?assertEqual({error, {invalid_pool_option, bad, {grants, rpc}, yes}},
                 pyport_config:validate_pool(bad, #{grants => #{rpc => yes}})),
    ?assertEqual({error, {invalid_pool_option, bad, {grants, send}, [<<>>]}},
                 pyport_config:validate_pool(bad, #{grants => #{send => [<<>>]}})),
    ?assertEqual({error, {invalid_pool_option, bad, grants, everything}},
                 pyport_config:validate_pool(bad, #{grants => everything})),
    ?assertEqual({error, {invalid_pool_option, bad, max_callbacks, 0}},
                 pyport_config:validate_pool(bad, #{max_callbacks => 0})),
    %% Unset, grants are decided at pool start: all without a sandbox,
    %% nothing with one.
    {ok, #{grants := default} = Open} = pyport_config:validate_pool(ok, #{}),
    ?assertEqual(all, pyport_grants:new(ok, Open)),
    {ok, #{grants := default} = Boxed} = pyport_config:validate_pool(ok, #{sandbox => true}),
    ?assertMatch(#{functions := F, rpc := false, send := S} when map_size(F) =:= 0 andalso
                                                                map_size(S) =:= 0,
                 pyport_grants:new(ok, Boxed)),
    {ok, #{grants := all}} = pyport_config:validate_pool(ok, #{sandbox => true, grants => all}),
    {ok, #{grants := #{functions := [], rpc := false}}} =
        pyport_config:validate_pool(ok, #{grants => none}),
    {ok, #{grants := #{functions := [<<"f">>], rpc := [{<<"lists">>, <<"reverse">>}]}}} =
        pyport_config:validate_pool(ok, #{grants => #{functions => [f], rpc => [{lists, reverse}]}}).

%%%===================================================================
%%% Helpers
%%%===================================================================

%% Runs grants_attacks:F(Args...) on pool `jobs' through py:call.
attack(_Config, F, Args) ->
    {ok, R} = py:call(?A, F, Args, #{}, #{pool => jobs}),
    R.

refused(Pool) ->
    {ok, #{grants := Grants}} = pyport_pool:info(Pool),
    pyport_grants:count(Grants).

%% Nothing the attacks aimed at happened.
node_untouched(Config) ->
    timer:sleep(50),                    % a cast that got through would have run by now
    ?assert(is_process_alive(whereis(init))),
    ?assertEqual(?config(init_status, Config), element(1, init:get_status())),
    ?assertNot(filelib:is_file(?config(marker, Config))),
    receive {secret_fn_ran, _} = M -> ct:fail({ran, M}) after 0 -> ok end,
    ?assertEqual({error, not_found}, pyport_state:fetch(<<"secret">>)),
    ok.
