%% @doc A pool's `sandbox' option: its validation, its defaults, the worker
%% flags it becomes (port_worker/options.cpp), and what the worker reports
%% about the confinement it got. See docs/security.md.
%%
%% `sandbox => true' is the safe default: every restriction on, the limits
%% below. A map relaxes restrictions one by one (a capability key set to
%% `true' means "allowed") and sets limits; unset keys keep the defaults.
%%
%% One rule joins the sandbox's limits with the pool's own `max_memory',
%% `cpu_seconds' and `max_open_files' (docs/pools.md): every limit given
%% anywhere holds, so the worker gets the smaller of the two. To raise a
%% sandbox limit, set it in the sandbox map (`infinity' lifts it).
-module(pyport_sandbox).

-export([defaults/0, validate/1, capabilities/0, args/2, effective_limit/2,
         report/1, workdir/2, env_frame/1, remove_cgroups/1, cgroup_dirs/1]).

-export_type([sandbox/0]).

%% A validated sandbox: `false' (none), or every key present.
-type sandbox() :: false
                 | #{network := boolean(), exec := boolean(), fork := boolean(),
                     filesystem := boolean(), namespaces := boolean(),
                     seccomp := boolean(), privileges := boolean(),
                     max_memory := pos_integer() | infinity,
                     cpu_seconds := pos_integer() | infinity,
                     max_open_files := pos_integer() | infinity,
                     max_file_size := pos_integer() | infinity,
                     max_processes := pos_integer() | infinity,
                     max_output := pos_integer(),
                     max_disk := pos_integer() | infinity,
                     workdir_parent := binary() | undefined,
                     env_keep := [string()]}.

%% The smallest limits a worker accepts (port_worker/options.cpp).
-define(MIN_MAX_MEMORY, 32 * 1024 * 1024).
-define(MIN_OPEN_FILES, 16).
%% RLIMIT_NPROC counts threads: a warm worker runs a few of its own.
-define(MIN_PROCESSES, 8).
%% The private working directory holds Python's small files too.
-define(MIN_DISK, 1024 * 1024).
-define(MIB, 1024 * 1024).

%% @doc The restrictions that can be relaxed one by one, in the order their
%% `--sandbox-allow' flags are written.
-spec capabilities() -> [atom()].
capabilities() ->
    [network, exec, fork, filesystem, namespaces, seccomp, privileges].

%% @doc What `sandbox => true' means. Why these numbers: docs/security.md.
-spec defaults() -> sandbox().
defaults() ->
    maps:merge(maps:from_list([{C, false} || C <- capabilities()]),
               #{max_memory => 1024 * ?MIB,       % numpy-sized work, not a runaway
                 cpu_seconds => 60,
                 max_open_files => 256,
                 max_file_size => 64 * ?MIB,
                 max_processes => 256,           % per uid: threads count too
                 max_output => ?MIB,
                 max_disk => 64 * ?MIB,          % a tmpfs: counted as memory too
                 workdir_parent => undefined,
                 env_keep => []}).

%% @doc Validates the value of a pool's `sandbox' option. Errors name the
%% key inside the sandbox map: `{unknown, Key}' or `{invalid, Key, Value}';
%% `{invalid, sandbox, Value}' for a value that is no boolean nor map.
-spec validate(term()) ->
          {ok, sandbox()} | {error, {unknown, term()} | {invalid, atom(), term()}}.
validate(false) ->
    {ok, false};
validate(true) ->
    {ok, defaults()};
validate(Map) when is_map(Map) ->
    Defaults = defaults(),
    case [K || K <- lists:sort(maps:keys(Map)), not is_map_key(K, Defaults)] of
        [Unknown | _] -> {error, {unknown, Unknown}};
        [] -> check_all(lists:sort(maps:to_list(maps:merge(Defaults, Map))), #{})
    end;
validate(Other) ->
    {error, {invalid, sandbox, Other}}.

check_all([], Acc) ->
    {ok, Acc};
check_all([{Key, Value} | Rest], Acc) ->
    case check(Key, Value) of
        {ok, Normalised} -> check_all(Rest, Acc#{Key => Normalised});
        error -> {error, {invalid, Key, Value}}
    end.

check(Key, Value) when is_boolean(Value) ->
    case lists:member(Key, capabilities()) of
        true -> {ok, Value};
        false -> error
    end;
check(max_output, N) when is_integer(N), N > 0 -> {ok, N};
check(Key, infinity) when Key =:= max_memory; Key =:= cpu_seconds; Key =:= max_open_files;
                          Key =:= max_file_size; Key =:= max_processes; Key =:= max_disk ->
    {ok, infinity};
check(max_memory, N) when is_integer(N), N >= ?MIN_MAX_MEMORY -> {ok, N};
check(max_open_files, N) when is_integer(N), N >= ?MIN_OPEN_FILES -> {ok, N};
check(max_processes, N) when is_integer(N), N >= ?MIN_PROCESSES -> {ok, N};
check(max_disk, N) when is_integer(N), N >= ?MIN_DISK -> {ok, N};
check(Key, N) when (Key =:= cpu_seconds orelse Key =:= max_file_size), is_integer(N), N > 0 ->
    {ok, N};
check(workdir_parent, undefined) ->
    {ok, undefined};
check(workdir_parent, Dir) ->
    %% Absolute: the worker may run elsewhere (`cd'); existing: the worker
    %% creates only its own directory in it.
    case pyport_config:to_binary(Dir) of
        {ok, <<"/", _/binary>> = Bin} ->
            case filelib:is_dir(Bin) of
                true -> {ok, Bin};
                false -> error
            end;
        _ ->
            error
    end;
check(env_keep, Names) when is_list(Names) ->
    env_names(Names, []);
check(_Key, _Value) ->
    error.

env_names([], Acc) ->
    {ok, lists:reverse(Acc)};
env_names([Name | Rest], Acc) ->
    case pyport_config:env_name(Name) of
        {ok, N} when N =/= "" -> env_names(Rest, [N | Acc]);
        _ -> error
    end;
env_names(_Improper, _Acc) ->
    error.

%% @doc The limit a sandboxed worker gets for one of the pool-level limits
%% (`max_memory', `cpu_seconds', `max_open_files'): the smaller of the
%% pool's and the sandbox's. Without a sandbox, the pool's.
-spec effective_limit(max_memory | cpu_seconds | max_open_files, pyport_config:pool_opts()) ->
          pos_integer() | infinity.
effective_limit(Key, #{sandbox := false} = Opts) ->
    maps:get(Key, Opts);
effective_limit(Key, #{sandbox := Sandbox} = Opts) ->
    min_limit(maps:get(Key, Opts), maps:get(Key, Sandbox)).

min_limit(infinity, B) -> B;
min_limit(A, infinity) -> A;
min_limit(A, B) -> min(A, B).

%% @doc The worker flags of a pool's sandbox (after the common ones, which
%% carry the effective limits): none without a sandbox. The pool's
%% `imports' are preloaded before the sandbox closes. Its environment (the
%% pool's `env' and a venv's variables) is all the worker keeps; it never
%% travels on the command line, which every local user may read in /proc:
%% `--env-stdin' makes the worker read it first thing from its stdin, where
%% pyport_os:open/1 writes env_frame/1.
-spec args(pyport_config:pool_opts(), [{string(), string() | false}]) -> [string()].
args(#{sandbox := false}, _Env) ->
    [];
args(#{sandbox := Sandbox, fresh_worker := Fresh, imports := Imports}, _Env) ->
    Mode = case Fresh of
               true -> "--zygote";
               false -> "--sandbox"
           end,
    [Mode]
        ++ lists:append([["--sandbox-allow", atom_to_list(C)]
                         || C <- capabilities(), maps:get(C, Sandbox)])
        ++ limit("--max-file-size", maps:get(max_file_size, Sandbox))
        ++ limit("--max-processes", maps:get(max_processes, Sandbox))
        ++ ["--max-output", integer_to_list(maps:get(max_output, Sandbox))]
        ++ limit("--max-disk", maps:get(max_disk, Sandbox, 64 * ?MIB))
        ++ case maps:get(workdir_parent, Sandbox) of
               undefined -> [];
               Dir -> ["--workdir-parent", unicode:characters_to_list(Dir)]
           end
        ++ lists:append([["--preload", unicode:characters_to_list(M)] || M <- Imports])
        ++ ["--env-stdin"]
        ++ lists:append([["--env-keep", Name] || Name <- maps:get(env_keep, Sandbox)]).

limit(_Flag, infinity) -> [];
limit(Flag, N) -> [Flag, integer_to_list(N)].

%% @doc The payload of the one frame a sandboxed worker reads from its stdin
%% before anything else (`--env-stdin'): NAME=VALUE entries, NUL-separated.
%% Names and values hold no NUL (pyport_config checks the pool's `env').
-spec env_frame([{string(), string() | false}]) -> binary().
env_frame(Env) ->
    unicode:characters_to_binary(lists:join([0], [Name ++ "=" ++ Value
                                                  || {Name, Value} <- Env, Value =/= false])).

%% @doc The `sandbox' report of a worker's hello capabilities, if any.
-spec report(map()) -> map() | undefined.
report(#{<<"sandbox">> := Report}) when is_map(Report) -> Report;
report(#{sandbox := Report}) when is_map(Report) -> Report;
report(_) -> undefined.

%% @doc The private working directory a worker reported, if it is one the
%% owner may remove after the worker died: an absolute path named
%% `pyport-job-*', in the configured parent if there is one. Anything else
%% is left alone (a worker's report is not trusted with `rm -r').
-spec workdir(map() | undefined, pyport_config:pool_opts()) -> binary() | undefined.
workdir(#{<<"workdir">> := Dir}, Opts) ->
    workdir(#{workdir => Dir}, Opts);
workdir(#{workdir := Dir}, #{sandbox := #{workdir_parent := Parent}}) when is_binary(Dir) ->
    Parts = filename:split(Dir),
    Base = filename:basename(Dir),
    Safe = case Dir of
               <<"/", _/binary>> ->
                   not lists:member(<<"..">>, Parts) andalso not lists:member(<<".">>, Parts)
                       andalso length(Parts) >= 3
                       andalso binary:longest_common_prefix([Base, <<"pyport-job-">>]) =:= 11
                       andalso (Parent =:= undefined orelse filename:dirname(Dir) =:= Parent);
               _ ->
                   false
           end,
    case Safe of
        true -> Dir;
        false -> undefined
    end;
workdir(_Report, _Opts) ->
    undefined.

%% @doc Removes the cgroups a dead worker's keeper made (named like its
%% working directory, `pyport-job-*', below this node's own cgroup in each
%% hierarchy), should the keeper have died before it could. The worker's
%% processes die with their keeper, a moment after it: a cgroup still busy
%% is tried again for up to 2 s (the caller runs this in a process of its
%% own).
-spec remove_cgroups(binary()) -> ok.
remove_cgroups(Name) ->
    _ = [del_cgroup(Dir, 100) || Dir <- cgroup_dirs(Name)],
    ok.

del_cgroup(Dir, Tries) ->
    case file:del_dir(Dir) of
        {error, ebusy} when Tries > 1 ->
            timer:sleep(20),
            del_cgroup(Dir, Tries - 1);
        _ ->
            ok
    end.

%% @doc Where the keeper of a worker whose working directory is named Name
%% makes its cgroups (cgroup v1's memory and pids hierarchies, v2's tree).
-spec cgroup_dirs(binary()) -> [file:filename_all()].
cgroup_dirs(<<"pyport-job-", _/binary>> = Name) ->
    case file:read_file("/proc/self/cgroup") of
        {ok, Text} ->
            lists:append([cgroup_dir(binary:split(Line, <<":">>, [global]), Name)
                          || Line <- binary:split(Text, <<"\n">>, [global, trim])]);
        {error, _} ->
            []
    end;
cgroup_dirs(_) ->
    [].

cgroup_dir([<<"0">>, <<>>, Own], Name) ->
    case filelib:is_regular("/sys/fs/cgroup/cgroup.controllers") of
        true -> [filename:join([<<"/sys/fs/cgroup">>, strip(Own), Name])];
        false -> []                             % v1: the unified tree has no controller
    end;
cgroup_dir([_, Controllers, Own], Name) ->
    [filename:join([<<"/sys/fs/cgroup">>, C, strip(Own), Name])
     || C <- binary:split(Controllers, <<",">>, [global]), C =:= <<"memory">> orelse C =:= <<"pids">>];
cgroup_dir(_, _Name) ->
    [].

strip(<<"/", Rest/binary>>) -> Rest;
strip(Path) -> Path.
