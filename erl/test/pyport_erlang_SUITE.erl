%% Python reaching Erlang through real workers (docs/erlang-integration.md):
%% registered functions, reentrancy, messages, shared state, pub/sub,
%% Hornbeam's module, logging and tracing, cooperative scheduling.
%%
%% Python helpers live in pyport_erlang_SUITE_data/erl_funcs.py, on the
%% pools' python_path.
-module(pyport_erlang_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, erl_funcs).

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [{group, callbacks}, {group, reentrancy}, {group, messages}, {group, state},
     {group, pubsub}, {group, hornbeam}, {group, logging}, {group, tracing},
     {group, scheduling}].

groups() ->
    [{callbacks, [],
      [call_registered_fun, call_registered_mfa, attribute_and_import_access,
       unknown_function_is_a_clear_error, crashing_function_carries_the_reason,
       unregister_function, introspection_makes_no_requests, bad_registrations,
       async_call_does_not_block_the_loop]},
     {reentrancy, [],
      [callback_chain_of_depth_10, python_threads_call_erlang_concurrently,
       thousand_callbacks_from_hundred_callers, interrupt_a_call_waiting_for_erlang]},
     {messages, [],
      [send_to_pid_and_name, send_to_dead_pid_is_a_process_error, whereis_finds_registered_names,
       pids_and_refs_stay_equal_after_round_trips]},
     {state, [],
      [state_from_python, state_from_erlang_and_python_agree, hornbeam_state,
       counters_are_exact_across_four_workers, state_survives_a_worker_crash,
       incr_of_a_non_integer, max_state_entries]},
     {pubsub, [],
      [erlang_subscribers_get_python_publishes, python_subscriber_gets_erlang_publishes,
       two_handlers_receive_only_their_own_topics, two_tasks_receive_only_their_own_topics,
       unsubscribe_stops_delivery, worker_restart_drops_python_subscriptions]},
     {hornbeam, [],
      [hornbeam_call_and_cast, hornbeam_pubsub]},
     {logging, [],
      [python_logging_reaches_logger]},
     {tracing, [],
      [spans_are_kept_while_tracing_is_enabled]},
     {scheduling, [],
      [schedule_returns_the_erlang_result, schedule_frees_the_worker_at_once,
       schedule_of_an_unknown_function, schedule_py_and_inline, schedule_from_a_cast,
       consume_time_slice_lets_a_waiting_request_go_first]}].

init_per_suite(Config) ->
    Data = filename:join(filename:dirname(code:which(?MODULE)), "pyport_erlang_SUITE_data"),
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Data]}}),
    {ok, _} = application:ensure_all_started(pyport),
    [{python_dir, Data} | Config].

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

init_per_group(_Group, Config) ->
    Config.

end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    [pyport_registry:unregister(N) || N <- pyport_registry:names()],
    ok.

ctx() -> py:context(1).

%%%===================================================================
%%% Registered functions
%%%===================================================================

call_registered_fun(_Config) ->
    ok = py:register_function(add, fun([A, B]) -> A + B end),
    ?assertEqual({ok, 3}, py:call(?F, call, [add, 1, 2])),
    %% Names are text: an atom (erlang.Atom in Python), a binary (str).
    ?assertEqual({ok, 7}, py:call(?F, call, [<<"add">>, 3, 4])),
    ok = py:register_function(<<"echo_args">>, fun(Args) -> Args end),
    ?assertEqual({ok, [x, <<"y">>, {1, 2}]}, py:call(?F, call, [echo_args, x, <<"y">>, {1, 2}])).

call_registered_mfa(_Config) ->
    ok = py:register_function(reverse, lists, reverse),
    ?assertEqual({ok, [3, 2, 1]}, py:call(?F, call, [reverse, 1, 2, 3])).

attribute_and_import_access(_Config) ->
    ok = py:register_function(mul, fun([A, B]) -> A * B end),
    ?assertEqual({ok, 12}, py:call(?F, call_attr, [mul, 3, 4])),
    ?assertEqual({ok, 30}, py:call(?F, call_imported, [mul, 5, 6])),
    ?assertEqual({ok, true}, py:call(?F, has, [mul])),
    ?assertEqual({ok, false}, py:call(?F, has, [not_registered_here])).

unknown_function_is_a_clear_error(_Config) ->
    {ok, [<<"UnknownFunctionError">>, Msg, <<"nowhere">>]} =
        py:call(?F, call_error, [nowhere, 1]),
    ?assertMatch({_, _}, binary:match(Msg, <<"'nowhere'">>)),
    {ok, [<<"AttributeError">>, AttrMsg, none]} = py:call(?F, attr_error, [nowhere]),
    ?assertMatch({_, _}, binary:match(AttrMsg, <<"no Erlang function is registered as 'nowhere'">>)),
    %% Uncaught, it reaches the caller as an exception with its own atom.
    ?assertMatch({error, {'UnknownFunctionError', _}}, py:call(?F, call, [nowhere])),
    {ok, Pid1} = py:call(ctx(), ?F, os_pid, []),
    {ok, _} = py:call(ctx(), ?F, call_error, [nowhere]),
    ?assertEqual({ok, Pid1}, py:call(ctx(), ?F, os_pid, [])).

crashing_function_carries_the_reason(_Config) ->
    ok = py:register_function(divide, fun([A, B]) -> A / B end),
    ok = py:register_function(exits, fun(_) -> exit(gone) end),
    ok = py:register_function(throws, fun(_) -> throw({oops, 1}) end),
    {ok, [<<"ErlangError">>, Msg, {error, badarith}]} = py:call(?F, call_error, [divide, 1, 0]),
    ?assertMatch({_, _}, binary:match(Msg, <<"'divide'">>)),
    ?assertMatch({ok, [<<"ErlangError">>, _, {exit, gone}]}, py:call(?F, call_error, [exits])),
    ?assertMatch({ok, [<<"ErlangError">>, _, {throw, {oops, 1}}]}, py:call(?F, call_error, [throws])),
    ?assertMatch({error, {'ErlangError', _}}, py:call(?F, call, [divide, 1, 0])),
    %% The worker and the registry carry on.
    ?assertEqual({ok, 2.0}, py:call(?F, call, [divide, 4, 2])).

unregister_function(_Config) ->
    ok = py:register_function(temp, fun(_) -> here end),
    ?assertEqual({ok, here}, py:call(?F, call, [temp])),
    ok = py:unregister_function(temp),
    ?assertMatch({ok, [<<"UnknownFunctionError">>, _, _]}, py:call(?F, call_error, [temp])),
    ?assertEqual({ok, false}, py:call(?F, has, [temp])).

introspection_makes_no_requests(_Config) ->
    {ok, #{<<"probes">> := Probes, <<"requests">> := Requests} = R} =
        py:call(?F, introspection, []),
    ?assertEqual(#{<<"__wrapped__">> => false, <<"__path__">> => true, <<"__file__">> => true,
                   <<"_private">> => false}, Probes),
    ?assertEqual(0, Requests),
    ?assertMatch(#{<<"has_call">> := true, <<"unwrapped">> := true, <<"doc">> := true,
                   <<"is_module">> := true}, R).

bad_registrations(_Config) ->
    ?assertEqual({error, {invalid_function, not_a_fun}}, py:register_function(x, not_a_fun)),
    ?assertMatch({error, {invalid_function, _}}, py:register_function(x, fun(A, B) -> {A, B} end)),
    ?assertMatch({error, {invalid_name, _}}, py:register_function({x}, fun(A) -> A end)).

async_call_does_not_block_the_loop(_Config) ->
    %% Each call waits until all ten are in flight: only calls that do not
    %% block the loop can all be in flight at once.
    Self = self(),
    ok = py:register_function(barrier, fun([I]) ->
                                               Self ! {arrived, self()},
                                               receive go -> I * I end
                                       end),
    Handle = py:spawn_call(?F, async_gather, [10]),
    Waiting = [receive {arrived, P} -> P after 30000 -> ct:fail(not_concurrent) end
               || _ <- lists:seq(1, 10)],
    [P ! go || P <- Waiting],
    ?assertEqual({ok, [I * I || I <- lists:seq(0, 9)]}, py:await(Handle)).

%%%===================================================================
%%% Reentrancy
%%%===================================================================

callback_chain_of_depth_10(_Config) ->
    Ctx = ctx(),
    Self = self(),
    ok = py:register_function(down, fun([N]) ->
                                            Self ! {level, N},
                                            {ok, V} = py:call(Ctx, ?F, chain, [N]),
                                            V
                                    end),
    ?assertEqual({ok, 10}, py:call(Ctx, ?F, chain, [10])),
    Levels = [receive {level, L} -> L after 0 -> missing end || _ <- lists:seq(1, 10)],
    ?assertEqual(lists:seq(9, 0, -1), Levels).

python_threads_call_erlang_concurrently(_Config) ->
    ok = py:register_function(square, fun([I]) -> timer:sleep(I rem 3), I * I end),
    ?assertEqual({ok, [I * I || I <- lists:seq(0, 49)]}, py:call(?F, threads, [50])).

thousand_callbacks_from_hundred_callers(_Config) ->
    ok = py:register_function(tag, fun([Caller, I]) -> {Caller, I} end),
    Self = self(),
    Pids = [spawn_link(fun() -> Self ! {self(), C, py:call(?F, tagged, [C, 10], #{}, 60000)} end)
            || C <- lists:seq(1, 100)],
    Results = [receive {P, C, R} -> {C, R} after 90000 -> ct:fail(timeout) end || P <- Pids],
    [?assertEqual({ok, [{C, I} || I <- lists:seq(0, 9)]}, R) || {C, R} <- Results].

interrupt_a_call_waiting_for_erlang(_Config) ->
    %% The Erlang function never answers: py:interrupt/1 still ends the call.
    Self = self(),
    ok = py:register_function(hang, fun(_) -> Self ! {hanging, self()}, receive stop -> ok end end),
    Ctx = ctx(),
    {ok, OsPid} = py:call(Ctx, ?F, os_pid, []),
    Handle = py:spawn_call(Ctx, ?F, call, [hang]),
    Hanging = receive {hanging, P} -> P after 10000 -> ct:fail(not_called) end,
    ok = py:interrupt(Handle),
    ?assertMatch({error, {'KeyboardInterrupt', _}}, py:await(Handle)),
    %% The same OS process goes on.
    ?assertEqual({ok, OsPid}, py:call(Ctx, ?F, os_pid, [])),
    Hanging ! stop.

%%%===================================================================
%%% Messages
%%%===================================================================

send_to_pid_and_name(_Config) ->
    ?assertEqual({ok, true}, py:call(?F, send, [self(), {hello, 1}])),
    receive {hello, 1} -> ok after 5000 -> ct:fail(no_message) end,
    true = register(pyport_ct_named, self()),
    try
        ?assertEqual({ok, true}, py:call(?F, send, [pyport_ct_named, by_name])),
        ?assertEqual({ok, true}, py:call(?F, send, [<<"pyport_ct_named">>, by_str])),
        ?assertEqual({ok, true}, py:call(?F, send, [{pyport_ct_named, node()}, by_tuple])),
        [receive M -> ok after 5000 -> ct:fail({no_message, M}) end
         || M <- [by_name, by_str, by_tuple]]
    after
        unregister(pyport_ct_named)
    end.

send_to_dead_pid_is_a_process_error(_Config) ->
    Dead = spawn(fun() -> ok end),
    Ref = monitor(process, Dead),
    receive {'DOWN', Ref, _, _, _} -> ok end,
    {ok, [<<"ProcessError">>, Msg, Dead]} = py:call(?F, send_error, [Dead]),
    ?assertMatch({_, _}, binary:match(Msg, <<"not alive">>)),
    ?assertMatch({ok, [<<"ProcessError">>, _, _]},
                 py:call(?F, send_error, [<<"no_such_registered_name">>])),
    ?assertMatch({error, {'ProcessError', _}}, py:call(?F, send, [Dead, x])).

whereis_finds_registered_names(_Config) ->
    ?assertEqual({ok, whereis(pyport_sup)}, py:call(?F, whereis, [pyport_sup])),
    ?assertEqual({ok, whereis(pyport_sup)}, py:call(?F, whereis, [<<"pyport_sup">>])),
    ?assertEqual({ok, none}, py:call(?F, whereis, [<<"surely_not_registered_anywhere_xyz">>])).

pids_and_refs_stay_equal_after_round_trips(_Config) ->
    ok = py:register_function(identity, fun([X]) -> X end),
    Ctx = ctx(),
    Pid = self(),
    Ref = make_ref(),
    ?assertEqual({ok, true}, py:call(Ctx, ?F, pid_identity, [Pid, 50])),
    %% Through separate calls too: the same pid and ref are the same dict keys.
    [?assertMatch({ok, [false, 1, 1]}, py:call(Ctx, ?F, remember, [T])) || T <- [Pid, Ref]],
    [?assertMatch({ok, [true, 21, 1]}, lists:last([py:call(Ctx, ?F, remember, [T])
                                                   || _ <- lists:seq(1, 20)]))
     || T <- [Pid, Ref]].

%%%===================================================================
%%% Shared state
%%%===================================================================

state_from_python(_Config) ->
    {ok, R} = py:call(?F, state_ops, []),
    ?assertMatch(#{<<"get">> := #{<<"name">> := <<"Ann">>}, <<"missing">> := none,
                   <<"keys">> := [<<"user:1">>, <<"user:2">>],
                   <<"all_keys">> := [<<"other">>, <<"user:1">>, <<"user:2">>],
                   <<"incr">> := [1, 11, 10, 5], <<"after_delete">> := none}, R),
    ?assertEqual(#{<<"user:1">> => #{<<"name">> => <<"Ann">>}, <<"nope">> => none,
                   <<"other">> => 3}, maps:get(<<"multi">>, R)),
    ?assertMatch([<<"TypeError">>, _, <<"user:1">>], maps:get(<<"incr_error">>, R)).

state_from_erlang_and_python_agree(_Config) ->
    ok = py:state_clear(),
    ok = py:state_store(<<"from_erlang">>, {tuple, [1]}),
    ?assertEqual({ok, {tuple, [1]}}, py:call(?F, state_get, [<<"from_erlang">>])),
    ?assertEqual({ok, true}, py:call(?F, state_set, [<<"from_python">>, #{a => 1}])),
    ?assertEqual({ok, #{a => 1}}, py:state_fetch(<<"from_python">>)),
    ?assertEqual({error, not_found}, py:state_fetch(<<"nothing">>)),
    ?assertEqual([<<"from_erlang">>, <<"from_python">>], lists:sort(py:state_keys())),
    ?assertEqual(1, py:state_incr(<<"c">>)),
    ?assertEqual(6, py:state_incr(<<"c">>, 5)),
    ?assertEqual(5, py:state_decr(<<"c">>)),
    ?assertEqual(2, py:state_decr(<<"c">>, 3)),
    ?assertEqual({error, not_an_integer}, py:state_incr(<<"from_python">>)),
    ok = py:state_remove(<<"c">>),
    ?assertEqual({error, not_found}, py:state_fetch(<<"c">>)),
    ok = py:state_clear(),
    ?assertEqual([], py:state_keys()).

hornbeam_state(_Config) ->
    ok = py:state_clear(),
    ?assertEqual({ok, [#{<<"a">> => 1}, 1, 5, 3, #{<<"hb:x">> => #{<<"a">> => 1}, <<"hb:none">> => none},
                       [<<"hb:n">>, <<"hb:x">>], none, none]},
                 py:call(?F, hornbeam_state, [])).

counters_are_exact_across_four_workers(_Config) ->
    {ok, _} = pyport:start_pool(four, #{size => 4, python_path => [python_dir()]}),
    try
        ok = py:state_remove(<<"shared_counter">>),
        Self = self(),
        %% Slot by slot, so that the four run in four OS processes at once.
        [spawn_link(fun() ->
                            Self ! {done, pyport_request:call({slot, four, S}, 1,
                                                              [<<"erl_funcs">>, <<"incr_many">>,
                                                               [<<"shared_counter">>, 10000], #{}],
                                                              60000)}
                    end) || S <- lists:seq(1, 4)],
        [receive {done, R} -> ?assertEqual({ok, 10000}, R) after 90000 -> ct:fail(timeout) end
         || _ <- lists:seq(1, 4)],
        ?assertEqual({ok, 40000}, py:state_fetch(<<"shared_counter">>))
    after
        pyport:stop_pool(four)
    end.

state_survives_a_worker_crash(_Config) ->
    Ctx = ctx(),
    ?assertEqual({ok, true}, py:call(Ctx, ?F, state_set, [<<"survivor">>, [1, 2, 3]])),
    {ok, OsPid} = py:call(Ctx, ?F, os_pid, []),
    {error, {worker_exited, _}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>, none),
    {ok, NewPid} = py:call(Ctx, ?F, os_pid, []),
    ?assertNotEqual(OsPid, NewPid),
    ?assertEqual({ok, [1, 2, 3]}, py:call(Ctx, ?F, state_get, [<<"survivor">>])).

incr_of_a_non_integer(_Config) ->
    ok = py:state_store(<<"text">>, <<"abc">>),
    {ok, [<<"TypeError">>, Msg, <<"text">>]} = py:call(?F, state_incr_error, [<<"text">>]),
    ?assertMatch({_, _}, binary:match(Msg, <<"not an integer">>)).

max_state_entries(_Config) ->
    %% The limit is read when the table's owner starts: restart it.
    ok = supervisor:terminate_child(pyport_sup, pyport_state),
    application:set_env(pyport, max_state_entries, 3),
    try
        {ok, _} = supervisor:restart_child(pyport_sup, pyport_state),
        [ok = py:state_store(K, 1) || K <- [<<"a">>, <<"b">>, <<"c">>]],
        ?assertEqual({error, {state_full, 3}}, py:state_store(<<"d">>, 1)),
        {ok, [<<"StateFullError">>, Msg, 3]} = py:call(?F, state_set_error, [<<"d">>, 1]),
        ?assertMatch({_, _}, binary:match(Msg, <<"max_state_entries = 3">>)),
        ?assertMatch({ok, [<<"StateFullError">>, _, 3]}, py:call(?F, state_incr_error, [<<"e">>])),
        %% Existing keys still change.
        ?assertEqual({ok, true}, py:call(?F, state_set, [<<"a">>, 2])),
        ?assertEqual(2, py:state_incr(<<"b">>)),
        ok = py:state_remove(<<"c">>),
        ok = py:state_store(<<"d">>, 1)
    after
        application:unset_env(pyport, max_state_entries),
        ok = supervisor:terminate_child(pyport_sup, pyport_state),
        {ok, _} = supervisor:restart_child(pyport_sup, pyport_state)
    end.

python_dir() ->
    filename:join(filename:dirname(code:which(?MODULE)), "pyport_erlang_SUITE_data").

%%%===================================================================
%%% Pub/sub
%%%===================================================================

erlang_subscribers_get_python_publishes(_Config) ->
    Topic = topic(),
    Self = self(),
    Subs = [spawn_link(fun() ->
                               ok = py:subscribe(Topic),
                               Self ! {subscribed, self()},
                               receive {pubsub, T, M} -> Self ! {got, self(), T, M} end
                       end) || _ <- lists:seq(1, 3)],
    [receive {subscribed, P} -> ok end || P <- Subs],
    ?assertEqual({ok, 3}, py:call(?F, publish, [Topic, #{n => 1}])),
    [receive {got, P, T, M} -> ?assertEqual({Topic, #{n => 1}}, {T, M})
     after 5000 -> ct:fail(no_delivery) end || P <- Subs].

python_subscriber_gets_erlang_publishes(_Config) ->
    Topic = topic(),
    Ctx = ctx(),
    ?assertEqual({ok, true}, py:call(Ctx, ?F, subscribe, [Topic])),
    ?assertEqual(1, py:publish(Topic, {hello, [1]})),
    ?assertEqual({ok, {Topic, {hello, [1]}}}, py:call(Ctx, ?F, receive_pubsub, [30])),
    ?assertEqual({ok, none}, py:call(Ctx, ?F, receive_pubsub, [0])),
    ?assertEqual({ok, true}, py:call(Ctx, ?F, unsubscribe, [Topic])).

two_handlers_receive_only_their_own_topics(_Config) ->
    two_receivers(two_handlers).

two_tasks_receive_only_their_own_topics(_Config) ->
    two_receivers(two_tasks).

two_receivers(Function) ->
    A = topic(),
    B = topic(),
    Handle = py:spawn_call(?F, Function, [A, B, self()], #{}, 60000),
    receive <<"subscribed">> -> ok after 30000 -> ct:fail(not_subscribed) end,
    ?assertEqual(1, py:publish(A, 1)),
    ?assertEqual(1, py:publish(B, 2)),
    ?assertEqual(1, py:publish(A, 3)),
    ?assertEqual(1, py:publish(A, last)),
    ?assertEqual(1, py:publish(B, last)),
    ?assertEqual({ok, [[{A, 1}, {A, 3}, {A, last}], [{B, 2}, {B, last}]]}, py:await(Handle)),
    %% Both handlers ended, and their subscriptions with them.
    wait_until(fun() -> py:publish(A, x) =:= 0 andalso py:publish(B, x) =:= 0 end).

unsubscribe_stops_delivery(_Config) ->
    Topic = topic(),
    Ctx = ctx(),
    {ok, true} = py:call(Ctx, ?F, subscribe, [Topic]),
    {ok, true} = py:call(Ctx, ?F, unsubscribe, [Topic]),
    ?assertEqual(0, py:publish(Topic, gone)),
    ?assertEqual({ok, none}, py:call(Ctx, ?F, receive_pubsub, [0])).

worker_restart_drops_python_subscriptions(_Config) ->
    Topic = topic(),
    Ctx = ctx(),
    {ok, true} = py:call(Ctx, ?F, subscribe, [Topic]),
    ?assertEqual(1, length(pyport_pubsub:members(Topic))),
    {error, {worker_exited, _}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>, none),
    wait_until(fun() -> pyport_pubsub:members(Topic) =:= [] end),
    ?assertEqual(0, py:publish(Topic, x)).

topic() ->
    <<"topic-", (integer_to_binary(erlang:unique_integer([positive])))/binary>>.

wait_until(Fun) ->
    wait_until(Fun, 100).

wait_until(Fun, 0) ->
    ?assert(Fun());
wait_until(Fun, N) ->
    case Fun() of
        true -> ok;
        false -> timer:sleep(50), wait_until(Fun, N - 1)
    end.

%%%===================================================================
%%% Hornbeam
%%%===================================================================

hornbeam_call_and_cast(_Config) ->
    Self = self(),
    ok = py:register_function(add, fun([A, B]) -> A + B end),
    ok = py:register_function(notify_me, fun([M]) -> Self ! {cast, M} end),
    ?assertEqual({ok, 3}, py:call(?F, hornbeam_call, [add, 1, 2])),
    ?assertEqual({ok, true}, py:call(?F, hornbeam_cast, [notify_me, <<"user_login">>])),
    receive {cast, <<"user_login">>} -> ok after 5000 -> ct:fail(no_cast) end,
    %% A cast of an unknown function fails quietly on the Erlang side.
    ?assertEqual({ok, true}, py:call(?F, hornbeam_cast, [nobody_home, 1])).

hornbeam_pubsub(_Config) ->
    Topic = topic(),
    ?assertEqual({ok, [1, {Topic, #{<<"type">> => <<"alert">>}}, 0, none]},
                 py:call(ctx(), ?F, hornbeam_pubsub, [Topic])).

%%%===================================================================
%%% Logging and tracing
%%%===================================================================

python_logging_reaches_logger(_Config) ->
    Token = integer_to_binary(erlang:unique_integer([positive])),
    ok = logger:set_module_level(pyport_callback, debug),
    ok = logger:add_handler(pyport_ct_capture, ?MODULE,
                            #{level => all, config => #{pid => self()},
                              filter_default => stop,
                              filters => [{python, {fun logger_filters:domain/2,
                                                    {log, sub, [pyport, python]}}}]}),
    try
        ok = py:configure_logging(#{level => info}),
        Ctx = ctx(),
        {ok, OsPid} = py:call(Ctx, ?F, os_pid, []),
        ?assertEqual({ok, true}, py:call(Ctx, ?F, log_records, [Token])),
        Seen = collect_logs(Token, 4),
        ?assertEqual([info, warning, error, critical], [L || {L, _, _} <- Seen]),
        [{_, Msg, Meta} | _] = Seen,
        ?assertEqual(<<"info ", Token/binary>>, Msg),
        ?assertMatch(#{pyport_pool := default, pyport_slot := 1, os_pid := OsPid,
                       python_logger := <<"erl_funcs.audit">>, python_module := <<"erl_funcs">>,
                       python_function := <<"log_records">>}, Meta),
        %% A restarted worker is set up too.
        {error, {worker_exited, _}} = py:eval(Ctx, <<"__import__('os')._exit(3)">>, none),
        ?assertEqual({ok, true}, py:call(Ctx, ?F, log_records, [Token])),
        ?assertEqual(4, length(collect_logs(Token, 4))),
        %% Python can choose its own level.
        ?assertEqual({ok, true}, py:call(Ctx, ?F, setup_logging, [<<"DEBUG">>])),
        ?assertEqual({ok, true}, py:call(Ctx, ?F, log_records, [Token])),
        ?assertEqual([debug, info, warning, error, critical],
                     [L || {L, _, _} <- collect_logs(Token, 5)])
    after
        persistent_term:erase({pyport_logging, level}),
        logger:remove_handler(pyport_ct_capture),
        logger:unset_module_level(pyport_callback)
    end.

log(#{level := Level, msg := {"~ts", [Msg]}, meta := Meta}, #{config := #{pid := Pid}}) ->
    Pid ! {pyport_ct_log, Level, Msg, Meta};
log(_, _) ->
    ok.

collect_logs(Token, N) ->
    [receive
         {pyport_ct_log, Level, Msg, Meta} ->
             true = binary:match(Msg, Token) =/= nomatch,
             {Level, Msg, Meta}
     after 10000 -> ct:fail({missing_log, Token})
     end || _ <- lists:seq(1, N)].

spans_are_kept_while_tracing_is_enabled(_Config) ->
    ok = py:clear_traces(),
    ?assertEqual({ok, 6}, py:call(?F, traced_work, [5])),
    ?assertEqual({ok, []}, py:get_traces()),
    ok = py:enable_tracing(),
    try
        Ctx = ctx(),
        ?assertEqual({ok, 6}, py:call(Ctx, ?F, traced_work, [5])),
        ?assertEqual({ok, true}, py:call(Ctx, ?F, traced_failure, [])),
        ?assertEqual({ok, 7}, py:call(Ctx, ?F, traced_async, [])),
        wait_until(fun() -> length(traces()) =:= 4 end),
        %% erlang_python's keys.
        Spans = maps:from_list([{maps:get(name, S), S} || S <- traces()]),
        #{<<"traced_work">> := Outer, <<"inner">> := Inner, <<"failing">> := Failing,
          <<"async_op">> := Async} = Spans,
        ?assertEqual(maps:get(span_id, Outer), maps:get(parent_id, Inner)),
        ?assertEqual(maps:get(trace_id, Outer), maps:get(trace_id, Inner)),
        ?assertEqual(undefined, maps:get(parent_id, Outer)),
        ?assertEqual(#{<<"x">> => 5, <<"double">> => 10}, maps:get(attributes, Inner)),
        ?assertMatch(#{status := error, end_attrs := #{<<"exception">> := <<"ValueError: boom">>}},
                     Failing),
        ?assertMatch(#{status := ok, end_attrs := #{}}, Async),
        ?assert(maps:get(end_time, Outer) >= maps:get(start_time, Outer)),
        ?assertMatch(#{pyport_pool := default, pyport_slot := 1}, Outer),
        %% pyport's own form, binary status and all, stays available.
        ?assertMatch([_, _, _, _], pyport_trace:spans()),
        ok = py:clear_traces(),
        ?assertEqual({ok, []}, py:get_traces())
    after
        py:disable_tracing()
    end.

traces() ->
    {ok, Spans} = py:get_traces(),
    Spans.

%%%===================================================================
%%% Cooperative scheduling
%%%===================================================================

schedule_returns_the_erlang_result(_Config) ->
    ok = py:register_function(double, fun([X]) -> 2 * X end),
    ?assertEqual({ok, 42}, py:call(?F, schedule, [double, 21])),
    ?assertEqual({ok, 10}, py:await(py:spawn_call(?F, schedule, [double, 5]))),
    ok = py:register_function(fails, fun(_) -> error(nope) end),
    ?assertEqual({error, {erlang_function_failed, <<"fails">>, {error, nope}}},
                 py:call(?F, schedule, [fails])).

schedule_frees_the_worker_at_once(_Config) ->
    %% The scheduled function waits for a message, yet the same worker
    %% answers another call meanwhile: the worker was free at once.
    Self = self(),
    ok = py:register_function(slow, fun([X]) -> Self ! {slow, self()}, receive go -> X end end),
    Ctx = ctx(),
    %% The caller runs the scheduled function: a caller of its own here.
    _ = spawn_link(fun() -> Self ! {result, py:call(Ctx, ?F, schedule, [slow, done])} end),
    Slow = receive {slow, P} -> P after 10000 -> ct:fail(not_scheduled) end,
    ?assertEqual({ok, 3}, py:call(Ctx, ?F, add, [1, 2])),
    Slow ! go,
    receive {result, R} -> ?assertEqual({ok, done}, R) after 10000 -> ct:fail(no_result) end.

schedule_of_an_unknown_function(_Config) ->
    ?assertEqual({error, {unknown_function, <<"missing">>}}, py:call(?F, schedule, [missing])).

schedule_py_and_inline(_Config) ->
    ?assertEqual({ok, 5}, py:call(?F, schedule_py, [2, 3])),
    Data = lists:seq(1, 95),
    ?assertEqual({ok, lists:sum(Data)}, py:call(?F, process_chunk, [Data])).

schedule_from_a_cast(_Config) ->
    Self = self(),
    ok = py:register_function(cast_target, fun([X]) -> Self ! {cast_target, X} end),
    ok = py:cast(?F, schedule, [cast_target, 9]),
    receive {cast_target, 9} -> ok after 5000 -> ct:fail(no_scheduled_cast) end.

consume_time_slice_lets_a_waiting_request_go_first(_Config) ->
    Ctx = ctx(),
    Self = self(),
    ok = py:register_function(started, fun(_) -> Self ! running end),
    Long = py:spawn_call(Ctx, ?F, yield_when_others_wait, [30]),
    receive running -> ok after 30000 -> ct:fail(not_running) end,
    %% This call waits behind the long one, which sees it and gives way.
    ?assertEqual({ok, 3}, py:call(Ctx, ?F, add, [1, 2])),
    ?assertEqual({ok, <<"yielded">>}, py:await(Long)).
