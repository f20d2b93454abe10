%% pyport benchmarks: one `NAME VALUE UNIT` line per figure.
%%
%% The floor for a call round trip is bench/echo_port.c, a C program that
%% echoes {packet, 4} frames, driven through the same port settings as a
%% worker with the same frame bytes, measured in the same run. Ratios are
%% printed next to each figure they qualify.
-module(pyport_bench).
-export([main/0]).

-define(SEQ_CALLS, 20000).
-define(CONC_SECONDS, 3).

main() ->
    {ok, _} = application:ensure_all_started(pyport),
    Echo = priv_file("echo_port"),
    Worker = priv_file("pyport_worker"),
    CallRate = sequential(Echo),
    concurrent(),
    callbacks(CallRate),
    big_binary(Echo),
    int_list(),
    codec(),
    startup(Worker),
    halt(0).

%% Sequential round trips, one caller; returns the identity call rate.
sequential(Echo) ->
    Frame = iolist_to_binary(pyport_codec:encode_frame(1, 1, [<<"pyport_bench_py">>, <<"identity">>, [1], #{}])),
    {FloorRate, FP50, FP99} = timed_seq(?SEQ_CALLS, fun(Port) -> echo(Port, Frame) end, Echo),
    line("floor_echo_roundtrip_rate", FloorRate, "calls/s"),
    line("floor_echo_roundtrip_p50", FP50, "us"),
    line("floor_echo_roundtrip_p99", FP99, "us"),
    lists:foreach(
      fun({Name, M, F, A}) ->
              {Rate, P50, P99} = timed_seq(?SEQ_CALLS, fun(_) -> {ok, _} = py:call(M, F, A) end, none),
              line("call_" ++ Name ++ "_rate", Rate, "calls/s"),
              line("call_" ++ Name ++ "_p50", P50, "us"),
              line("call_" ++ Name ++ "_p99", P99, "us"),
              line("call_" ++ Name ++ "_vs_floor", Rate / FloorRate, "ratio")
      end, [{"identity", pyport_bench_py, identity, [1]}, {"sqrt", math, sqrt, [16.0]}]),
    %% The identity call rate: the peer of a Python -> Erlang round trip.
    {CallRate, _, _} = timed_seq(?SEQ_CALLS, fun(_) -> {ok, _} = py:call(pyport_bench_py, identity, [1]) end,
                                 none),
    CallRate.

%% Python -> Erlang: callback round trips (timed inside Python, in a loop),
%% nested chains Python -> Erlang -> the same worker -> back, state_incr,
%% and publish to 1,000 Erlang subscribers. Ratios against the sequential
%% Erlang -> Python call rate of this run.
callbacks(CallRate) ->
    Ctx = py:context(1),
    ok = py:register_function(bench_echo, fun([X]) -> X end),
    ok = py:register_function(bench_nested, fun([X]) ->
                                                    {ok, V} = py:call(Ctx, pyport_bench_py, identity, [X]),
                                                    V
                                            end),
    N = ?SEQ_CALLS,
    {ok, _} = py:call(Ctx, pyport_bench_py, callback_loop, [bench_echo, 1000]),
    {ok, Rate} = py:call(Ctx, pyport_bench_py, callback_loop, [bench_echo, N]),
    line("callback_roundtrip_rate", Rate, "calls/s"),
    line("callback_roundtrip_vs_call", Rate / CallRate, "ratio"),
    {ok, Nested} = py:call(Ctx, pyport_bench_py, callback_loop, [bench_nested, N div 2]),
    line("callback_nested_chain_rate", Nested, "chains/s"),
    {ok, Incr} = py:call(Ctx, pyport_bench_py, state_incr_loop, [<<"bench_counter">>, N]),
    line("state_incr_from_python_rate", Incr, "calls/s"),
    line("state_incr_vs_call", Incr / CallRate, "ratio"),
    publish_to_subscribers(Ctx, 1000, 200),
    ok = py:unregister_function(bench_echo),
    ok = py:unregister_function(bench_nested).

%% Python publishes Msgs messages to a topic with Subs Erlang subscribers;
%% timed until every subscriber has every message.
publish_to_subscribers(Ctx, Subs, Msgs) ->
    Topic = <<"bench_topic">>,
    Self = self(),
    Pids = [spawn_link(fun() ->
                               ok = py:subscribe(Topic),
                               Self ! {subscribed, self()},
                               count_messages(Msgs),
                               Self ! {received, self()}
                       end) || _ <- lists:seq(1, Subs)],
    [receive {subscribed, P} -> ok end || P <- Pids],
    T0 = erlang:monotonic_time(),
    {ok, Msgs} = py:call(Ctx, pyport_bench_py, publish_loop, [Topic, Msgs], #{}, 60000),
    [receive {received, P} -> ok end || P <- Pids],
    Seconds = to_s(erlang:monotonic_time() - T0),
    line("publish_1000_subscribers_delivered_rate", Subs * Msgs / Seconds, "msgs/s"),
    line("publish_1000_subscribers_publish_rate", Msgs / Seconds, "publishes/s").

count_messages(0) -> ok;
count_messages(N) -> receive {pubsub, _, _} -> count_messages(N - 1) end.

timed_seq(N, Fun, Echo) ->
    Port = case Echo of none -> none; _ -> open(Echo, []) end,
    repeat(1000, fun() -> Fun(Port) end),                 % warm up
    Lat = [begin T0 = erlang:monotonic_time(), Fun(Port),
                 erlang:monotonic_time() - T0 end || _ <- lists:seq(1, N)],
    Total = lists:sum(Lat),
    close(Port),
    Sorted = lists:sort(Lat),
    {N / to_s(Total), to_us(nth(0.50, Sorted)), to_us(nth(0.99, Sorted))}.

%% 64 callers on a pool of 2 workers for a fixed time.
concurrent() ->
    Count = counters:new(1, [write_concurrency]),
    Stop = erlang:monotonic_time(millisecond) + ?CONC_SECONDS * 1000,
    Parent = self(),
    Pids = [spawn_link(fun() -> conc_loop(Count, Stop), Parent ! {done, self()} end)
            || _ <- lists:seq(1, 64)],
    [receive {done, P} -> ok end || P <- Pids],
    line("call_concurrent64_pool2_rate", counters:get(Count, 1) / ?CONC_SECONDS, "calls/s").

conc_loop(Count, Stop) ->
    case erlang:monotonic_time(millisecond) < Stop of
        true ->
            {ok, 7} = py:call(pyport_bench_py, identity, [7]),
            counters:add(Count, 1, 1),
            conc_loop(Count, Stop);
        false ->
            ok
    end.

%% 1 MiB binary identity, against the floor echoing the same frame.
big_binary(Echo) ->
    Bin = crypto_free_bytes(1 bsl 20),
    N = 300,
    Frame = iolist_to_binary(pyport_codec:encode_frame(1, 1, [<<"pyport_bench_py">>, <<"identity">>, [{bytes, Bin}], #{}])),
    Port = open(Echo, []),
    {FloorUs, _} = timer:tc(fun() -> repeat(N, fun() -> echo(Port, Frame) end) end),
    close(Port),
    {Us, _} = timer:tc(fun() -> repeat(N, fun() -> {ok, Bin} = py:call(pyport_bench_py, identity, [{bytes, Bin}]) end) end),
    Floor = N / (FloorUs / 1.0e6),
    Rate = N / (Us / 1.0e6),
    line("floor_echo_1mib_bandwidth", Floor, "MiB/s"),
    line("call_identity_1mib_bandwidth", Rate, "MiB/s"),
    line("call_identity_1mib_vs_floor", Rate / Floor, "ratio").

%% A list of 10,000 integers through identity.
int_list() ->
    L = lists:seq(1, 10000),
    N = 1000,
    {Us, _} = timer:tc(fun() -> repeat(N, fun() -> {ok, L} = py:call(pyport_bench_py, identity, [L]) end) end),
    line("call_identity_10k_int_list_rate", N / (Us / 1.0e6), "calls/s").

%% The Erlang codec alone, per term, each in a fresh process with nothing
%% kept alive; the peer is the runtime's own C codec (external term format)
%% on the same term.
codec() ->
    lists:foreach(
      fun({Name, Term}) ->
              Bin = iolist_to_binary(pyport_codec:encode(Term)),
              Etf = term_to_binary(Term),
              Enc = per_call_us(fun() -> erlang:iolist_to_iovec(pyport_codec:encode(Term)) end),
              Dec = per_call_us(fun() -> {ok, _} = pyport_codec:decode(Bin) end),
              line("codec_encode_" ++ Name, Enc, "us"),
              line("codec_encode_" ++ Name ++ "_vs_term_to_binary",
                   Enc / per_call_us(fun() -> term_to_binary(Term) end), "ratio"),
              line("codec_decode_" ++ Name, Dec, "us"),
              line("codec_decode_" ++ Name ++ "_vs_binary_to_term",
                   Dec / per_call_us(fun() -> binary_to_term(Etf) end), "ratio")
      end,
      [{"10k_int_list", lists:seq(1, 10000)},
       {"1k_atom_key_maps", [#{id => I, name => <<"user">>, active => true, score => I * 1.5}
                             || I <- lists:seq(1, 1000)]}]).

%% Mean time of Fun over 200 runs in a fresh process, best of 5.
per_call_us(Fun) ->
    N = 200,
    lists:min(
      [begin
           {Pid, Ref} = spawn_monitor(fun() ->
                                              {Us, ok} = timer:tc(fun() -> repeat(N, Fun) end),
                                              exit({us, Us / N})
                                      end),
           receive {'DOWN', Ref, process, Pid, {us, Us}} -> Us end
       end || _ <- lists:seq(1, 5)]).

%% From spawning a worker to its first answered call, and an idle worker's RSS.
startup(Worker) ->
    Runtime = priv_file("python_runtime"),
    Frame = pyport_codec:encode_frame(1, 1, [<<"math">>, <<"sqrt">>, [4.0], #{}]),
    Times = [begin
                 T0 = erlang:monotonic_time(),
                 Port = open(Worker, ["--runtime", Runtime]),
                 {ok, 0, 0, _, HelloRest} = recv_frame(Port),
                 {ok, [1, _PyVer, OsPid, _Caps]} = pyport_codec:decode_fields(4, HelloRest),
                 port_command(Port, Frame),
                 {ok, 16, 1, 1, _} = recv_frame(Port),
                 T = erlang:monotonic_time() - T0,
                 Rss = rss_kib(OsPid),
                 close(Port),
                 {to_us(T) / 1000, Rss}
             end || _ <- lists:seq(1, 10)],
    Ms = lists:sort([T || {T, _} <- Times]),
    line("worker_start_to_first_call_p50", nth(0.5, Ms), "ms"),
    line("worker_start_to_first_call_max", lists:last(Ms), "ms"),
    line("worker_idle_rss", lists:max([R || {_, R} <- Times]), "KiB").

%% Helpers

%% Runs Fun N times, keeping no result alive (a list of results would make
%% the garbage collector, not the call, the thing measured).
repeat(0, _Fun) -> ok;
repeat(N, Fun) -> _ = Fun(), repeat(N - 1, Fun).

open(Exe, Args) ->
    open_port({spawn_executable, Exe},
              [{args, Args}, {packet, 4}, binary, exit_status, use_stdio]).

close(none) -> ok;
close(Port) -> catch port_close(Port), ok.

echo(Port, Frame) ->
    port_command(Port, Frame),
    receive {Port, {data, _}} -> ok end.

recv_frame(Port) ->
    receive
        {Port, {data, Bin}} -> pyport_codec:decode_frame_head(Bin);
        {Port, {exit_status, S}} -> error({worker_exited, S})
    after 10000 -> error(timeout)
    end.

rss_kib(OsPid) ->
    {ok, Status} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb).

priv_file(Name) ->
    filename:join(code:priv_dir(pyport), Name).

crypto_free_bytes(N) ->
    << <<(X band 255)>> || X <- lists:seq(1, N) >>.

nth(Q, Sorted) ->
    lists:nth(max(1, round(Q * length(Sorted))), Sorted).

to_us(Native) -> erlang:convert_time_unit(Native, native, nanosecond) / 1000.
to_s(Native) -> erlang:convert_time_unit(Native, native, nanosecond) / 1.0e9.

line(Name, Value, Unit) when is_float(Value) ->
    io:format("~s ~.2f ~s~n", [Name, Value, Unit]);
line(Name, Value, Unit) ->
    io:format("~s ~p ~s~n", [Name, Value, Unit]).
