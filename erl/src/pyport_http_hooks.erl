%% @doc The `hooks' of an HTTP pool (docs/http.md "Hooks"): Erlang funs a
%% worker runs on a request (`on_request'), on a response's status and
%% headers (`on_response') and on an app's failure (`on_error').
%%
%% A worker of a pool with hooks asks the node over its link to Erlang
%% (`erlang.call' of the registered function `pyport.http_hook', served
%% by pyport_callback in a process of its own); a pool without hooks
%% never asks. Here each hook runs in a process of its own, bounded by
%% `hook_timeout'; its answer is checked before the worker gets it. A hook
%% that crashes, times out or answers something else is logged and the
%% worker answers 500.
-module(pyport_http_hooks).

-include_lib("kernel/include/logger.hrl").

-export([check/2, install/3, uninstall/1, dispatch/1]).

-export_type([hooks/0, request/0, response/0]).

-type hooks() :: #{on_request => fun((request()) -> request() | respond()) | {module(), atom()},
                   on_response => fun((response()) -> response()) | {module(), atom()},
                   on_error => fun((#{type := binary(), message := binary()}, request()) ->
                                          {200..999, [{iodata(), iodata()}], iodata()}
                                        | {200..999, iodata()} | default)
                             | {module(), atom()}}.
-type header() :: {binary(), binary()}.
-type request() :: #{method := binary(), path := binary(), query_string := binary(),
                     headers := [header()], client := {binary(), inet:port_number()} | undefined,
                     root_path := binary()}.
-type response() :: #{status := 100..999, headers := [header()],
                      method := binary(), path := binary()}.
-type respond() :: {respond, 200..999, [{iodata(), iodata()}], iodata()}.

-define(FUNCTION, <<"pyport.http_hook">>).
-define(KEY(Pool), {?MODULE, Pool}).
-define(MAX_HEADERS, 1000).
-define(MAX_HEADER_BYTES, 1 bsl 20).
-define(MAX_BODY, 64 bsl 20).

%% @doc Checks the `hooks' option: a map of `on_request' (arity 1),
%% `on_response' (arity 1) and `on_error' (arity 2), each a fun or
%% `{Module, Function}' (sys.config). Returns the names set.
-spec check(atom(), term()) -> {ok, [binary()]} | {error, {invalid_http_option, atom(), hooks, term()}}.
check(Name, Hooks) when is_map(Hooks) ->
    Ok = maps:fold(fun(K, V, Acc) -> Acc andalso valid(K, V) end, true, Hooks),
    case Ok of
        true -> {ok, [atom_to_binary(K) || K <- lists:sort(maps:keys(Hooks))]};
        false -> {error, {invalid_http_option, Name, hooks, Hooks}}
    end;
check(Name, Hooks) ->
    {error, {invalid_http_option, Name, hooks, Hooks}}.

valid(K, F) when is_function(F) ->
    {arity, A} = erlang:fun_info(F, arity),
    arity(K) =:= A;
valid(K, {M, F}) when is_atom(M), is_atom(F) ->
    arity(K) =/= none;
valid(_, _) ->
    false.

arity(on_request) -> 1;
arity(on_response) -> 1;
arity(on_error) -> 2;
arity(_) -> none.

%% @doc Makes pool `Pool''s hooks the ones its workers' calls run.
-spec install(atom(), hooks(), pos_integer()) -> ok.
install(Pool, Hooks, TimeoutMs) ->
    persistent_term:put(?KEY(atom_to_binary(Pool)), {Hooks, TimeoutMs}),
    case pyport_registry:is_registered(?FUNCTION) of
        true -> ok;
        false -> ok = pyport_registry:register(?FUNCTION, ?MODULE, dispatch)
    end.

%% @doc Forgets pool `Pool''s hooks.
-spec uninstall(atom()) -> ok.
uninstall(Pool) ->
    _ = persistent_term:erase(?KEY(atom_to_binary(Pool))),
    ok.

%% @doc What a worker's `pyport.http_hook' call runs:
%% `[Pool, Which | Args]' from the worker (hostile input: checked), the
%% answer the worker understands (`[<<"continue">>, ...]',
%% `[<<"respond">>, Status, Headers, Body]', `[<<"default">>]' or
%% `[<<"error">>, Why]').
-spec dispatch([term()]) -> [term()].
dispatch([Pool, Which, Data | More]) when is_binary(Pool), is_binary(Which) ->
    case persistent_term:get(?KEY(Pool), undefined) of
        undefined ->
            [<<"error">>, <<"no hooks for this pool">>];
        {Hooks, Timeout} ->
            case {Which, More} of
                {<<"on_request">>, []} -> run(Pool, Hooks, on_request, [request(Data)], Timeout);
                {<<"on_response">>, []} -> run(Pool, Hooks, on_response, [response(Data)], Timeout);
                {<<"on_error">>, [Req]} -> run(Pool, Hooks, on_error, [error_info(Data), request(Req)], Timeout);
                _ -> [<<"error">>, <<"unknown hook">>]
            end
    end;
dispatch(_) ->
    [<<"error">>, <<"bad hook call">>].

run(Pool, Hooks, Which, Args, Timeout) ->
    case maps:get(Which, Hooks, undefined) of
        undefined ->
            [<<"error">>, <<"no such hook">>];
        Hook ->
            case call(Hook, Args, Timeout) of
                {ok, Result} ->
                    case answer(Which, Result, Args) of
                        {ok, Answer} ->
                            Answer;
                        error ->
                            ?LOG_WARNING("pyport: HTTP pool ~ts: hook ~ts answered ~0P, which is "
                                         "not what it may answer (docs/http.md \"Hooks\"): 500",
                                         [Pool, Which, Result, 12], #{domain => [pyport]}),
                            [<<"error">>, <<"invalid hook result">>]
                    end;
                {error, Why} ->
                    ?LOG_WARNING("pyport: HTTP pool ~ts: hook ~ts failed: ~0P: 500",
                                 [Pool, Which, Why, 20], #{domain => [pyport]}),
                    [<<"error">>, <<"hook failed">>]
            end
    end.

%% The hook in a process of its own: a crash or a hang costs only it. The
%% process exits with the hook's result, on purpose.
-dialyzer({nowarn_function, call/3}).
call(Hook, Args, Timeout) ->
    {Pid, Ref} = spawn_monitor(fun() ->
                                       R = case Hook of
                                               {M, F} -> apply(M, F, Args);
                                               Fun -> apply(Fun, Args)
                                           end,
                                       exit({done, R})
                               end),
    receive
        {'DOWN', Ref, process, Pid, {done, R}} -> {ok, R};
        {'DOWN', Ref, process, Pid, Why} -> {error, Why}
    after Timeout ->
            exit(Pid, kill),
            receive {'DOWN', Ref, process, Pid, _} -> ok end,
            {error, {timeout, Timeout}}
    end.

%% ---- what the worker sent ------------------------------------------------

request(#{<<"method">> := M, <<"path">> := P} = D) ->
    #{method => bin(M), path => bin(P), query_string => bin(maps:get(<<"query_string">>, D, <<>>)),
      headers => headers_in(maps:get(<<"headers">>, D, [])),
      client => case maps:get(<<"client">>, D, none) of
                    {H, Port} when is_binary(H), is_integer(Port) -> {H, Port};
                    _ -> undefined
                end,
      root_path => bin(maps:get(<<"root_path">>, D, <<>>))};
request(_) ->
    #{method => <<>>, path => <<>>, query_string => <<>>, headers => [], client => undefined,
      root_path => <<>>}.

response(#{<<"status">> := S} = D) when is_integer(S) ->
    #{status => S, headers => headers_in(maps:get(<<"headers">>, D, [])),
      method => bin(maps:get(<<"method">>, D, <<>>)), path => bin(maps:get(<<"path">>, D, <<>>))};
response(_) ->
    #{status => 500, headers => [], method => <<>>, path => <<>>}.

error_info(#{<<"type">> := T, <<"message">> := M}) -> #{type => bin(T), message => bin(M)};
error_info(_) -> #{type => <<>>, message => <<>>}.

%% Malformed entries are dropped (the worker's own are well-formed).
headers_in(L) when is_list(L) ->
    [{K, V} || H <- L, {K, V} <- pair(H)];
headers_in(_) ->
    [].

pair({K, V}) when is_binary(K), is_binary(V), K =/= <<>> -> [{K, V}];
pair([K, V]) -> pair({K, V});
pair(_) -> [].

bin(B) when is_binary(B) -> B;
bin(_) -> <<>>.

%% ---- what the hook answered ---------------------------------------------

answer(on_request, {respond, Status, Headers, Body}, _) ->
    respond(Status, Headers, Body);
answer(on_request, #{} = New, [Old]) ->
    Req = maps:merge(Old, New),
    #{method := M, path := P, query_string := Q, headers := H} = Req,
    case {token(M), path(P), query(Q), headers_out(H)} of
        {{ok, M1}, {ok, P1}, {ok, Q1}, {ok, H1}} -> {ok, [<<"continue">>, M1, P1, Q1, H1]};
        _ -> error
    end;
answer(on_response, #{} = New, [Old]) ->
    #{status := S, headers := H} = maps:merge(Old, New),
    case {S, headers_out(H)} of
        {S, {ok, H1}} when is_integer(S), S >= 200, S =< 999 -> {ok, [<<"continue">>, S, H1]};
        _ -> error
    end;
answer(on_error, default, _) ->
    {ok, [<<"default">>]};
answer(on_error, {Status, Headers, Body}, _) ->
    respond(Status, Headers, Body);
answer(on_error, {Status, Body}, _) ->
    respond(Status, [{<<"content-type">>, <<"text/plain; charset=utf-8">>}], Body);
answer(_, _, _) ->
    error.

respond(Status, Headers, Body) when is_integer(Status), Status >= 200, Status =< 999 ->
    case {headers_out(Headers), iodata(Body)} of
        {{ok, H}, {ok, B}} when byte_size(B) =< ?MAX_BODY -> {ok, [<<"respond">>, Status, H, {bytes, B}]};
        _ -> error
    end;
respond(_, _, _) ->
    error.

%% Headers as the worker takes them: (bytes, bytes) tuples, names
%% lower-cased tokens, values without CR, LF or NUL.
headers_out(L) when is_list(L), length(L) =< ?MAX_HEADERS ->
    try
        H = [begin
                 {ok, N} = iodata(K),
                 {ok, Vb} = iodata(V),
                 true = N =/= <<>> andalso is_token(N),
                 nomatch = binary:match(Vb, [<<"\r">>, <<"\n">>, <<0>>]),
                 {N, Vb}
             end || {K, V} <- L],
        true = length(H) =:= length(L),
        true = lists:sum([byte_size(N) + byte_size(V) || {N, V} <- H]) =< ?MAX_HEADER_BYTES,
        {ok, [{{bytes, string:lowercase(N)}, {bytes, V}} || {N, V} <- H]}
    catch
        error:_ -> error
    end;
headers_out(_) ->
    error.

token(M) ->
    case iodata(M) of
        {ok, B} when byte_size(B) > 0, byte_size(B) =< 32 ->
            case is_token(B) of
                true -> {ok, B};
                false -> error
            end;
        _ -> error
    end.

is_token(B) ->
    lists:all(fun(C) -> (C >= $a andalso C =< $z) orelse (C >= $A andalso C =< $Z)
                            orelse (C >= $0 andalso C =< $9)
                            orelse lists:member(C, "!#$%&'*+-.^_`|~")
              end, binary_to_list(B)).

path(P) ->
    case iodata(P) of
        {ok, <<"/", _/binary>> = B} when byte_size(B) =< 65536 ->
            case unicode:characters_to_binary(B) =:= B andalso no_ctl(B) of
                true -> {ok, B};
                false -> error
            end;
        _ -> error
    end.

query(Q) ->
    case iodata(Q) of
        {ok, B} when byte_size(B) =< 65536 ->
            case no_ctl(B) andalso binary:match(B, [<<" ">>, <<"#">>]) =:= nomatch of
                true -> {ok, {bytes, B}};
                false -> error
            end;
        _ -> error
    end.

no_ctl(B) ->
    lists:all(fun(C) -> C >= 16#20 andalso C =/= 16#7F end, binary_to_list(B)).

iodata(B) when is_binary(B) -> {ok, B};
iodata(L) when is_list(L) ->
    try {ok, iolist_to_binary(L)} catch error:_ -> error end;
iodata(A) when is_atom(A), A =/= undefined -> {ok, atom_to_binary(A)};
iodata(_) -> error.
