%% @doc `pyport:reload_http/1' (docs/http.md "Reload"): a rolling,
%% graceful replacement of every worker of an HTTP pool, one at a time, so
%% that the pool keeps serving and no request is lost.
%%
%% For each worker: `erlang._http.park' hands its listening socket to a
%% holder process (the socket is never closed, so the connections in its
%% accept queue are not reset, as they would be by closing a SO_REUSEPORT
%% listener), stops accepting, finishes its requests in flight and ends
%% its keep-alive connections at their next response (`connection:
%% close'); `erlang._http.stop' runs lifespan shutdown; then the worker's
%% OS process is recycled, and the new one takes the held socket over
%% (`erlang._http._adopt') instead of binding anew, and serves the
%% connections that queued meanwhile.
-module(pyport_http_reload).

-export([reload/3, handoff_dir/1, remove_dir/1, install/0, recycle_request/1, recycle/3,
         stop_holder/1]).

%% How long a worker may take to let its connections end.
-define(GRACE_MS, 15000).

%% @doc Reloads HTTP pool `Name' (its workers, `Workers'; its hand-off
%% directory `Dir'), slot by slot.
-spec reload(atom(), [{pos_integer(), pid()} | {pos_integer(), pid(), pos_integer()}], binary()) ->
          ok | {error, term()}.
reload(Name, Workers, Dir) ->
    %% One reload or recycle at a time per pool.
    with_lock({{?MODULE, Name}, self()}, fun() -> reload_locked(Name, Workers, Dir) end).

%% global:trans/3 waits with a growing back-off (seconds): a waiting
%% replacement would lose to the ones asked for after it. Polled instead.
with_lock(Id, Fun) ->
    case global:set_lock(Id, [node()], 0) of
        true ->
            try Fun() after global:del_lock(Id, [node()]) end;
        false ->
            timer:sleep(20),
            with_lock(Id, Fun)
    end.

reload_locked(Name, Workers, Dir) ->
    %% The holder: a worker of a pool of its own (a worker's descendants
    %% end with it, so the leaving worker cannot hold its socket itself).
    Holder = list_to_atom(atom_to_list(Name) ++ "$reload"),
    gone(Holder, 50),
    _ = file:del_dir_r(Dir),
    Private = case file:make_dir(Dir) of
                  ok -> file:change_mode(Dir, 8#700);
                  {error, _} = E -> E
              end,
    case Private =:= ok andalso pyport:start_pool(Holder, #{size => 1}) of
        false ->
            {error, {reload_failed, Name, holder, {handoff_dir, Dir, Private}}};
        {ok, _} ->
            try
                case hold(Holder, Dir, 5) of
                    ok ->
                        each(Name, Workers);
                    {error, Why} ->
                        {error, {reload_failed, Name, holder, Why}}
                end
            after
                _ = pyport:stop_pool(Holder),
                remove_dir(Dir)
            end;
        {error, Why} ->
            {error, {reload_failed, Name, holder, Why}}
    end.

%% @doc Registers what a worker calls when it reached `max_requests'.
-spec install() -> ok.
install() ->
    case pyport_registry:is_registered(<<"pyport.http_recycle">>) of
        true -> ok;
        false -> pyport_registry:register(<<"pyport.http_recycle">>, ?MODULE, recycle_request)
    end.

%% @doc `[Pool, OsPid]' from a worker of HTTP pool `Pool' that served
%% `max_requests' HTTP requests: that worker is replaced as by
%% reload_http/1, in a process of its own (one replacement at a time per
%% pool). The worker's word is checked against what the node knows: the
%% calling worker (the one whose port the call came through,
%% pyport_callback:caller/0) must be that pool's worker with that OS pid.
%% Anything else fails the call (Python gets an `ErlangError') with
%% `{http_recycle_refused, Why}' and nothing is replaced.
-spec recycle_request([term()]) -> ok.
recycle_request(Args) ->
    case check_request(Args, pyport_callback:caller()) of
        {ok, Name, W, Dir} ->
            recycle(Name, W, Dir);
        {error, Why} ->
            erlang:error({http_recycle_refused, Why})
    end.

%% @doc Replaces worker `{Slot, Pid, OsPid}' of HTTP pool `Name' through
%% the listener hand-off, in a process of its own; a second ask for the
%% same OS process while one is pending ends at once. (max_requests from
%% the worker, max_rss from pyport_http_rss.)
-spec recycle(atom(), {pos_integer(), pid(), integer()}, binary()) -> ok.
recycle(Name, {_Slot, _Pid, OsPid} = W, Dir) ->
    _ = spawn(fun() ->
                      Lock = {{?MODULE, OsPid}, self()},
                      case global:set_lock(Lock, [node()], 0) of
                          true -> reload(Name, [W], Dir);
                          false -> ok
                      end
              end),
    ok.

check_request([Pool, OsPid], #{pool := CallerPool, slot := CallerSlot, os_pid := CallerOsPid})
  when is_binary(Pool), is_integer(OsPid) ->
    Name = case catch binary_to_existing_atom(Pool) of
               A when is_atom(A) -> A;
               _ -> undefined
           end,
    case {Name, pyport_http:handoff(Name), pyport:workers(Name)} of
        {undefined, _, _} ->
            {error, {no_http, Pool}};
        {_, {ok, Dir}, {ok, Workers}} ->
            case [{S, P, OsPid} || {S, P} <- Workers, catch pyport_worker:os_pid(P) =:= OsPid] of
                [] ->
                    {error, {not_a_worker, Name, OsPid}};
                [{S, _, _} = W] when Name =:= CallerPool, S =:= CallerSlot,
                                     OsPid =:= CallerOsPid ->
                    {ok, Name, W, Dir};
                [{S, _, _}] ->
                    %% A worker of another pool, or a sibling naming
                    %% another's OS pid.
                    {error, {not_the_caller, #{asked => {Name, S, OsPid},
                                               caller => {CallerPool, CallerSlot,
                                                          CallerOsPid}}}}
            end;
        _ ->
            {error, {no_http, Name}}
    end;
check_request([_, _], undefined) ->
    {error, no_calling_worker};
check_request(Args, _) ->
    {error, {badarg, Args}}.

%% The holder's worker may still be the previous reload's, stopping.
hold(Holder, Dir, Tries) ->
    case catch py:call(py:context(Holder, 1), 'erlang._http', hold, [Dir]) of
        {ok, true} ->
            ok;
        _ when Tries > 1 ->
            timer:sleep(100),
            hold(Holder, Dir, Tries - 1);
        Other ->
            {error, Other}
    end.

%% The previous reload's holder pool, stopped, is gone before a new one
%% of that name starts.
gone(Holder, Tries) ->
    _ = pyport:stop_pool(Holder),
    case lists:member(Holder, pyport:pools()) andalso Tries > 0 of
        true -> timer:sleep(50), gone(Holder, Tries - 1);
        false -> ok
    end.

each(_Name, []) ->
    ok;
each(Name, [{Slot, Pid, OsPid} | Rest]) ->
    case catch pyport_worker:os_pid(Pid) of
        OsPid -> each(Name, [{Slot, Pid} | Rest]);
        _ -> each(Name, Rest)  % replaced since it asked
    end;
each(Name, [{Slot, Pid} | Rest]) ->
    Ctx = py:context(Name, Slot),
    Grace = ?GRACE_MS,
    _ = py:call(Ctx, 'erlang._http', park, [Grace / 1000], #{}, #{timeout => Grace + 15000}),
    _ = py:call(Ctx, 'erlang._http', stop, [1.0], #{}, #{timeout => 10000}),
    try pyport_worker:recycle(Pid, 60000) of
        ok ->
            case py:call(Ctx, 'erlang._http', wait_serving, [], #{}, #{timeout => 30000}) of
                {ok, true} -> each(Name, Rest);
                Other -> {error, {reload_failed, Name, Slot, Other}}
            end
    catch
        exit:Why -> {error, {reload_failed, Name, Slot, Why}}
    end.

%% @doc The path of a private directory for pool `Name''s listener
%% hand-off: made (mode 0700) for the time of a reload only.
-spec handoff_dir(atom()) -> binary().
handoff_dir(Name) ->
    Base = case os:getenv("TMPDIR") of
               false -> "/tmp";
               "" -> "/tmp";
               T -> T
           end,
    Dir = filename:join(Base, lists:flatten(io_lib:format("pyport-http-~s-~s-~b",
                                                         [os:getpid(), Name,
                                                          erlang:unique_integer([positive])]))),
    unicode:characters_to_binary(Dir).

%% @doc Removes what handoff_dir/1 made.
-spec remove_dir(binary() | undefined) -> ok.
remove_dir(undefined) ->
    ok;
remove_dir(Dir) ->
    _ = file:del_dir_r(Dir),
    ok.

%% @doc Stops the holder pool of `Name''s reload, if one is running (the
%% HTTP pool stops).
-spec stop_holder(atom()) -> ok.
stop_holder(Name) ->
    case catch list_to_existing_atom(atom_to_list(Name) ++ "$reload") of
        Holder when is_atom(Holder) -> _ = pyport:stop_pool(Holder), ok;
        _ -> ok
    end.
