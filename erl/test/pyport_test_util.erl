%% Helpers shared by the Common Test suites: starting pyport with given
%% pools, polling for a condition, running a call in another process.
-module(pyport_test_util).

-export([python_dir/0, start/1, stop/0, stop_other_pools/0, wait_until/1, wait_until/2, async/1, await/1,
         flag/1, os_pid/1, with_log_capture/2, flush_logs/0]).
%% logger handler callback of with_log_capture/2.
-export([log/2]).

%% @doc The suites' Python modules (pyport_SUITE_data), next to the beams.
-spec python_dir() -> string().
python_dir() ->
    filename:join(filename:dirname(code:which(?MODULE)), "pyport_SUITE_data").

%% @doc Starts pyport with these pools (`python_dir()' on every pool's path
%% unless it has its own).
-spec start(#{atom() => map()}) -> ok.
start(Pools) ->
    _ = application:load(pyport),
    Dir = python_dir(),
    application:set_env(pyport, pools,
                        maps:map(fun(_, Opts) -> maps:merge(#{python_path => [Dir]}, Opts) end, Pools)),
    {ok, _} = application:ensure_all_started(pyport),
    ok.

-spec stop() -> ok.
stop() ->
    _ = application:stop(pyport),
    application:unset_env(pyport, pools).

%% @doc Stops every pool but `default' (those a test case started).
-spec stop_other_pools() -> ok.
stop_other_pools() ->
    lists:foreach(fun(P) -> ok = pyport:stop_pool(P) end, pyport:pools() -- [default]).

%% @doc Polls Cond every 10 ms, up to 20 s; fails the test case after that.
-spec wait_until(fun(() -> boolean())) -> ok.
wait_until(Cond) ->
    wait_until(Cond, 2000).

%% @doc Polls Cond every 10 ms, at most Tries times.
-spec wait_until(fun(() -> boolean()), pos_integer()) -> ok.
wait_until(Cond, Tries) ->
    case Cond() of
        true -> ok;
        false when Tries > 1 -> timer:sleep(10), wait_until(Cond, Tries - 1);
        false -> ct:fail(condition_never_true)
    end.

%% @doc Runs Fun in a linked process; {@link await/1} takes its result.
-spec async(fun(() -> term())) -> reference().
async(Fun) ->
    Self = self(),
    Ref = make_ref(),
    _ = spawn_link(fun() -> Self ! {Ref, Fun()} end),
    Ref.

-spec await(reference()) -> term().
await(Ref) ->
    receive {Ref, R} -> R after 60000 -> ct:fail(no_answer) end.

%% @doc A fresh path in the test case's priv_dir, as a binary (for Python).
-spec flag(list()) -> binary().
flag(Config) ->
    {priv_dir, Dir} = lists:keyfind(priv_dir, 1, Config),
    list_to_binary(filename:join(Dir, "flag-" ++ integer_to_list(erlang:unique_integer([positive])))).

%% @doc The OS pid of a worker that is up, else undefined.
-spec os_pid({atom(), pos_integer()}) -> non_neg_integer() | undefined.
os_pid({Pool, Slot}) ->
    case pyport:worker_info({Pool, Slot}) of
        {ok, #{os_pid := P, status := up}} -> P;
        _ -> undefined
    end.

%% @doc Runs Fun with a logger handler that sends every event to this
%% process as `{pyport_test_log, Event}', pyport_worker's events from
%% `Level' up; the other handlers see only errors meanwhile, so that the CT
%% logs stay readable.
-spec with_log_capture(logger:level(), fun(() -> T)) -> T.
with_log_capture(Level, Fun) ->
    Others = [{Id, L} || Id <- logger:get_handler_ids(),
                         {ok, #{level := L}} <- [logger:get_handler_config(Id)]],
    [logger:set_handler_config(Id, level, error) || {Id, _} <- Others],
    ok = logger:set_module_level([pyport_worker], Level),
    ok = logger:add_handler(pyport_test_capture, ?MODULE,
                            #{level => all, config => #{pid => self()}}),
    try Fun()
    after
        _ = logger:remove_handler(pyport_test_capture),
        logger:unset_module_level([pyport_worker]),
        [logger:set_handler_config(Id, level, L) || {Id, L} <- Others],
        flush_logs()
    end.

-spec log(logger:log_event(), logger:handler_config()) -> term().
log(Event, #{config := #{pid := Pid}}) ->
    Pid ! {pyport_test_log, Event}.

%% @doc Drops the captured events still in the mailbox.
-spec flush_logs() -> ok.
flush_logs() ->
    receive {pyport_test_log, _} -> flush_logs() after 0 -> ok end.
