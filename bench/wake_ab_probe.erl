%% Where a round trip sleeps: runs one kind of round trip in a loop for a
%% while (for `perf sched' or strace from outside) and prints its rate, the
%% echo floor's p50 before and after (the wake-up mode), and the voluntary
%% context switches and CPU per round trip of every thread of the node and
%% of the worker. Run:
%%
%%   erl -noshell -pa erl/_build/default/lib/pyport/ebin -pa build/bench \
%%       -config bench/bench.config -run wake_ab_probe main call 2
%%
%% Kinds: echo, call, spawn, sg (state_get from Python, per get), task.
-module(wake_ab_probe).
-export([main/1]).

-spec main([string()]) -> no_return().
main(["blocks", NS | Rest]) ->
    {ok, _} = application:ensure_all_started(pyport),
    Extra = case Rest of [W] -> #{worker => W}; [] -> #{} end,
    {ok, _} = pyport:start_pool(p1, maps:merge(#{size => 1, python_path => ["bench"]}, Extra)),
    {ok, _} = pyport:start_pool(p0, maps:merge(#{size => 1, python_path => ["bench"], spin_us => 0}, Extra)),
    _ = py:state_store(<<"wake_ab_key">>, 42),
    EchoF = echo_fun(),
    Kinds = case os:getenv("PROBE_KINDS") of
                false -> ["call", "spawn", "sg", "task"];
                Ks -> string:lexemes(Ks, ",")
            end,
    Os = [integer_to_list(O) || P <- [p1, p0, default], {ok, #{workers := Ws}} <- [pyport:pool_info(P)], #{os_pid := O} <- Ws],
    %% PROBE_PIN_WORKERS=CPU: the workers' threads on that CPU (with the
    %% node kept on another by `taskset': the slow mode on demand).
    _ = case os:getenv("PROBE_PIN_WORKERS") of
            false -> ok;
            Cpu -> [os:cmd("taskset -a -p -c " ++ Cpu ++ " " ++ O) || O <- Os]
        end,
    Follow = os:getenv("PROBE_FOLLOW") =/= false,
    Res = [begin
               _ = case F of
                       true -> pin(Os, sched_cpu());
                       false -> [os:cmd("taskset -a -p -c 0-1 " ++ O) || O <- Os]
                   end,
               {M, K1, R} = block(K ++ case F of true -> "+pin"; false -> "" end, EchoF, Os),
               {M, K1, R}
           end || _ <- lists:seq(1, list_to_integer(NS)), K <- shuffle(Kinds), F <- shuffle(lists:usort([false, Follow]))],
    [summary(Mode, K, [R || {M, K1, R} <- Res, M =:= Mode, K1 =:= K]) || Mode <- [fast, slow, mixed], K <- lists:usort([K1 || {_, K1, _} <- Res])],
    halt(0);
main([Kind, SecsS | Rest]) ->
    {ok, _} = application:ensure_all_started(pyport),
    Opts = #{size => 1, python_path => ["bench"]},
    Extra = case Rest of [W] -> #{worker => W}; [] -> #{} end,
    {ok, _} = pyport:start_pool(p1, maps:merge(Opts, Extra)),
    _ = py:state_store(<<"wake_ab_key">>, 42),
    EchoF = echo_fun(),
    {ok, #{workers := [#{os_pid := Os} | _]}} = pyport:pool_info(p1),
    io:format("beam ~s worker ~p~n", [os:getpid(), Os]),
    {Per, Fun} = op(Kind, EchoF),
    Secs = list_to_float(SecsS),
    [Fun() || _ <- lists:seq(1, 200)],
    E0 = p50(EchoF),
    N0 = threads(os:getpid()), W0 = threads(integer_to_list(Os)),
    T0 = erlang:monotonic_time(),
    Count = loop(Fun, erlang:monotonic_time(millisecond) + round(Secs * 1000), 0),
    T1 = erlang:monotonic_time(),
    N1 = threads(os:getpid()), W1 = threads(integer_to_list(Os)),
    E1 = p50(EchoF),
    Trips = Count * Per,
    io:format("~s: ~.1f round trips/s (~b); echo p50 ~.1f / ~.1f us~n",
              [Kind, Trips / (erlang:convert_time_unit(T1 - T0, native, microsecond) / 1.0e6), Trips, E0, E1]),
    report("node", N0, N1, Trips), report("worker", W0, W1, Trips),
    halt(0).

echo_fun() ->
    Echo = filename:join(code:priv_dir(pyport), "echo_port"),
    Frame = iolist_to_binary(pyport_codec:encode_frame(1, 1, [<<"wake_ab_py">>, <<"identity">>, [1], #{}])),
    Port = open_port({spawn_executable, Echo}, [{packet, 4}, binary, exit_status, use_stdio]),
    fun() -> port_command(Port, Frame), receive {Port, {data, _}} -> ok end end.

%% The CPU the thread of this process's scheduler last ran on.
sched_cpu() ->
    Id = erlang:system_info(scheduler_id),
    Dir = "/proc/self/task",
    {ok, Tids} = file:list_dir(Dir),
    hd([begin
            {ok, B} = file:read_file(filename:join([Dir, T, "stat"])),
            [_, After] = binary:split(B, <<") ">>),
            binary_to_integer(lists:nth(37, binary:split(After, <<" ">>, [global])))
        end || T <- Tids,
               {ok, C} <- [file:read_file(filename:join([Dir, T, "comm"]))],
               string:trim(C) =:= iolist_to_binary([integer_to_list(Id), "_scheduler"])]).

pin(Os, Cpu) -> [os:cmd("taskset -a -p -c " ++ integer_to_list(Cpu) ++ " " ++ O) || O <- Os].

shuffle(L) -> [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

%% One block: the echo p50 (the mode), then Kind for 0.2 s.
block(Kind, EchoF, Os) ->
    {Per, Fun} = op(hd(string:split(Kind, "+")), EchoF),
    [Fun() || _ <- lists:seq(1, 20)],
    E0 = p50(EchoF),
    N0 = threads(os:getpid()), W0 = [threads(O) || O <- Os],
    T0 = erlang:monotonic_time(),
    Count = loop(Fun, erlang:monotonic_time(millisecond) + 200, 0),
    T1 = erlang:monotonic_time(),
    N1 = threads(os:getpid()), W1 = [threads(O) || O <- Os],
    E1 = p50(EchoF),
    Trips = Count * Per,
    Rate = Trips / (erlang:convert_time_unit(T1 - T0, native, microsecond) / 1.0e6),
    {NC, NV} = totals(N0, N1, Trips),
    {WC, WV} = lists:foldl(fun({A, B}, {C, V}) -> {C1, V1} = totals(A, B, Trips), {C + C1, V + V1} end,
                           {0, 0}, lists:zip(W0, W1)),
    Mode = case max(E0, E1) < 20 of true -> fast; false -> case min(E0, E1) >= 20 of true -> slow; false -> mixed end end,
    Aff = case os:getenv("PROBE_SHOW_AFFINITY") of
              false -> "";
              _ -> string:trim(os:cmd("taskset -p " ++ hd(Os) ++ " | sed 's/.*: //'"))
          end,
    io:format("~-9s ~-6w ~9.1f/s  echo ~5.1f ~5.1f  node cpu ~6.2f vcs ~.3f  worker cpu ~6.2f vcs ~.3f ~s~n",
              [Kind, Mode, Rate, E0, E1, NC, NV, WC, WV, Aff]),
    {Mode, Kind, [Rate, NC, NV, WC, WV]}.

%% Per thread between two threads/1 readings: {Name, CPU us, voluntary
%% switches} per round trip (a thread that started in between counts from
%% its end reading, i.e. not at all).
per_thread(A, B, Trips) ->
    [begin
         {_, Ns0, V0} = maps:get(T, A, {Name, Ns1, V1}),
         {Name, (Ns1 - Ns0) / 1000 / Trips, (V1 - V0) / Trips}
     end || {T, {Name, Ns1, V1}} <- maps:to_list(B)].

totals(A, B, Trips) ->
    sums(per_thread(A, B, Trips)).

sums(Rows) ->
    {lists:sum([C || {_, C, _} <- Rows]), lists:sum([V || {_, _, V} <- Rows])}.

summary(_, _, []) -> ok;
summary(Mode, Kind, Rs) ->
    Cols = lists:foldr(fun(R, Acc) -> [[X | Col] || {X, Col} <- lists:zip(R, Acc)] end, [[], [], [], [], []], Rs),
    [Rate, NC, NV, WC, WV] = [lists:nth((length(C) + 1) div 2, lists:sort(C)) || C <- Cols],
    io:format("== ~w ~s (~b blocks): ~.1f/s node cpu ~.2f vcs ~.3f worker cpu ~.2f vcs ~.3f~n",
              [Mode, Kind, length(Rs), Rate, NC, NV, WC, WV]).

op("echo", EchoF) -> {1, EchoF};
op("call0", _) -> {1, fun() -> {ok, _} = py:call(p0, math, sqrt, [2.0]) end};
op("call", _) -> {1, fun() -> {ok, _} = py:call(p1, math, sqrt, [2.0]) end};
op("spawn", _) -> {1, fun() -> {ok, _} = py:await(py:spawn_call(math, sqrt, [2.0], #{}, #{pool => p1})) end};
op("sg", _) -> {1000, fun() -> {ok, _} = py:call(p1, wake_ab_py, state_get_loop, [<<"wake_ab_key">>, 1000]) end};
op("task", _) -> {1, fun() -> Ref = py_event_loop:create_task(math, sqrt, [2.0]), {ok, _} = py_event_loop:await(Ref) end}.

loop(Fun, Stop, N) ->
    case N rem 64 =:= 0 andalso erlang:monotonic_time(millisecond) >= Stop of
        true -> N;
        false -> Fun(), loop(Fun, Stop, N + 1)
    end.

p50(F) ->
    Lat = [begin T0 = erlang:monotonic_time(), F(), erlang:monotonic_time() - T0 end || _ <- lists:seq(1, 500)],
    erlang:convert_time_unit(lists:nth(250, lists:sort(Lat)), native, nanosecond) / 1000.

threads(Pid) ->
    Dir = "/proc/" ++ Pid ++ "/task",
    {ok, Tids} = file:list_dir(Dir),
    maps:from_list([{T, stat(filename:join(Dir, T))} || T <- Tids]).

stat(D) ->
    try
        {ok, B} = file:read_file(filename:join(D, "schedstat")),
        [Ns | _] = binary:split(B, <<" ">>),
        {ok, St} = file:read_file(filename:join(D, "status")),
        [_, R] = binary:split(St, <<"voluntary_ctxt_switches:">>),
        [V | _] = string:lexemes(R, " \t\n"),
        {ok, C} = file:read_file(filename:join(D, "comm")),
        {string:trim(C), binary_to_integer(Ns), binary_to_integer(V)}
    catch _:_ -> {<<"?">>, 0, 0}
    end.

report(What, A, B, Trips) ->
    Rows = per_thread(A, B, Trips),
    Busy = [R || {_, C, V} = R <- Rows, C > 0.05 orelse V > 0.01],
    {Cpu, Vcs} = sums(Rows),
    io:format("  ~s: cpu ~.2f us, vcs ~.3f per trip~n", [What, Cpu, Vcs]),
    [io:format("    ~-20s cpu ~6.2f us  vcs ~.3f~n", [N, C, V]) || {N, C, V} <- lists:sort(Busy)].
