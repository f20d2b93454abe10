%% Interleaved A/B of two worker builds on the sequential lines of issue
%% 15's table (docs/performance.md, "Where a sequential round trip waits
%% (worker side)"): pools of one worker (and of two, for 2 concurrent
%% callers) running each build in one node, measured block by block in
%% random order. A block counts as slow wake-up mode when A's call p50 is
%% 25 us or more. Run:
%%
%%   erlc -o build/bench bench/wake_ab.erl
%%   erl -noshell -pa erl/_build/default/lib/pyport/ebin -pa build/bench \
%%       -config bench/bench.config -run wake_ab main 40 WORKER_A WORKER_B
-module(wake_ab).
-export([main/1]).

%% Pools pa, pa2 run WORKER_A; pb, pb2 WORKER_B. Prints, per mode, each
%% figure's median and per-block values, then the median B/A ratios.
-spec main([string()]) -> no_return().
main([BlocksS, Before, After]) ->
    Blocks = list_to_integer(BlocksS),
    {ok, _} = application:ensure_all_started(pyport),
    Echo = filename:join(code:priv_dir(pyport), "echo_port"),
    Opts = #{size => 1, python_path => ["bench"]},
    {ok, _} = pyport:start_pool(pa, Opts#{worker => Before}),
    {ok, _} = pyport:start_pool(pb, Opts#{worker => After}),
    {ok, _} = pyport:start_pool(pa2, Opts#{size => 2, worker => Before}),
    {ok, _} = pyport:start_pool(pb2, Opts#{size => 2, worker => After}),
    ok = py:register_function(wake_ab_echo, fun([X]) -> X end),
    _ = py:state_store(<<"wake_ab_key">>, 42),
    Frame = iolist_to_binary(pyport_codec:encode_frame(1, 1, [<<"wake_ab_py">>, <<"identity">>, [1], #{}])),
    Port = open_port({spawn_executable, Echo}, [{packet, 4}, binary, exit_status, use_stdio]),
    EchoF = fun() -> port_command(Port, Frame), receive {Port, {data, _}} -> ok end end,
    Res = [block(EchoF) || _ <- lists:seq(1, Blocks)],
    Slow = fun(R) -> proplists:get_value("pa id_p50_us", R) >= 25 end,
    report("fast (A's call p50 < 25 us)", [R || {_, R} <- Res, not Slow(R)]),
    report("slow (A's call p50 >= 25 us)", [R || {_, R} <- Res, Slow(R)]),
    halt(0).

report(_, []) -> ok;
report(Title, Rs) ->
    io:format("== ~s: ~p blocks~n", [Title, length(Rs)]),
    [begin
         Vs = [proplists:get_value(K, R) || R <- Rs],
         io:format("~-28s median ~10.1f   (~s)~n", [K, median(Vs), string:join([io_lib:format("~.1f", [V]) || V <- Vs], " ")])
     end || {K, _} <- hd(Rs)],
    [begin
         Rat = [proplists:get_value("pb " ++ M, R) / proplists:get_value("pa " ++ M, R) || R <- Rs],
         io:format("B/A ~-15s median ~.2f  (~s)~n", [M, median(Rat), string:join([io_lib:format("~.2f", [V]) || V <- Rat], " ")])
     end || M <- ["id_rate", "id_p50_us", "sqrt_rate", "sg_rate", "spawn_await_rate", "conc2_rate"]].

block(EchoF) ->
    {E1, _} = seq(500, EchoF),
    L = lists:append([pool_metrics(P) || P <- order()]),
    {E2, _} = seq(500, EchoF),
    M = (E1 + E2) / 2,
    {M, [{"echo_p50_us", M} | lists:sort(L)]}.

order() -> case rand:uniform(2) of 1 -> [pa, pb]; 2 -> [pb, pa] end.

pool_metrics(P) ->
    N = 1000,
    Tag = atom_to_list(P),
    Os = os_pid(P),
    {C0, S0} = cpu_cs(Os),
    {P50, Rate} = seq(N, fun() -> {ok, _} = py:call(P, wake_ab_py, identity, [1]) end),
    {C1, S1} = cpu_cs(Os),
    {_, SqrtRate} = seq(N, fun() -> {ok, _} = py:call(P, math, sqrt, [16.0]) end),
    {C2, S2} = cpu_cs(Os),
    {ok, SG} = py:call(P, wake_ab_py, state_get_loop, [<<"wake_ab_key">>, 1000]),
    {C3, S3} = cpu_cs(Os),
    Spawn = rate(N, fun() -> R = py:spawn_call(wake_ab_py, identity, [1], #{}, #{pool => P}), {ok, _} = py:await(R) end),
    Conc = conc2(list_to_atom(Tag ++ "2"), 0.3),
    [{Tag ++ " id_p50_us", P50}, {Tag ++ " id_rate", Rate},
     {Tag ++ " id_cpu_us_per", (C1 - C0) / 1000 / N},
     {Tag ++ " id_vcs_per", (S1 - S0) / N},
     {Tag ++ " sqrt_rate", SqrtRate},
     {Tag ++ " sg_rate", SG},
     {Tag ++ " sg_cpu_us_per", (C3 - C2) / 1000 / 1000},
     {Tag ++ " sg_vcs_per", (S3 - S2) / 1000},
     {Tag ++ " spawn_await_rate", Spawn},
     {Tag ++ " conc2_rate", Conc}].

conc2(Pool, Secs) ->
    Count = counters:new(1, []),
    Stop = erlang:monotonic_time(millisecond) + round(Secs * 1000),
    Parent = self(),
    Loop = fun Loop() ->
                   case erlang:monotonic_time(millisecond) < Stop of
                       true -> {ok, _} = py:call(Pool, wake_ab_py, identity, [1]), counters:add(Count, 1, 1), Loop();
                       false -> ok
                   end
           end,
    Pids = [spawn_link(fun() -> Loop(), Parent ! {done, self()} end) || _ <- [1, 2]],
    [receive {done, X} -> ok end || X <- Pids],
    _ = case os:getenv("WAKE_AB_SHOW_AFFINITY") of
            false -> ok;
            _ ->
                {ok, #{workers := Ws}} = pyport:pool_info(Pool),
                io:format("~p affinity ~s~n", [Pool, [string:trim(os:cmd("taskset -p " ++ integer_to_list(O) ++ " | sed 's/.*: //'")) ++ " " || #{os_pid := O} <- Ws]])
        end,
    counters:get(Count, 1) / Secs.

os_pid(P) ->
    {ok, #{workers := [#{os_pid := Os} | _]}} = pyport:pool_info(P), Os.

cpu_cs(Os) ->
    Dir = "/proc/" ++ integer_to_list(Os) ++ "/task",
    {ok, Tids} = file:list_dir(Dir),
    lists:foldl(fun(T, {C, S}) ->
                        {ok, B} = file:read_file(filename:join([Dir, T, "schedstat"])),
                        [Ns | _] = binary:split(B, <<" ">>),
                        {ok, St} = file:read_file(filename:join([Dir, T, "status"])),
                        [_, R] = binary:split(St, <<"voluntary_ctxt_switches:">>),
                        [V | _] = string:lexemes(R, " \t\n"),
                        {C + binary_to_integer(Ns), S + binary_to_integer(V)}
                end, {0, 0}, Tids).

seq(N, Fun) ->
    [Fun() || _ <- lists:seq(1, 100)],
    Lat = [begin T0 = erlang:monotonic_time(), Fun(), erlang:monotonic_time() - T0 end || _ <- lists:seq(1, N)],
    {us(median(Lat)), N / (us(lists:sum(Lat)) / 1.0e6)}.

rate(N, Fun) ->
    [Fun() || _ <- lists:seq(1, 100)],
    T0 = erlang:monotonic_time(),
    [Fun() || _ <- lists:seq(1, N)],
    N / (us(erlang:monotonic_time() - T0) / 1.0e6).

us(Native) -> erlang:convert_time_unit(Native, native, nanosecond) / 1000.
median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).
