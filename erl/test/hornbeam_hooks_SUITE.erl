%% Hornbeam's hooks (hornbeam_hooks, hornbeam_erlang.register_hook /
%% execute / execute_async / await_result / stream / stream_async) on
%% pyport_hooks: Erlang and Python handlers, reached from Erlang, from the
%% registering worker and from another worker; their bounds.
%%
%% Python helpers: hornbeam_hooks_SUITE_data/hb_hooks.py.
-module(hornbeam_hooks_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(M, hb_hooks).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [{group, erlang_handlers}, {group, python_handlers}, {group, bounds}].

groups() ->
    [{erlang_handlers, [],
      [reg_find_all_unreg, execute_fun_and_mfa, handler_exceptions, async_and_await,
       erlang_streams, invalid_paths_and_actions]},
     {python_handlers, [],
      [python_hook_reached_from_everywhere, handler_kinds_and_kwargs, python_errors,
       unregistered_module_path, python_tasks, python_streams, streams_are_closed,
       hook_ends_with_its_worker, two_providers_and_unregister, erlang_reg_replaces_python]},
     {bounds, [],
      [hook_cap_per_worker, hostile_hook_names, task_cap, stream_cap_and_idle_end,
       hooks_need_full_grants, bad_hooks_config_stops_the_start]}].

init_per_suite(Config) ->
    Data = ?config(data_dir, Config),
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Data]}}),
    application:set_env(pyport, hooks, #{max_per_worker => 5, max_tasks_per_worker => 3,
                                         max_streams_per_worker => 3, stream_idle => 1000}),
    {ok, _} = application:ensure_all_started(pyport),
    [{python_dir, Data} | Config].

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    application:unset_env(pyport, hooks),
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    [ok = hornbeam_hooks:unreg(P) || P <- hornbeam_hooks:all()],
    ok.

ctx(N) -> py:context(N).

os_pid(N) ->
    {ok, P} = py:call(ctx(N), ?M, os_pid, []),
    P.

%% An Erlang handler by module and function.
handle(<<"add">>, [A, B], _Kw) -> A + B;
handle(<<"kw">>, [], Kw) -> Kw;
handle(Action, _Args, _Kw) -> {error, {unknown_action, Action}}.

%%%===================================================================
%%% Erlang handlers
%%%===================================================================

reg_find_all_unreg(_Config) ->
    F = fun(_, _, _) -> ok end,
    ?assertEqual(ok, hornbeam_hooks:reg(<<"a">>, F)),
    ?assertEqual(ok, hornbeam_hooks:reg(<<"b">>, ?MODULE, handle, 3)),
    ?assertEqual(ok, hornbeam_hooks:reg_python(<<"c:d">>)),
    ?assertEqual({ok, {fun_handler, F}}, hornbeam_hooks:find(<<"a">>)),
    ?assertEqual({ok, {mfa, ?MODULE, handle}}, hornbeam_hooks:find(<<"b">>)),
    ?assertEqual({ok, {python_handler}}, hornbeam_hooks:find(<<"c:d">>)),
    ?assertEqual([<<"a">>, <<"b">>, <<"c:d">>], hornbeam_hooks:all()),
    ?assertEqual(ok, hornbeam_hooks:unreg(<<"a">>)),
    ?assertEqual(ok, hornbeam_hooks:unreg(<<"never">>)),
    ?assertEqual(not_found, hornbeam_hooks:find(<<"a">>)),
    ?assertEqual([<<"b">>, <<"c:d">>], hornbeam_hooks:all()).

execute_fun_and_mfa(_Config) ->
    ok = hornbeam_hooks:reg(<<"calc">>, fun(<<"add">>, [A, B], _) -> A + B;
                                           (<<"mul">>, [A, B], _) -> A * B end),
    ok = hornbeam_hooks:reg(<<"mod">>, ?MODULE, handle, 3),
    ?assertEqual({ok, 3}, hornbeam_hooks:execute(<<"calc">>, <<"add">>, [1, 2], #{})),
    ?assertEqual({ok, 6}, hornbeam_hooks:execute(<<"calc">>, <<"mul">>, [2, 3], #{})),
    ?assertEqual({ok, 5}, hornbeam_hooks:execute(<<"mod">>, <<"add">>, [2, 3], #{})),
    ?assertEqual({ok, #{x => 1}}, hornbeam_hooks:execute(<<"mod">>, <<"kw">>, [], #{x => 1})),
    %% The handler's value as it is: its own {error, _} is a value.
    ?assertEqual({ok, {error, {unknown_action, <<"zzz">>}}},
                 hornbeam_hooks:execute(<<"mod">>, <<"zzz">>, [], #{})),
    %% Python reaches the same Erlang handlers.
    ?assertEqual({ok, 3}, py:call(ctx(1), ?M, execute, [<<"calc">>, <<"add">>, 1, 2])).

handler_exceptions(_Config) ->
    ok = hornbeam_hooks:reg(<<"bad">>, fun(<<"error">>, _, _) -> error(badarith);
                                          (<<"exit">>, _, _) -> exit(boom);
                                          (<<"throw">>, _, _) -> throw(thrown) end),
    ?assertEqual({error, badarith}, hornbeam_hooks:execute(<<"bad">>, <<"error">>, [], #{})),
    ?assertEqual({error, {exit, boom}}, hornbeam_hooks:execute(<<"bad">>, <<"exit">>, [], #{})),
    ?assertEqual({error, thrown}, hornbeam_hooks:execute(<<"bad">>, <<"throw">>, [], #{})),
    ?assertMatch({error, function_clause},
                 hornbeam_hooks:execute(<<"bad">>, <<"other">>, [], #{})),
    {ok, [<<"HookError">>, Msg, true]} = py:call(ctx(1), ?M, execute_error,
                                                 [<<"bad">>, <<"error">>]),
    ?assertMatch({0, _}, binary:match(Msg, <<"Execute failed: badarith">>)).

async_and_await(_Config) ->
    Self = self(),
    ok = hornbeam_hooks:reg(<<"slow">>, fun(<<"wait">>, [Ms], _) -> timer:sleep(Ms), Ms;
                                           (<<"me">>, [], _) -> Self ! {task, self()}, done end),
    {ok, Id} = hornbeam_hooks:execute_async(<<"slow">>, <<"wait">>, [10], #{}),
    ?assert(is_binary(Id)),
    ?assertEqual({ok, 10}, hornbeam_hooks:await_result(Id, 5000)),
    %% Awaited once.
    ?assertEqual({error, task_not_found}, hornbeam_hooks:await_result(Id, 100)),
    ?assertEqual({error, task_not_found}, hornbeam_hooks:await_result(<<"task-0">>, 100)),
    ?assertEqual({error, task_not_found}, hornbeam_hooks:await_result(not_an_id, 100)),
    %% Runs in a process of its own, not the caller's.
    {ok, Id2} = hornbeam_hooks:execute_async(<<"slow">>, <<"me">>, [], #{}),
    receive {task, P} -> ?assertNotEqual(self(), P) after 5000 -> ct:fail(no_task) end,
    ?assertEqual({ok, done}, hornbeam_hooks:await_result(Id2, 5000)),
    %% A timeout abandons the task.
    {ok, Id3} = hornbeam_hooks:execute_async(<<"slow">>, <<"wait">>, [60000], #{}),
    ?assertEqual({error, timeout}, hornbeam_hooks:await_result(Id3, 50)),
    ?assertEqual({error, task_not_found}, hornbeam_hooks:await_result(Id3, 50)),
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_tasks, size) =:= 0 end).

erlang_streams(_Config) ->
    ok = hornbeam_hooks:reg(<<"numbers">>,
                            fun(<<"range">>, [A, B], _) ->
                                    hornbeam_hooks:stream_from_list(lists:seq(A, B));
                               (<<"count">>, [Max], _) ->
                                    Key = make_ref(),
                                    put(Key, 0),
                                    hornbeam_hooks:stream_from_fun(
                                      fun() ->
                                              case get(Key) of
                                                  N when N >= Max -> hornbeam_hooks:stream_done();
                                                  N -> put(Key, N + 1), hornbeam_hooks:stream_chunk(N)
                                              end
                                      end);
                               (<<"one">>, [], _) ->
                                    just_this;
                               (<<"refuse">>, [], _) ->
                                    {error, refused}
                            end),
    {ok, Gen} = hornbeam_hooks:stream(<<"numbers">>, <<"range">>, [1, 3], #{}),
    ?assertEqual([1, 2, 3], drain(Gen)),
    ?assertEqual({error, stream_closed}, Gen()),
    {ok, Count} = hornbeam_hooks:stream(<<"numbers">>, <<"count">>, [4], #{}),
    ?assertEqual([0, 1, 2, 3], drain(Count)),
    {ok, One} = hornbeam_hooks:stream(<<"numbers">>, <<"one">>, [], #{}),
    ?assertEqual([just_this], drain(One)),
    ?assertEqual({error, refused}, hornbeam_hooks:stream(<<"numbers">>, <<"refuse">>, [], #{})),
    %% Python reads an Erlang stream too.
    ?assertEqual({ok, [5, 6, 7]}, py:call(ctx(1), ?M, stream, [<<"numbers">>, <<"range">>, 5, 7])),
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_streams, size) =:= 0 end).

drain(Gen) ->
    case Gen() of
        {value, V} -> [V | drain(Gen)];
        done -> [];
        {error, _} = E -> [E]
    end.

invalid_paths_and_actions(_Config) ->
    F = fun(_, _, _) -> ok end,
    Long = binary:copy(<<"x">>, 256),
    [?assertEqual({error, {invalid_path, P}}, hornbeam_hooks:reg(P, F))
     || P <- [<<>>, Long, <<"a", 0, "b">>, <<"a\nb">>, <<255, 254>>, 42, {x}]],
    ?assertEqual(ok, hornbeam_hooks:reg(binary:copy(<<"x">>, 255), F)),
    ?assertMatch({error, {invalid_handler, _}}, hornbeam_hooks:reg(<<"p">>, fun(_) -> ok end)),
    ?assertEqual({error, {invalid_path, <<>>}}, hornbeam_hooks:execute(<<>>, <<"a">>, [], #{})),
    ?assertEqual({error, {invalid_action, {x}}}, hornbeam_hooks:execute(<<"p">>, {x}, [], #{})),
    ?assertEqual({error, {invalid_args, x}}, hornbeam_hooks:execute(<<"p">>, <<"a">>, x, #{})),
    ?assertEqual({error, {invalid_kwargs, x}}, hornbeam_hooks:execute(<<"p">>, <<"a">>, [], x)),
    %% Atom and string paths are their text.
    ok = hornbeam_hooks:reg(atom_path, F),
    ?assertEqual({ok, ok}, hornbeam_hooks:execute("atom_path", <<"a">>, [], #{})).

%%%===================================================================
%%% Python handlers
%%%===================================================================

python_hook_reached_from_everywhere(_Config) ->
    Pid1 = os_pid(1),
    ?assertNotEqual(Pid1, os_pid(2)),
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    ?assertEqual({ok, {python_handler}}, hornbeam_hooks:find(<<"counter">>)),
    %% From Erlang, from the other worker, from the registering worker: the
    %% same instance in worker 1.
    ?assertEqual({ok, Pid1}, hornbeam_hooks:execute(<<"counter">>, <<"whoami">>, [], #{})),
    ?assertEqual({ok, Pid1}, py:call(ctx(2), ?M, execute, [<<"counter">>, <<"whoami">>])),
    ?assertEqual({ok, 1}, hornbeam_hooks:execute(<<"counter">>, <<"bump">>, [], #{})),
    ?assertEqual({ok, 3}, py:call(ctx(2), ?M, execute, [<<"counter">>, <<"bump">>, 2])),
    ?assertEqual({ok, 4}, py:call(ctx(1), ?M, execute, [<<"counter">>, <<"bump">>])),
    ?assertEqual({ok, 14}, hornbeam_hooks:execute(<<"counter">>, <<"bump">>, [], #{by => 10})).

handler_kinds_and_kwargs(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"f">>, <<"func">>]),
    {ok, true} = py:call(ctx(1), ?M, register, [<<"i">>, <<"instance">>]),
    ?assertEqual({ok, [<<"echo">>, [1, 2], #{<<"k">> => <<"v">>}]},
                 py:call(ctx(2), ?M, execute, [<<"f">>, <<"echo">>, 1, 2], #{kwargs => #{k => <<"v">>}})),
    ?assertEqual({ok, [<<"echo">>, [1], #{k => 2}]},
                 hornbeam_hooks:execute(<<"f">>, <<"echo">>, [1], #{k => 2})),
    ?assertEqual({ok, 5}, hornbeam_hooks:execute(<<"i">>, <<"bump">>, [5], #{})),
    ?assertEqual({ok, 6}, py:call(ctx(2), ?M, execute, [<<"i">>, <<"bump">>])).

python_errors(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    %% The handler's exception, for Erlang and for Python callers elsewhere
    %% and in the worker itself.
    ?assertMatch({error, {'ValueError', <<"oops">>}},
                 hornbeam_hooks:execute(<<"counter">>, <<"fail">>, [<<"oops">>], #{})),
    [begin
         {ok, [<<"HookError">>, Msg, true]} = py:call(ctx(N), ?M, execute_error,
                                                      [<<"counter">>, <<"fail">>, <<"oops">>]),
         ?assertMatch({0, _}, binary:match(Msg, <<"Execute failed: ">>)),
         ?assertMatch({_, _}, binary:match(Msg, <<"ValueError">>))
     end || N <- [1, 2]],
    %% Private and special names are no actions.
    {ok, [<<"HookError">>, _, true]} = py:call(ctx(2), ?M, execute_error,
                                               [<<"counter">>, <<"__class__">>]),
    ?assertMatch({error, {'AttributeError', _}},
                 hornbeam_hooks:execute(<<"counter">>, <<"__init__">>, [], #{})),
    ?assertMatch({error, {'AttributeError', _}},
                 hornbeam_hooks:execute(<<"counter">>, <<"missing">>, [], #{})),
    %% A Python caller's bad path.
    {ok, [<<"TypeError">>, _, false]} = py:call(ctx(1), ?M, execute_error, [42, <<"x">>]).

unregistered_module_path(_Config) ->
    %% Nobody registered it: "module:name" is imported by whoever runs it.
    {ok, Pid} = hornbeam_hooks:execute(<<"hb_hooks:func_handler">>, <<"pid">>, [], #{}),
    ?assert(lists:member(Pid, [os_pid(1), os_pid(2)])),
    ?assertEqual({ok, os_pid(2)},
                 py:call(ctx(2), ?M, execute, [<<"hb_hooks:func_handler">>, <<"pid">>])),
    %% A class there: an instance per call.
    ?assertEqual({ok, 1}, hornbeam_hooks:execute(<<"hb_hooks:Counter">>, <<"bump">>, [], #{})),
    ?assertEqual({ok, 1}, hornbeam_hooks:execute(<<"hb_hooks:Counter">>, <<"bump">>, [], #{})),
    ?assertMatch({error, {'LookupError', _}},
                 hornbeam_hooks:execute(<<"no_such_hook">>, <<"x">>, [], #{})),
    ?assertMatch({error, {'ModuleNotFoundError', _}},
                 hornbeam_hooks:execute(<<"no_such_module_q:f">>, <<"x">>, [], #{})),
    ?assertMatch({error, {'LookupError', _}},
                 hornbeam_hooks:execute(<<"os:_exit">>, <<"x">>, [], #{})),
    {ok, [<<"HookError">>, _, true]} = py:call(ctx(1), ?M, execute_error,
                                               [<<"no_such_hook">>, <<"x">>]).

python_tasks(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    {ok, Id} = py:call(ctx(2), ?M, execute_async, [<<"counter">>, <<"bump">>]),
    ?assert(is_binary(Id)),
    ?assertEqual({ok, 1}, py:call(ctx(2), ?M, await_result, [Id])),
    {ok, [<<"HookError">>, Msg, true]} = py:call(ctx(2), ?M, await_error, [Id]),
    ?assertMatch({0, _}, binary:match(Msg, <<"Await failed: task_not_found">>)),
    %% Made in Python, awaited in Erlang, and the other way round.
    {ok, Id2} = py:call(ctx(2), ?M, execute_async, [<<"counter">>, <<"whoami">>]),
    ?assertEqual({ok, os_pid(1)}, hornbeam_hooks:await_result(Id2, 5000)),
    {ok, Id3} = hornbeam_hooks:execute_async(<<"counter">>, <<"bump">>, [], #{}),
    %% Any timeout a worker sends is a timeout (here far beyond 2^32 ms).
    ?assertEqual({ok, 2}, py:call(ctx(2), ?M, await_result, [Id3, 1 bsl 60])),
    %% The registering worker's own task: run in that worker.
    {ok, Id4} = py:call(ctx(1), ?M, execute_async, [<<"counter">>, <<"bump">>]),
    ?assertEqual({ok, 3}, py:call(ctx(1), ?M, await_result, [Id4])),
    %% A failing task.
    {ok, Id5} = py:call(ctx(2), ?M, execute_async, [<<"counter">>, <<"fail">>, <<"no">>]),
    {ok, [<<"HookError">>, Msg5, true]} = py:call(ctx(2), ?M, await_error, [Id5]),
    ?assertMatch({0, _}, binary:match(Msg5, <<"Await failed: {'ValueError'">>)).

python_streams(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    %% Remote (worker 2 reads worker 1's generator), local, from Erlang.
    ?assertEqual({ok, [0, 1, 2]}, py:call(ctx(2), ?M, stream, [<<"counter">>, <<"chunks">>, 3])),
    ?assertEqual({ok, [0, 1, 2]}, py:call(ctx(1), ?M, stream, [<<"counter">>, <<"chunks">>, 3])),
    {ok, Gen} = hornbeam_hooks:stream(<<"counter">>, <<"chunks">>, [4], #{}),
    ?assertEqual([0, 1, 2, 3], drain(Gen)),
    %% A value that is no generator is one chunk.
    ?assertEqual({ok, [1]}, py:call(ctx(2), ?M, stream, [<<"counter">>, <<"bump">>])),
    %% Async, remote and local.
    ?assertEqual({ok, [0, 1]}, py:call(ctx(2), ?M, stream_async, [<<"counter">>, <<"chunks">>, 2])),
    ?assertEqual({ok, [0, 1]}, py:call(ctx(1), ?M, stream_async, [<<"counter">>, <<"chunks">>, 2])),
    %% Errors: at the start, and midway.
    ?assertMatch({error, {'ValueError', _}},
                 hornbeam_hooks:stream(<<"counter">>, <<"fail">>, [<<"x">>], #{})),
    {ok, [[], [<<"HookError">>, M1, true]]} =
        py:call(ctx(2), ?M, stream_error, [<<"counter">>, <<"fail">>, <<"x">>]),
    ?assertMatch({0, _}, binary:match(M1, <<"Stream failed">>)),
    [begin
         {ok, [[1], [<<"HookError">>, M2, true]]} =
             py:call(ctx(N), ?M, stream_error, [<<"counter">>, <<"broken_chunks">>]),
         ?assertMatch({0, _}, binary:match(M2, <<"Stream error">>))
     end || N <- [1, 2]],
    {ok, Broken} = hornbeam_hooks:stream(<<"counter">>, <<"broken_chunks">>, [], #{}),
    ?assertMatch([1, {error, {'KeyError', _}}], drain(Broken)),
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_streams, size) =:= 0 end).

streams_are_closed(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    %% A Python reader that stops early closes the stream, and the
    %% generator in the worker that holds the hook.
    ?assertEqual({ok, 0}, py:call(ctx(2), ?M, stream_first, [<<"counter">>, <<"chunks">>, 1000])),
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_streams, size) =:= 0 end),
    pyport_test_util:wait_until(fun() -> closed() =:= 1 end),
    %% An Erlang reader's stream ends with it.
    Parent = self(),
    Reader = spawn(fun() ->
                           {ok, G} = hornbeam_hooks:stream(<<"counter">>, <<"chunks">>, [1000], #{}),
                           Parent ! {first, G()},
                           receive stop -> ok end
                   end),
    receive {first, First} -> ?assertEqual({value, 0}, First) after 10000 -> ct:fail(no_first) end,
    ?assertEqual(1, ets:info(pyport_hook_streams, size)),
    exit(Reader, kill),
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_streams, size) =:= 0 end),
    pyport_test_util:wait_until(fun() -> closed() =:= 2 end).

closed() ->
    {ok, N} = hornbeam_hooks:execute(<<"counter">>, <<"closed_count">>, [], #{}),
    N.

hook_ends_with_its_worker(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    Pid1 = os_pid(1),
    {error, {worker_exited, _}} = py:eval(ctx(1), <<"__import__('os')._exit(3)">>, none),
    pyport_test_util:wait_until(fun() -> hornbeam_hooks:find(<<"counter">>) =:= not_found end),
    ?assertNotEqual(Pid1, os_pid(1)),
    ?assertMatch({error, {'LookupError', _}},
                 hornbeam_hooks:execute(<<"counter">>, <<"bump">>, [], #{})),
    %% The restarted worker registers again when its code does.
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    ?assertEqual({ok, 1}, hornbeam_hooks:execute(<<"counter">>, <<"bump">>, [], #{})).

two_providers_and_unregister(_Config) ->
    [{ok, true} = py:call(ctx(N), ?M, register, [<<"both">>]) || N <- [1, 2]],
    Pids = lists:usort([begin {ok, P} = hornbeam_hooks:execute(<<"both">>, <<"whoami">>, [], #{}),
                              P end || _ <- lists:seq(1, 40)]),
    ?assertEqual(lists:sort([os_pid(1), os_pid(2)]), Pids),
    %% Each worker runs its own.
    ?assertEqual({ok, os_pid(2)}, py:call(ctx(2), ?M, execute, [<<"both">>, <<"whoami">>])),
    %% Worker 1 unregisters its own; worker 2's stays and serves worker 1.
    {ok, true} = py:call(ctx(1), ?M, unregister, [<<"both">>]),
    ?assertEqual({ok, os_pid(2)}, py:call(ctx(1), ?M, execute, [<<"both">>, <<"whoami">>])),
    {ok, true} = py:call(ctx(2), ?M, unregister, [<<"both">>]),
    ?assertEqual(not_found, hornbeam_hooks:find(<<"both">>)).

erlang_reg_replaces_python(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"p">>]),
    ok = hornbeam_hooks:reg(<<"p">>, fun(_, _, _) -> from_erlang end),
    ?assertEqual({ok, from_erlang}, py:call(ctx(2), ?M, execute, [<<"p">>, <<"whoami">>])),
    %% The worker's count no longer holds it; its unregister leaves Erlang's.
    {ok, true} = py:call(ctx(1), ?M, unregister, [<<"p">>]),
    ?assertEqual({ok, from_erlang}, hornbeam_hooks:execute(<<"p">>, <<"x">>, [], #{})).

%%%===================================================================
%%% Bounds
%%%===================================================================

hook_cap_per_worker(_Config) ->
    Names = [<<"cap", (integer_to_binary(N))/binary>> || N <- lists:seq(1, 5)],
    ?assertEqual({ok, [<<"ok">> || _ <- Names]}, py:call(ctx(1), ?M, many_names, [Names])),
    {ok, [<<"ErlangError">>, Msg, true]} = py:call(ctx(1), ?M, register_error, [<<"cap6">>]),
    ?assertMatch({_, _}, binary:match(Msg, <<"max_per_worker">>)),
    %% The refused hook is not there, in Erlang or in the worker.
    ?assertEqual(not_found, hornbeam_hooks:find(<<"cap6">>)),
    {ok, [<<"HookError">>, _, true]} = py:call(ctx(1), ?M, execute_error, [<<"cap6">>, <<"x">>]),
    %% Registering one it holds again is no new hook; another worker has
    %% its own budget; a freed place can be used.
    ?assertEqual({ok, [<<"ok">>]}, py:call(ctx(1), ?M, many_names, [[<<"cap1">>]])),
    ?assertEqual({ok, [<<"ok">>]}, py:call(ctx(2), ?M, many_names, [[<<"cap6">>]])),
    {ok, true} = py:call(ctx(1), ?M, unregister, [<<"cap1">>]),
    ?assertEqual({ok, [<<"ok">>]}, py:call(ctx(1), ?M, many_names, [[<<"cap7">>]])).

hostile_hook_names(_Config) ->
    Atoms = erlang:system_info(atom_count),
    Bad = [<<>>, binary:copy(<<"y">>, 256), <<"a", 0, "b">>, <<"a\nb">>, <<"tab\there">>,
           <<"del", 127>>],
    {ok, Outcomes} = py:call(ctx(1), ?M, many_names, [Bad]),
    ?assertEqual([<<"ValueError">> || _ <- Bad], Outcomes),
    ?assertEqual({ok, [<<"TypeError">>]}, py:call(ctx(1), ?M, many_names, [[42]])),
    ?assertEqual([], hornbeam_hooks:all()),
    %% Unknown paths and actions of every kind mint no atom.
    Fresh = [<<"zq_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>
             || _ <- lists:seq(1, 50)],
    [begin
         {ok, [<<"HookError">>, _, true]} =
             py:call(ctx(2), ?M, execute_error, [<<Name/binary, ":", Name/binary>>, Name]),
         {error, _} = hornbeam_hooks:execute(Name, Name, [], #{})
     end || Name <- Fresh],
    ok = hornbeam_hooks:reg(<<"echo">>, fun(A, _, _) -> A end),
    [{ok, Name} = py:call(ctx(2), ?M, execute, [<<"echo">>, Name]) || Name <- Fresh],
    ?assertEqual(Atoms, erlang:system_info(atom_count)).

task_cap(_Config) ->
    ok = hornbeam_hooks:reg(<<"slow">>, fun(_, [Ms], _) -> timer:sleep(Ms), Ms end),
    Ids = [begin {ok, Id} = py:call(ctx(2), ?M, execute_async, [<<"slow">>, <<"x">>, 1500]), Id end
           || _ <- lists:seq(1, 3)],
    {ok, [<<"HookError">>, Msg, true]} =
        py:call(ctx(2), ?M, execute_async_error, [<<"slow">>, <<"x">>, 1]),
    ?assertMatch({_, _}, binary:match(Msg, <<"too_many_tasks">>)),
    %% Another worker, and Erlang, have their own budgets.
    {ok, Other} = py:call(ctx(1), ?M, execute_async, [<<"slow">>, <<"x">>, 1]),
    ?assertEqual({ok, 1}, py:call(ctx(1), ?M, await_result, [Other])),
    [?assertEqual({ok, 1500}, py:call(ctx(2), ?M, await_result, [Id])) || Id <- Ids],
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_tasks, size) =:= 0 end),
    {ok, Again} = py:call(ctx(2), ?M, execute_async, [<<"slow">>, <<"x">>, 1]),
    ?assertEqual({ok, 1}, py:call(ctx(2), ?M, await_result, [Again])).

stream_cap_and_idle_end(_Config) ->
    {ok, true} = py:call(ctx(1), ?M, register, [<<"counter">>]),
    [{ok, 0} = py:call(ctx(2), ?M, stream_open_and_keep, [<<"counter">>, <<"chunks">>, 100])
     || _ <- lists:seq(1, 3)],
    ?assertEqual(3, ets:info(pyport_hook_streams, size)),
    {ok, [_, [<<"HookError">>, Msg, true]]} =
        py:call(ctx(2), ?M, stream_error, [<<"counter">>, <<"chunks">>, 2]),
    ?assertMatch({_, _}, binary:match(Msg, <<"too_many_streams">>)),
    %% Nobody reads them: they end after stream_idle (1 s here).
    pyport_test_util:wait_until(fun() -> ets:info(pyport_hook_streams, size) =:= 0 end),
    pyport_test_util:wait_until(fun() -> closed() =:= 3 end),
    ?assertEqual({ok, [0, 1]}, py:call(ctx(2), ?M, stream, [<<"counter">>, <<"chunks">>, 2])).

hooks_need_full_grants(Config) ->
    {ok, _} = pyport:start_pool(granted, #{size => 1, python_path => [?config(python_dir, Config)],
                                           grants => #{functions => [<<"f">>]}}),
    try
        {ok, [<<"PermissionError">>, _, true]} =
            py:call(hb_hooks, register_error, [<<"h">>], #{}, #{pool => granted}),
        ok = hornbeam_hooks:reg(<<"h">>, fun(_, _, _) -> reached end),
        {ok, [<<"HookError">>, Msg, true]} =
            py:call(hb_hooks, execute_error, [<<"h">>, <<"x">>], #{}, #{pool => granted}),
        ?assertMatch({_, _}, binary:match(Msg, <<"grants">>))
    after
        pyport:stop_pool(granted)
    end.

%% Last: it restarts pyport.
bad_hooks_config_stops_the_start(_Config) ->
    {ok, Good} = application:get_env(pyport, hooks),
    ok = application:stop(pyport),
    try
        [begin
             application:set_env(pyport, hooks, Bad),
             {error, Why} = application:ensure_all_started(pyport),
             ?assertMatch({_, _}, binary:match(iolist_to_binary(io_lib:format("~p", [Why])),
                                               Expected))
         end || {Bad, Expected} <- [{#{max_per_worker => 0}, <<"{invalid_config,{hooks,max_per_worker},0}">>},
                                    {#{stream_idle => x}, <<"{invalid_config,{hooks,stream_idle},x}">>},
                                    {#{nope => 1}, <<"{invalid_config,{hooks,unknown_key},nope}">>},
                                    {[], <<"{invalid_config,hooks,[]}">>}]]
    after
        application:set_env(pyport, hooks, Good),
        {ok, _} = application:ensure_all_started(pyport)
    end.
