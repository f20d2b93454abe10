%% @doc What a pool's Python code may reach in Erlang: the pool's `grants'
%% option, and its check on every REQUEST, NOTIFY and SCHEDULE a worker
%% sends (proto/PROTOCOL.md, "Python asks Erlang"). See docs/security.md.
%%
%% The worker is not trusted: whatever it sends, the node decides here what
%% it reaches. A sandboxed pool reaches nothing by default (no registered
%% function, no state, no pub/sub, no send, no RPC); its config grants them
%% one by one. A pool without a sandbox is granted `all' by default, and
%% `all' is a single pattern match per frame.
%%
%% The option (validated by {@link validate/1}):
%% ```
%% grants => all | none
%%         | #{functions => [Name],          % registered functions
%%           state_prefixes => [Prefix],     % shared state keys starting so
%%           topics => [Topic],              % publish / subscribe
%%           send => none | [RegName | pids],% erlang.send / whereis
%%           rpc => false | true | [{Module, Function}]}
%% '''
%% The policy is compiled once at pool start ({@link new/2}) into maps the
%% check looks up; refusals are counted per pool.
-module(pyport_grants).

-include_lib("kernel/include/logger.hrl").

-export([validate/1, default/1, new/2, request/3, notify/3, function/2, refused/2,
         error_reply/2, count/1, describe/1]).

-export_type([spec/0, grants/0, refusal/0]).

%% The validated option.
-type spec() :: all
              | #{functions := [binary()],
                  state_prefixes := [binary()],
                  topics := [term()],
                  send := [binary() | pids],
                  rpc := boolean() | [{binary(), binary()}]}.
%% The compiled policy of a pool.
-type grants() :: all
                | #{pool := atom(),
                    functions := #{binary() => true},
                    state_prefixes := [binary()],
                    topics := #{term() => true},
                    send := #{binary() | pids => true},
                    rpc := boolean() | #{{binary(), binary()} => true},
                    refused := counters:counters_ref()}.
%% What was refused, as text for the message ("rpc_call os:cmd").
-type refusal() :: {refused, unicode:chardata()}.

-define(KEYS, [functions, state_prefixes, topics, send, rpc]).
%% Refused NOTIFYs are logged for the first few, then every so many: a
%% hostile worker must not flood the log either.
-define(LOG_FIRST, 10).
-define(LOG_EVERY, 1000).
%% Worker-controlled names are cut to this many bytes in messages.
-define(NAME_MAX, 100).

%%%===================================================================
%%% Configuration
%%%===================================================================

%% @doc Validates a pool's `grants' option: `{unknown, Key}' for a key that
%% is not one, `{invalid, Key, Value}' for a bad value (`Key' is `grants'
%% for a value that is neither `all', `none' nor a map).
-spec validate(term()) -> {ok, spec() | default} | {error, {unknown, term()} | {invalid, atom(), term()}}.
validate(default) -> {ok, default};
validate(all) -> {ok, all};
validate(none) -> {ok, none_spec()};
validate(Map) when is_map(Map) ->
    case [K || K <- lists:sort(maps:keys(Map)), not lists:member(K, ?KEYS)] of
        [Unknown | _] -> {error, {unknown, Unknown}};
        [] -> check_keys(lists:sort(maps:to_list(maps:merge(none_spec(), Map))), #{})
    end;
validate(Other) ->
    {error, {invalid, grants, Other}}.

%% @doc The grants of a pool that set none: `all' without a sandbox,
%% nothing with one.
-spec default(pyport_sandbox:sandbox()) -> spec().
default(false) -> all;
default(_Sandbox) -> none_spec().

none_spec() ->
    #{functions => [], state_prefixes => [], topics => [], send => [], rpc => false}.

check_keys([], Acc) ->
    {ok, Acc};
check_keys([{Key, Value} | Rest], Acc) ->
    case check(Key, Value) of
        {ok, V} -> check_keys(Rest, Acc#{Key => V});
        error -> {error, {invalid, Key, Value}}
    end.

check(functions, L) -> names(L);
check(state_prefixes, L) when is_list(L) ->
    all_ok([case name(P) of {ok, B} -> {ok, B}; error -> error end || P <- L]);
check(topics, L) when is_list(L) -> {ok, [pyport_pubsub:topic(T) || T <- L]};
check(send, none) -> {ok, []};
check(send, L) when is_list(L) ->
    all_ok([case N of pids -> {ok, pids}; _ -> nonempty_name(N) end || N <- L]);
check(rpc, B) when is_boolean(B) -> {ok, B};
check(rpc, L) when is_list(L) ->
    all_ok([case MF of
                {M, F} when is_atom(M), is_atom(F) ->
                    {ok, {atom_to_binary(M, utf8), atom_to_binary(F, utf8)}};
                _ -> error
            end || MF <- L]);
check(_Key, _Value) -> error.

names(L) when is_list(L) -> all_ok([nonempty_name(N) || N <- L]);
names(_) -> error.

all_ok(Results) ->
    case lists:member(error, Results) of
        true -> error;
        false -> {ok, [V || {ok, V} <- Results]}
    end.

nonempty_name(N) ->
    case name(N) of
        {ok, <<_, _/binary>> = B} -> {ok, B};
        _ -> error
    end.

%% Names as Python sends them: atoms and strings compare as binaries.
name(A) when is_atom(A) -> {ok, atom_to_binary(A, utf8)};
name(B) when is_binary(B) -> {ok, B};
name(L) when is_list(L) ->
    try unicode:characters_to_binary(L) of
        B when is_binary(B) -> {ok, B};
        _ -> error
    catch error:badarg -> error
    end;
name(_) -> error.

%% @doc Compiles a pool's validated grants (at pool start): lookups by map
%% key on the path of each frame.
-spec new(atom(), pyport_config:pool_opts() | map()) -> grants().
new(Pool, Opts) ->
    Spec = case maps:get(grants, Opts, default) of
               default -> default(maps:get(sandbox, Opts, false));
               S -> S
           end,
    compile(Pool, Spec).

compile(_Pool, all) ->
    all;
compile(Pool, #{functions := Fs, state_prefixes := Ps, topics := Ts, send := Ss, rpc := Rpc}) ->
    Set = fun(L) -> maps:from_list([{X, true} || X <- L]) end,
    #{pool => Pool,
      functions => Set(Fs),
      state_prefixes => Ps,
      topics => Set(Ts),
      send => Set(Ss),
      rpc => case Rpc of
                 _ when is_boolean(Rpc) -> Rpc;
                 MFs -> Set(MFs)
             end,
      refused => counters:new(1, [write_concurrency])}.

%% @doc The grants as the config would write them (for pool_info and logs).
-spec describe(grants()) -> all | map().
describe(all) -> all;
describe(#{functions := Fs, state_prefixes := Ps, topics := Ts, send := Ss, rpc := Rpc}) ->
    #{functions => maps:keys(Fs), state_prefixes => Ps, topics => maps:keys(Ts),
      send => maps:keys(Ss),
      rpc => case Rpc of _ when is_boolean(Rpc) -> Rpc; _ -> maps:keys(Rpc) end}.

%%%===================================================================
%%% The check, per frame
%%%===================================================================

%% @doc May a worker of the pool make REQUEST `Op' with `Args'?
-spec request(binary(), [term()], grants()) -> ok | refusal().
request(_Op, _Args, all) -> ok;
request(<<"call">>, [Name | _], G) -> function(Name, G);
request(<<"registered">>, _, _G) -> ok;            % answered false unless granted
request(<<"state_get">>, [Key], G) -> state_key(<<"state_get">>, Key, G);
request(<<"state_set">>, [Key | _], G) -> state_key(<<"state_set">>, Key, G);
request(<<"state_delete">>, [Key], G) -> state_key(<<"state_delete">>, Key, G);
request(<<"state_incr">>, [Key | _], G) -> state_key(<<"state_incr">>, Key, G);
request(<<"state_get_multi">>, [Keys], G) when is_list(Keys) ->
    first_refusal([state_key(<<"state_get_multi">>, K, G) || K <- Keys]);
request(<<"state_keys">>, [Prefix], G) -> state_key(<<"state_keys">>, Prefix, G);
request(<<"state_clear">>, [], _G) -> {refused, <<"state_clear (it needs grants => all)">>};
request(<<"publish">>, [Topic | _], G) -> topic(<<"publish on">>, Topic, G);
request(<<"subscribe">>, [Topic | _], G) -> topic(<<"subscribe to">>, Topic, G);
request(<<"unsubscribe">>, _, _G) -> ok;           % ends only its own subscription
request(<<"send">>, [Dest | _], G) -> send(Dest, G);
request(<<"whereis">>, [Name], G) -> send_name(<<"whereis">>, Name, G);
request(<<"node">>, [], _G) -> ok;
request(<<"nodes">>, [], #{rpc := false}) -> {refused, <<"nodes (it needs rpc)">>};
request(<<"nodes">>, [], _G) -> ok;
request(<<"rpc_call">>, [_Node, M, F | _], G) -> rpc(<<"rpc_call">>, M, F, G);
%% Hooks reach code in other workers and in the node (pyport_hooks).
request(<<"hook">>, _, _G) -> {refused, <<"hooks (they need grants => all)">>};
request(Op, _Args, _G) ->
    %% An unknown operation, or known with the wrong arguments: nothing is
    %% reached, and pyport_callback answers what is wrong with it.
    case lists:member(Op, [<<"call">>, <<"state_get">>, <<"state_set">>, <<"state_delete">>,
                           <<"state_incr">>, <<"state_get_multi">>, <<"state_keys">>,
                           <<"publish">>, <<"subscribe">>, <<"send">>, <<"whereis">>,
                           <<"rpc_call">>]) of
        true -> {refused, [text(Op), <<" with these arguments">>]};
        false -> ok
    end.

%% @doc May a worker of the pool send NOTIFY `Op' with `Args'? Logging,
%% spans, its own subscriptions and cancels are always allowed: they reach
%% nothing.
-spec notify(binary(), term(), grants()) -> ok | refusal().
notify(_Op, _Args, all) -> ok;
notify(<<"cast">>, [Name | _], G) -> function(Name, G);
notify(<<"rpc_cast">>, [_Node, M, F | _], G) -> rpc(<<"rpc_cast">>, M, F, G);
notify(<<"cast">>, _, _G) -> {refused, <<"cast with these arguments">>};
notify(<<"rpc_cast">>, _, _G) -> {refused, <<"rpc_cast with these arguments">>};
notify(_Op, _Args, _G) -> ok.

%% @doc May the pool's code call the registered function `Name' (erlang.call,
%% erlang.cast, erlang.schedule)?
-spec function(term(), grants()) -> ok | refusal().
function(_Name, all) -> ok;
function(Name, #{functions := Fs}) ->
    case name(Name) of
        {ok, B} when is_map_key(B, Fs) -> ok;
        _ -> {refused, [<<"function ">>, text(Name)]}
    end.

%% @doc Counts a refusal of the pool; logs it for a NOTIFY (which has no
%% answer to carry it), the first few times and then every so many.
-spec refused(grants(), {notify, refusal(), map()} | request) -> ok.
refused(all, _) ->
    ok;
refused(#{refused := C}, request) ->
    counters:add(C, 1, 1);
refused(#{refused := C} = G, {notify, {refused, What}, Meta}) ->
    counters:add(C, 1, 1),
    N = counters:get(C, 1),
    case N =< ?LOG_FIRST orelse N rem ?LOG_EVERY =:= 0 of
        true ->
            ?LOG_WARNING("pyport: ~ts: NOTIFY dropped (~b refused on this pool so far)",
                         [message(G, What), N], Meta);
        false ->
            ok
    end.

%% @doc The error REPLY fields for a refusal: Python raises PermissionError.
-spec error_reply(grants(), refusal()) -> {error, binary(), binary(), term()}.
error_reply(G, {refused, What}) ->
    Msg = message(G, What),
    {error, <<"PermissionError">>, Msg, {not_granted, Msg}}.

%% @doc Refusals so far on the pool (0 for a pool granted `all').
-spec count(grants()) -> non_neg_integer().
count(all) -> 0;
count(#{refused := C}) -> counters:get(C, 1).

%%%===================================================================
%%% Internals
%%%===================================================================

message(#{pool := Pool}, What) ->
    unicode:characters_to_binary(io_lib:format("pool ~tp is not granted ~ts", [Pool, What])).

first_refusal(Results) ->
    case [R || {refused, _} = R <- Results] of
        [] -> ok;
        [First | _] -> First
    end.

state_key(Op, Key, #{state_prefixes := Ps}) when is_binary(Key) ->
    case lists:any(fun(P) -> prefixed(Key, P) end, Ps) of
        true -> ok;
        false -> {refused, [Op, " ", text(Key)]}
    end;
state_key(Op, Key, _G) ->
    %% Prefixes name binary keys only.
    {refused, [Op, " ", text(Key)]}.

prefixed(Key, P) ->
    N = byte_size(P),
    byte_size(Key) >= N andalso binary_part(Key, 0, N) =:= P.

topic(What, Topic, #{topics := Ts}) ->
    case is_map_key(pyport_pubsub:topic(Topic), Ts) of
        true -> ok;
        false -> {refused, [What, " topic ", text(Topic)]}
    end.

send(Pid, #{send := Ss}) when is_pid(Pid) ->
    case is_map_key(pids, Ss) of
        true -> ok;
        false -> {refused, <<"send to a pid">>}
    end;
send({Name, _Node}, G) ->
    send_name(<<"send to">>, Name, G);
send(Name, G) ->
    send_name(<<"send to">>, Name, G).

send_name(What, Name, #{send := Ss}) ->
    case name(Name) of
        {ok, B} when is_map_key(B, Ss) -> ok;
        _ -> {refused, [What, " ", text(Name)]}
    end.

rpc(_Op, _M, _F, #{rpc := true}) ->
    ok;
rpc(Op, M, F, #{rpc := Rpc}) ->
    case {name(M), name(F)} of
        {{ok, Mb}, {ok, Fb}} when is_map(Rpc), is_map_key({Mb, Fb}, Rpc) -> ok;
        _ -> {refused, [Op, " ", text(M), ":", text(F)]}
    end.

%% A worker-sent name, for a message: bounded, valid UTF-8, never an atom.
text(T) ->
    B = case name(T) of
            {ok, Bin} ->
                case unicode:characters_to_binary(Bin) of
                    Bin -> Bin;
                    _ -> printed(Bin)              % not UTF-8: shown as a term
                end;
            error ->
                printed(T)
        end,
    case byte_size(B) > ?NAME_MAX of
        true -> [safe_prefix(B, ?NAME_MAX), <<"...">>];
        false -> B
    end.

printed(T) ->
    unicode:characters_to_binary(io_lib:format("~0tp", [T], [{chars_limit, ?NAME_MAX}])).

%% At most N bytes of B (valid UTF-8), cut at a character boundary.
safe_prefix(B, N) ->
    case unicode:characters_to_binary(binary_part(B, 0, N)) of
        Bin when is_binary(Bin) -> Bin;
        _ -> safe_prefix(B, N - 1)
    end.
