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
%%   The owner gives the region back when the request is answered
%%   (answered/1) or its OS process exits (teardown/2).
%% - Answers: the worker writes big binaries into an answer region, marks
%%   it busy in the header and sends placeholders with absolute offsets;
%%   the caller's decoder reads them (read/5) and clears the mark once the
%%   whole answer is decoded (done/0). An answer nobody waits for any more
%%   is released unread by the owner (drop/3).
%%
%% The file's one descriptor is opened by the port owner; callers use it
%% through a copy of the handle naming themselves as owner (the raw file
%% NIF itself checks nothing: the check is in prim_file's Erlang code),
%% which costs no open per request and cannot outlive the file: a handle
%% whose file was closed fails with `{error, _}', and the caller then uses
%% the pipe (arguments) or reports the answer unreadable.
-module(pyport_payloads).

-export([init_table/0, setup/3, teardown/2, answered/1, drop/3]).
-export([encoding/1, place/4, limits/3, read/5, done/0]).
-export([placeholder/2, cancel/0, unplace/3]).

-define(TABLE, pyport_payloads).
-define(HEADER, 4096).
-define(STATES_AT, 64).
-define(IN_SLOTS, 8).
-define(OUT_SLOTS, 8).
%% Tries of an operation the file's handle refuses while another process
%% uses it (see io/1).
-define(BUSY_TRIES, 10000).
-define(EXT_PAYLOAD, 7).
-define(LENT, 14).
%% The default of the pool option payload_threshold (pyport_config):
%% measured, docs/performance.md.
-define(DEFAULT_THRESHOLD, 256 * 1024).
%% Process dictionary keys: the encoder's placeholders (a caller, between
%% encoding/1 and place/4), the answer regions a decode read (done/0), and
%% the owner's atomics (answered/1).
-define(BLOBS, '$pyport_payload_blobs').
-define(READ, '$pyport_payload_read').
-define(OWNER, '$pyport_payload_owner').
-define(OPENED, '$pyport_payload_opened').

-type source() :: {atom(), pos_integer()}.

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
            try create(SlotSize) of
                {Path, Fds} ->
                    Token = rand:uniform(1 bsl 62),
                    %% One per request region (the id of the request holding
                    %% it, or 0), then how many are held.
                    Atomics = atomics:new(?IN_SLOTS + 1, [{signed, false}]),
                    true = ets:insert(?TABLE, {{Pool, Slot}, Fds, Token, SlotSize, Atomics, Max,
                                               Path}),
                    put(?OWNER, Atomics),
                    [{payloads, {control, <<"payloads">>,
                                 [unicode:characters_to_binary(Path), Token, SlotSize,
                                  ?IN_SLOTS, ?OUT_SLOTS, Threshold]}}]
            catch
                error:Why ->
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

create(SlotSize) ->
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
    ok = file:make_dir(Dir),
    ok = file:change_mode(Dir, 8#700),
    Path = filename:join(Dir, "payloads"),
    Opened = fun(F) -> put(?OPENED, [F | get(?OPENED)]), F end,
    put(?OPENED, []),
    try
        %% exclusive: O_EXCL, so nothing that was there before is opened.
        {ok, Fd} = file:open(Path, [raw, read, write, binary, exclusive]),
        Opened(Fd),
        ok = file:change_mode(Path, 8#600),
        {ok, _} = file:position(Fd, ?HEADER + (?IN_SLOTS + ?OUT_SLOTS) * SlotSize),
        ok = file:truncate(Fd),
        erase(?OPENED),
        {Path, {Fd}}
    catch
        error:Why ->
            %% Out of descriptors, say: give back those taken.
            _ = [file:close(F) || F <- erase(?OPENED)],
            _ = file:delete(Path),
            _ = file:del_dir(Dir),
            error(Why)
    end.

%% @doc The worker's payload file is gone (its OS process exited, or the
%% owner stops): the regions go with it.
-spec teardown(atom(), pos_integer()) -> ok.
teardown(Pool, Slot) ->
    erase(?OWNER),
    case ets:take(?TABLE, {Pool, Slot}) of
        [{_, Fds, _, _, _, _, Path}] ->
            %% Closed by whichever process tears down: a new gen_server of
            %% the slot finds the row of one that died (and whose handles
            %% the runtime closed with it: then this fails, harmlessly).
            _ = [catch file:close(as_mine(Fd)) || Fd <- tuple_to_list(Fds)],
            %% The worker unlinked them when it opened the file; not if it
            %% died first.
            _ = file:delete(Path),
            _ = file:del_dir(filename:dirname(Path)),
            ok;
        [] ->
            ok
    end.

%% @doc The port owner got the answer to request Id: the region its
%% arguments used (if any) is free again.
-spec answered(pos_integer()) -> ok.
answered(Id) ->
    case get(?OWNER) of
        undefined ->
            ok;
        Atomics ->
            %% Nearly every answer: no region is held, nothing to scan.
            case atomics:get(Atomics, ?IN_SLOTS + 1) of
                0 -> ok;
                _ -> release_in(Atomics, Id, ?IN_SLOTS)
            end
    end.

release_in(_, _, 0) ->
    ok;
release_in(Atomics, Id, I) ->
    case atomics:get(Atomics, I) of
        Id ->
            atomics:put(Atomics, I, 0),
            atomics:sub(Atomics, ?IN_SLOTS + 1, 1);
        _ ->
            release_in(Atomics, Id, I - 1)
    end.

%% @doc An answer nobody waits for (its caller gave up): the answer
%% regions it names are released without being read.
-spec drop(term(), atom(), pos_integer()) -> ok.
drop({16, Rest}, Pool, Slot) when is_binary(Rest) ->
    case ets:member(?TABLE, {Pool, Slot}) of
        true ->
            Limits = limits(Pool, Slot, (pyport_limits:process())#{payload_mode => release}),
            _ = pyport_codec:decode_fields(1, Rest, Limits),
            ok;
        false ->
            ok
    end;
drop(_, _, _) ->
    ok.

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
        [{_, Fds, Token, SlotSize, Atomics, _, _}] when Total =< SlotSize ->
            case claim(Atomics, Id, ?IN_SLOTS) of
                {ok, I} ->
                    Base = ?HEADER + (I - 1) * SlotSize,
                    case io(fun() -> file:pwrite(as_mine(element(1, Fds)), Base, Blobs) end) of
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

%% The owner's raw file handle, usable by this process.
as_mine({file_descriptor, prim_file, #{} = M}) ->
    {file_descriptor, prim_file, M#{owner => self()}}.

%%%===================================================================
%%% Callers: answers
%%%===================================================================

%% @doc Decode limits for an answer of worker Slot of Pool: they name where
%% its payload placeholders are read from.
-spec limits(atom(), pos_integer(), map()) -> map().
limits(Pool, Slot, Limits) ->
    Limits#{payloads => {Pool, Slot}}.

%% @doc The binary an answer's placeholder names (called by the decoder),
%% `{error, {bad_frame, Why}}' for a placeholder no honest worker writes:
%% outside the answer regions, across two of them, past the file, or more
%% in one answer than max_frame_size (`Left' is what the answer may still
%% take). In `release' mode nothing is read.
-spec read(source(), non_neg_integer(), non_neg_integer(), non_neg_integer() | undefined,
           read | release) ->
          {ok, binary(), non_neg_integer()} | {error, {bad_frame, term()}}.
read(Source, Offset, Length, Left0, Mode) ->
    case ets:lookup(?TABLE, Source) of
        [{_, Fds, _, SlotSize, _, Max, _}] ->
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
                true ->
                    read_region(element(1, Fds), K, Offset, Length, Left, Mode)
            end;
        [] ->
            {error, {bad_frame, {payload_without_file, Offset, Length}}}
    end.

read_region(Fd, K, Offset, Length, Left, Mode) ->
    Read = case get(?READ) of
               undefined -> [];
               L -> L
           end,
    put(?READ, [{Fd, K} | Read]),
    case Mode of
        release ->
            {ok, <<>>, Left - Length};
        read ->
            case io(fun() -> file:pread(as_mine(Fd), Offset, Length) end) of
                {ok, B} when byte_size(B) =:= Length ->
                    {ok, B, Left - Length};
                {ok, B} ->
                    {error, {bad_frame, {payload_past_end, Offset, Length, byte_size(B)}}};
                eof when Length =:= 0 ->
                    {ok, <<>>, Left};
                eof ->
                    {error, {bad_frame, {payload_past_end, Offset, Length, 0}}};
                {error, Why} ->
                    {error, {bad_frame, {payload_unreadable, Why}}}
            end
    end.

%% One operation on the file's one handle. The raw file NIF refuses
%% (`einval') an operation on a handle while another process's is in
%% progress, and callers share the handle: tried again after a yield. An
%% operation always runs to its end in the NIF, so a caller killed
%% meanwhile holds nothing up. A closed handle fails the same way, and
%% gives up after ?BUSY_TRIES.
io(Op) ->
    io(Op, ?BUSY_TRIES).

io(Op, Tries) ->
    case Op() of
        {error, einval} when Tries > 0 ->
            erlang:yield(),
            io(Op, Tries - 1);
        Result ->
            Result
    end.

%% @doc After a decode: the answer regions it read are the worker's again.
%% Written by a process of its own, so that the caller has its value
%% without waiting for one more trip to a dirty I/O scheduler; until then
%% the worker uses another region (or the pipe).
-spec done() -> ok.
done() ->
    case erase(?READ) of
        undefined ->
            ok;
        Read ->
            _ = spawn(fun() ->
                              [io(fun() -> file:pwrite(as_mine(Fd), ?STATES_AT + 8 * K,
                                                       <<0:64>>)
                                  end)
                               || {Fd, K} <- lists:usort(Read)]
                      end),
            ok
    end.
