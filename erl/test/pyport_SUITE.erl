%% The py API against real workers: the term mapping both ways, calls,
%% errors, contexts, asynchronous calls, timeouts, options, logging, 10,000
%% concurrent callers, and a PropEr round trip.
%%
%% Python helpers live in pyport_SUITE_data/pyport_test_funcs.py, on the
%% default pool's python_path.
-module(pyport_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

%% Debian's erlang-proper ships no proper.hrl: the macros we use, spelled out.
-define(FORALL(X, Gen, Prop), proper:forall(Gen, fun(X) -> Prop end)).
-define(LET(X, Gen, In), proper_types:bind(Gen, fun(X) -> In end, false)).

-define(F, pyport_test_funcs).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [{group, mapping}, {group, api}, {group, logging}, {group, load}].

groups() ->
    [{mapping, [parallel],
      [integers, floats_and_specials, binaries_and_bytes, booleans_and_none, atoms,
       lists_and_tuples, maps, pids_refs_ports_funs, python_made_values,
       unconvertible_object, proper_round_trip]},
     {api, [],
      [json_dumps_with_kwargs, kwargs_keys, eval_with_locals, eval_forms, python_exceptions,
       exception_type_atoms, unknown_module_and_function,
       exec_then_eval_share_globals, context_routing, spawn_call_and_await,
       cast_runs_in_order, burst_of_requests_in_order, call_timeout_leaves_mailbox_empty, eval_timeout,
       frame_too_large, unsupported_term, options_and_pools, version]},
     {logging, [],
      [print_one_megabyte, cast_exception_is_logged, traceback_always_logged]},
     {load, [],
      [ten_thousand_callers_pool_of_two, sampled_routing_in_a_large_pool]}].

init_per_suite(Config) ->
    Data = test_python_dir(Config),
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

init_per_testcase(ten_thousand_callers_pool_of_two, Config) ->
    ct:timetrap({seconds, 180}),
    Config;
init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%% The shared Python test modules, next to this suite's beam.
test_python_dir(_Config) ->
    filename:join(filename:dirname(code:which(?MODULE)), "pyport_SUITE_data").

%%%===================================================================
%%% Term mapping (each row of docs/type-mapping.md, both ways)
%%%===================================================================

%% Sends Value to Python's identity, checks what Python saw and what came back.
round_trip(Value, PyType, Back) ->
    ?assertEqual({ok, PyType}, py:call(?F, type_name, [Value])),
    ?assertEqual({ok, Back}, py:call(?F, identity, [Value])),
    ?assertEqual({ok, Back}, py:eval(<<"x">>, #{x => Value})).

integers(_Config) ->
    Big = 1 bsl 200,
    [round_trip(I, <<"int">>, I)
     || I <- [0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, -40000,
              (1 bsl 32) - 1, 1 bsl 32, (1 bsl 63) - 1, -(1 bsl 63), (1 bsl 64) - 1,
              1 bsl 64, -(1 bsl 63) - 1, Big, -Big, Big * Big + 7]],
    %% Python computes with them exactly, and its big results come back exact.
    ?assertEqual({ok, Big}, py:eval(<<"2 ** 200">>)),
    ?assertEqual({ok, -Big}, py:eval(<<"-(2 ** 200)">>)),
    ?assertEqual({ok, Big + 1}, py:eval(<<"x + 1">>, #{x => Big})).

floats_and_specials(_Config) ->
    [round_trip(F, <<"float">>, F) || F <- [0.0, 1.5, -1.5e300, 3.141592653589793, 5.0e-324]],
    ?assertEqual({ok, nan}, py:eval(<<"float('nan')">>)),
    ?assertEqual({ok, infinity}, py:eval(<<"float('inf')">>)),
    ?assertEqual({ok, neg_infinity}, py:eval(<<"float('-inf')">>)),
    %% The atoms are atoms on the way in, not floats.
    ?assertEqual({ok, <<"Atom">>}, py:call(?F, type_name, [nan])).

binaries_and_bytes(_Config) ->
    round_trip(<<"héllo"/utf8>>, <<"str">>, <<"héllo"/utf8>>),
    round_trip(<<>>, <<"str">>, <<>>),
    round_trip(<<255, 254, 0>>, <<"bytes">>, <<255, 254, 0>>),
    round_trip({bytes, <<"abc">>}, <<"bytes">>, <<"abc">>),
    round_trip({bytes, <<>>}, <<"bytes">>, <<>>),
    Big = binary:copy(<<"0123456789">>, 100000),
    ?assertEqual({ok, Big}, py:call(?F, identity, [Big])),
    ?assertEqual({ok, 1000000}, py:eval(<<"len(x)">>, #{x => {bytes, Big}})).

booleans_and_none(_Config) ->
    round_trip(true, <<"bool">>, true),
    round_trip(false, <<"bool">>, false),
    [round_trip(A, <<"NoneType">>, none) || A <- [none, nil, undefined]],
    ?assertEqual({ok, none}, py:eval(<<"None">>)),
    ?assertEqual({ok, [true, false]}, py:eval(<<"[1 == 1, 1 == 2]">>)).

atoms(_Config) ->
    [round_trip(A, <<"Atom">>, A) || A <- [ok, error, a, '', 'ünïcode', 'with space', 'Ok']],
    %% An Atom is a str that equals and hashes like its name.
    ?assertEqual({ok, true}, py:eval(<<"x == 'ok' and hash(x) == hash('ok')">>, #{x => ok})),
    ?assertEqual({ok, true}, py:eval(<<"isinstance(x, str)">>, #{x => ok})),
    ?assertEqual({ok, hello}, py:eval(<<"__import__('erlang').Atom('hello')">>)),
    %% A plain str comes back as a binary, never as an atom.
    ?assertEqual({ok, <<"ok">>}, py:eval(<<"'ok'">>)).

lists_and_tuples(_Config) ->
    round_trip([], <<"list">>, []),
    round_trip([1, [2, [3, []]], <<"x">>, y], <<"list">>, [1, [2, [3, []]], <<"x">>, y]),
    round_trip("hi", <<"list">>, "hi"),
    round_trip({}, <<"tuple">>, {}),
    round_trip({ok, 42}, <<"tuple">>, {ok, 42}),
    round_trip({{1, {}}, [{2}], {bytes, <<"b">>}}, <<"tuple">>, {{1, {}}, [{2}], <<"b">>}),
    round_trip(lists:seq(1, 10000), <<"list">>, lists:seq(1, 10000)),
    ?assertEqual({ok, {1, 2}}, py:eval(<<"(1, 2)">>)),
    ?assertEqual({ok, [1, [nil_is_none, none]]},
                 py:call(?F, identity, [[1, [nil_is_none, nil]]])).

maps(_Config) ->
    round_trip(#{}, <<"dict">>, #{}),
    Nested = #{a => 1, <<"b">> => #{c => [1, #{}], <<"d">> => {x, y}}, 3 => three},
    round_trip(Nested, <<"dict">>, Nested),
    %% Atom keys index like their names; Python str keys come back as binaries.
    ?assertEqual({ok, 1}, py:eval(<<"d['a']">>, #{d => #{a => 1}})),
    ?assertEqual({ok, #{<<"k">> => [1, 2]}}, py:eval(<<"{'k': [1, 2]}">>)),
    ?assertEqual({ok, #{a => <<"atom key">>}},
                 py:eval(<<"{__import__('erlang').Atom('a'): 'atom key'}">>)).

pids_refs_ports_funs(_Config) ->
    Pid = self(),
    Ref = make_ref(),
    Port = hd(erlang:ports()),
    X = erlang:unique_integer(),
    Closure = fun() -> X end,
    External = fun lists:reverse/1,
    round_trip(Pid, <<"Pid">>, Pid),
    round_trip(Ref, <<"Ref">>, Ref),
    round_trip(Port, <<"Term">>, Port),
    round_trip(Closure, <<"Term">>, Closure),
    round_trip(External, <<"Term">>, External),
    %% Equal terms are equal (and hash alike) in Python.
    ?assertEqual({ok, true}, py:eval(<<"a == b and hash(a) == hash(b) and a != c">>,
                                     #{a => Pid, b => Pid, c => Ref})),
    {ok, Back} = py:call(?F, identity, [#{from => Pid, ref => Ref}]),
    ?assertEqual(#{from => Pid, ref => Ref}, Back).

python_made_values(_Config) ->
    ?assertEqual({ok, <<"text">>}, py:eval(<<"'text'">>)),
    ?assertEqual({ok, <<1, 2>>}, py:eval(<<"b'\\x01\\x02'">>)),
    ?assertEqual({ok, <<"ab">>}, py:eval(<<"bytearray(b'ab')">>)),
    ?assertEqual({ok, <<"ab">>}, py:eval(<<"memoryview(b'ab')">>)),
    {ok, Set} = py:eval(<<"{3, 1, 2}">>),
    ?assertEqual([1, 2, 3], lists:sort(Set)),
    {ok, Frozen} = py:eval(<<"frozenset(['a', 'b'])">>),
    ?assertEqual([<<"a">>, <<"b">>], lists:sort(Frozen)),
    ?assertEqual({ok, []}, py:eval(<<"set()">>)),
    ?assertEqual({ok, {1, <<"two">>, [3.0]}}, py:eval(<<"(1, 'two', [3.0])">>)).

unconvertible_object(_Config) ->
    {error, {'TypeError', Msg}} = py:call(?F, unconvertible, []),
    ?assertMatch({_, _}, binary:match(Msg, <<"object">>)),
    {error, {'TypeError', Msg2}} = py:eval(<<"[1, {'k': (2, object.__init__)}]">>),
    ?assertMatch({_, _}, binary:match(Msg2, <<"wrapper">>)),
    %% The worker carries on.
    ?assertEqual({ok, 3}, py:call(?F, add, [1, 2])).

%%%===================================================================
%%% PropEr: random terms survive identity, normalised as the mapping says
%%%===================================================================

%% The terms are the codec's own generator (every row of the mapping,
%% nested), made representable in Python: a dict key must be hashable and
%% keys Python considers equal (1, 1.0 and true; an atom and the binary of
%% its name) would merge.
proper_round_trip(_Config) ->
    Prop = ?FORALL(T, ?LET(Raw, pyport_codec_prop_tests:term(), pythonable(Raw)),
                   begin
                       Expected = pyport_codec_prop_tests:normalise(T),
                       case py:call(?F, identity, [T]) of
                           {ok, Expected} -> true;
                           Other -> ct:pal("sent ~p~nexpected ~p~ngot ~p", [T, Expected, Other]),
                                    false
                       end
                   end),
    ?assertEqual(true, proper:quickcheck(Prop, [{numtests, 500}, quiet, long_result])).

pythonable(L) when is_list(L) ->
    [pythonable(E) || E <- L];
pythonable({bytes, B} = T) when is_binary(B) ->
    T;
pythonable(T) when is_tuple(T) ->
    list_to_tuple(pythonable(tuple_to_list(T)));
pythonable(M) when is_map(M) ->
    {Pairs, _Seen} =
        lists:foldl(fun({K, V}, {Acc, Seen}) ->
                            case py_key(K) of
                                unhashable -> {Acc, Seen};
                                PyKey ->
                                    case sets:is_element(PyKey, Seen) of
                                        true -> {Acc, Seen};
                                        false -> {[{pythonable(K), pythonable(V)} | Acc],
                                                  sets:add_element(PyKey, Seen)}
                                    end
                            end
                    end, {[], sets:new([{version, 2}])}, maps:to_list(M)),
    maps:from_list(Pairs);
pythonable(X) ->
    X.

%% What a key is as a Python dict key: equal results are the same key.
py_key(true) -> {num, 1};
py_key(false) -> {num, 0};
py_key(A) when A =:= none; A =:= nil; A =:= undefined -> none;
py_key(A) when is_atom(A) -> {str, atom_to_binary(A, utf8)};
py_key(I) when is_integer(I) -> {num, I};
py_key(F) when is_float(F), F == trunc(F) -> {num, trunc(F)};
py_key(F) when is_float(F) -> {float, F};
py_key({bytes, B}) when is_binary(B) -> {bytes, B};
py_key(B) when is_binary(B) ->
    case unicode:characters_to_binary(B) of
        B -> {str, B};
        _ -> {bytes, B}
    end;
py_key(T) when is_tuple(T) ->
    Keys = [py_key(E) || E <- tuple_to_list(T)],
    case lists:member(unhashable, Keys) of
        true -> unhashable;
        false -> {tuple, Keys}
    end;
py_key(L) when is_list(L); is_map(L) -> unhashable;
py_key(Handle) -> {term, term_to_binary(Handle)}.

%%%===================================================================
%%% The API
%%%===================================================================

json_dumps_with_kwargs(_Config) ->
    ?assertEqual({ok, <<"{\"a\": 1}">>}, py:call(json, dumps, [#{a => 1}], #{sort_keys => true})),
    ?assertEqual({ok, <<"{\"a\": 1, \"b\": 2}">>},
                 py:call(json, dumps, [#{b => 2, a => 1}], #{sort_keys => true})),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])),
    ?assertEqual({ok, 4.0}, py:call(<<"math">>, <<"sqrt">>, [16])),
    ?assertEqual({ok, 4.0}, py:call("math", "sqrt", [16])),
    %% Dotted modules and attribute paths.
    ?assertEqual({ok, <<"b.txt">>}, py:call('os.path', basename, [<<"/a/b.txt">>])),
    ?assertEqual({ok, <<"ABC">>}, py:call(builtins, 'str.upper', [<<"abc">>])).

kwargs_keys(_Config) ->
    ?assertEqual({ok, [[1], #{<<"k">> => v, <<"atom_key">> => <<"bin">>}]},
                 py:call(?F, echo_call, [1], #{<<"k">> => v, atom_key => <<"bin">>})),
    ?assertEqual({error, {invalid_kwarg, 42}}, py:call(?F, echo_call, [], #{42 => x})).

eval_with_locals(_Config) ->
    ?assertEqual({ok, 25}, py:eval(<<"x * y">>, #{x => 5, y => 5})),
    ?assertEqual({ok, 25}, py:eval("x * y", #{x => 5, y => 5})),
    ?assertEqual({ok, 25}, py:eval([<<"x ">>, "* y"], #{x => 5, y => 5})),
    ?assertEqual({ok, 6}, py:eval(<<"sum(v)">>, #{<<"v">> => [1, 2, 3]})),
    ?assertEqual({ok, 45}, py:eval(<<"sum(range(10))">>)).

eval_forms(_Config) ->
    Ctx = py:context(1),
    ok = py:exec(Ctx, <<"eval_forms_base = 10">>),
    ?assertEqual({ok, 10}, py:eval(Ctx, <<"eval_forms_base">>)),
    ?assertEqual({ok, 13}, py:eval(Ctx, <<"eval_forms_base + n">>, #{n => 3})),
    ?assertEqual({ok, 14}, py:eval(Ctx, <<"eval_forms_base + n">>, #{n => 4}, 5000)),
    ?assertEqual({ok, 7}, py:eval(<<"n">>, #{n => 7}, #{timeout => 5000})),
    ?assertEqual({ok, 7}, py:eval(<<"n">>, #{n => 7}, infinity)),
    ?assertMatch({error, {'SyntaxError', _}}, py:eval(<<"1 +">>)),
    %% eval takes one expression; statements go to exec.
    ?assertMatch({error, {'SyntaxError', _}}, py:eval(<<"x = 1">>)),
    ?assertMatch({error, {'NameError', _}}, py:exec(<<"undefined_name_here + 1">>)).

python_exceptions(_Config) ->
    ?assertMatch({error, {'ZeroDivisionError', <<"division by zero">>}}, py:eval(<<"1/0">>)),
    ?assertMatch({error, {'ValueError', _}}, py:call(math, sqrt, [-1])),
    ?assertMatch({error, {'TypeError', _}}, py:call(?F, add, [1, <<"a">>])),
    ?assertMatch({error, {'KeyError', _}}, py:eval(<<"{}['missing']">>)).

exception_type_atoms(Config) ->
    %% An exception name that exists as an atom arrives as that atom...
    ?assertEqual({error, {'KnownToErlang', <<"known">>}}, py:call(?F, raise_known, [<<"known">>])),
    %% ...a new one becomes an atom within the pool's budget of new atoms
    %% (pyport_atoms_SUITE tests the budgets)...
    New = <<"PyportNewError", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    {error, {NewType, <<"x">>}} =
        py:eval(<<"(_ for _ in ()).throw(type('", New/binary, "', (Exception,), {})('x'))">>),
    ?assertEqual(New, atom_to_binary(NewType)),
    %% ...and where there is none (a sandboxed pool's default), arrives as a
    %% binary, so Python cannot fill the atom table.
    {ok, _} = pyport:start_pool(no_new_atoms, #{size => 1, max_new_atoms => 0,
                                               python_path => [test_python_dir(Config)]}),
    ?assertEqual({error, {<<"PyportNeverAnAtom">>, <<"unknown">>}},
                 py:call(?F, raise_unknown, [<<"unknown">>], #{}, #{pool => no_new_atoms})),
    ok = pyport:stop_pool(no_new_atoms),
    %% Every builtin exception of the worker's Python is an atom in the node,
    %% whether or not any code here names it.
    {ok, Names} = py:eval(<<"[n for n, c in vars(__import__('builtins')).items() if isinstance(c, type) "
                            "and issubclass(c, BaseException)]">>),
    ?assert(length(Names) > 60),
    ?assertEqual([], [N || N <- Names, not is_existing_atom(N)]),
    {error, {Type, <<"x">>}} = py:eval(<<"(_ for _ in ()).throw(BufferError('x'))">>),
    ?assert(is_atom(Type)).

is_existing_atom(Name) ->
    try binary_to_existing_atom(Name, utf8) of _ -> true
    catch error:badarg -> false
    end.

unknown_module_and_function(_Config) ->
    {error, {'ModuleNotFoundError', M}} = py:call(no_such_module_pyport, f, []),
    ?assertMatch({_, _}, binary:match(M, <<"no_such_module_pyport">>)),
    {error, {'AttributeError', A}} = py:call(math, no_such_function, []),
    ?assertMatch({_, _}, binary:match(A, <<"no_such_function">>)).

exec_then_eval_share_globals(_Config) ->
    Ctx = py:context(),
    ?assertEqual(Ctx, py:context()),
    ok = py:exec(Ctx, <<"def shared_fn(n):\n    return n * shared_k\nshared_k = 6">>),
    ?assertEqual({ok, 42}, py:eval(Ctx, <<"shared_fn(7)">>)),
    %% Another process on the same context has globals of its own (as in
    %% erlang_python); the context's shared globals are reached on request.
    Self = self(),
    spawn_link(fun() -> Self ! {other, py:eval(Ctx, <<"shared_k">>)} end),
    receive {other, R} -> ?assertMatch({error, {'NameError', _}}, R) end,
    ok = py:exec(Ctx, <<"shared_k = 7">>, #{namespace => shared}),
    spawn_link(fun() -> Self ! {other, py:eval(Ctx, <<"shared_k">>, none, #{namespace => shared})} end),
    receive {other, R2} -> ?assertEqual({ok, 7}, R2) end.

context_routing(_Config) ->
    {ok, #{os_pid := P1}} = pyport:worker_info(py:context(1)),
    {ok, #{os_pid := P2}} = pyport:worker_info(py:context(2)),
    ?assertNotEqual(P1, P2),
    ?assertEqual({ok, P1}, py:call(py:context(1), os, getpid, [])),
    ?assertEqual({ok, P2}, py:call(py:context(2), os, getpid, [])),
    ?assertEqual({ok, P2}, py:call(py:context(2), os, getpid, [], #{}, #{timeout => 5000})),
    ?assertError({bad_context, 3, {pool_size, 2}}, py:context(3)),
    ?assertError(function_clause, py:context(0)).

spawn_call_and_await(_Config) ->
    H = py:spawn_call(?F, add, [1, 2]),
    ?assertEqual({ok, 3}, py:await(H)),
    Hs = [py:spawn_call(?F, sleep, [0.01, N]) || N <- lists:seq(1, 20)],
    ?assertEqual([{ok, N} || N <- lists:seq(1, 20)], [py:await(X, 10000) || X <- Hs]),
    H2 = py:spawn_call(?F, echo_call, [a], #{k => 1}, #{timeout => 5000}),
    ?assertEqual({ok, [[a], #{<<"k">> => 1}]}, py:await(H2)),
    H3 = py:spawn_call(py:context(1), ?F, add, [2, 2]),
    ?assertEqual({ok, 4}, py:await(H3, 5000)),
    %% Errors that happen before sending still come out of await.
    ?assertEqual({error, {unsupported_term, [1 | 2]}}, py:await(py:spawn_call(?F, identity, [[1 | 2]]))),
    ?assertEqual({error, {no_pool, nope}}, py:await(py:spawn_call(?F, add, [1, 2], #{}, #{pool => nope}))),
    %% An await that times out abandons the request: nothing arrives later.
    Ctx = py:context(1),
    Slow = py:spawn_call(Ctx, ?F, sleep, [0.3, late]),
    ?assertEqual({error, timeout}, py:await(Slow, 10)),
    ?assertEqual({ok, after_slow}, py:call(Ctx, ?F, identity, [after_slow])),
    ?assertEqual({messages, []}, process_info(self(), messages)).

cast_runs_in_order(_Config) ->
    Ctx = py:context(2),
    Marker = make_ref(),
    ok = py:cast(Ctx, ?F, remember, [Marker]),
    {ok, Seen} = py:call(Ctx, ?F, remembered, []),
    ?assert(lists:member(Marker, Seen)),
    ?assertEqual(ok, py:cast(math, sqrt, [4])),
    ?assertEqual(ok, py:cast(?F, echo_call, [1], #{k => 2})),
    ?assertEqual({error, {unsupported_term, [1 | 2]}}, py:cast(?F, identity, [[1 | 2]])).

%% Requests that reach the worker's owner together go to the worker in one
%% write (a BATCH frame): still each is answered, in the order sent.
burst_of_requests_in_order(_Config) ->
    Ctx = py:context(2),
    {ok, #{tab := Tab}} = pyport_pool:info(default),
    [{2, Owner}] = ets:lookup(Tab, 2),
    Tag = make_ref(),
    ok = sys:suspend(Owner),
    Handles = try
                  [begin
                       ok = py:cast(Ctx, ?F, remember, [{Tag, I}]),
                       py:spawn_call(Ctx, ?F, identity, [I])
                   end || I <- lists:seq(1, 200)]
              after
                  sys:resume(Owner)
              end,
    ?assertEqual([{ok, I} || I <- lists:seq(1, 200)], [py:await(H) || H <- Handles]),
    {ok, Seen} = py:call(Ctx, ?F, remembered, []),
    ?assertEqual([{Tag, I} || I <- lists:seq(1, 200)], [X || {T, _} = X <- Seen, T =:= Tag]).

call_timeout_leaves_mailbox_empty(_Config) ->
    Ctx = py:context(1),
    ?assertEqual({error, timeout}, py:call(Ctx, ?F, sleep, [0.3, too_late], #{}, #{timeout => 20})),
    ?assertEqual({error, timeout}, py:call(Ctx, ?F, sleep, [0.3, too_late], #{}, 20)),
    %% The worker runs requests in order: once this answer is here, both late
    %% answers have been written and dropped.
    ?assertEqual({ok, next}, py:call(Ctx, ?F, identity, [next])),
    ?assertEqual({messages, []}, process_info(self(), messages)),
    {ok, #{pending := 0}} = pyport:worker_info(Ctx),
    %% Without a context too.
    ?assertEqual({error, timeout}, py:call(?F, sleep, [0.2, x], #{}, 10)).

eval_timeout(_Config) ->
    ?assertEqual({error, timeout}, py:eval(<<"__import__('time').sleep(0.2)">>, #{}, 10)),
    ?assertEqual({error, timeout}, py:eval(<<"__import__('time').sleep(0.2)">>, #{}, 0)).

frame_too_large(Config) ->
    {ok, _} = pyport:start_pool(small, #{size => 1, max_frame_size => 1024,
                                         python_path => [?config(python_dir, Config)]}),
    try
        Opts = #{pool => small},
        Big = binary:copy(<<"x">>, 2000),
        {error, {frame_too_large, Size, 1024}} = py:call(?F, identity, [Big], #{}, Opts),
        ?assert(Size > 2000),
        %% A result over the limit is refused by the worker, which carries on.
        ?assertMatch({error, {frame_too_large, _}}, py:call(?F, make_bytes, [5000], #{}, Opts)),
        ?assertEqual({ok, 900}, py:call(?F, identity, [900], #{}, Opts))
    after
        ok = pyport:stop_pool(small)
    end.

unsupported_term(_Config) ->
    ?assertEqual({error, {unsupported_term, [1 | 2]}}, py:call(?F, identity, [[1 | 2]])),
    ?assertEqual({error, {unsupported_term, <<1:3>>}}, py:eval(<<"x">>, #{x => <<1:3>>})).

options_and_pools(_Config) ->
    ?assertEqual({error, {bad_option, colour}}, py:call(math, sqrt, [4], #{}, #{colour => red})),
    ?assertEqual({error, {invalid_option, timeout, -5}},
                 py:call(math, sqrt, [4], #{}, #{timeout => -5})),
    ?assertEqual({error, {no_pool, nope}}, py:call(math, sqrt, [4], #{}, #{pool => nope})),
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4], #{}, #{pool => default, timeout => 1000})),
    ?assertEqual({error, {invalid_name, 42}}, py:call(42, sqrt, [4])),
    ?assertEqual({error, {invalid_args, not_a_list}}, py:call(math, sqrt, not_a_list, #{})),
    ?assertEqual([default], pyport:pools()),
    {ok, Workers} = pyport:workers(default),
    ?assertEqual([1, 2], [S || {S, _} <- Workers]).

version(_Config) ->
    {ok, V} = py:version(),
    {ok, Expected} = py:eval(<<"'%d.%d.%d' % __import__('sys').version_info[:3]">>),
    ?assertEqual(Expected, V).

%%%===================================================================
%%% Worker output and logging
%%%===================================================================

print_one_megabyte(_Config) ->
    pyport_test_util:with_log_capture(info, fun() ->
        N = 1 bsl 20,
        ?assertEqual({ok, N}, py:call(?F, print_stdout, [N])),
        ?assertEqual({ok, 3}, py:call(?F, add, [1, 2])),
        %% All of it reaches logger, from the worker that printed it, in
        %% lines of at most 64 KiB.
        Lines = collect_log(fun(#{level := info, msg := {"~ts", [Msg]},
                                  meta := #{domain := [pyport, python]}}) ->
                                    {true, Msg};
                               (_) -> false
                            end, N, 30000),
        ?assertEqual(N, lists:sum([byte_size(L) || L <- Lines])),
        ?assert(lists:all(fun(L) -> byte_size(L) =< 65536 end, Lines))
    end).

cast_exception_is_logged(_Config) ->
    pyport_test_util:with_log_capture(info, fun() ->
        Token = <<"cast failure ", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
        Ctx = py:context(1),
        ok = py:cast(Ctx, ?F, fail_in_cast, [Token]),
        {ok, OsPid} = py:call(Ctx, os, getpid, []),
        [Meta] = collect_log(fun(#{msg := {"~ts", [Msg]}, meta := Meta}) ->
                                     case binary:match(Msg, Token) of
                                         nomatch -> false;
                                         _ -> {true, Meta}
                                     end;
                                (_) -> false
                             end, 1, 10000),
        ?assertMatch(#{pyport_pool := default, pyport_slot := 1, os_pid := OsPid}, Meta)
    end).

traceback_always_logged(_Config) ->
    %% At notice, the default level: in the log without asking for it.
    pyport_test_util:with_log_capture(notice, fun() ->
        {error, {'ZeroDivisionError', _}} = py:eval(<<"1/0">>),
        [Tb] = collect_log(fun(#{level := notice, meta := #{python_traceback := T}}) -> {true, T};
                              (_) -> false
                           end, 1, 5000),
        ?assertMatch({_, _}, binary:match(Tb, <<"ZeroDivisionError">>))
    end).


%% Collects what Select keeps until their sizes (or count, for non-binaries)
%% reach Want.
collect_log(Select, Want, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    collect_log(Select, Want, Deadline, []).

collect_log(Select, Want, Deadline, Acc) ->
    case amount(Acc) >= Want of
        true ->
            lists:reverse(Acc);
        false ->
            receive
                {pyport_test_log, Event} ->
                    case Select(Event) of
                        {true, X} -> collect_log(Select, Want, Deadline, [X | Acc]);
                        false -> collect_log(Select, Want, Deadline, Acc)
                    end
            after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
                    ct:fail({log_not_seen, Want, amount(Acc)})
            end
    end.

amount([B | _] = Acc) when is_binary(B) -> lists:sum([byte_size(X) || X <- Acc]);
amount(Acc) -> length(Acc).

%%%===================================================================
%%% Load
%%%===================================================================

ten_thousand_callers_pool_of_two(Config) ->
    {ok, _} = pyport:start_pool(load, #{size => 2, python_path => [?config(python_dir, Config)]}),
    try
        N = 10000,
        Self = self(),
        Opts = #{pool => load, timeout => 50000},
        [spawn_link(fun() ->
                            R = py:call(?F, add, [I, 1000000], #{}, Opts),
                            %% Exactly one answer: nothing else may be left.
                            {messages, Extra} = process_info(self(), messages),
                            Self ! {answer, I, R, Extra}
                    end) || I <- lists:seq(1, N)],
        Answers = [receive {answer, I, R, Extra} -> {I, R, Extra}
                   after 120000 -> ct:fail({missing_answer, I})
                   end || I <- lists:seq(1, N)],
        Wrong = [A || {I, R, Extra} = A <- Answers, {R, Extra} =/= {{ok, I + 1000000}, []}],
        ?assertEqual([], Wrong),
        %% Nothing is left in flight, in the workers or in the routing counters.
        {ok, W1} = pyport:worker_info({load, 1}),
        {ok, W2} = pyport:worker_info({load, 2}),
        ?assertEqual({0, 0}, {maps:get(pending, W1), maps:get(pending, W2)}),
        {ok, #{counters := C}} = pyport_pool:info(load),
        ?assertEqual([0, 0], [counters:get(C, S) || S <- [1, 2]])
    after
        ok = pyport:stop_pool(load)
    end.

%% Above 8 workers a caller samples two slots instead of reading them all:
%% every call is still answered, and the load spreads.
sampled_routing_in_a_large_pool(_Config) ->
    {ok, _} = pyport:start_pool(large, #{size => 10}),
    try
        Self = self(),
        Opts = #{pool => large, timeout => 30000},
        [spawn_link(fun() -> Self ! {pid, I, py:call(os, getpid, [], #{}, Opts)} end)
         || I <- lists:seq(1, 1000)],
        Pids = [receive {pid, I, {ok, P}} -> P
                after 60000 -> ct:fail({missing_answer, I})
                end || I <- lists:seq(1, 1000)],
        {ok, Workers} = pyport:workers(large),
        OsPids = [maps:get(os_pid, pyport_worker:info(W)) || {_, W} <- Workers],
        ?assertEqual([], lists:usort(Pids) -- OsPids),
        ?assert(length(lists:usort(Pids)) > 1)
    after
        ok = pyport:stop_pool(large)
    end.
