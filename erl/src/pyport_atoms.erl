%% @doc The one rule for turning text a worker sent into an atom.
%%
%% Atoms are never garbage collected and the atom table is finite: a VM
%% that fills it dies. Every place where worker-controlled text becomes an
%% atom (the codec's atom ext and atom map keys, exception type names, the
%% module and function of an `rpc_call' from Python) goes through
%% {@link to_atom/2}:
%%
%% <ul>
%% <li>an atom that already exists is that atom, always, at no cost;</li>
%% <li>a new atom is created only while its budget lasts: the node's
%%     (application environment `max_new_atoms', default 10,000, for the
%%     node's life) and, when the pool has one, the pool's own (pool option
%%     `max_new_atoms': `node' to use only the node's, an integer to hold
%%     the pool to fewer; sandboxed pools default to 0);</li>
%% <li>past it the answer is `{error, {atom_limit, Name, Limit}}', Limit
%%     being the budget that is spent; the node carries on.</li>
%% </ul>
%%
%% Budgets are `atomics' in `persistent_term', made when a pool starts
%% (pool starts are serialised by `pyport_pools_sup'): the decoder in the
%% caller's process counts in them directly, no process is involved.
%% They count for the node's life: restarting the application or a pool
%% does not give the budget back, since the atoms stay.
-module(pyport_atoms).

-export([node_budget/0, pool_budget/2, no_new_atoms/0, to_atom/2, exception_type/2,
         info/0, pool_info/1, protocol_atoms/0]).

-export_type([budget/0, pool_setting/0]).

%% What the pool option `max_new_atoms' may be.
-type pool_setting() :: default | node | non_neg_integer().

%% The budgets a new atom is counted in, each `{Counter, Limit}'; `none'
%% when no new atom may be made.
-opaque budget() :: none | [{atomics:atomics_ref(), non_neg_integer()}].

-define(NODE_KEY, {?MODULE, node}).
-define(POOL_KEY(Pool), {?MODULE, pool, Pool}).

%%%===================================================================
%%% Budgets
%%%===================================================================

%% @doc The node's budget alone: what a decode outside any pool uses.
%% The limit is read from the application environment now (see
%% {@link pyport_config:max_new_atoms/0}; an invalid value counts as 0).
-spec node_budget() -> budget().
node_budget() ->
    case node_limit() of
        0 -> none;
        Limit -> [{node_counter(), Limit}]
    end.

%% @doc The budget of pool `Pool' with options `Opts' (`max_new_atoms' and
%% `sandbox'): its own counter, kept for the node's life under the pool's
%% name, and the node's.
-spec pool_budget(atom(), #{max_new_atoms => pool_setting(), sandbox => term(), _ => _}) ->
          budget().
pool_budget(Pool, Opts) ->
    Setting = case maps:get(max_new_atoms, Opts, default) of
                  default ->
                      case maps:get(sandbox, Opts, false) of
                          false -> node;
                          _ -> 0
                      end;
                  S ->
                      S
              end,
    case {Setting, node_budget()} of
        {0, _} -> none;
        {_, none} -> none;
        {node, Node} -> Node;
        {N, Node} when is_integer(N), N > 0 -> [{pool_counter(Pool), N} | Node]
    end.

%% @doc Existing atoms only.
-spec no_new_atoms() -> budget().
no_new_atoms() ->
    none.

%%%===================================================================
%%% The rule
%%%===================================================================

%% @doc `Name' (UTF-8) as an atom: the existing one, or a new one counted
%% in `Budget'. `{error, bad_atom}' for a name that cannot be an atom (not
%% UTF-8, longer than 255 characters).
-spec to_atom(binary(), budget()) ->
          {ok, atom()} | {error, {atom_limit, binary(), non_neg_integer()} | bad_atom}.
to_atom(Name, Budget) when is_binary(Name) ->
    try
        {ok, binary_to_existing_atom(Name, utf8)}
    catch
        error:badarg -> new_atom(Name, Budget)
    end.

%% @doc The Erlang form of a Python exception type name: an atom under
%% {@link to_atom/2}, else (past the budget, or a name that cannot be an
%% atom) the name as a binary. An exception is the answer the caller waits
%% for, so a spent budget must not hide it: the type arrives as text.
-spec exception_type(binary(), budget()) -> atom() | binary().
exception_type(Name, Budget) ->
    case to_atom(Name, Budget) of
        {ok, Atom} -> Atom;
        {error, _} -> Name
    end.

new_atom(Name, Budget) ->
    case valid_name(Name) of
        false ->
            {error, bad_atom};
        true ->
            case reserve(Budget, []) of
                ok ->
                    {ok, binary_to_atom(Name, utf8)};
                {spent, Limit} ->
                    {error, {atom_limit, Name, Limit}}
            end
    end.

%% binary_to_atom/2's own checks, made before any budget is touched.
valid_name(Name) ->
    byte_size(Name) =< 255 * 4 andalso
        case unicode:characters_to_list(Name, utf8) of
            Chars when is_list(Chars) -> length(Chars) =< 255;
            _ -> false
        end.

%% Takes one from every counter of the budget, or from none. add_get makes
%% concurrent callers race for the last units without overshooting.
reserve(none, _Taken) ->
    {spent, 0};
reserve([], _Taken) ->
    ok;
reserve([{Counter, Limit} | Rest], Taken) ->
    case atomics:add_get(Counter, 1, 1) of
        N when N =< Limit ->
            reserve(Rest, [Counter | Taken]);
        _ ->
            [atomics:sub(C, 1, 1) || C <- [Counter | Taken]],
            {spent, Limit}
    end.

%% @doc The atoms pyport's own worker code sends (proto/PROTOCOL.md: the
%% sandbox report in HELLO; python_runtime/erlang/_jobs.py: job results,
%% limits, stats and signal names). Listing them here makes them exist as
%% soon as this module is loaded, which is when the first pool starts,
%% before any worker says hello: so they never draw on a budget, and a
%% sandboxed pool (no new atoms) gets them all the same.
-spec protocol_atoms() -> [atom()].
protocol_atoms() ->
    [%% HELLO: the sandbox report.
     sandbox, mode, worker, zygote, seccomp, landlock, landlock_scope, landlock_net,
     no_new_privs, user_ns, net_ns, pid_ns, ipc_ns, mount_ns, namespaces, uid, workdir,
     rlimits, as, cpu, nofile, fsize, nproc, infinity, allowed, unavailable,
     network, exec, fork, filesystem, privileges,
     cgroup, v1, v2, cgroup_pids, mount_view, max_disk, proc,
     %% Jobs.
     ok, error, exception, type, message, traceback, stdout, stderr, cpu_ms, max_rss,
     wall_ms, bad_job, output_limit, memory_limit, file_size_limit, process_limit,
     cpu_limit, forbidden, crashed, signal, exit_status, timeout, cancelled,
     result_too_large, no_runner,
     sighup, sigint, sigquit, sigill, sigtrap, sigabrt, sigbus, sigfpe, sigkill, sigusr1,
     sigsegv, sigusr2, sigpipe, sigalrm, sigterm, sigstkflt, sigchld, sigcont, sigstop,
     sigtstp, sigttin, sigttou, sigurg, sigxcpu, sigxfsz, sigvtalrm, sigprof, sigwinch,
     sigio, sigpwr, sigsys, sigrtmin, sigrtmax].

%%%===================================================================
%%% Introspection
%%%===================================================================

%% @doc The node's budget: `limit' (the application environment now) and
%% `used': the new atoms pyport made for any pool since the node started
%% (every new atom counts in the node's budget).
-spec info() -> #{limit := non_neg_integer(), used := non_neg_integer()}.
info() ->
    #{limit => node_limit(), used => atomics:get(node_counter(), 1)}.

%% @doc New atoms counted in a pool's own budget (0 for a pool without
%% one, or that never made one).
-spec pool_info(atom()) -> #{used := non_neg_integer()}.
pool_info(Pool) ->
    case persistent_term:get(?POOL_KEY(Pool), undefined) of
        undefined -> #{used => 0};
        C -> #{used => atomics:get(C, 1)}
    end.

%%%===================================================================
%%% Internals
%%%===================================================================

node_limit() ->
    case pyport_config:max_new_atoms() of
        {ok, Limit} -> Limit;
        {error, _} -> 0
    end.

node_counter() ->
    counter(?NODE_KEY, 1).

pool_counter(Pool) ->
    counter(?POOL_KEY(Pool), 1).

%% Made once per key for the node's life. Pool starts (the callers that
%% make them) are serialised; a decode outside any pool before the first
%% pool starts (a test) may race with another and lose a count, no more.
counter(Key, Size) ->
    case persistent_term:get(Key, undefined) of
        undefined ->
            C = atomics:new(Size, [{signed, false}]),
            persistent_term:put(Key, C),
            C;
        C ->
            C
    end.
