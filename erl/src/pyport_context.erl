%% @doc A dedicated context: a process that owns a pool of one worker (its
%% own OS process, its own interpreter and GIL), for erlang_python's
%% `py_context:new/1' and `start_link/2,3'.
%%
%% The process's pid is the context: `py:call(Ctx, ...)', `py:eval(Ctx,
%% ...)' and `py_context:*' route to its worker through {@link
%% pyport_contexts} without passing through this process. The worker lives
%% exactly as long as this process: {@link pyport_contexts} monitors it and
%% stops the pool however it ends (stop, crash, kill).
%%
%% Lifetime as erlang_python's: the process traps exits; a linked creator
%% (`start_link') that exits with `shutdown', `{shutdown, _}' or is killed
%% takes the context with it; one that exits `normal' or crashes leaves it
%% running until {@link stop/1}.
-module(pyport_context).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start/2, stop/1, pool/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(START_TIMEOUT_MS, 60000).
-define(STOP_TIMEOUT_MS, 5000).

-type opts() :: #{mode => worker | owngil, memory_limit => pos_integer(),
                  preload => iodata(), pool => map(), id => term()}.
-export_type([opts/0]).

%% @doc Starts a dedicated context; `link' links it to the caller.
-spec start(opts(), link | nolink) -> {ok, pid()} | {error, term()}.
start(Opts, Link) when is_map(Opts) ->
    case check(Opts) of
        {ok, PoolOpts} ->
            Args = {PoolOpts, maps:get(preload, Opts, undefined), self(), Link},
            %% Linked by the creator itself, not as a gen_server parent: a
            %% parent's exit would stop it whatever the reason.
            case gen_server:start(?MODULE, Args, [{timeout, ?START_TIMEOUT_MS}]) of
                {ok, Pid} when Link =:= link -> true = link(Pid), {ok, Pid};
                Other -> Other
            end;
        {error, _} = Error ->
            Error
    end;
start(Opts, _Link) ->
    {error, {invalid_options, Opts}}.

%% @doc Stops the context and its worker: `ok' (also when already gone);
%% a context that does not stop within 5 s is killed.
-spec stop(pid()) -> ok.
stop(Ctx) when is_pid(Ctx) ->
    Mon = erlang:monitor(process, Ctx),
    exit(Ctx, {shutdown, stop}),
    receive
        {'DOWN', Mon, process, _, _} -> ok
    after ?STOP_TIMEOUT_MS ->
            exit(Ctx, kill),
            receive {'DOWN', Mon, process, _, _} -> ok end
    end.

%% @doc The pool behind a dedicated context.
-spec pool(pid()) -> {ok, atom()} | {error, term()}.
pool(Ctx) ->
    case pyport_contexts:resolve(Ctx) of
        {ok, Pool, _Slot} -> {ok, Pool};
        {error, _} = Error -> Error
    end.

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init({map(), term(), pid(), link | nolink}) -> {ok, map()} | {stop, term()}.
init({PoolOpts, Preload, Creator, Link}) ->
    process_flag(trap_exit, true),
    case pyport_contexts:add_dedicated(self()) of
        {ok, Name} ->
            case pyport:start_pool(Name, PoolOpts) of
                {ok, _Sup} ->
                    preload(Name, Preload),
                    Parent = case Link of
                                 link -> Creator;
                                 nolink -> undefined
                             end,
                    {ok, #{pool => Name, parent => Parent}};
                {error, {pool_start_failed, _, Reason}} ->
                    {stop, Reason};
                {error, Reason} ->
                    {stop, Reason}
            end;
        {error, Reason} ->
            {stop, Reason}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()} | {stop, term(), map()}.
handle_info({'EXIT', _From, {shutdown, stop}}, State) ->
    {stop, normal, State};
handle_info({'EXIT', Parent, Reason}, #{parent := Parent} = State)
  when Reason =:= shutdown; Reason =:= kill; Reason =:= killed;
       is_tuple(Reason), element(1, Reason) =:= shutdown ->
    {stop, Reason, State};
handle_info({'EXIT', _From, _Reason}, State) ->
    %% A creator that ended normally or crashed leaves the context running.
    {noreply, State};
handle_info(_Msg, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), map()) -> ok.
terminate(_Reason, #{pool := Pool}) ->
    _ = pyport:stop_pool(Pool),
    ok.

%%%===================================================================
%%% Internals
%%%===================================================================

check(Opts) ->
    Base = maps:merge(maps:get(pool, Opts, #{}), #{size => 1}),
    case {maps:get(mode, Opts, worker), maps:get(memory_limit, Opts, undefined)} of
        {Mode, _} when Mode =/= worker, Mode =/= owngil ->
            {error, {invalid_mode, Mode}};
        {_, undefined} ->
            {ok, Base};
        {_, Bytes} when is_integer(Bytes), Bytes > 0 ->
            %% A worker is a process of its own: its memory limit is the
            %% OS process's (pool option max_memory).
            {ok, Base#{max_memory => Bytes}};
        {_, Bad} ->
            {error, {invalid_memory_limit, Bad}}
    end.

%% erlang_python runs preload code once in the context's globals and only
%% logs a failure.
preload(_Pool, undefined) ->
    ok;
preload(Pool, Code) ->
    case py:exec(Code, #{pool => Pool, shard => shared}) of
        ok -> ok;
        {error, Reason} -> ?LOG_WARNING("pyport context ~tp: preload failed: ~tp", [Pool, Reason])
    end.
