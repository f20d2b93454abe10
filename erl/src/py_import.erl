%% @doc erlang_python's `py_import': modules imported and `sys.path'
%% entries added in every worker of every pool that is not sandboxed, now
%% and in every worker started later (restarts included). A thin facade over {@link
%% pyport_preload}; see docs/channels.md.
%%
%% ```
%% ok = py_import:add_path("/srv/app"),
%% ok = py_import:ensure_imported(myapp),
%% true = py_import:is_imported(myapp).
%% '''
-module(py_import).

-export([ensure_imported/1, ensure_imported/2, is_imported/1, is_imported/2,
         all_imports/0, import_list/0, clear_imports/0,
         add_path/1, add_paths/1, all_paths/0, clear_paths/0, is_path_added/1]).

-type name() :: atom() | binary() | string().

%% @doc Imports `Module' in every worker now and records it for new ones.
%% An import that fails anywhere is returned (and not recorded).
-spec ensure_imported(name()) -> ok | {error, term()}.
ensure_imported(Module) ->
    ensure(bin(Module), all).

%% @doc Imports `Module' and checks it has `Function', everywhere.
-spec ensure_imported(name(), name()) -> ok | {error, term()}.
ensure_imported(Module, Function) ->
    ensure(bin(Module), bin(Function)).

ensure(M, F) ->
    pyport_preload:ensure_imported(M, F).

%% @doc Whether `Module' was recorded (by itself or for a function).
-spec is_imported(name()) -> boolean().
is_imported(Module) ->
    M = bin(Module),
    lists:keymember(M, 1, pyport_preload:imports()).

%% @doc Whether `Module:Function' (or the whole module) was recorded.
-spec is_imported(name(), name()) -> boolean().
is_imported(Module, Function) ->
    M = bin(Module),
    I = pyport_preload:imports(),
    lists:member({M, bin(Function)}, I) orelse lists:member({M, all}, I).

%% @doc `[{ModBin, FuncBin | all}]', in the order recorded.
-spec all_imports() -> [{binary(), binary() | all}].
all_imports() ->
    pyport_preload:imports().

%% @doc `{ok, #{ModBin => [FuncBin]}}' (`[]' for a whole module).
-spec import_list() -> {ok, #{binary() => [binary()]}}.
import_list() ->
    {ok, lists:foldl(fun({M, all}, Acc) -> maps:update_with(M, fun(L) -> L end, [], Acc);
                        ({M, F}, Acc) -> maps:update_with(M, fun(L) -> L ++ [F] end, [F], Acc)
                     end, #{}, pyport_preload:imports())}.

%% @doc Forgets the records (running workers keep what they imported).
-spec clear_imports() -> ok.
clear_imports() ->
    pyport_preload:clear_imports().

%% @doc Puts `Path' at the front of `sys.path' everywhere, now and later.
-spec add_path(name()) -> ok | {error, term()}.
add_path(Path) ->
    add_paths([Path]).

%% @doc {@link add_path/1} for several (the first ends up first).
-spec add_paths([name()]) -> ok | {error, term()}.
add_paths(Paths) ->
    pyport_preload:add_paths_now([bin(P) || P <- Paths]).

%% @doc The added paths, in insertion order.
-spec all_paths() -> [binary()].
all_paths() ->
    pyport_preload:paths().

%% @doc Forgets the added paths (running workers keep them).
-spec clear_paths() -> ok.
clear_paths() ->
    pyport_preload:clear_paths().

-spec is_path_added(name()) -> boolean().
is_path_added(Path) ->
    lists:member(bin(Path), pyport_preload:paths()).

bin(A) when is_atom(A) -> atom_to_binary(A, utf8);
bin(B) when is_binary(B) -> B;
bin(L) when is_list(L) -> unicode:characters_to_binary(L).
