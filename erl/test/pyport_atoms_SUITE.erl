%% A worker must not be able to exhaust the node's atom table or memory
%% through what it returns (docs/type-mapping.md, "Atoms" and "How large a
%% result may be"). Each case attacks a fresh `peer' node, started under an
%% address-space cap (`ulimit -v') where the point is memory, and checks:
%% the error term, that the node survives and serves the next call, the
%% node's atom count before and after (bounded by the budget), and the
%% node's peak RSS (VmHWM, reset before the attack).
-module(pyport_atoms_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(F, pyport_atoms_funcs).
%% The default node budget (pyport_config:max_new_atoms/0).
-define(NODE_BUDGET, 10000).
%% Atoms the node may make on its own while a case runs (modules loaded
%% on first use, logger), on top of the budget.
-define(SLACK, 200).
%% An idle peer maps about 2.1 GB (most of it reserved, not used): 1 GB
%% more is far below what the attacks took before (3 GB of RSS).
-define(CAP_KB, (3 * 1024 * 1024)).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [options_are_validated, two_million_atoms_in_one_call, new_atoms_in_100_calls,
     atom_dict_keys, job_on_a_sandboxed_pool, distinct_exception_classes,
     rpc_call_new_names, small_values_30mb].

%%%===================================================================
%%% Options
%%%===================================================================

options_are_validated(_Config) ->
    Bad = [{max_new_atoms, -1}, {max_new_atoms, erlang:system_info(atom_limit)},
           {max_new_atoms, infinity}, {max_result_terms, 0}, {max_result_terms, 1 bsl 59},
           {max_result_terms, many}, {max_decoded_bytes, 1023}, {max_decoded_bytes, 1.0e9}],
    [?assertEqual({error, {invalid_pool_option, p, K, V}}, pyport_config:validate_pool(p, #{K => V}))
     || {K, V} <- Bad],
    ?assertMatch({ok, #{max_new_atoms := default, max_result_terms := auto,
                        max_decoded_bytes := auto}}, pyport_config:validate_pool(p, #{})),
    ?assertMatch({ok, #{max_new_atoms := 0, max_result_terms := infinity,
                        max_decoded_bytes := 1024}},
                 pyport_config:validate_pool(p, #{max_new_atoms => 0, max_result_terms => infinity,
                                                  max_decoded_bytes => 1024})),
    ?assertMatch({ok, #{max_new_atoms := node}}, pyport_config:validate_pool(p, #{max_new_atoms => node})),
    %% The node's budget, in the application environment.
    ok = application:set_env(pyport, max_new_atoms, -5),
    try
        ?assertEqual({error, {invalid_config, max_new_atoms, -5}}, pyport_config:max_new_atoms())
    after
        application:unset_env(pyport, max_new_atoms)
    end,
    ?assertEqual({ok, ?NODE_BUDGET}, pyport_config:max_new_atoms()).

%%%===================================================================
%%% Atoms
%%%===================================================================

%% 2 million distinct atoms in one result: the first 10,000 are made (the
%% node's default budget), the next one is refused by name.
two_million_atoms_in_one_call(Config) ->
    P = start_peer(Config, #{}),
    Before = before(P),
    ?assertEqual({error, {atom_limit, <<"one_10000">>, ?NODE_BUDGET}},
                 pcall(P, ?F, atoms, [<<"one_">>, 2000000])),
    After = measure(P),
    report(two_million_atoms_in_one_call, Before, After),
    assert_atoms_grew(Before, After, ?NODE_BUDGET),
    assert_peak_grew_less(Before, After, 200),
    ?assertMatch(#{used := ?NODE_BUDGET}, peer:call(P, pyport_atoms, info, [])),
    assert_serves(P),
    %% Atoms that exist still decode, past the budget.
    ?assertEqual({ok, [ok, one_0, one_9999]},
                 pcall(P, ?F, atoms_named, [[<<"ok">>, <<"one_0">>, <<"one_9999">>]])),
    stop_peer(P).

%% 100 calls of 20,000 new atoms each, in a pool with its own budget of
%% 5,000: the first call makes 5,000 and fails, every later one fails at
%% its first new atom; the node's budget is left for the other pools.
new_atoms_in_100_calls(Config) ->
    P = start_peer(Config, #{pools => #{default => #{size => 1}, capped => #{size => 1, max_new_atoms => 5000}}}),
    Before = before(P),
    Results = peer:call(P, ?MODULE, calls_in_peer,
                        [capped, [{?F, atoms, [<<"c", (integer_to_binary(I))/binary, "_">>, 20000]}
                                  || I <- lists:seq(1, 100)]], 60000),
    After = measure(P),
    report(new_atoms_in_100_calls, Before, After),
    [First | Rest] = Results,
    ?assertEqual({error, {atom_limit, <<"c1_5000">>, 5000}}, First),
    [?assertEqual({error, {atom_limit, <<"c", (integer_to_binary(I))/binary, "_0">>, 5000}}, R)
     || {I, R} <- lists:zip(lists:seq(2, 100), Rest)],
    assert_atoms_grew(Before, After, 5000),
    ?assertEqual(#{used => 5000}, peer:call(P, pyport_atoms, pool_info, [capped])),
    assert_serves(P, capped),
    %% The default pool still has the node's budget.
    ?assertMatch({ok, [_, _]}, pcall(P, default, ?F, atoms, [<<"other_">>, 2])),
    stop_peer(P).

%% Dict keys are atoms like any other: with no budget (as for a sandboxed
%% pool) a new key is refused, existing ones still arrive as atoms.
atom_dict_keys(Config) ->
    P = start_peer(Config, #{pools => #{default => #{size => 1}, none => #{size => 1, max_new_atoms => 0}}}),
    Before = before(P),
    ?assertEqual({error, {atom_limit, <<"k0">>, 0}}, pcall(P, none, ?F, atom_keys, [<<"k">>, 100000])),
    %% Within a budget they are made; past it, refused.
    ?assertEqual({error, {atom_limit, <<"d10000">>, ?NODE_BUDGET}},
                 pcall(P, default, ?F, atom_keys, [<<"d">>, 100000])),
    After = measure(P),
    report(atom_dict_keys, Before, After),
    assert_atoms_grew(Before, After, ?NODE_BUDGET),
    ?assertEqual({ok, #{ok => 1, error => 2}}, pcall(P, none, ?F, existing_keys, [])),
    assert_serves(P, none),
    stop_peer(P).

%% A job on a sandboxed pool (no new atoms by default) returning 2 million
%% new atoms: refused at the first.
job_on_a_sandboxed_pool(Config) ->
    P = start_peer(Config, #{pools => #{jobs => #{size => 1, sandbox => true}}}),
    Before = before(P),
    Code = <<"import erlang\n[erlang.Atom(f'job_{i}') for i in range(2000000)]">>,
    ?assertEqual({error, {atom_limit, <<"job_0">>, 0}},
                 peer:call(P, pyport, run_job, [jobs, #{code => Code, timeout => 50000}], 55000)),
    After = measure(P),
    report(job_on_a_sandboxed_pool, Before, After),
    assert_atoms_grew(Before, After, 0),
    ?assertMatch({ok, [ok, 2], _}, peer:call(P, pyport, run_job,
                                            [jobs, #{code => <<"import erlang\n[erlang.Atom('ok'), 2]">>}])),
    stop_peer(P).

%% 100,000 exception classes, each new: the first 10,000 arrive as atoms,
%% the rest as binaries; builtin ones stay atoms.
distinct_exception_classes(Config) ->
    P = start_peer(Config, #{pools => #{default => #{size => 2}}}),
    Before = before(P),
    #{atoms := Atoms, binaries := Binaries, other := Other} =
        peer:call(P, ?MODULE, raise_in_peer, [default, 100000, 4], 60000),
    After = measure(P),
    report(distinct_exception_classes, Before, After),
    ?assertEqual([], Other),
    ?assertEqual(?NODE_BUDGET, Atoms),
    ?assertEqual(100000 - ?NODE_BUDGET, Binaries),
    assert_atoms_grew(Before, After, ?NODE_BUDGET),
    ?assertMatch({error, {'ValueError', _}}, pcall(P, default, builtins, int, [<<"x">>])),
    assert_serves(P),
    stop_peer(P).

%% erlang.rpc_call from Python naming modules and functions that do not
%% exist: each name is an atom to make, counted in the pool's budget.
rpc_call_new_names(Config) ->
    P = start_peer(Config, #{pools => #{default => #{size => 1, max_new_atoms => 1000}}}),
    %% The first rpc_call loads what an undef error needs.
    {ok, <<"ErlangError">>} = pcall(P, default, ?F, rpc_undef, []),
    Before = before(P),
    {ok, #{<<"limited">> := Limited, <<"other">> := Other, <<"first">> := First}} =
        pcall(P, default, ?F, rpc_new_names, [<<"r">>, 3000]),
    After = measure(P),
    report(rpc_call_new_names, Before, After),
    %% Two names a call: 500 calls get their atoms (and fail as undef).
    ?assertEqual(500, Other),
    ?assertEqual(2500, Limited),
    ?assertMatch([<<"ErlangError">>, _, {atom_limit, <<"r_m500">>, 1000}], First),
    assert_atoms_grew(Before, After, 1000),
    assert_serves(P),
    stop_peer(P).

%%%===================================================================
%%% Decode budget
%%%===================================================================

%% A 30 MB result of fixints (30 million list cells, 480 MB of heap) is
%% refused at its array header; the node's peak RSS grows by little more
%% than the frame. A result within the budget still arrives.
small_values_30mb(Config) ->
    P = start_peer(Config, #{}),
    Before = before(P),
    ?assertEqual({error, {result_too_large, max_result_terms, 64 * 1024 * 1024 div 16}},
                 pcall(P, ?F, small_values, [30000000])),
    After = measure(P),
    report(small_values_30mb, Before, After),
    %% The frame itself is 30 MB, held by the port and by the caller.
    assert_peak_grew_less(Before, After, 200),
    %% Refused as it goes: one-element lists add up past the budget.
    ?assertEqual({error, {result_too_large, max_result_terms, 64 * 1024 * 1024 div 16}},
                 pcall(P, ?F, nested_small, [3000000])),
    {ok, L} = pcall(P, ?F, small_values, [1000000]),
    ?assertEqual(1000000, length(L)),
    assert_serves(P),
    stop_peer(P).

%%%===================================================================
%%% Run in the peer
%%%===================================================================

%% Runs the calls one after the other in this (the peer's) process.
calls_in_peer(Pool, Calls) ->
    [py:call(M, F, A, #{}, #{pool => Pool}) || {M, F, A} <- Calls].

%% N calls that each raise an exception of a new class, from Par
%% processes; counts the types that arrive as atoms and as binaries.
raise_in_peer(Pool, N, Par) ->
    Self = self(),
    Per = N div Par,
    Pids = [spawn_link(fun() ->
                               Self ! {self(), raise_range(Pool, (J - 1) * Per, J * Per, #{atoms => 0, binaries => 0, other => []})}
                       end) || J <- lists:seq(1, Par)],
    lists:foldl(fun(Pid, #{atoms := A, binaries := B, other := O}) ->
                        receive
                            {Pid, #{atoms := A1, binaries := B1, other := O1}} ->
                                #{atoms => A + A1, binaries => B + B1, other => O ++ O1}
                        end
                end, #{atoms => 0, binaries => 0, other => []}, Pids).

raise_range(_Pool, To, To, Acc) ->
    Acc;
raise_range(Pool, I, To, #{atoms := A, binaries := B, other := O} = Acc) ->
    Name = <<"NewError", (integer_to_binary(I))/binary>>,
    Acc1 = case py:call(?F, raise_new_class, [Name], #{}, #{pool => Pool}) of
               {error, {Type, <<"boom">>}} when is_atom(Type) ->
                   true = atom_to_binary(Type) =:= Name,
                   Acc#{atoms := A + 1};
               {error, {Name, <<"boom">>}} ->
                   Acc#{binaries := B + 1};
               Other ->
                   Acc#{other := [Other | O]}
           end,
    raise_range(Pool, I + 1, To, Acc1).

%%%===================================================================
%%% Helpers
%%%===================================================================

%% A peer node with pyport started: `pools' (default: one default pool of
%% one worker) and the rest of Env as pyport's environment.
start_peer(Config, Env0) ->
    Ebin = filename:dirname(code:which(pyport_worker)),
    TestDir = filename:dirname(code:which(?MODULE)),
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    Script = "ulimit -v " ++ integer_to_list(?CAP_KB) ++ " && exec \"$0\" \"$@\"",
    {ok, Peer, _Node} = peer:start(#{name => peer:random_name(?MODULE),
                                     connection => standard_io,
                                     exec => {"/bin/sh", ["-c", Script, Erl]},
                                     args => ["-pa", Ebin, "-pa", TestDir]}),
    Data = list_to_binary(?config(data_dir, Config)),
    Pools0 = maps:get(pools, Env0, #{default => #{size => 1}}),
    Pools = maps:map(fun(_, Opts) -> Opts#{python_path => [Data]} end, Pools0),
    ok = peer:call(Peer, application, load, [pyport]),
    [ok = peer:call(Peer, application, set_env, [pyport, K, V])
     || {K, V} <- maps:to_list(Env0#{pools => Pools})],
    {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
    %% Warm up every path the attacks take (module loading makes atoms).
    [begin
         {ok, _} = pcall(Peer, Pool, ?F, atoms_named, [[<<"ok">>]]),
         {error, _} = pcall(Peer, Pool, ?F, raise_new_class, [<<"ValueError">>]),
         {error, _} = pcall(Peer, Pool, builtins, int, [<<"x">>])
     end || Pool <- maps:keys(Pools)],
    Peer.

stop_peer(Peer) ->
    peer:stop(Peer).

pcall(Peer, M, F, A) ->
    pcall(Peer, default, M, F, A).

pcall(Peer, Pool, M, F, A) ->
    peer:call(Peer, py, call, [M, F, A, #{}, #{pool => Pool, timeout => 50000}], 55000).

%% The node's atom count and RSS, the peak RSS reset to it: a later
%% measure/1 gives the peak in between.
before(Peer) ->
    reset_peak(measure(Peer)),
    measure(Peer).

%% The node's atom count and peak RSS.
measure(Peer) ->
    OsPid = peer:call(Peer, os, getpid, []),
    Atoms = peer:call(Peer, erlang, system_info, [atom_count]),
    Status = "/proc/" ++ OsPid ++ "/status",
    Hwm = vm_kb(Status, "VmHWM"),
    Rss = vm_kb(Status, "VmRSS"),
    #{atoms => Atoms, hwm_kb => Hwm, rss_kb => Rss, os_pid => OsPid,
      total_memory => peer:call(Peer, erlang, memory, [total])}.

%% Resets VmHWM to the current RSS (Linux: "5" to clear_refs), so the
%% next measure/1 shows the peak of what happened in between.
reset_peak(#{os_pid := OsPid}) ->
    ok = file:write_file("/proc/" ++ OsPid ++ "/clear_refs", <<"5">>).

vm_kb(Status, Key) ->
    {ok, Bin} = file:read_file(Status),
    [Line] = [L || L <- string:split(Bin, "\n", all), string:prefix(L, Key) =/= nomatch],
    [_, Kb | _] = string:lexemes(Line, " \t"),
    binary_to_integer(Kb).

report(Case, #{atoms := A0, hwm_kb := H0}, #{atoms := A1, hwm_kb := H1}) ->
    ct:pal("~p: atoms ~b -> ~b (+~b); peak RSS ~b MB -> ~b MB (+~b MB)",
           [Case, A0, A1, A1 - A0, H0 div 1024, H1 div 1024, (H1 - H0) div 1024]).

assert_atoms_grew(#{atoms := A0}, #{atoms := A1}, Budget) ->
    ?assert(A1 - A0 >= Budget, {atoms_grew, A1 - A0, budget, Budget}),
    ?assert(A1 - A0 =< Budget + ?SLACK, {atoms_grew, A1 - A0, budget, Budget}).

assert_peak_grew_less(#{hwm_kb := H0}, #{hwm_kb := H1}, MB) ->
    ?assert(H1 - H0 < MB * 1024, {peak_rss_grew_kb, H1 - H0, limit_mb, MB}).

assert_serves(Peer) ->
    assert_serves(Peer, default).

assert_serves(Peer, Pool) ->
    ?assertEqual({ok, 3}, pcall(Peer, Pool, operator, add, [1, 2])).
