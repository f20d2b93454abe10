%% @doc The `mounts' option of an HTTP pool (docs/http.md "Mounts"):
%% several apps on one server, each at a path prefix. Checked here; the
%% routing (longest prefix, whole segments) is the workers'
%% (`erlang._http._Mounts').
-module(pyport_http_mounts).

-export([check/2, app/1]).

-type mount() :: {Prefix :: iodata(), App :: iodata()}
               | {Prefix :: iodata(), App :: iodata(), #{interface => asgi | wsgi | auto}}.
-export_type([mount/0]).

%% @doc Checks `Mounts' (`App': the pool's `app', `<<>>' if none, which
%% is the mount at `/'). Returns the form the workers get:
%% `[[Prefix, App, Interface]]', `Interface' `<<>>' for the pool's own.
-spec check(term(), binary()) -> {ok, [[binary()]]}
                                 | {error, {invalid_mount, term()} | {duplicate_mount_prefix, binary()}}.
check(Mounts, App) when is_list(Mounts) ->
    Seen = case App of
               <<>> -> #{};
               _ -> #{<<"/">> => true}
           end,
    check(Mounts, Seen, []);
check(Mounts, _) ->
    {error, {invalid_mount, Mounts}}.

check([], _, Acc) ->
    {ok, lists:reverse(Acc)};
check([M | T], Seen, Acc) ->
    case mount(M) of
        {ok, [Prefix | _] = Checked} ->
            case Seen of
                #{Prefix := _} -> {error, {duplicate_mount_prefix, Prefix}};
                #{} -> check(T, Seen#{Prefix => true}, [Checked | Acc])
            end;
        error ->
            {error, {invalid_mount, M}}
    end;
check(Improper, _, _) ->
    {error, {invalid_mount, Improper}}.

mount({Prefix, App}) ->
    mount({Prefix, App, #{}});
mount({Prefix0, App0, Opts}) when is_map(Opts) ->
    Iface = case maps:get(interface, Opts, default) of
                default -> {ok, <<>>};
                If when If =:= asgi; If =:= wsgi; If =:= auto -> {ok, atom_to_binary(If)};
                _ -> error
            end,
    Known = maps:size(maps:without([interface], Opts)) =:= 0,
    case {prefix(Prefix0), app(App0), Iface, Known} of
        {{ok, Prefix}, {ok, App}, {ok, IfBin}, true} -> {ok, [Prefix, App, IfBin]};
        _ -> error
    end;
mount(_) ->
    error.

%% "/" or "/seg[/seg...]": no trailing slash, no empty segment, nothing
%% that is not a path (a query, a fragment, control characters).
prefix(P) ->
    case pyport_config:to_binary(P) of
        {ok, <<"/">>} ->
            {ok, <<"/">>};
        {ok, <<"/", Rest/binary>> = B} when byte_size(B) =< 1024 ->
            Segments = binary:split(Rest, <<"/">>, [global]),
            Bad = lists:member(<<>>, Segments)
                orelse unicode:characters_to_binary(B) =/= B
                orelse binary:match(B, [<<"?">>, <<"#">>, <<"%">>]) =/= nomatch
                orelse lists:any(fun(C) -> C < 16#21 orelse C =:= 16#7F end, binary_to_list(B)),
            case Bad of
                true -> error;
                false -> {ok, B}
            end;
        _ ->
            error
    end.

%% @doc An app spec, `"module:attr"' (both parts non-empty), as a binary.
-spec app(term()) -> {ok, binary()} | error.
app(App) ->
    case pyport_config:to_binary(App) of
        {ok, Bin} ->
            case binary:split(Bin, <<":">>) of
                [<<_, _/binary>>, <<_, _/binary>>] -> {ok, Bin};
                _ -> error
            end;
        error ->
            error
    end.
