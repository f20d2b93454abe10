%% HTTP pools' operations: who may ask for a graceful recycle
%% (pyport.http_recycle), max_rss recycles through the listener hand-off,
%% WebSocket idle pings from the node's options.
-module(pyport_http_ops_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [recycle_refused_unless_caller, max_rss_recycles_through_handoff, max_rss_errors].

init_per_suite(Config) ->
    _ = application:load(pyport),
    {ok, _} = application:ensure_all_started(pyport),
    Config.

end_per_suite(_Config) ->
    ok.

opts(Config, More) ->
    maps:merge(#{workers => 1, python_path => [?config(data_dir, Config)],
                 app => "http_ops_app:app"}, More).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    gen_tcp:close(S),
    Port.

os_pids(Name) ->
    {ok, Ws} = pyport:workers(Name),
    [pyport_worker:os_pid(P) || {_, P} <- Ws].

ask(Ctx, Pool, OsPid) ->
    {ok, Answer} = py:call(Ctx, http_ops_app, ask_recycle, [Pool, OsPid]),
    Answer.

%% pyport.http_recycle replaces the calling worker only: a worker of
%% another pool, or of the same pool naming its sibling's OS pid, is
%% refused with a clear error and nothing is recycled; a worker naming
%% itself is replaced (the control that shows the refusals are refusals).
recycle_refused_unless_caller(Config) ->
    Port = free_port(),
    {ok, _} = pyport:start_http(web_rc, opts(Config, #{bind => Port, workers => 2,
                                                       max_requests => 1000000})),
    {ok, _} = pyport:start_pool(other_rc, #{size => 1, python_path => [?config(data_dir, Config)]}),
    try
        [P1, P2] = OsPids0 = os_pids(web_rc),
        Other = ask(py:context(other_rc, 1), <<"web_rc">>, P1),
        Sibling = ask(py:context(web_rc, 1), <<"web_rc">>, P2),
        NoSuchPid = ask(py:context(web_rc, 1), <<"web_rc">>, 1),
        NotHttp = ask(py:context(web_rc, 1), <<"other_rc">>, P1),
        NoAtom = ask(py:context(web_rc, 1), <<"no_such_pool_atom_xyz_rc">>, P1),
        ct:pal("refusals:~n ~ts~n ~ts~n ~ts~n ~ts~n ~ts",
               [Other, Sibling, NoSuchPid, NotHttp, NoAtom]),
        [?assertMatch({match, _}, re:run(A, "http_recycle_refused")) ||
            A <- [Other, Sibling, NoSuchPid, NotHttp, NoAtom]],
        ?assertMatch({match, _}, re:run(Other, "not_the_caller")),
        ?assertMatch({match, _}, re:run(Sibling, "not_the_caller")),
        ?assertMatch({match, _}, re:run(NoSuchPid, "not_a_worker")),
        ?assertMatch({match, _}, re:run(NotHttp, "no_http")),
        %% A pool name the node does not know makes no atom (asked again:
        %% the first round loaded code, whose atoms do not count).
        Atoms0 = erlang:system_info(atom_count),
        [NoAtom = ask(py:context(web_rc, 1), <<"no_such_pool_atom_xyz_rc">>, P1)
         || _ <- lists:seq(1, 3)],
        ?assertEqual(Atoms0, erlang:system_info(atom_count)),
        timer:sleep(2000),
        ?assertEqual(OsPids0, os_pids(web_rc)),
        %% The control: worker 2 asks for itself, and only it is replaced.
        <<"ok">> = ask(py:context(web_rc, 2), <<"web_rc">>, P2),
        ok = wait_until(fun() -> lists:nth(2, os_pids(web_rc)) =/= P2 end, 30000),
        ?assertEqual(P1, hd(os_pids(web_rc))),
        {ok, <<"ok">>} = get(Port, "/")
    after
        ok = pyport:stop_http(web_rc),
        ok = pyport:stop_pool(other_rc)
    end.

wait_until(Fun, Ms) when Ms =< 0 ->
    case Fun() of true -> ok; false -> timeout end;
wait_until(Fun, Ms) ->
    case Fun() of
        true -> ok;
        false -> timer:sleep(100), wait_until(Fun, Ms - 100)
    end.

get(Port, Path) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(S, ["GET ", Path, " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"]),
    R = recv_all(S, <<>>),
    gen_tcp:close(S),
    case binary:split(R, <<"\r\n\r\n">>) of
        [<<"HTTP/1.1 200 ", _/binary>>, Body] -> {ok, Body};
        _ -> {error, R}
    end.

recv_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 10000) of
        {ok, B} -> recv_all(S, <<Acc/binary, B/binary>>);
        {error, _} -> Acc
    end.
