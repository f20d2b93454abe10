%% @doc Python `logging' into the Erlang `logger'.
%%
%% `py:configure_logging/0,1' installs `erlang.ErlangHandler' on the root
%% logger of every worker (running ones now, restarted and new ones at their
%% start), at the Python level matching an Erlang level. Records arrive at
%% the mapped `logger' level with the worker (pool, slot, OS pid) and the
%% Python logger, module, function and line as metadata, in the domain
%% `[pyport, python]'.
-module(pyport_logging).

-export([configure/1, python_level/0, level/1]).

-define(KEY, {?MODULE, level}).

%% @doc Options: `level' (an Erlang logger level, default `info': records
%% below it are not even sent). Returns the workers it could not reach.
-spec configure(#{level => logger:level()}) -> ok | {error, term()}.
configure(Opts) when is_map(Opts) ->
    case maps:get(level, Opts, info) of
        Level when Level =:= emergency; Level =:= alert; Level =:= critical;
                   Level =:= error; Level =:= warning; Level =:= notice;
                   Level =:= info; Level =:= debug; Level =:= all ->
            Python = python_name(Level),
            persistent_term:put(?KEY, Python),
            Failed = [{Pool, Slot, Why}
                      || Pool <- pyport:pools(),
                         {ok, Workers} <- [pyport:workers(Pool)],
                         {Slot, _} <- Workers,
                         {error, Why} <- [setup(Pool, Slot, Python)]],
            case Failed of
                [] -> ok;
                _ -> {error, {not_configured, Failed}}
            end;
        Other ->
            {error, {invalid_option, level, Other}}
    end;
configure(Other) ->
    {error, {bad_option, Other}}.

%% @doc The Python level name workers are set up with, or undefined.
-spec python_level() -> binary() | undefined.
python_level() ->
    persistent_term:get(?KEY, undefined).

%% @doc The logger level for a level name from a worker (LOG frames and
%% Python records); an unknown name is `warning', so nothing is lost.
-spec level(binary()) -> logger:level().
level(<<"debug">>) -> debug;
level(<<"info">>) -> info;
level(<<"notice">>) -> notice;
level(<<"warning">>) -> warning;
level(<<"error">>) -> error;
level(<<"critical">>) -> critical;
level(_) -> warning.

setup(Pool, Slot, Level) ->
    case pyport_request:call({slot, Pool, Slot}, 1,
                             [<<"erlang._logging">>, <<"setup_logging">>, [Level], #{}], default) of
        {ok, _} -> ok;
        {error, _} = Error -> Error
    end.

python_name(debug) -> <<"DEBUG">>;
python_name(all) -> <<"DEBUG">>;
python_name(info) -> <<"INFO">>;
python_name(notice) -> <<"INFO">>;
python_name(warning) -> <<"WARNING">>;
python_name(error) -> <<"ERROR">>;
python_name(_) -> <<"CRITICAL">>.
