%% @doc What a worker asks the node to log, within the pool's `log_rate'.
%%
%% LOG frames (the worker's stdout and stderr, cut into lines by its log
%% relay), Python `logging' records and the owner's own reports about
%% frames a worker should not have sent all cost the node a `logger' event.
%% A worker printing as fast as it can, or hostile code writing LOG frames
%% straight to the channel, must not flood the log nor slow the owner that
%% routes answers; so each worker's owner admits them through a token
%% bucket: `lines' a second and `bytes' a second, with a burst of two
%% seconds' worth. (The worker's log relay applies the same rate with a
%% burst of one second, so the honest worker's output never reaches this
%% limit: it catches only what bypasses the relay.) What is dropped is
%% counted, and reported in one warning at most once a second:
%% `"N lines (B bytes) of worker output dropped: above log_rate ..."'.
%%
%% Deciding to drop costs no decoding: a dropped frame is only counted.
-module(pyport_worker_log).

-export([new/1, admit/2, log_frame/3, error_frame/3, report/5, note/3, default_rate/0,
         validate_rate/1]).
%% For output sent to a caller's group leader (pyport_output).
-export([admit_line/2, cut/2, emit/3]).

-export_type([state/0, rate/0]).

-type rate() :: infinity | #{lines := pos_integer() | infinity, bytes := pos_integer() | infinity}.

%% Seconds of rate the bucket holds.
-define(BURST_SECONDS, 2).
%% A report of the owner's own counts as a line of this many bytes.
-define(REPORT_BYTES, 200).
-define(NOTE_AFTER_MS, 1000).

%% Logged as pyport_worker's own events, as before this module was split
%% out of it: a logger module level set for pyport_worker still applies.
-define(WLOG(Level, Format, Args, Meta),
        case logger:allow(Level, pyport_worker) of
            true ->
                logger:macro_log(#{mfa => {pyport_worker, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                                   line => ?LINE, file => ?FILE},
                                 Level, Format, Args, Meta);
            false ->
                ok
        end).

-record(log, {
          rate :: rate(),
          lines = 0.0 :: float(),                  % tokens
          bytes = 0.0 :: float(),
          at :: integer(),                         % ms of the last refill
          dropped_lines = 0 :: non_neg_integer(),
          dropped_bytes = 0 :: non_neg_integer(),
          note_timer :: reference() | undefined
         }).

-opaque state() :: #log{}.

%% @doc The `log_rate' of a pool that sets none.
-spec default_rate() -> rate().
default_rate() ->
    #{lines => 1000, bytes => 1024 * 1024}.

%% @doc Checks a pool's `log_rate': `infinity', or a map of `lines' and
%% `bytes' a second (each a positive integer or `infinity'; one left out
%% keeps its default).
-spec validate_rate(term()) -> {ok, rate()} | error.
validate_rate(infinity) ->
    {ok, infinity};
validate_rate(#{} = Rate) ->
    Valid = fun(infinity) -> true;
               (N) -> is_integer(N) andalso N > 0 andalso N < 1 bsl 63
            end,
    case maps:merge(default_rate(), Rate) of
        #{lines := Lines, bytes := Bytes} = Full when map_size(Full) =:= 2 ->
            case Valid(Lines) andalso Valid(Bytes) of
                true -> {ok, Full};
                false -> error
            end;
        _ ->
            error
    end;
validate_rate(_) ->
    error.

%% @doc A full bucket for a pool's `log_rate' (`default': default_rate()).
-spec new(rate() | default) -> state().
new(default) ->
    new(default_rate());
new(infinity) ->
    #log{rate = infinity, at = now_ms()};
new(Rate) ->
    #log{rate = Rate, lines = capacity(Rate, lines), bytes = capacity(Rate, bytes), at = now_ms()}.

%% @doc Whether a line of `Bytes' bytes may be logged now; if not, it is
%% counted as dropped.
-spec admit(non_neg_integer(), state()) -> {boolean(), state()}.
admit(_Bytes, #log{rate = infinity} = Log) ->
    {true, Log};
admit(Bytes, #log{rate = Rate} = Log0) ->
    #log{lines = Lines, bytes = Tokens} = Log = refill(Log0),
    %% A line longer than the whole bucket needs only a full bucket.
    Cost = min(float(Bytes), capacity(Rate, bytes)),
    case Lines >= 1.0 andalso Tokens >= Cost of
        true ->
            {true, Log#log{lines = Lines - 1.0, bytes = Tokens - Cost}};
        false ->
            {false, schedule_note(Log#log{dropped_lines = Log#log.dropped_lines + 1,
                                          dropped_bytes = Log#log.dropped_bytes + Bytes})}
    end.

%% @doc A LOG frame's fields (`[Level, Message]', undecoded): logged at its
%% level in the domain `[pyport, python]', or dropped.
-spec log_frame(binary(), logger:metadata(), state()) -> state().
log_frame(Fields, Meta, Log) ->
    if_admitted(byte_size(Fields), Log,
                fun(Max) ->
                        case pyport_codec:decode_fields(2, Fields) of
                            {ok, [Level, Message]} when is_binary(Level), is_binary(Message) ->
                                ?WLOG(pyport_logging:level(Level), "~ts", [cut(Message, Max)],
                                      Meta#{domain => [pyport, python]});
                            Other ->
                                undecodable("LOG", Other, Meta)
                        end
                end).

%% @doc An ERROR frame that answers no request (`[Type, Message,
%% Traceback]', undecodable): a warning, or dropped.
-spec error_frame(binary(), logger:metadata(), state()) -> state().
error_frame(Fields, Meta, Log) ->
    if_admitted(byte_size(Fields), Log,
                fun(Max) ->
                        case pyport_codec:decode_fields(3, Fields) of
                            {ok, [Type, Message, _Traceback]} when is_binary(Type),
                                                                   is_binary(Message) ->
                                ?WLOG(warning, "pyport worker ~tp/~b: ~ts: ~ts",
                                      [pool(Meta), slot(Meta), cut(Type, Max), cut(Message, Max)],
                                      Meta);
                            Other ->
                                undecodable("ERROR", Other, Meta)
                        end
                end).

%% @doc The owner's own report about something the worker sent, prefixed
%% with the pool and slot; within the same rate, since the worker decides
%% how often it happens.
-spec report(logger:level(), io:format(), [term()], logger:metadata(), state()) -> state().
report(Level, Format, Args, Meta, Log) ->
    if_admitted(?REPORT_BYTES, Log,
                fun(_Max) ->
                        ?WLOG(Level, "pyport worker ~tp/~b: " ++ Format,
                              [pool(Meta), slot(Meta) | Args], Meta)
                end).

%% @doc The note timer fired (`{timeout, Timer, log_note}' to the owner):
%% says how much was dropped since the last note.
-spec note({timeout, reference(), log_note}, logger:metadata(), state()) -> state().
note({timeout, Timer, log_note}, Meta, #log{note_timer = Timer} = Log) ->
    #log{dropped_lines = Lines, dropped_bytes = Bytes, rate = Rate} = Log,
    ?WLOG(warning, "pyport worker ~tp/~b: ~b lines (~b bytes) of worker output dropped: "
          "above log_rate ~0tp a second",
          [pool(Meta), slot(Meta), Lines, Bytes, Rate], Meta),
    Log#log{dropped_lines = 0, dropped_bytes = 0, note_timer = undefined};
note(_Stale, _Meta, Log) ->
    Log.

%% @doc {@link admit/2}, and the most bytes of the line that may be
%% passed on (the bucket's size: see if_admitted/3).
-spec admit_line(non_neg_integer(), state()) ->
          {true, pos_integer() | infinity, state()} | {false, state()}.
admit_line(Bytes, Log0) ->
    case admit(Bytes, Log0) of
        {true, #log{rate = infinity} = Log} -> {true, infinity, Log};
        {true, #log{rate = Rate} = Log} -> {true, trunc(capacity(Rate, bytes)), Log};
        {false, Log} -> {false, Log}
    end.

%% @doc A line logged like the worker's stdout (already admitted).
-spec emit(logger:level(), unicode:chardata(), logger:metadata()) -> ok.
emit(Level, Text, Meta) ->
    ?WLOG(Level, "~ts", [Text], Meta#{domain => [pyport, python]}),
    ok.

%% @doc `Text' cut to `Max' bytes, saying how much was cut.
-spec cut(binary(), pos_integer() | infinity) -> unicode:chardata().
cut(Text, Max) when is_integer(Max), byte_size(Text) > Max ->
    Keep = char_start(Text, Max, 3),
    [binary:part(Text, 0, Keep), io_lib:format(" ... (~b bytes cut)", [byte_size(Text) - Keep])];
cut(Text, _Max) ->
    Text.

%% Cut before a UTF-8 character, not inside it (a group leader refuses
%% broken UTF-8); at most 3 bytes back, as in valid UTF-8.
char_start(Text, N, Back) when N > 0, Back > 0, binary_part(Text, N, 1) >= <<16#80>>,
                                binary_part(Text, N, 1) < <<16#C0>> ->
    char_start(Text, N - 1, Back - 1);
char_start(_Text, N, _Back) ->
    N.

%%%===================================================================
%%% Internals
%%%===================================================================

%% Emit(MaxBytes) logs, if the rate admits a line of Bytes bytes. A line
%% longer than the whole bucket costs a full bucket and is cut to that many
%% bytes: a worker cannot hand the logger a max_frame_size line.
if_admitted(Bytes, Log0, Emit) ->
    case admit(Bytes, Log0) of
        {true, #log{rate = Rate} = Log} ->
            _ = Emit(case Rate of
                         infinity -> infinity;
                         _ -> trunc(capacity(Rate, bytes))
                     end),
            Log;
        {false, Log} ->
            Log
    end.

%% What a hostile worker sent in place of a record: shown, bounded.
undecodable(Kind, Other, Meta) ->
    ?WLOG(error, "pyport worker ~tp/~b: undecodable ~s frame: ~0tP",
          [pool(Meta), slot(Meta), Kind, Other, 8], Meta).

refill(#log{rate = Rate, lines = Lines, bytes = Bytes, at = At} = Log) ->
    Now = now_ms(),
    case Now - At of
        0 ->
            Log;
        Ms ->
            Log#log{lines = min(capacity(Rate, lines), Lines + per_ms(Rate, lines) * Ms),
                    bytes = min(capacity(Rate, bytes), Bytes + per_ms(Rate, bytes) * Ms),
                    at = Now}
    end.

%% Infinity is a bucket too large to empty.
capacity(#{} = Rate, Key) ->
    case maps:get(Key, Rate) of
        infinity -> 1.0e300;
        N -> float(N * ?BURST_SECONDS)
    end.

per_ms(#{} = Rate, Key) ->
    case maps:get(Key, Rate) of
        infinity -> 1.0e300;
        N -> N / 1000
    end.

schedule_note(#log{note_timer = undefined} = Log) ->
    Log#log{note_timer = erlang:start_timer(?NOTE_AFTER_MS, self(), log_note)};
schedule_note(Log) ->
    Log.

pool(Meta) -> maps:get(pyport_pool, Meta, undefined).
slot(Meta) -> maps:get(pyport_slot, Meta, 0).

now_ms() ->
    erlang:monotonic_time(millisecond).
