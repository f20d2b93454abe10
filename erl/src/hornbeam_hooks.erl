%% @doc Hornbeam's `hornbeam_hooks' on pyport: a thin facade over {@link
%% pyport_hooks}, which holds the registry (hooks registered by Python
%% workers included), runs async tasks and streams, and bounds them.
%%
%% ```
%% ok = hornbeam_hooks:reg(<<"calc">>, fun(<<"add">>, [A, B], _Kw) -> A + B end),
%% {ok, 3} = hornbeam_hooks:execute(<<"calc">>, <<"add">>, [1, 2], #{}),
%% {ok, Id} = hornbeam_hooks:execute_async(<<"calc">>, <<"add">>, [1, 2], #{}),
%% {ok, 3} = hornbeam_hooks:await_result(Id, 5000).
%% '''
-module(hornbeam_hooks).

-export([reg/2, reg/4, reg_python/1, unreg/1, find/1, all/0,
         execute/4, execute_async/4, await_result/2, stream/4]).
-export([ok/1, error/1, stream_from_list/1, stream_from_fun/1, stream_chunk/1, stream_done/0]).

%% @doc Registers `Handler(Action, Args, Kwargs)' under `Path'.
-spec reg(binary(), fun((binary(), list(), map()) -> term())) -> ok | {error, term()}.
reg(Path, Handler) ->
    pyport_hooks:reg(Path, Handler).

%% @doc Registers `Module:Function(Action, Args, Kwargs)' under `Path'.
-spec reg(binary(), module(), atom(), 3) -> ok | {error, term()}.
reg(Path, Module, Function, 3) ->
    pyport_hooks:reg(Path, {Module, Function}).

%% @doc Marks `Path' as a Python hook: run by a worker of the `default'
%% pool, which uses a hook registered there or imports `"module:name"'.
-spec reg_python(binary()) -> ok | {error, term()}.
reg_python(Path) ->
    pyport_hooks:reg_python(Path).

%% @doc Removes the hook `Path', whoever registered it.
-spec unreg(binary()) -> ok | {error, term()}.
unreg(Path) ->
    pyport_hooks:unreg(Path).

%% @doc The handler of `Path': `{ok, {fun_handler, Fun}}', `{ok, {mfa, M,
%% F}}', `{ok, {python_handler}}', or `not_found'.
-spec find(binary()) -> {ok, tuple()} | not_found.
find(Path) ->
    case pyport_hooks:find(Path) of
        {ok, {python, _Providers}} -> {ok, {python_handler}};
        {ok, python_any} -> {ok, {python_handler}};
        Found -> Found
    end.

%% @doc Every registered path.
-spec all() -> [binary()].
all() ->
    pyport_hooks:all().

%% @doc Runs `Action' of `Path': `{ok, Value}' or `{error, Reason}' (an
%% Erlang handler's exit: `{error, {exit, Reason}}'; a Python handler's
%% exception: `{error, {Type, Message}}').
-spec execute(binary(), binary(), list(), map()) -> {ok, term()} | {error, term()}.
execute(Path, Action, Args, Kwargs) ->
    pyport_hooks:execute(Path, Action, Args, Kwargs).

%% @doc Starts {@link execute/4}: `{ok, TaskId}' (a binary).
-spec execute_async(binary(), binary(), list(), map()) -> {ok, binary()} | {error, term()}.
execute_async(Path, Action, Args, Kwargs) ->
    pyport_hooks:execute_async(Path, Action, Args, Kwargs).

%% @doc The outcome of a task, waiting at most `Timeout' ms.
-spec await_result(binary(), timeout()) -> {ok, term()} | {error, term()}.
await_result(TaskId, Timeout) ->
    pyport_hooks:await_result(TaskId, Timeout).

%% @doc Streams `Action' of `Path': `{ok, Next}'; `Next()' gives `{value,
%% Chunk}' until `done' (or `{error, Reason}').
-spec stream(binary(), binary(), list(), map()) ->
          {ok, fun(() -> pyport_hooks:next())} | {error, term()}.
stream(Path, Action, Args, Kwargs) ->
    pyport_hooks:stream(Path, Action, Args, Kwargs).

%% @doc `{ok, Result}'.
-spec ok(term()) -> {ok, term()}.
ok(Result) ->
    {ok, Result}.

%% @doc `{error, Reason}'.
-spec error(term()) -> {error, term()}.
error(Reason) ->
    {error, Reason}.

%% @doc A stream of the items of `List', for an Erlang handler to return.
%% Its `Next' runs in the process that called the handler.
-spec stream_from_list(list()) -> {ok, fun(() -> {value, term()} | done)}.
stream_from_list(List) when is_list(List) ->
    Key = {?MODULE, make_ref()},
    put(Key, List),
    {ok, fun() ->
                 case get(Key) of
                     [Item | Rest] -> put(Key, Rest), {value, Item};
                     _ -> erase(Key), done
                 end
         end}.

%% @doc A stream whose `Fun()' gives `{value, Chunk}' or `done'.
-spec stream_from_fun(fun(() -> {value, term()} | done)) -> {ok, fun(() -> term())}.
stream_from_fun(Fun) when is_function(Fun, 0) ->
    {ok, Fun}.

%% @doc One chunk, from a stream's `Fun'.
-spec stream_chunk(term()) -> {value, term()}.
stream_chunk(Value) ->
    {value, Value}.

%% @doc The end, from a stream's `Fun'.
-spec stream_done() -> done.
stream_done() ->
    done.
