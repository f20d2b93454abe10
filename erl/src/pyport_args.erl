%% @doc The arguments of a request, checked and put in the shape the worker
%% reads (PROTOCOL.md): module, function and keyword names as UTF-8
%% binaries, code as a binary. A bad argument is thrown as `{error,
%% Reason}' (`invalid_name', `invalid_args', `invalid_kwargs',
%% `invalid_kwarg', `invalid_code'); {@link checked/1} turns the throw into
%% the answer, so the public API answers it like any other error.
-module(pyport_args).

-export([checked/1, call_fields/4, eval_fields/3, exec_fields/2, name/1, safe_name/1,
         code/1]).

%% @doc Runs `Fun'; a thrown `{error, Reason}' is returned as such.
-spec checked(fun(() -> Result)) -> Result | {error, term()}.
checked(Fun) ->
    try Fun()
    catch throw:{error, _} = Error -> Error
    end.

%% @doc The fields of a CALL frame; throws `{error, Reason}' for a bad
%% argument.
-spec call_fields(py:name(), py:name(), [term()], map()) -> [term()].
call_fields(Module, Function, Args, Kwargs) when is_list(Args), is_map(Kwargs) ->
    [name(Module), name(Function), Args, kwargs(Kwargs)];
call_fields(_Module, _Function, Args, Kwargs) when is_list(Args) ->
    throw({error, {invalid_kwargs, Kwargs}});
call_fields(_Module, _Function, Args, _Kwargs) ->
    throw({error, {invalid_args, Args}}).

%% @doc The fields of an EVAL frame in namespace `Ns'.
-spec eval_fields(py:code(), map() | none, non_neg_integer()) -> [term()].
eval_fields(Code, Locals, Ns) ->
    [code(Code), Locals, Ns].

%% @doc The fields of an EXEC frame in namespace `Ns'.
-spec exec_fields(py:code(), non_neg_integer()) -> [term()].
exec_fields(Code, Ns) ->
    [code(Code), Ns].

%% @doc A module, function or method name as a binary.
-spec name(py:name()) -> binary().
name(A) when is_atom(A) -> atom_to_binary(A, utf8);
name(B) when is_binary(B) -> B;
name(L) when is_list(L) ->
    case unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> throw({error, {invalid_name, L}})
    end;
name(Other) -> throw({error, {invalid_name, Other}}).

%% @doc A name to look a registration up by; never throws (a bad name
%% matches nothing, and the call itself then answers `invalid_name').
-spec safe_name(term()) -> atom() | binary().
safe_name(N) when is_atom(N); is_binary(N) -> N;
safe_name(N) -> try name(N) catch throw:_ -> <<>> end.

%% @doc Python code as a binary.
-spec code(py:code()) -> binary().
code(B) when is_binary(B) -> B;
code(L) when is_list(L) ->
    try unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> throw({error, {invalid_code, L}})
    catch
        error:badarg -> throw({error, {invalid_code, L}})
    end;
code(Other) -> throw({error, {invalid_code, Other}}).

%% Python needs str keyword names.
kwargs(Kwargs) ->
    maps:fold(fun(K, V, Acc) when is_atom(K) -> Acc#{atom_to_binary(K, utf8) => V};
                 (K, V, Acc) when is_binary(K) -> Acc#{K => V};
                 (K, _V, _Acc) -> throw({error, {invalid_kwarg, K}})
              end, #{}, Kwargs).
