%% The owner's rate for worker output (pyport_worker_log): a bucket of two
%% seconds' worth, counting what it drops and saying so in one note.
-module(pyport_worker_log_tests).

-include_lib("eunit/include/eunit.hrl").

-export([log/2]).  % the logger handler of long_line_is_cut_test

admit_n(N, Bytes, Log) ->
    lists:foldl(fun(_, {Yes, L}) ->
                        case pyport_worker_log:admit(Bytes, L) of
                            {true, L1} -> {Yes + 1, L1};
                            {false, L1} -> {Yes, L1}
                        end
                end, {0, Log}, lists:seq(1, N)).

lines_burst_then_drop_test() ->
    {Passed, Log} = admit_n(100, 10, pyport_worker_log:new(#{lines => 10, bytes => infinity})),
    %% Two seconds' worth (a little more if the clock ticked meanwhile).
    ?assert(Passed >= 20 andalso Passed =< 22),
    %% The first drop started the note timer; it reports the drops.
    Timer = receive {timeout, T, log_note} -> T after 2000 -> error(no_note_timer) end,
    _ = pyport_worker_log:note({timeout, Timer, log_note}, #{pyport_pool => p, pyport_slot => 1}, Log),
    %% A stale timer changes nothing.
    ?assertEqual(Log, pyport_worker_log:note({timeout, make_ref(), log_note}, #{}, Log)).

bytes_rate_test() ->
    Log0 = pyport_worker_log:new(#{lines => infinity, bytes => 1000}),
    {true, Log1} = pyport_worker_log:admit(1500, Log0),
    {false, _} = pyport_worker_log:admit(1500, Log1),
    %% Longer than the whole bucket: needs a full bucket, not more.
    {true, _} = pyport_worker_log:admit(10000, Log0),
    flush_timers().

infinity_admits_everything_test() ->
    {Passed, _} = admit_n(10000, 1000000, pyport_worker_log:new(infinity)),
    ?assertEqual(10000, Passed).

validate_rate_test() ->
    Default = pyport_worker_log:default_rate(),
    ?assertEqual({ok, infinity}, pyport_worker_log:validate_rate(infinity)),
    ?assertEqual({ok, Default}, pyport_worker_log:validate_rate(#{})),
    ?assertEqual({ok, Default#{lines := 5}}, pyport_worker_log:validate_rate(#{lines => 5})),
    ?assertEqual({ok, #{lines => infinity, bytes => 7}},
                 pyport_worker_log:validate_rate(#{lines => infinity, bytes => 7})),
    [?assertEqual(error, pyport_worker_log:validate_rate(Bad))
     || Bad <- [0, #{lines => 0}, #{bytes => -1}, #{lines => 1.0}, #{lines => 1 bsl 63},
                #{other => 1}, [{lines, 1}]]].

%% The worker's relay gets the pool's rate on its command line.
log_rate_argv_test() ->
    Flags = fun(Opts) ->
                    {ok, Pool} = pyport_config:validate_pool(p, Opts),
                    log_flags(pyport_os:args(Pool))
            end,
    ?assertEqual(["--log-lines", "1000", "--log-bytes", "1048576"], Flags(#{})),
    ?assertEqual(["--log-lines", "5", "--log-bytes", "1048576"], Flags(#{log_rate => #{lines => 5}})),
    ?assertEqual(["--log-bytes", "10"], Flags(#{log_rate => #{lines => infinity, bytes => 10}})),
    ?assertEqual([], Flags(#{log_rate => infinity})),
    ?assertEqual(["--log-lines", "1000", "--log-bytes", "1048576"], Flags(#{sandbox => true})).

log_flags([Flag, Value | Rest]) when Flag =:= "--log-lines"; Flag =:= "--log-bytes" ->
    [Flag, Value | log_flags(Rest)];
log_flags([_ | Rest]) ->
    log_flags(Rest);
log_flags([]) ->
    [].

flush_timers() ->
    receive {timeout, _, log_note} -> flush_timers() after 0 -> ok end.

%% A LOG line longer than the bucket (here 2 x 1000 bytes) is logged cut to
%% the bucket's size, never whole: a hostile worker cannot hand the logger
%% a max_frame_size line.
long_line_is_cut_test() ->
    Self = self(),
    Id = pyport_worker_log_tests_capture,
    ok = logger:add_handler(Id, ?MODULE, #{config => Self, level => all}),
    try
        Message = binary:copy(<<"x">>, 100000),
        Fields = iolist_to_binary([pyport_codec:encode(<<"warning">>), pyport_codec:encode(Message)]),
        Log = pyport_worker_log:new(#{lines => infinity, bytes => 1000}),
        _ = pyport_worker_log:log_frame(Fields, #{pyport_pool => p, pyport_slot => 1}, Log),
        Text = receive {logged, T} -> T after 2000 -> error(not_logged) end,
        ?assertEqual(binary:copy(<<"x">>, 2000), binary:part(Text, 0, 2000)),
        ?assertEqual(<<" ... (98000 bytes cut)">>, binary:part(Text, 2000, byte_size(Text) - 2000))
    after
        logger:remove_handler(Id)
    end.

%% logger handler callback: sends the formatted message to the test.
log(#{msg := {Format, Args}, meta := #{pyport_pool := p}}, #{config := Pid}) ->
    Pid ! {logged, unicode:characters_to_binary(io_lib:format(Format, Args))};
log(_Event, _Config) ->
    ok.
