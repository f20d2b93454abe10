%% @doc What every worker runs before it serves, beyond its pool's own
%% `imports' and `init_code': the node-wide imports and `sys.path' entries
%% of `py_import', the preload code of `py_preload', and venvs (the pool
%% option `venv', `py:activate_venv/1'). See docs/channels.md.
%%
%% The records live in `persistent_term' (they change rarely and are read
%% at every worker start). A change applies at once to the workers that
%% run ({@link everywhere/2}) and, through {@link first_steps/1} and
%% {@link later_steps/1}, which `pyport_worker' adds to a new OS process's
%% start, to every worker started later, restarts included. A step of
%% these records that fails in a later worker is logged (the worker's
%% stderr) and the worker starts anyway; the pool's own `venv' failing is a
%% start error (a configuration error).
-module(pyport_preload).

-export([first_steps/1, later_steps/2, everywhere/3, in_pool/4, python_str/1]).
-export([ensure_imported/2, add_paths_now/1, venv_src/1]).
-export([imports/0, add_import/2, clear_imports/0, paths/0, add_paths/1, clear_paths/0,
         code/0, set_code/1, venv/1, set_venv/2]).

-export_type([step/0]).

-define(KEY, {?MODULE, records}).
-define(EXEC, 4).

%% A start step for pyport_worker: a tag naming it in errors, and source.
-type step() :: {term(), binary()}.
-type records() :: #{imports := [{binary(), binary() | all}], paths := [binary()],
                     code := binary() | undefined, venvs := #{atom() => binary()}}.

%% @doc Steps before the pool's own imports: the pool's `venv' (refused
%% when it was made for another Python), then the added `sys.path' entries.
-spec first_steps(map()) -> [step()].
first_steps(Opts) ->
    Venv = case maps:get(venv, Opts, undefined) of
               undefined -> [];
               Dir -> [{venv, venv_src(Dir)}]
           end,
    Venv ++ [{{path, P}, tolerant(<<"py_import:add_path">>, path_src(P))}
             || P <- paths(), not sandboxed(Opts)].

%% @doc Steps after the pool's own: the recorded imports, a venv activated
%% for the pool with `py:activate_venv/1', the preload code. A sandboxed
%% pool runs only what its own configuration names.
-spec later_steps(atom(), map()) -> [step()].
later_steps(Pool, Opts) ->
    case sandboxed(Opts) of
        true -> [];
        false -> later_steps(Pool)
    end.

later_steps(Pool) ->
    Venv = case venv(Pool) of
               undefined -> [];
               Dir -> [{activate_venv, tolerant(<<"py:activate_venv">>, venv_src(Dir))}]
           end,
    [{{import, M}, tolerant(<<"py_import:ensure_imported">>, import_src(M, F))}
     || {M, F} <- imports()]
        ++ Venv
        ++ [{preload, tolerant(<<"py_preload">>, preload_src(C))} || C <- [code()], C =/= undefined].

%% @doc Runs `Code' (statements, in each worker's shared namespace) in
%% every worker of `Pools' (`all': every pool that is not sandboxed),
%% concurrently: `ok', or the failures by pool and slot.
-spec everywhere(all | [atom()], binary(), timeout()) ->
          ok | {error, [{atom(), pos_integer(), term()}]}.
everywhere(all, Code, Timeout) ->
    everywhere([P || P <- pyport:pools(), not sandboxed(P)], Code, Timeout);
everywhere(Pools, Code, Timeout) ->
    Results = lists:append([in_pool(Pool, ?EXEC, [Code, 0], Timeout) || Pool <- Pools]),
    case [{Pool, Slot, E} || {Pool, Slot, {error, _} = E} <- Results] of
        [] -> ok;
        Errors -> {error, Errors}
    end.

%% @doc A request to every worker of a pool, concurrently: the results by
%% slot.
-spec in_pool(atom(), pos_integer(), [term()], timeout()) -> [{atom(), pos_integer(), term()}].
in_pool(Pool, Kind, Fields, Timeout) ->
    case pyport:workers(Pool) of
        {ok, Workers} ->
            Handles = [{Slot, pyport_request:start({slot, Pool, Slot}, Kind, Fields, Timeout)}
                       || {Slot, _} <- Workers],
            [{Pool, Slot, pyport_request:await(H)} || {Slot, H} <- Handles];
        {error, _} = Error ->
            [{Pool, 0, Error}]
    end.

%% A sandboxed pool (by its options or its name) runs only what its own
%% configuration names: node-wide imports, paths and preload code stay out.
sandboxed(#{sandbox := Sandbox}) -> Sandbox =/= false;
sandboxed(Opts) when is_map(Opts) -> false;
sandboxed(Pool) when is_atom(Pool) ->
    case pyport_pool:info(Pool) of
        {ok, #{opts := Opts}} -> sandboxed(Opts);
        _ -> false
    end.

%% @doc Imports `M' (and checks `M.F') in every worker now; recorded for
%% later workers only if it worked everywhere.
-spec ensure_imported(binary(), binary() | all) ->
          ok | {error, main_not_cacheable | [{atom(), pos_integer(), term()}]}.
ensure_imported(<<"__main__">>, _) ->
    {error, main_not_cacheable};
ensure_imported(M, F) ->
    case everywhere(all, import_src(M, F), 30000) of
        ok -> add_import(M, F);
        Error -> Error
    end.

%% @doc Records `sys.path' entries and puts them first in every worker now
%% (the first of `Ps' ends up first).
-spec add_paths_now([binary()]) -> ok | {error, [{atom(), pos_integer(), term()}]}.
add_paths_now(Ps) ->
    ok = add_paths(Ps),
    everywhere(all, iolist_to_binary([path_src(P) || P <- lists:reverse(Ps)]), 30000).

%%%===================================================================
%%% Records
%%%===================================================================

-spec imports() -> [{binary(), binary() | all}].
imports() -> maps:get(imports, records()).

-spec add_import(binary(), binary() | all) -> ok.
add_import(M, F) ->
    update(fun(#{imports := I} = R) ->
                   case lists:member({M, F}, I) of
                       true -> R;
                       false -> R#{imports := I ++ [{M, F}]}
                   end
           end).

-spec clear_imports() -> ok.
clear_imports() -> update(fun(R) -> R#{imports := []} end).

-spec paths() -> [binary()].
paths() -> maps:get(paths, records()).

-spec add_paths([binary()]) -> ok.
add_paths(Ps) ->
    update(fun(#{paths := Old} = R) -> R#{paths := Old ++ [P || P <- Ps, not lists:member(P, Old)]} end).

-spec clear_paths() -> ok.
clear_paths() -> update(fun(R) -> R#{paths := []} end).

-spec code() -> binary() | undefined.
code() -> maps:get(code, records()).

-spec set_code(binary() | undefined) -> ok.
set_code(Code) -> update(fun(R) -> R#{code := Code} end).

-spec venv(atom()) -> binary() | undefined.
venv(Pool) -> maps:get(Pool, maps:get(venvs, records()), undefined).

-spec set_venv(atom(), binary() | undefined) -> ok.
set_venv(Pool, undefined) -> update(fun(#{venvs := V} = R) -> R#{venvs := maps:remove(Pool, V)} end);
set_venv(Pool, Dir) -> update(fun(#{venvs := V} = R) -> R#{venvs := V#{Pool => Dir}} end).

-spec records() -> records().
records() ->
    persistent_term:get(?KEY, #{imports => [], paths => [], code => undefined, venvs => #{}}).

%% One writer at a time (a read-modify-write of the whole record).
update(Fun) ->
    global:trans({?MODULE, self()},
                 fun() -> persistent_term:put(?KEY, Fun(records())) end, [node()]),
    ok.

%%%===================================================================
%%% Python source
%%%===================================================================

%% @doc A Python expression for the text `Bin' that is safe whatever it
%% holds (no quoting to get wrong).
-spec python_str(binary()) -> binary().
python_str(Bin) ->
    <<"bytes.fromhex('", (binary:encode_hex(Bin))/binary, "').decode('utf-8', 'surrogateescape')">>.

path_src(P) ->
    <<"import sys\n_p = ", (python_str(P))/binary, "\n"
      "if _p in sys.path: sys.path.remove(_p)\n"
      "sys.path.insert(0, _p)\ndel _p\n">>.

import_src(M, F) ->
    Check = case F of
                all -> <<>>;
                _ -> <<"getattr(_m, ", (python_str(F))/binary, ")\n">>
            end,
    <<"import importlib\n_m = importlib.import_module(", (python_str(M))/binary, ")\n",
      Check/binary, "del _m\n">>.

preload_src(Code) ->
    <<"exec(compile(", (python_str(Code))/binary, ", '<py_preload>', 'exec'), globals())\n">>.

%% @doc Python that activates the venv `Dir' (erlang._venv), raising
%% when it cannot be used by this worker's Python.
-spec venv_src(binary()) -> binary().
venv_src(Dir) ->
    <<"import erlang._venv\nerlang._venv.activate(", (python_str(Dir))/binary, ")\n">>.

%% A later step never stops a worker from starting: its failure is
%% written to the worker's stderr (the node's log).
tolerant(What, Src) ->
    <<"try:\n    exec(compile(", (python_str(Src))/binary, ", '<pyport>', 'exec'), globals())\n"
      "except Exception as _e:\n"
      "    import sys\n"
      "    print('pyport: ' + ", (python_str(What))/binary, " + ' failed in this worker: ' + repr(_e),"
      " file=sys.stderr)\n">>.
