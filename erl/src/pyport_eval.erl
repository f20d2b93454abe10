%% @doc Python code from the public API: an expression evaluated ({@link
%% eval/3}) or statements run ({@link exec/2}), without a context (in the
%% calling process's own namespace on one worker, unless a shard, node or
%% cluster is asked for) or through one (the caller's namespace there, or
%% with `namespace => shared' the context's shared globals). Where the code
%% runs is {@link pyport_route}'s; bad arguments answer `{error, Reason}'.
-module(pyport_eval).

-export([eval/3, ctx_eval/4, exec/2, ctx_exec/3]).

-define(EVAL, 3).
-define(EXEC, 4).

-type result() :: {ok, term()} | {error, term()}.

%% @doc Evaluates `Code' with `Locals' (a map or `none').
-spec eval(py:code(), map() | none, py:opts()) -> result().
eval(Code, Locals, Opts) ->
    eval_on(fun() -> pyport_route:code_target(Opts) end, Code, Locals, Opts).

%% @doc {@link eval/3} through a context.
-spec ctx_eval(py:context(), py:code(), map() | none, term()) -> result().
ctx_eval(Ctx, Code, Locals, Opts) ->
    eval_on(fun() -> pyport_route:ctx_code_target(Ctx, Opts) end, Code, Locals, Opts).

%% @doc Runs the statements `Code': `ok' or `{error, Reason}'.
-spec exec(py:code(), py:opts()) -> ok | {error, term()}.
exec(Code, Opts) ->
    exec_on(fun() -> pyport_route:code_target(Opts) end, Code).

%% @doc {@link exec/2} through a context.
-spec ctx_exec(py:context(), py:code(), term()) -> ok | {error, term()}.
ctx_exec(Ctx, Code, Opts) ->
    exec_on(fun() -> pyport_route:ctx_code_target(Ctx, Opts) end, Code).

%% Route: where the code goes, its timeout and namespace (pyport_route).
eval_on(Route, Code, Locals, Opts) ->
    pyport_args:checked(
      fun() ->
              {Target, Timeout, Ns} = Route(),
              pyport_objects:call(Target, ?EVAL, pyport_args:eval_fields(Code, Locals, Ns),
                                  Timeout, Opts)
      end).

exec_on(Route, Code) ->
    case pyport_args:checked(
           fun() ->
                   {Target, Timeout, Ns} = Route(),
                   pyport_request:call(Target, ?EXEC, pyport_args:exec_fields(Code, Ns), Timeout)
           end) of
        {ok, _} -> ok;
        {error, _} = Error -> Error
    end.
