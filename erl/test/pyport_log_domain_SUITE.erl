%% pyport's log events reach OTP's stock `default' handler (which drops
%% unknown domains), and the filter that lets them through is pyport's only.
-module(pyport_log_domain_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_testcase/2, end_per_testcase/2]).
-export([worker_output_reaches_the_default_handler/1, disabled_leaves_the_handler_alone/1]).

all() -> [worker_output_reaches_the_default_handler, disabled_leaves_the_handler_alone].

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%% A peer node with OTP's stock logger, its default handler writing to a
%% file: a Python error's log line shows up there, an event in another
%% unknown domain still does not, and stopping pyport removes the filter.
worker_output_reaches_the_default_handler(Config) ->
    Log = filename:join(?config(priv_dir, Config), "default.log"),
    {ok, Peer, _Node} = start_peer(Log, true),
    try
        ok = start_pyport(Peer),
        %% A Python exception's traceback is logged at notice, the stock
        %% primary level.
        {error, _} = peer:call(Peer, py, eval, [<<"int('not-a-number-in-the-log')">>]),
        ok = peer:call(Peer, logger, notice, ["other-domain-line", #{domain => [elsewhere]}]),
        ok = wait_for_line(Log, <<"not-a-number-in-the-log">>, 100),
        {ok, Text} = file:read_file(Log),
        ?assertEqual(nomatch, binary:match(Text, <<"other-domain-line">>)),
        %% Starting a pool logs nothing unexpected (its stats table's hand-over
        %% to the pool process was once a warning on every start).
        ?assertEqual(nomatch, binary:match(Text, <<"unexpected message">>)),
        Filters = fun() ->
                          {ok, #{filters := F}} = peer:call(Peer, logger, get_handler_config, [default]),
                          [Id || {Id, _} <- F]
                  end,
        ?assert(lists:member(pyport_domain, Filters())),
        ok = peer:call(Peer, application, stop, [pyport]),
        ?assertNot(lists:member(pyport_domain, Filters()))
    after
        peer:stop(Peer)
    end.

disabled_leaves_the_handler_alone(Config) ->
    Log = filename:join(?config(priv_dir, Config), "disabled.log"),
    {ok, Peer, _Node} = start_peer(Log, false),
    try
        ok = start_pyport(Peer),
        {ok, #{filters := F}} = peer:call(Peer, logger, get_handler_config, [default]),
        ?assertNot(lists:keymember(pyport_domain, 1, F)),
        %% So the stock handler drops pyport's lines (what the filter is for).
        {error, _} = peer:call(Peer, py, eval, [<<"int('not-a-number-in-the-log')">>]),
        ok = peer:call(Peer, logger, notice, ["plain-line-after"]),
        ok = wait_for_line(Log, <<"plain-line-after">>, 100),
        {ok, Text} = file:read_file(Log),
        ?assertEqual(nomatch, binary:match(Text, <<"not-a-number-in-the-log">>))
    after
        peer:stop(Peer)
    end.

start_peer(Log, Enabled) ->
    Ebin = filename:dirname(code:which(pyport)),
    {ok, Peer, Node} = peer:start_link(#{name => peer:random_name(?MODULE), connection => standard_io,
                                         args => ["-pa", Ebin,
                                                  "-kernel", "logger",
                                                  lists:flatten(io_lib:format(
                                                      "[{handler,default,logger_std_h,#{config=>#{file=>~p}}}]",
                                                      [Log]))]}),
    ok = peer:call(Peer, application, set_env, [pyport, log_to_default_handler, Enabled]),
    {ok, Peer, Node}.

start_pyport(Peer) ->
    {ok, _} = peer:call(Peer, application, ensure_all_started, [pyport]),
    ok.

wait_for_line(_Log, Line, 0) ->
    ct:fail({not_logged, Line});
wait_for_line(Log, Line, N) ->
    case file:read_file(Log) of
        {ok, Text} ->
            case binary:match(Text, Line) of
                nomatch -> timer:sleep(100), wait_for_line(Log, Line, N - 1);
                _ -> ok
            end;
        _ ->
            timer:sleep(100),
            wait_for_line(Log, Line, N - 1)
    end.
