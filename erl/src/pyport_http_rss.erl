%% @doc `max_rss' of an HTTP pool (docs/http.md "Reload"): a watcher
%% process per pool reads each worker's resident set size from /proc and
%% replaces a worker above the limit as `reload_http/1' does, through the
%% listener hand-off (pyport_http_reload), so that the connections queued
%% on its listener are served by its replacement instead of being reset.
%%
%% An HTTP worker answers HTTP itself, not the pool's requests, so the
%% pool's own check (after each answer to a pool request) would rarely
%% run, and its recycle closes the listener with the OS process, as a
%% crash does. The pool therefore never sees `max_rss'; this watcher has it.
-module(pyport_http_rss).

-include_lib("kernel/include/logger.hrl").

-export([split/1, start/4, stop/1]).

%% How often each worker's RSS is read.
-define(INTERVAL_MS, 1000).
%% pyport_config's bound of a pool limit.
-define(MAX_LIMIT, (1 bsl 62)).

%% @doc Takes a valid `max_rss' out of pool options `Pool': `{MaxRss |
%% infinity, PoolWithout}'. A bad value stays, for the pool to refuse with
%% its own error.
-spec split(map()) -> {pos_integer() | infinity, map()}.
split(#{max_rss := N} = Pool) when is_integer(N), N > 0, N =< ?MAX_LIMIT ->
    {N, maps:remove(max_rss, Pool)};
split(#{max_rss := infinity} = Pool) ->
    {infinity, maps:remove(max_rss, Pool)};
split(Pool) ->
    {infinity, Pool}.

%% @doc Starts the watcher of HTTP pool `Name' (its supervisor `PoolPid',
%% its hand-off directory `Dir'); it ends with the pool. `infinity': none.
-spec start(atom(), pid(), pos_integer() | infinity, binary()) -> pid() | undefined.
start(_Name, _PoolPid, infinity, _Dir) ->
    undefined;
start(Name, PoolPid, MaxRss, Dir) ->
    spawn(fun() ->
                  Ref = monitor(process, PoolPid),
                  loop(Name, Ref, MaxRss, Dir)
          end).

%% @doc Stops a watcher (start/4's result).
-spec stop(pid() | undefined) -> ok.
stop(undefined) ->
    ok;
stop(Pid) ->
    exit(Pid, kill),
    ok.

loop(Name, Ref, MaxRss, Dir) ->
    receive
        {'DOWN', Ref, process, _, _} -> ok
    after ?INTERVAL_MS ->
            case pyport:workers(Name) of
                {ok, Workers} ->
                    lists:foreach(fun(W) -> check(Name, W, MaxRss, Dir) end, Workers),
                    loop(Name, Ref, MaxRss, Dir);
                {error, _} ->
                    ok  % the pool is gone
            end
    end.

check(Name, {Slot, Pid}, MaxRss, Dir) ->
    case catch pyport_worker:os_pid(Pid) of
        OsPid when is_integer(OsPid) ->
            case pyport_os:rss_bytes(OsPid) of
                Rss when is_integer(Rss), Rss > MaxRss ->
                    ?LOG_INFO("pyport: HTTP pool ~p worker ~b (OS pid ~b) uses ~b bytes, "
                              "above max_rss ~b: replaced through the listener hand-off",
                              [Name, Slot, OsPid, Rss, MaxRss],
                              #{pyport_pool => Name, pyport_slot => Slot, os_pid => OsPid,
                                domain => [pyport]}),
                    %% One pending replacement per OS process: asked again
                    %% at the next round while it runs, nothing happens.
                    pyport_http_reload:recycle(Name, {Slot, Pid, OsPid}, Dir);
                _ ->
                    ok
            end;
        _ ->
            ok  % between OS processes
    end.
