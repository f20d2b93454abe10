%% @doc Validation of pyport's configuration: the `pools' application
%% environment and the options of each pool.
%%
%% Every key is checked; a mistake is reported with the pool, the key and
%% the value, so a bad `sys.config' stops `application:start(pyport)' with a
%% reason a person can act on. See docs/configuration.md.
-module(pyport_config).

-export([pools/0, validate_pools/1, validate_pool/2, defaults/0, max_state_entries/0,
         event_loops/0, validate_event_loops/2, max_new_atoms/0]).
%% Shared with pyport_sandbox, which checks the `sandbox' option.
-export([to_binary/1, env_name/1]).
%% The bounds of integer options (docs/configuration.md).
-export([max_value/1]).
%% Per-slot environments, resolved by each worker (pyport_slot_env).
-export([validate_env/1]).

-export_type([pool_name/0, pool_opts/0, error_reason/0]).

-type pool_name() :: atom().
%% A validated pool configuration: every key present.
-type pool_opts() :: #{size := pos_integer(),
                       %% An elastic pool's bounds; `undefined' for a fixed one.
                       min := pos_integer() | undefined,
                       max := pos_integer() | undefined,
                       idle_timeout := pos_integer(),
                       python_path := [binary()],
                       max_frame_size := pos_integer(),
                       call_timeout := timeout(),
                       start_timeout := pos_integer(),
                       worker := file:filename_all(),
                       env := pyport_slot_env:spec(),
                       cd := binary() | undefined,
                       imports := [binary()],
                       init_code := binary() | undefined,
                       venv := binary() | undefined,
                       max_inflight := pos_integer() | infinity,
                       %% Per-process eval/exec namespaces one worker holds
                       %% (pyport_namespaces).
                       max_namespaces := pos_integer(),
                       kill_after := non_neg_integer() | infinity,
                       max_requests := pos_integer() | infinity,
                       max_memory := pos_integer() | infinity,
                       max_rss := pos_integer() | infinity,
                       cpu_seconds := pos_integer() | infinity,
                       max_open_files := pos_integer() | infinity,
                       shutdown_timeout := non_neg_integer(),
                       sandbox := pyport_sandbox:sandbox(),
                       fresh_worker := boolean(),
                       warm_start := boolean(),
                       log_rate := pyport_worker_log:rate(),
                       %% µs a worker may poll for its next frame before
                       %% it sleeps (docs/performance.md); 0: never.
                       spin_us := 0..10000,
                       %% default: resolved at pool start (pyport_grants:new/2).
                       grants := pyport_grants:spec() | default,
                       max_callbacks := pos_integer(),
                       max_objects := pos_integer(),
                       str_fallback := boolean(),
                       %% Binaries this big go off the pipe (pyport_payloads).
                       payload_threshold := pos_integer() | infinity,
                       max_new_atoms := pyport_atoms:pool_setting(),
                       max_result_terms := pos_integer() | infinity | auto,
                       max_decoded_bytes := pos_integer() | infinity | auto,
                       output := logger | caller}.
-type error_reason() :: {invalid_pools, term()}
                      | {invalid_pool_name, term()}
                      | {invalid_pool, pool_name(), term()}
                      | {unknown_pool_option, pool_name(), term()}
                      | {invalid_pool_option, pool_name(), atom() | {sandbox | grants, term()},
                         term()}
                      | {unknown_sandbox_option, pool_name(), term()}
                      | {unknown_grants_option, pool_name(), term()}
                      | {pool_option_requires, pool_name(), fresh_worker, sandbox}
                      | {pool_options_conflict, pool_name(), warm_start, sandbox}
                      | {invalid_config, max_state_entries | event_loop_pool
                                         | event_loop_pool_size | max_new_atoms, term()}.

-define(MIN_FRAME_SIZE, 1024).
%% The smallest limits a worker accepts (port_worker/options.cpp): below
%% them Python cannot start.
-define(MIN_MAX_MEMORY, 32 * 1024 * 1024).
-define(MIN_OPEN_FILES, 16).
%% {packet, 4} cannot express a larger frame.
-define(MAX_FRAME_SIZE, 16#FFFFFFFF).
%% The largest timeout `receive ... after' takes.
-define(MAX_TIMEOUT, 16#FFFFFFFF).
%% The largest limit the worker takes (port_worker/options.cpp).
-define(MAX_LIMIT, 1 bsl 62).
%% The most workers in one pool, whatever the node's limits allow.
-define(MAX_POOL_SIZE, 4096).
%% Decode limits the codec counts down as small integers; larger is
%% `infinity' in effect.
-define(MAX_DECODE_LIMIT, (1 bsl 58)).

%% @doc The pools to start: the validated `pools' environment, or one
%% `default' pool with default options when it is not set.
-spec pools() -> {ok, #{pool_name() => pool_opts()}} | {error, error_reason()}.
pools() ->
    case application:get_env(pyport, pools) of
        undefined -> validate_pools(#{default => #{}});
        {ok, Pools} -> validate_pools(Pools)
    end.

%% @doc The `max_state_entries' environment: a positive integer or
%% `infinity' (the default). See {@link pyport_state}.
-spec max_state_entries() -> {ok, pos_integer() | infinity} | {error, error_reason()}.
max_state_entries() ->
    case application:get_env(pyport, max_state_entries, infinity) of
        Max when Max =:= infinity; is_integer(Max), Max > 0 -> {ok, Max};
        Other -> {error, {invalid_config, max_state_entries, Other}}
    end.

%% @doc The `max_new_atoms' environment: how many new atoms pyport may
%% create from what workers send, for the node's life (see
%% {@link pyport_atoms}); default 10000, at most half the atom table.
-spec max_new_atoms() -> {ok, non_neg_integer()} | {error, error_reason()}.
max_new_atoms() ->
    case application:get_env(pyport, max_new_atoms, 10000) of
        N when is_integer(N), N >= 0 ->
            case N =< max_atom_budget() of
                true -> {ok, N};
                false -> {error, {invalid_config, max_new_atoms, N}}
            end;
        Other ->
            {error, {invalid_config, max_new_atoms, Other}}
    end.

%% A budget of new atoms never reaches half the atom table.
max_atom_budget() ->
    erlang:system_info(atom_limit) div 2.

%% @doc Checks the event loop settings of the application environment
%% (see {@link py_event_loop_pool}): `event_loop_pool', a pool name, and
%% `event_loop_pool_size', a positive integer; both optional.
-spec event_loops() -> ok | {error, error_reason()}.
event_loops() ->
    validate_event_loops(application:get_env(pyport, event_loop_pool),
                         application:get_env(pyport, event_loop_pool_size)).

%% @doc {@link event_loops/0} on given `application:get_env' results.
-spec validate_event_loops(undefined | {ok, term()}, undefined | {ok, term()}) ->
          ok | {error, error_reason()}.
validate_event_loops({ok, Pool}, _) when not is_atom(Pool) ->
    {error, {invalid_config, event_loop_pool, Pool}};
validate_event_loops(_, {ok, N}) when not is_integer(N); N < 1 ->
    {error, {invalid_config, event_loop_pool_size, N}};
validate_event_loops(_, _) ->
    ok.

%% @doc Validates a map of pool name to options; returns it with defaults
%% filled in.
-spec validate_pools(term()) ->
          {ok, #{pool_name() => pool_opts()}} | {error, error_reason()}.
validate_pools(Pools) when is_map(Pools) ->
    %% Sorted so that the same mistake gives the same error every time.
    validate_each(lists:sort(maps:to_list(Pools)), #{});
validate_pools(Other) ->
    {error, {invalid_pools, Other}}.

validate_each([], Acc) ->
    {ok, Acc};
validate_each([{Name, Opts} | Rest], Acc) when is_atom(Name) ->
    case validate_pool(Name, Opts) of
        {ok, Valid} -> validate_each(Rest, Acc#{Name => Valid});
        {error, _} = Error -> Error
    end;
validate_each([{Name, _} | _], _Acc) ->
    {error, {invalid_pool_name, Name}}.

%% @doc Validates one pool's options and fills in the defaults.
-spec validate_pool(pool_name(), term()) ->
          {ok, pool_opts()} | {error, error_reason()}.
validate_pool(Name, Opts) when is_map(Opts) ->
    Defaults = defaults(),
    case [K || K <- lists:sort(maps:keys(Opts)), not is_map_key(K, Defaults)] of
        [Unknown | _] ->
            {error, {unknown_pool_option, Name, Unknown}};
        [] ->
            case check_values(Name, lists:sort(maps:to_list(maps:merge(Defaults, Opts))), #{}) of
                {ok, #{warm_start := true, sandbox := #{}}} ->
                    %% A sandbox confines each worker as it starts; a warm
                    %% worker starts as a fork of an unconfined zygote.
                    {error, {pool_options_conflict, Name, warm_start, sandbox}};
                {ok, #{fresh_worker := true, sandbox := false}} ->
                    %% A zygote is a sandbox's fast path; unconfined it
                    %% would only be slower.
                    {error, {pool_option_requires, Name, fresh_worker, sandbox}};
                {ok, Valid} ->
                    elastic(Name, Opts, Valid);
                Error ->
                    Error
            end
    end;
validate_pool(Name, Opts) ->
    {error, {invalid_pool, Name, Opts}}.

check_values(_Name, [], Acc) ->
    {ok, Acc};
check_values(Name, [{Key, undefined} | Rest], Acc) when Key =:= min; Key =:= max ->
    check_values(Name, Rest, Acc#{Key => undefined});
check_values(Name, [{sandbox, Value} | Rest], Acc) ->
    case pyport_sandbox:validate(Value) of
        {ok, Sandbox} -> check_values(Name, Rest, Acc#{sandbox => Sandbox});
        {error, {unknown, Key}} -> {error, {unknown_sandbox_option, Name, Key}};
        {error, {invalid, sandbox, V}} -> {error, {invalid_pool_option, Name, sandbox, V}};
        {error, {invalid, Key, V}} -> {error, {invalid_pool_option, Name, {sandbox, Key}, V}}
    end;
check_values(Name, [{grants, Value} | Rest], Acc) ->
    case pyport_grants:validate(Value) of
        {ok, Grants} -> check_values(Name, Rest, Acc#{grants => Grants});
        {error, {unknown, Key}} -> {error, {unknown_grants_option, Name, Key}};
        {error, {invalid, grants, V}} -> {error, {invalid_pool_option, Name, grants, V}};
        {error, {invalid, Key, V}} -> {error, {invalid_pool_option, Name, {grants, Key}, V}}
    end;
check_values(Name, [{Key, Value} | Rest], Acc) ->
    case in_range(Key, Value) andalso check(Key, Value) of
        {ok, Normalised} -> check_values(Name, Rest, Acc#{Key => Normalised});
        _ -> {error, {invalid_pool_option, Name, Key, Value}}
    end.

%% @doc The largest value of each integer option: what the runtime can
%% take (a `receive ... after' or `gen_server:call' timeout is at most
%% 2^32-1 ms, about 49.7 days; the worker takes a limit up to 2^62, CPU
%% seconds up to 2^32-1, port_worker/options.cpp), and a pool size the
%% node can hold (every worker is a process, a port and OS processes).
-spec max_value(atom()) -> pos_integer() | undefined.
max_value(Key) when Key =:= call_timeout; Key =:= start_timeout; Key =:= kill_after;
                    Key =:= shutdown_timeout ->
    ?MAX_TIMEOUT;
max_value(Key) when Key =:= min; Key =:= max ->
    max_value(size);
max_value(idle_timeout) ->
    ?MAX_TIMEOUT;
max_value(size) ->
    Machine = min(erlang:system_info(port_limit), erlang:system_info(process_limit)) div 4,
    max(1, min(?MAX_POOL_SIZE, Machine));
max_value(cpu_seconds) ->
    %% The kernel counts CPU time in nanoseconds in 64 bits: beyond this it
    %% wraps into an instant SIGXCPU.
    16#FFFFFFFF;
max_value(Key) when Key =:= max_memory; Key =:= max_open_files;
                    Key =:= max_inflight; Key =:= max_requests; Key =:= max_rss ->
    ?MAX_LIMIT;
max_value(_Key) ->
    undefined.

in_range(Key, N) when is_integer(N) ->
    case max_value(Key) of
        undefined -> true;
        Max -> N =< Max
    end;
in_range(_Key, _Value) ->
    true.

%% @doc Every pool option with its default value.
-spec defaults() -> pool_opts().
defaults() ->
    #{size => erlang:system_info(schedulers_online),
      min => undefined,
      max => undefined,
      idle_timeout => 60000,
      python_path => [],
      max_frame_size => 64 * 1024 * 1024,
      call_timeout => 30000,
      start_timeout => 10000,
      worker => default_worker(),
      env => [],
      cd => undefined,
      imports => [],
      init_code => undefined,
      venv => undefined,
      max_inflight => infinity,
      max_namespaces => 10000,
      kill_after => 5000,
      max_requests => infinity,
      max_memory => infinity,
      max_rss => infinity,
      cpu_seconds => infinity,
      max_open_files => infinity,
      shutdown_timeout => 5000,
      sandbox => false,
      fresh_worker => false,
      warm_start => false,
      log_rate => pyport_worker_log:default_rate(),
      spin_us => 100,
      %% all without a sandbox, nothing with one (pyport_grants).
      grants => default,
      max_callbacks => 4096,
      max_objects => 10000,
      str_fallback => false,
      payload_threshold => 256 * 1024,
      max_new_atoms => default,
      max_result_terms => auto,
      max_decoded_bytes => auto,
      %% Where a call's print output goes (pyport_output).
      output => logger}.

default_worker() ->
    case code:priv_dir(pyport) of
        {error, bad_name} -> "pyport_worker";   % not loaded as an application
        Priv -> filename:join(Priv, "pyport_worker")
    end.

check(Key, N) when (Key =:= size orelse Key =:= min orelse Key =:= max orelse
                    Key =:= idle_timeout), is_integer(N), N > 0 -> {ok, N};
check(python_path, Dirs) when is_list(Dirs) -> check_path(Dirs, []);
check(max_frame_size, N)
  when is_integer(N), N >= ?MIN_FRAME_SIZE, N =< ?MAX_FRAME_SIZE -> {ok, N};
check(call_timeout, infinity) -> {ok, infinity};
check(call_timeout, N) when is_integer(N), N >= 0 -> {ok, N};
check(start_timeout, N) when is_integer(N), N > 0 -> {ok, N};
check(worker, Path) ->
    case to_binary(Path) of
        {ok, <<_, _/binary>> = Bin} -> {ok, Bin};
        _ -> error
    end;
check(env, Env) -> pyport_slot_env:validate(Env);
check(output, Where) when Where =:= logger; Where =:= caller -> {ok, Where};
check(cd, undefined) -> {ok, undefined};
check(cd, Dir) -> existing_dir(Dir);
check(imports, Modules) when is_list(Modules) -> check_names(Modules, []);
check(init_code, undefined) -> {ok, undefined};
check(init_code, Code) ->
    case to_binary(Code) of
        {ok, Bin} -> {ok, Bin};
        error -> error
    end;
check(venv, undefined) -> {ok, undefined};
check(venv, Dir) ->
    case existing_dir(Dir) of
        {ok, Bin} ->
            %% What `python -m venv' always writes; without it this is no venv.
            case filelib:is_regular(filename:join(Bin, "pyvenv.cfg")) of
                true -> {ok, Bin};
                false -> error
            end;
        error ->
            error
    end;
check(kill_after, infinity) -> {ok, infinity};
check(kill_after, N) when is_integer(N), N >= 0 -> {ok, N};
check(shutdown_timeout, N) when is_integer(N), N >= 0 -> {ok, N};
check(fresh_worker, B) when is_boolean(B) -> {ok, B};
check(warm_start, B) when is_boolean(B) -> {ok, B};
check(log_rate, Rate) -> pyport_worker_log:validate_rate(Rate);
check(spin_us, N) when is_integer(N), N >= 0, N =< 10000 -> {ok, N};
check(max_callbacks, N) when is_integer(N), N > 0, N =< 16#FFFFFFF -> {ok, N};
check(max_objects, N) when is_integer(N), N > 0, N =< 16#FFFFFFF -> {ok, N};
check(str_fallback, B) when is_boolean(B) -> {ok, B};
check(payload_threshold, infinity) -> {ok, infinity};
check(payload_threshold, N) when is_integer(N), N >= 4096 -> {ok, N};
check(max_new_atoms, S) when S =:= default; S =:= node -> {ok, S};
check(max_new_atoms, N) when is_integer(N), N >= 0 ->
    case N =< max_atom_budget() of
        true -> {ok, N};
        false -> error
    end;
check(Key, S) when (Key =:= max_result_terms orelse Key =:= max_decoded_bytes),
                   (S =:= auto orelse S =:= infinity) ->
    {ok, S};
check(max_result_terms, N) when is_integer(N), N > 0, N =< ?MAX_DECODE_LIMIT -> {ok, N};
check(max_decoded_bytes, N)
  when is_integer(N), N >= ?MIN_FRAME_SIZE, N =< ?MAX_DECODE_LIMIT -> {ok, N};
check(Key, infinity) when Key =:= max_inflight; Key =:= max_requests; Key =:= max_memory;
                          Key =:= max_rss; Key =:= cpu_seconds; Key =:= max_open_files ->
    {ok, infinity};
check(max_memory, N) when is_integer(N), N >= ?MIN_MAX_MEMORY -> {ok, N};
check(max_open_files, N) when is_integer(N), N >= ?MIN_OPEN_FILES -> {ok, N};
check(Key, N) when (Key =:= max_inflight orelse Key =:= max_requests orelse
                    Key =:= max_rss orelse Key =:= cpu_seconds), is_integer(N), N > 0 ->
    {ok, N};
check(max_namespaces, N) when is_integer(N), N > 0, N =< ?MAX_LIMIT -> {ok, N};
check(_Key, _Value) -> error.

%% An elastic pool (`min' or `max' given): `size' is where it starts,
%% `min' by default; `min' defaults to `size' if given, else 1; `max' to
%% the larger of `min' and `size'. Then min =< size =< max.
elastic(_Name, Opts, #{min := undefined, max := undefined} = Valid)
  when not is_map_key(min, Opts), not is_map_key(max, Opts) ->
    {ok, Valid};
elastic(Name, Opts, Valid) ->
    Min = case Valid of
              #{min := undefined} when is_map_key(size, Opts) -> maps:get(size, Valid);
              #{min := undefined} -> 1;
              #{min := M} -> M
          end,
    Size = case is_map_key(size, Opts) of
               true -> maps:get(size, Valid);
               false -> Min
           end,
    Max = case Valid of
              #{max := undefined} -> max(Min, Size);
              #{max := X} -> X
          end,
    if
        Min > Max -> {error, {invalid_pool_option, Name, min, Min}};
        Size < Min; Size > Max -> {error, {invalid_pool_option, Name, size, Size}};
        true -> {ok, Valid#{size := Size, min := Min, max := Max}}
    end.

%% @doc Environment variables for a worker: a map or list of name =>
%% value (or `false' to unset), as a list of strings open_port takes.
-spec validate_env(term()) -> {ok, [{string(), string() | false}]} | error.
validate_env(Env) when is_map(Env) -> check_env(maps:to_list(Env), []);
validate_env(Env) when is_list(Env) -> check_env(Env, []);
validate_env(_) -> error.

%% Environment variables for the worker: name => value, or false to unset.
check_env([], Acc) ->
    {ok, lists:reverse(Acc)};
check_env([{Name, Value} | Rest], Acc) ->
    case {env_name(Name), Value} of
        {{ok, N}, false} when N =/= "" -> check_env(Rest, [{N, false} | Acc]);
        {{ok, N}, _} when N =/= "" ->
            case env_string(Value) of
                {ok, V} -> check_env(Rest, [{N, V} | Acc]);
                error -> error
            end;
        _ ->
            error
    end;
check_env(_, _Acc) ->
    error.

%% @doc An environment variable name as open_port takes it.
-spec env_name(term()) -> {ok, string()} | error.
env_name(Name) ->
    case env_string(Name) of
        {ok, N} ->
            case lists:member($=, N) of
                true -> error;
                false -> {ok, N}
            end;
        error ->
            error
    end.

%% open_port wants env names and values as strings without NUL (and names
%% without '=').
env_string(A) when is_atom(A) -> env_string(atom_to_binary(A, utf8));
env_string(S) ->
    case to_binary(S) of
        {ok, Bin} ->
            case binary:match(Bin, [<<0>>]) of
                nomatch -> {ok, unicode:characters_to_list(Bin)};
                _ -> error
            end;
        error ->
            error
    end.

check_names([], Acc) ->
    {ok, lists:reverse(Acc)};
check_names([Name | Rest], Acc) ->
    Bin = case is_atom(Name) of
              true -> {ok, atom_to_binary(Name, utf8)};
              false -> to_binary(Name)
          end,
    %% Dotted Python identifiers: each becomes `import <name>' in the worker.
    case Bin of
        {ok, B} ->
            case re:run(B, "^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$") of
                {match, _} -> check_names(Rest, [B | Acc]);
                nomatch -> error
            end;
        error ->
            error
    end;
check_names(_Improper, _Acc) ->
    error.

existing_dir(Dir) ->
    case to_binary(Dir) of
        {ok, <<_, _/binary>> = Bin} ->
            case filelib:is_dir(Bin) of
                true -> {ok, Bin};
                false -> error
            end;
        _ ->
            error
    end.

check_path([], Acc) ->
    {ok, lists:reverse(Acc)};
%% {priv, App, SubDir}: a directory in an application's priv/, wherever a
%% release put it.
check_path([{priv, App, Sub} | Rest], Acc)
  when is_atom(App), is_list(Sub) orelse is_binary(Sub) ->
    case code:priv_dir(App) of
        {error, bad_name} -> error;
        Priv -> check_path([filename:join(Priv, Sub) | Rest], Acc)
    end;
check_path([Dir | Rest], Acc) ->
    case to_binary(Dir) of
        {ok, <<_, _/binary>> = Bin} -> check_path(Rest, [Bin | Acc]);
        _ -> error
    end;
check_path(_Improper, _Acc) ->
    error.

%% @doc Paths become binaries: that is what open_port passes on unchanged.
-spec to_binary(term()) -> {ok, binary()} | error.
to_binary(B) when is_binary(B) ->
    {ok, B};
to_binary(L) when is_list(L) ->
    try unicode:characters_to_binary(L) of
        B when is_binary(B) -> {ok, B};
        _ -> error
    catch
        error:badarg -> error
    end;
to_binary(_) ->
    error.
