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

-export([reload/3, handoff_dir/1, remove_dir/1]).

%% How long a worker may take to let its connections end.
-define(GRACE_MS, 15000).

%% @doc Reloads HTTP pool `Name' (its workers, `Workers'; its hand-off
%% directory `Dir'), slot by slot.
-spec reload(atom(), [{pos_integer(), pid()}], binary()) -> ok | {error, term()}.
reload(Name, Workers, Dir) ->
    %% The holder: a worker of a pool of its own (a worker's descendants
    %% end with it, so the leaving worker cannot hold its socket itself).
    Holder = list_to_atom(atom_to_list(Name) ++ "$reload"),
    _ = pyport:stop_pool(Holder),
    case pyport:start_pool(Holder, #{size => 1}) of
        {ok, _} ->
            try
                {ok, true} = py:call(py:context(Holder, 1), 'erlang._http', hold, [Dir]),
                each(Name, Workers)
            after
                _ = pyport:stop_pool(Holder)
            end;
        {error, Why} ->
            {error, {reload_failed, Name, holder, Why}}
    end.

each(_Name, []) ->
    ok;
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

%% @doc A private directory (mode 0700) for pool `Name''s listener
%% hand-off.
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
    ok = file:make_dir(Dir),
    ok = file:change_mode(Dir, 8#700),
    unicode:characters_to_binary(Dir).

%% @doc Removes what handoff_dir/1 made.
-spec remove_dir(binary() | undefined) -> ok.
remove_dir(undefined) ->
    ok;
remove_dir(Dir) ->
    _ = file:del_dir_r(Dir),
    ok.
