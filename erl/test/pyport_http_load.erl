%% A load client for the HTTP suites' recycle and reload cases: GETs
%% `Path' in a loop on a keep-alive connection (`keepalive') or a new one
%% each time (`fresh') until told `stop', then reports `{Ok, Failed}' to
%% its parent. A request counts as ok only with a whole 200 response.
-module(pyport_http_load).

-export([client/4]).

%% How long a response may take: a reload on a loaded 2-CPU machine has
%% taken 12 s, with connections waiting in the listen queue meanwhile.
%% Slow is not failed; a refused or reset connection is.
-define(RECV_MS, 60000).

-spec client(pid(), inet:port_number(), iodata(), keepalive | fresh) -> ok.
client(Parent, Port, Path, Kind) ->
    loop(Parent, Port, Path, Kind, undefined, 0, 0).

loop(Parent, Port, Path, Kind, Sock0, Ok, Failed) ->
    receive
        stop ->
            catch gen_tcp:close(Sock0),
            Parent ! {self(), {Ok, Failed}},
            ok
    after 0 ->
            Sock = case Sock0 of
                       undefined ->
                           case gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}],
                                                ?RECV_MS) of
                               {ok, S} -> S;
                               {error, _} = E -> E
                           end;
                       S -> S
                   end,
            case one(Sock, Path, Kind) of
                {ok, keep} ->
                    loop(Parent, Port, Path, Kind, Sock, Ok + 1, Failed);
                {ok, close} ->
                    gen_tcp:close(Sock),
                    loop(Parent, Port, Path, Kind, undefined, Ok + 1, Failed);
                {error, Why} ->
                    ct:pal("~p ~p request failed: ~p (fresh connection: ~p)",
                           [erlang:system_time(millisecond) rem 100000, Kind, Why,
                            Sock0 =:= undefined]),
                    catch gen_tcp:close(Sock),
                    loop(Parent, Port, Path, Kind, undefined, Ok, Failed + 1)
            end
    end.

one({error, _} = E, _, _) ->
    E;
one(Sock, Path, Kind) ->
    Conn = case Kind of keepalive -> ""; fresh -> "Connection: close\r\n" end,
    case gen_tcp:send(Sock, ["GET ", Path, " HTTP/1.1\r\nHost: t\r\n", Conn, "\r\n"]) of
        ok -> response(Sock, <<>>);
        {error, _} = E -> E
    end.

response(Sock, Acc) ->
    case binary:split(Acc, <<"\r\n\r\n">>) of
        [Head, Body] ->
            Lines = binary:split(Head, <<"\r\n">>, [global]),
            {match, [Len]} = re:run(Head, "content-length: (\\d+)",
                                    [caseless, {capture, [1], binary}]),
            body(Sock, hd(Lines), Lines, binary_to_integer(Len), Body);
        [_] ->
            case gen_tcp:recv(Sock, 0, ?RECV_MS) of
                {ok, B} -> response(Sock, <<Acc/binary, B/binary>>);
                {error, Why} -> {error, {Why, Acc}}
            end
    end.

body(Sock, Status, Lines, Len, Body) when byte_size(Body) < Len ->
    case gen_tcp:recv(Sock, 0, ?RECV_MS) of
        {ok, B} -> body(Sock, Status, Lines, Len, <<Body/binary, B/binary>>);
        {error, Why} -> {error, {Why, body}}
    end;
body(_, <<"HTTP/1.1 200 ", _/binary>>, Lines, _, _) ->
    case lists:member(<<"connection: close">>, Lines) of
        true -> {ok, close};
        false -> {ok, keep}
    end;
body(_, Status, _, _, _) ->
    {error, Status}.
