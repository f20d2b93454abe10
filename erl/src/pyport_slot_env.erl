%% @doc A pool's `env' that depends on the worker's slot: one GPU per
%% worker (`CUDA_VISIBLE_DEVICES'), a port or a scratch directory per slot.
%%
%% Three forms besides a fixed map or list of variables:
%% <ul>
%% <li>values with `{slot}' (the slot, 1..size) or `{index}' (the slot
%%   minus one, 0..size-1) in them, replaced per worker; this form is plain
%%   data, so it works from `sys.config':
%%   `#{"CUDA_VISIBLE_DEVICES" => "{index}"}';</li>
%% <li>`{Module, Function}': `Module:Function(Slot)' returns the variables
%%   (a map or list of pairs, as `env' takes them); also usable from
%%   `sys.config';</li>
%% <li>a fun of arity 1, called the same way (start_pool/2 only: a fun
%%   cannot be written in `sys.config').</li>
%% </ul>
%% A worker's gen_server resolves its environment once, when it starts;
%% its OS processes (restarts, recycles) all get that environment. A
%% function that fails or returns something `env' does not take fails the
%% worker's start with `{invalid_env, Slot, Why}'.
-module(pyport_slot_env).

-export([validate/1, resolve/2]).

-export_type([spec/0]).

-type vars() :: [{string(), string() | false}].
-type spec() :: vars() | {module(), atom()} | fun((pos_integer()) -> term()).

%% @doc Checks the `env' option (see the module doc); `error' if it is
%% none of the forms, or names a function that is not exported.
-spec validate(term()) -> {ok, spec()} | error.
validate({Module, Function} = MF) when is_atom(Module), is_atom(Function) ->
    _ = code:ensure_loaded(Module),
    case erlang:function_exported(Module, Function, 1) of
        true -> {ok, MF};
        false -> error
    end;
validate(Fun) when is_function(Fun, 1) ->
    {ok, Fun};
validate(Env) ->
    pyport_config:validate_env(Env).

%% @doc The variables of the worker in slot `Slot'.
-spec resolve(spec(), pos_integer()) -> {ok, vars()} | {error, {invalid_env, pos_integer(), term()}}.
resolve(Vars, Slot) when is_list(Vars) ->
    {ok, [{Name, fill(Value, Slot)} || {Name, Value} <- Vars]};
resolve({Module, Function}, Slot) ->
    from_function(fun() -> Module:Function(Slot) end, Slot);
resolve(Fun, Slot) when is_function(Fun, 1) ->
    from_function(fun() -> Fun(Slot) end, Slot).

from_function(Call, Slot) ->
    try Call() of
        Returned ->
            case pyport_config:validate_env(Returned) of
                {ok, Vars} -> {ok, Vars};
                error -> {error, {invalid_env, Slot, {bad_return, Returned}}}
            end
    catch
        Class:Reason ->
            {error, {invalid_env, Slot, {Class, Reason}}}
    end.

fill(false, _Slot) ->
    false;
fill(Value, Slot) ->
    S1 = string:replace(Value, "{slot}", integer_to_list(Slot), all),
    lists:flatten(string:replace(lists:flatten(S1), "{index}", integer_to_list(Slot - 1), all)).
