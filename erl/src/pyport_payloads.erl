%% @doc Big payloads off the pipe (proto/PROTOCOL.md, "Payloads"; and
%% docs/performance.md, "Payloads off the pipe").
%%
%% Binaries of at least the pool's `payload_threshold' bytes travel through
%% one file per worker on tmpfs instead of the pipe: the port owner creates
%% it (mode 0600, in a fresh 0700 directory) when the OS process has said
%% hello, the worker opens it (CONTROL `payloads') and unlinks it and its
%% directory, so only the two open descriptors keep it: nothing is left on
%% disk however either process ends.
%%
%% The file: a 4 KiB header, `?IN_SLOTS' regions that callers take for a
%% request's arguments, then `?OUT_SLOTS' regions the worker takes for an
%% answer; each region is the pool's max_frame_size (page-rounded). The
%% node never opens anything the worker names: it reads and writes only
%% the file it created, through the descriptor it opened, and checks every
%% offset and length a worker sends against the region the worker could
%% have used and against max_frame_size before it reads a byte.
%%
%% - Arguments: the encoder leaves an ext 7 placeholder (form, offset in
%%   the request's region, length) for each big binary (encoding/1);
%%   place/4, once the request's worker is known, takes a free region
%%   (atomics, shared by callers), writes the binaries there in one
%%   `pwrite' and wraps the frame in LENT `[14, Id, Token, Base, Frame]'.
%%   Without a free region (or file) the request is encoded again with
%%   the binaries in the frame.
%%   The region is the caller's until the owner has the request
%%   (adopt/2; the file server frees it if the caller dies first), then
%%   the owner's until the answer (answered/1) or the OS process's exit
%%   (teardown/2).
%% - Answers: the worker writes big binaries into an answer region, marks
%%   it busy in the header and sends placeholders with absolute offsets;
%%   the caller's decoder reads them (read/5) and clears the mark once the
%%   whole answer is decoded (done/0). An answer nobody waits for any more
%%   (its caller timed out, drop/3, or died, bind/2) is released unread by
%%   the owner.
%%
%% The file's one descriptor belongs to a small process of its own per
%% worker (the file server, file_loop/1), started by the port owner: it
%% creates the file, and callers ask it to write a request's binaries and
%% to read an answer's (messages carry the binaries by reference, no
%% copy). So nobody uses a handle it did not open, callers queue at the
%% server instead of colliding on a busy handle, a caller killed
%% mid-operation holds nothing up, and the descriptor closes with the
%% server, which ends with its owner. The file server also holds each
%% answer region for the one decode that reads it, until that decode is
%% done (or its process dies): another answer naming the region meanwhile
%% is refused. An answer is bound to the file server
%% of the OS process that sent it (bind/1), not to the slot: read after
%% that process was replaced, it finds its file gone, not the next one's.
-module(pyport_payloads).

-export([init_table/0, setup/3, teardown/2, adopt/2, answered/1, drop/3, bind/1, bind/2,
         caller/2, forget/1]).
-export([encoding/1, place/4, limits/2, read/5, done/0]).
-export([placeholder/2, cancel/0, unplace/3]).
-export([lost/0, is_lost/1]).

-define(TABLE, pyport_payloads).
-define(HEADER, 4096).
-define(STATES_AT, 64).
-define(IN_SLOTS, 8).
-define(OUT_SLOTS, 8).
%% How long the owner waits for its file server to create the file.
-define(CREATE_TIMEOUT, 5000).
-define(EXT_PAYLOAD, 7).
-define(LENT, 14).
-define(RESULT, 16).
%% A request region's word once the owner has the request (adopt/2): the
%% request's id with this bit.
-define(ADOPTED, (1 bsl 63)).
%% The default of the pool option payload_threshold (pyport_config):
%% measured, docs/performance.md.
-define(DEFAULT_THRESHOLD, 256 * 1024).
%% Process dictionary keys: the encoder's placeholders (a caller, between
%% encoding/1 and place/4), the answer regions a decode read (done/0), and
%% the owner's atomics and file (answered/1, bind/1).
-define(BLOBS, '$pyport_payload_blobs').
-define(READ, '$pyport_payload_read').
-define(OWNER, '$pyport_payload_owner').
%% The owner's: {?CALLER, Alias} => the process that decodes that call's
%% answer.
-define(CALLER, '$pyport_payload_caller').

%% Where an answer's placeholders are read: the file server of the OS
%% process that sent it, its region size and max_frame_size.
-type source() :: {pid(), pos_integer(), pos_integer()}.
-export_type([source/0]).

%% @doc Creates the node's table of payload files (one row per worker that
%% has one). Called by pyport_sup, which owns it.
-spec init_table() -> ok.
init_table() ->
    _ = ets:new(?TABLE, [named_table, public, set, {read_concurrency, true}]),
    ok.

%% @doc Called by the port owner after its OS process said hello: creates
%% the payload file and returns the init step that makes the worker open
%% it (none for a pool without payloads, a sandboxed one, or when the file
%% cannot be made: then everything uses the pipe, as the log says).
-spec setup(atom(), pos_integer(), map()) -> [{payloads, {control, binary(), list()}}].
setup(Pool, Slot, Opts) ->
    teardown(Pool, Slot),
    case threshold(Opts) of
        undefined ->
            [];
        Threshold ->
            Max = maps:get(max_frame_size, Opts),
            SlotSize = (Max + 4095) div 4096 * 4096,
            %% One per request region (the id of the request holding it,
            %% with ?ADOPTED once its owner has it; or 0), then how many are
            %% held.
            Atomics = atomics:new(?IN_SLOTS + 1, [{signed, false}]),
            case start_file(SlotSize, Atomics) of
                {ok, Server, Path} ->
                    Token = rand:uniform(1 bsl 62),
                    true = ets:insert(?TABLE, {{Pool, Slot}, Server, Token, SlotSize, Atomics, Max,
                                               Path}),
                    put(?OWNER, {Atomics, {Server, SlotSize, Max}}),
                    [{payloads, {control, <<"payloads">>,
                                 [unicode:characters_to_binary(Path), Token, SlotSize,
                                  ?IN_SLOTS, ?OUT_SLOTS, Threshold]}}];
                {error, Why} ->
                    logger:warning("pyport worker ~tp/~b: no payload file (~tp): big binaries "
                                   "use the pipe", [Pool, Slot, Why],
                                   #{domain => [pyport, payloads]}),
                    []
            end
    end.

threshold(#{sandbox := Sandbox}) when Sandbox =/= false ->
    %% The sandbox's mount namespace has no /dev/shm of the node's, and its
    %% confinement would have to let the file through: it keeps the pipe.
    undefined;
threshold(Opts) ->
    case maps:get(payload_threshold, Opts, ?DEFAULT_THRESHOLD) of
        N when is_integer(N) -> N;
        infinity -> undefined
    end.

%% The file server: created here, the file made by it (so that the
%% descriptor is its own).
start_file(SlotSize, Atomics) ->
    Base = case os:getenv("PYPORT_PAYLOAD_DIR") of
               false -> "/dev/shm";
               D -> D
           end,
    %% The random part: a directory left by a VM that had this OS pid
    %% before (killed before its worker could unlink) is never reused.
    Dir = filename:join(Base, lists:flatten(io_lib:format("pyport-~s-~b-~.16b",
                                                         [os:getpid(),
                                                          erlang:unique_integer([positive]),
                                                          rand:uniform(1 bsl 48)]))),
    Path = filename:join(Dir, "payloads"),
    Owner = self(),
    {Server, Mon} = spawn_monitor(fun() -> file_init(Owner, Path, SlotSize, Atomics) end),
    receive
        {Server, created} ->
            erlang:demonitor(Mon, [flush]),
            {ok, Server, Path};
        {'DOWN', Mon, process, Server, Why} ->
            {error, Why}
    after ?CREATE_TIMEOUT ->
            exit(Server, kill),
            erlang:demonitor(Mon, [flush]),
            remove(Path),
            {error, timeout}
    end.

remove(Path) ->
    %% The worker unlinked them when it opened the file; not if it died
    %% first.
    _ = file:delete(Path),
    _ = file:del_dir(filename:dirname(Path)),
    ok.

%% @doc The worker's payload file is gone (its OS process exited, or the
%% owner stops): the regions go with it.
-spec teardown(atom(), pos_integer()) -> ok.
teardown(Pool, Slot) ->
    erase(?OWNER),
    case ets:take(?TABLE, {Pool, Slot}) of
        [{_, Server, _, _, _, _, Path}] ->
            %% A new gen_server of the slot may find the row of one that
            %% died: its server ended with it.
            Server ! stop,
            remove(Path);
        [] ->
            ok
    end.

%% @doc The port owner got call Id's frame: a region its caller took for
%% it is the owner's from now on (freed by answered/1), no longer the
%% caller's (freed by the file server if the caller dies before its
%% request reaches the owner). `lost': the caller died and the region was
%% freed, or it belongs to the file of an OS process since replaced; the
%% frame must not be sent.
-spec adopt(pos_integer(), iodata()) -> ok | lost.
adopt(Id, [<<16#95, ?LENT>> | _]) ->
    case get(?OWNER) of
        {Atomics, {Server, _, _}} ->
            case adopt(Atomics, Id, ?IN_SLOTS) of
                {ok, I} -> Server ! {adopted, I, Id}, ok;
                lost -> lost
            end;
        undefined ->
            lost
    end;
adopt(_, _) ->
    ok.

adopt(_, _, 0) ->
    lost;
adopt(Atomics, Id, I) ->
    case atomics:compare_exchange(Atomics, I, Id, Id bor ?ADOPTED) of
        ok -> {ok, I};
        _ -> adopt(Atomics, Id, I - 1)
    end.

%% @doc The answer to a request adopt/2 found `lost' (the worker says the
%% same of a LENT frame naming another file): its caller sends it again
%% with the binaries in the frame (is_lost/1).
-spec lost() -> {error, {'PayloadError', binary()}}.
lost() ->
    {error, {'PayloadError', <<"LENT frame for another payload file">>}}.

%% @doc Whether an answer is lost/0's, from the owner or the worker.
-spec is_lost(term()) -> boolean().
is_lost({error, {Type, <<"LENT frame for another payload file", _/binary>>}}) ->
    Type =:= 'PayloadError' orelse Type =:= <<"PayloadError">>;
is_lost(_) ->
    false.

%% @doc The port owner got the answer to request Id: the region its
%% arguments used (if any) is free again.
-spec answered(pos_integer()) -> ok.
answered(Id) ->
    case get(?OWNER) of
        undefined ->
            ok;
        {Atomics, _} ->
            %% Nearly every answer: no region is held, nothing to scan.
            case atomics:get(Atomics, ?IN_SLOTS + 1) of
                0 -> ok;
                _ -> release_in(Atomics, Id, ?IN_SLOTS)
            end
    end.

release_in(_, _, 0) ->
    ok;
release_in(Atomics, Id, I) ->
    case atomics:get(Atomics, I) bxor Id of
        X when X =:= 0; X =:= ?ADOPTED ->
            atomics:put(Atomics, I, 0),
            atomics:sub(Atomics, ?IN_SLOTS + 1, 1);
        _ ->
            release_in(Atomics, Id, I - 1)
    end.

%% @doc Called by the port owner on a RESULT it forwards: the answer names
%% this OS process's file (read/5 later reads that file, or finds it gone,
%% never the file of the process that replaced it).
-spec bind(term()) -> term().
bind({?RESULT, Rest} = Reply) ->
    case get(?OWNER) of
        {_, Source} -> {?RESULT, Rest, Source};
        undefined -> Reply
    end;
bind(Reply) ->
    Reply.

%% @doc The port owner got a call whose answer Caller decodes (bind/2).
-spec caller(reference(), pid()) -> ok.
caller(Alias, Caller) ->
    case get(?OWNER) of
        undefined -> ok;
        _ -> put({?CALLER, Alias}, Caller), ok
    end.

%% @doc The call to Alias was abandoned (its caller timed out): its
%% answer is dropped (drop/3), not sent.
-spec forget(reference()) -> ok.
forget(Alias) ->
    _ = erase({?CALLER, Alias}),
    ok.

%% @doc bind/1 for a call's answer to Alias; an answer whose caller died
%% (killed: one that timed out is handled by drop/3) has its answer
%% regions released unread.
-spec bind(reference(), term()) -> term().
bind(Alias, Reply) ->
    case erase({?CALLER, Alias}) of
        Caller when is_pid(Caller) ->
            case is_process_alive(Caller) of
                true -> bind(Reply);
                false -> drop(Reply), Reply
            end;
        _ ->
            bind(Reply)
    end.

%% @doc An answer nobody waits for (its caller gave up): the answer
%% regions it names are released without being read.
-spec drop(term(), atom(), pos_integer()) -> ok.
drop(Reply, _Pool, _Slot) ->
    drop(Reply).

drop(Reply) ->
    case bind(Reply) of
        {?RESULT, Rest, Source} when is_binary(Rest) ->
            %% Decoded here, in the owner, only to find its placeholders:
            %% an answer without an ext 7 header's bytes has none, and
            %% costs a scan instead of a decode.
            case binary:match(Rest, <<16#c7, 17, ?EXT_PAYLOAD>>) of
                nomatch ->
                    ok;
                _ ->
                    Limits = limits(Source, (pyport_limits:process())#{payload_mode => release}),
                    _ = pyport_codec:decode_fields(1, Rest, Limits),
                    ok
            end;
        _ ->
            ok
    end.

%%%===================================================================
%%% Callers: arguments
%%%===================================================================

%% @doc Before a request's frame is encoded: binaries of at least the
%% pool's threshold become placeholders (see place/4).
-spec encoding(map()) -> ok.
encoding(Opts) ->
    case threshold(Opts) of
        undefined -> ok;
        Threshold -> put(?BLOBS, {Threshold, 0, []}), ok
    end.

%% @doc Called by the encoder (pyport_codec) for a binary B (form 0: a
%% binary, 1: `{bytes, B}'): the placeholder to write instead, or false to
%% write B itself.
-spec placeholder(binary(), 0 | 1) -> binary() | false.
placeholder(B, Form) ->
    case get(?BLOBS) of
        {Threshold, Total, Blobs} when byte_size(B) >= Threshold ->
            N = byte_size(B),
            put(?BLOBS, {Threshold, Total + N, [B | Blobs]}),
            <<16#c7, 17, ?EXT_PAYLOAD, Form, Total:64, N:64>>;
        _ ->
            false
    end.

%% @doc Forgets the placeholders of an encoding that is not sent.
-spec cancel() -> ok.
cancel() ->
    erase(?BLOBS),
    ok.

%% @doc Once the request's worker is known: its encoded frame, with the
%% placeholders' binaries written to a region of that worker's file and
%% the frame wrapped in LENT; `inline' when that cannot be done (no file,
%% no free region, a write that failed): the caller then encodes the
%% request again with the binaries in the frame.
%% A slot marked unavailable (its OS process restarting, draining or
%% stuck) gets the frame whole: a request queued for the next OS process
%% would name regions of a file that is gone by then.
-spec place(map(), pos_integer(), pos_integer(), iodata()) -> {ok, iodata()} | inline.
place(#{name := Pool} = Info, Slot, Id, Frame) ->
    case erase(?BLOBS) of
        {_, Total, [_ | _] = Blobs} ->
            case pyport_pool:available(Info, Slot) of
                true -> lent(Pool, Slot, Id, Total, lists:reverse(Blobs), Frame);
                false -> inline
            end;
        _ ->
            {ok, Frame}
    end.

lent(Pool, Slot, Id, Total, Blobs, Frame) ->
    case ets:lookup(?TABLE, {Pool, Slot}) of
        [{_, Server, Token, SlotSize, Atomics, _, _}] when Total =< SlotSize ->
            case claim(Atomics, Id, ?IN_SLOTS) of
                {ok, I} ->
                    Base = ?HEADER + (I - 1) * SlotSize,
                    case ask(Server, write, {I, Id, Base, Blobs}) of
                        ok ->
                            Size = iolist_size(Frame),
                            {ok, [<<16#95, ?LENT>>, int(Id), int(Token), int(Base),
                                  <<16#c6, Size:32>> | Frame]};
                        _ ->
                            release_in(Atomics, Id, ?IN_SLOTS),
                            inline
                    end;
                none ->
                    inline
            end;
        _ ->
            inline
    end.

%% @doc A request placed by place/4 that was not sent after all: its
%% region is free again.
-spec unplace(atom(), pos_integer(), pos_integer()) -> ok.
unplace(Pool, Slot, Id) ->
    case ets:lookup(?TABLE, {Pool, Slot}) of
        [{_, _, _, _, Atomics, _, _}] -> release_in(Atomics, Id, ?IN_SLOTS);
        [] -> ok
    end.

claim(_, _, 0) ->
    none;
claim(Atomics, Id, I) ->
    case atomics:compare_exchange(Atomics, I, 0, Id) of
        ok -> atomics:add(Atomics, ?IN_SLOTS + 1, 1), {ok, I};
        _ -> claim(Atomics, Id, I - 1)
    end.

int(I) when I < 16#80 -> <<I>>;
int(I) when I < 16#100 -> <<16#cc, I>>;
int(I) when I < 16#10000 -> <<16#cd, I:16>>;
int(I) when I < 16#100000000 -> <<16#ce, I:32>>;
int(I) -> <<16#cf, I:64>>.

%%%===================================================================
%%% Callers: answers
%%%===================================================================

%% @doc Decode limits for an answer read from Source (bind/1): they name
%% where its payload placeholders are read from.
-spec limits(source(), map()) -> map().
limits(Source, Limits) ->
    Limits#{payloads => Source}.

%% @doc The binary an answer's placeholder names (called by the decoder),
%% `{error, {bad_frame, Why}}' for a placeholder no honest worker writes:
%% outside the answer regions, across two of them, past the file, in a
%% region another answer is reading, or more in one answer than
%% max_frame_size (`Left' is what the answer may still take). In `release'
%% mode nothing is read.
-spec read(source(), non_neg_integer(), non_neg_integer(), non_neg_integer() | undefined,
           read | release) ->
          {ok, binary(), non_neg_integer()} | {error, {bad_frame, term()}}.
read({Server, SlotSize, Max}, Offset, Length, Left0, Mode) ->
    Left = case Left0 of
               undefined -> Max;
               _ -> Left0
           end,
    Lo = ?HEADER + ?IN_SLOTS * SlotSize,
    K = (Offset - Lo) div SlotSize,
    if
        Length > Left ->
            {error, {bad_frame, {payload_too_large, Length, Max}}};
        Offset < Lo; K >= ?OUT_SLOTS ->
            {error, {bad_frame, {payload_not_lent, Offset, Length}}};
        Offset + Length > Lo + (K + 1) * SlotSize ->
            {error, {bad_frame, {payload_not_lent, Offset, Length}}};
        Mode =:= release ->
            note_read(Server, K),
            {ok, <<>>, Left - Length};
        Length =:= 0 ->
            %% Nothing to read: no trip to the file server.
            {ok, <<>>, Left};
        true ->
            note_read(Server, K),
            case ask(Server, read, {K, Offset, Length}) of
                {ok, B} when byte_size(B) =:= Length ->
                    {ok, B, Left - Length};
                {ok, B} ->
                    {error, {bad_frame, {payload_past_end, Offset, Length, byte_size(B)}}};
                eof ->
                    {error, {bad_frame, {payload_past_end, Offset, Length, 0}}};
                held ->
                    {error, {bad_frame, {payload_not_lent, Offset, Length}}};
                {error, gone} ->
                    {error, {bad_frame, {payload_without_file, Offset, Length}}};
                {error, Why} ->
                    {error, {bad_frame, {payload_unreadable, Why}}}
            end
    end.

note_read(Server, K) ->
    Read = case get(?READ) of
               undefined -> [];
               L -> L
           end,
    put(?READ, [{Server, K} | Read]).

%% @doc After a decode: the answer regions it read are the worker's again
%% (the file server clears their words; the caller does not wait).
-spec done() -> ok.
done() ->
    case erase(?READ) of
        undefined ->
            ok;
        Read ->
            _ = [Server ! {release, self(), [K || {S, K} <- Read, S =:= Server]}
                 || Server <- lists:usort([S || {S, _} <- Read])],
            ok
    end.

%%%===================================================================
%%% The file server
%%%===================================================================

%% One request to the file server; `{error, gone}' when it has ended (its
%% OS process exited). The alias drops a late answer.
ask(Server, Op, Arg) ->
    Mon = erlang:monitor(process, Server, [{alias, reply_demonitor}]),
    Server ! {Op, Mon, self(), Arg},
    receive
        {Mon, Result} -> Result;
        {'DOWN', Mon, process, Server, _} -> {error, gone}
    end.

file_init(Owner, Path, SlotSize, Atomics) ->
    OwnerMon = erlang:monitor(process, Owner),
    Dir = filename:dirname(Path),
    try
        ok = file:make_dir(Dir),
        ok = file:change_mode(Dir, 8#700),
        %% exclusive: O_EXCL, so nothing that was there before is opened.
        {ok, Fd} = file:open(Path, [raw, read, write, binary, exclusive]),
        ok = file:change_mode(Path, 8#600),
        {ok, _} = file:position(Fd, ?HEADER + (?IN_SLOTS + ?OUT_SLOTS) * SlotSize),
        ok = file:truncate(Fd),
        %% The header's page allocated now: the worker writes its words
        %% through a mapping, where a full tmpfs would be SIGBUS. Full
        %% here, the pool keeps the pipe.
        ok = file:pwrite(Fd, 0, <<0:(8 * ?HEADER)>>),
        Owner ! {self(), created},
        file_loop(#{fd => Fd, owner => OwnerMon, path => Path, held => #{}, claims => #{},
                    atomics => Atomics})
    catch
        error:Why ->
            %% Out of descriptors, say: the descriptor closes with this
            %% process.
            remove(Path),
            exit(Why)
    end.

%% Held: answer region => {the process decoding the answer that read it,
%% its monitor}, until that decode is done. Claims: request region =>
%% {the caller that wrote it, the request's id, its monitor}, until the
%% owner has the request (adopt/2): a caller that dies before frees it.
file_loop(#{fd := Fd, held := Held, claims := Claims} = S) ->
    receive
        {write, Mon, From, {I, Id, Base, Blobs}} ->
            Mon ! {Mon, file:pwrite(Fd, Base, Blobs)},
            %% Drop the references to the caller's binaries now.
            garbage_collect(),
            _ = unclaim(I, Claims),
            file_loop(S#{claims := Claims#{I => {From, Id, erlang:monitor(process, From)}}});
        {adopted, I, Id} ->
            case Claims of
                #{I := {_, Id, _}} ->
                    _ = unclaim(I, Claims),
                    file_loop(S#{claims := maps:remove(I, Claims)});
                #{} ->
                    file_loop(S)
            end;
        {read, Mon, From, {K, Offset, Length}} ->
            case Held of
                #{K := {Other, _}} when Other =/= From ->
                    Mon ! {Mon, held},
                    file_loop(S);
                _ ->
                    Mon ! {Mon, file:pread(Fd, Offset, Length)},
                    garbage_collect(),
                    Held1 = case Held of
                                #{K := _} -> Held;
                                #{} -> Held#{K => {From, erlang:monitor(process, From)}}
                            end,
                    file_loop(S#{held := Held1})
            end;
        {release, From, Ks} ->
            file_loop(S#{held := release(Fd, From, lists:usort(Ks), Held)});
        {'DOWN', Ref, process, _, _} when Ref =:= map_get(owner, S) ->
            %% The owner died without a teardown.
            remove(maps:get(path, S)),
            exit(normal);
        {'DOWN', _, process, From, _} ->
            %% A decode that died before it was done; a caller that died
            %% before its request reached the owner.
            Mine = [K || {K, {P, _}} <- maps:to_list(Held), P =:= From],
            Lost = [{I, Id} || {I, {P, Id, _}} <- maps:to_list(Claims), P =:= From],
            Atomics = maps:get(atomics, S),
            _ = [atomics:sub(Atomics, ?IN_SLOTS + 1, 1)
                 || {I, Id} <- Lost, atomics:compare_exchange(Atomics, I, Id, 0) =:= ok],
            file_loop(S#{held := release(Fd, From, Mine, Held),
                         claims := maps:without([I || {I, _} <- Lost], Claims)});
        stop ->
            exit(normal);
        _ ->
            file_loop(S)
    end.

unclaim(I, Claims) ->
    case Claims of
        #{I := {_, _, M}} -> erlang:demonitor(M, [flush]);
        #{} -> true
    end.

%% Regions read by From (or by nobody: an abandoned answer's) become the
%% worker's again: their words are cleared.
release(Fd, From, Ks, Held) ->
    lists:foldl(fun(K, H) ->
                        case H of
                            #{K := {P, _}} when P =/= From ->
                                H;
                            _ ->
                                _ = file:pwrite(Fd, ?STATES_AT + 8 * K, <<0:64>>),
                                case maps:take(K, H) of
                                    {{_, M}, H1} -> erlang:demonitor(M, [flush]), H1;
                                    error -> H
                                end
                        end
                end, Held, Ks).
