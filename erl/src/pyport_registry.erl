%% @doc The Erlang functions Python may call (`erlang.call(Name, ...)',
%% `erlang.Name(...)'), by name.
%%
%% A named ETS table with read concurrency: any process looks a function up
%% without a message; this gen_server only owns the table and serialises
%% changes. Names are stored as binaries (an atom name is its text), since
%% Python names them with strings.
-module(pyport_registry).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/0, register/2, register/3, unregister/1, lookup/1, is_registered/1,
         call/2, names/0]).
-export([init/1, handle_call/3, handle_cast/2]).

-export_type([name/0, result/0]).

-define(TAB, ?MODULE).

-type name() :: atom() | binary() | string().
-type callable() :: fun(([term()]) -> term()) | {module(), atom()}.
%% What calling a registered function gives: its value, or why there is none.
-type result() :: {ok, term()}
                | {error, {unknown_function, binary()}}
                | {error, {erlang_function_failed, binary(), {error | exit | throw, term()}}}.

%% @doc Starts the registry (pyport_sup does, before any pool).
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Registers `Fun' under `Name'; Python's arguments reach it as one
%% list: `erlang.call("add", 1, 2)' runs `Fun([1, 2])'. Replaces an earlier
%% registration of the same name.
-spec register(name(), fun(([term()]) -> term())) -> ok | {error, term()}.
register(Name, Fun) when is_function(Fun, 1) ->
    change(Name, fun(Key) -> {register, Key, Fun} end);
register(_Name, Fun) ->
    {error, {invalid_function, Fun}}.

%% @doc Registers `Module:Function/1' under `Name' (called with the list of
%% Python's arguments).
-spec register(name(), module(), atom()) -> ok | {error, term()}.
register(Name, Module, Function) when is_atom(Module), is_atom(Function) ->
    change(Name, fun(Key) -> {register, Key, {Module, Function}} end);
register(_Name, Module, Function) ->
    {error, {invalid_function, {Module, Function}}}.

%% @doc Removes the function registered under `Name' (ok if there is none).
-spec unregister(name()) -> ok | {error, term()}.
unregister(Name) ->
    change(Name, fun(Key) -> {unregister, Key} end).

%% @doc The function registered under `Name'.
-spec lookup(name()) -> {ok, callable()} | error.
lookup(Name) ->
    try ets:lookup(?TAB, key(Name)) of
        [{_, Callable}] -> {ok, Callable};
        [] -> error
    catch
        error:_ -> error       % no registry running, or not a name
    end.

%% @doc Whether a function is registered under `Name'.
-spec is_registered(name()) -> boolean().
is_registered(Name) ->
    lookup(Name) =/= error.

%% @doc Calls the function registered under `Name' with `Args', in the
%% calling process; a crash is returned, not raised.
-spec call(name(), [term()]) -> result().
call(Name, Args) ->
    case lookup(Name) of
        {ok, Callable} ->
            try {ok, apply_callable(Callable, Args)}
            catch Class:Reason:Stack ->
                    ?LOG_DEBUG("pyport: Erlang function ~ts called from Python failed: ~p:~p~n~p",
                               [key(Name), Class, Reason, Stack], #{domain => [pyport]}),
                    {error, {erlang_function_failed, key(Name), {Class, Reason}}}
            end;
        error ->
            {error, {unknown_function, safe_key(Name)}}
    end.

%% @doc The registered names.
-spec names() -> [binary()].
names() ->
    lists:sort([Name || {Name, _} <- ets:tab2list(?TAB)]).

apply_callable({M, F}, Args) -> M:F(Args);
apply_callable(Fun, Args) -> Fun(Args).

%%%===================================================================
%%% gen_server
%%%===================================================================

%% @private
-spec init([]) -> {ok, ets:tid() | atom()}.
init([]) ->
    {ok, ets:new(?TAB, [named_table, protected, set, {read_concurrency, true}])}.

%% @private
-spec handle_call(term(), gen_server:from(), atom()) -> {reply, ok | {error, term()}, atom()}.
handle_call({register, Key, Callable}, _From, Tab) ->
    true = ets:insert(Tab, {Key, Callable}),
    {reply, ok, Tab};
handle_call({unregister, Key}, _From, Tab) ->
    true = ets:delete(Tab, Key),
    {reply, ok, Tab};
handle_call(_Request, _From, Tab) ->
    {reply, {error, unknown_call}, Tab}.

%% @private
-spec handle_cast(term(), atom()) -> {noreply, atom()}.
handle_cast(_Msg, Tab) ->
    {noreply, Tab}.

%%%===================================================================
%%% Internals
%%%===================================================================

change(Name, Request) ->
    try key(Name) of
        Key ->
            try gen_server:call(?MODULE, Request(Key))
            catch exit:{noproc, _} -> {error, pyport_not_started}
            end
    catch
        error:{invalid_name, _} = Why -> {error, Why}
    end.

key(A) when is_atom(A) -> atom_to_binary(A, utf8);
key(B) when is_binary(B) -> B;
key(L) when is_list(L) ->
    case unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> erlang:error({invalid_name, L})
    end;
key(Other) -> erlang:error({invalid_name, Other}).

safe_key(Name) ->
    try key(Name) catch error:_ -> iolist_to_binary(io_lib:format("~tp", [Name])) end.
