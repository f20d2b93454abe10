%% @doc TLS options of HTTP pools (docs/http.md "TLS"): checked in the node
%% before any worker starts; each worker builds its own ssl.SSLContext from
%% the paths (erlang._http.tls_context), so no key material crosses the port.
-module(pyport_http_tls).

-export([keys/0, check/1, start_error/1]).

-export_type([error_reason/0]).

-type error_reason() :: {missing_tls_option, certfile | keyfile | cacertfile}
                      | {tls_file_unreadable, binary(), file:posix() | badarg | not_a_file}
                      | {invalid_tls_option, atom(), term()}
                      | {tls_error, binary()}.

-include_lib("kernel/include/file.hrl").

%% @doc The HTTP options this module checks.
-spec keys() -> [atom()].
keys() ->
    [certfile, keyfile, cacertfile, verify].

%% @doc Checks the TLS options among `Http' (pyport_http's options): none
%% of them is plain HTTP (`{ok, #{}}'); else both files readable now, and
%% the worker's options for them.
-spec check(map()) -> {ok, map()} | {error, error_reason()}.
check(Http) ->
    Tls = maps:with(keys(), Http),
    case Tls of
        _ when map_size(Tls) =:= 0 -> {ok, #{}};
        #{certfile := _, keyfile := _} -> check_all(Tls);
        #{certfile := _} -> {error, {missing_tls_option, keyfile}};
        #{} -> {error, {missing_tls_option, certfile}}
    end.

check_all(Tls) ->
    Verify = maps:get(verify, Tls, case Tls of
                                       #{cacertfile := _} -> verify_peer;
                                       #{} -> verify_none
                                   end),
    case {Verify, Tls} of
        {V, _} when V =/= verify_none, V =/= verify_peer ->
            {error, {invalid_tls_option, verify, V}};
        {verify_peer, #{cacertfile := _}} ->
            files([certfile, keyfile, cacertfile], Tls, #{verify => atom_to_binary(Verify)});
        {verify_peer, #{}} ->
            {error, {missing_tls_option, cacertfile}};
        {verify_none, _} ->
            files([certfile, keyfile, cacertfile], Tls, #{verify => atom_to_binary(Verify)})
    end.

files([], _, Acc) ->
    {ok, Acc};
files([K | T], Tls, Acc) ->
    case maps:find(K, Tls) of
        error ->
            files(T, Tls, Acc);
        {ok, Path0} ->
            case pyport_config:to_binary(Path0) of
                {ok, <<_, _/binary>> = Path} ->
                    case readable(Path) of
                        ok -> files(T, Tls, Acc#{K => Path});
                        {error, Why} -> {error, {tls_file_unreadable, Path, Why}}
                    end;
                _ ->
                    {error, {invalid_tls_option, K, Path0}}
            end
    end.

%% The node and the workers run as the same user: what the node can open,
%% the worker can (a sandboxed pool's may not: its start fails with tls_error).
readable(Path) ->
    case file:read_file_info(Path) of
        {ok, #file_info{type = regular}} ->
            case file:open(Path, [read, raw, binary]) of
                {ok, F} -> file:close(F);
                {error, _} = Error -> Error
            end;
        {ok, #file_info{type = directory}} -> {error, eisdir};
        {ok, _} -> {error, not_a_file};
        {error, _} = Error -> Error
    end.

%% @doc The worker's "TLS: ..." start error (erlang._http.tls_context) as
%% `{tls_error, Message}'; anything else is not TLS's.
-spec start_error(binary()) -> {ok, {tls_error, binary()}} | error.
start_error(Message) ->
    case binary:match(Message, <<"TLS: ">>) of
        {Pos, Len} -> {ok, {tls_error, binary:part(Message, Pos + Len, byte_size(Message) - Pos - Len)}};
        nomatch -> error
    end.
