%% @doc What decoding a worker's data may cost the node: new atoms (see
%% {@link pyport_atoms}), and the size of one decoded value.
%%
%% A frame is bounded by `max_frame_size', but what it decodes to is not:
%% a byte of msgpack can become a list cell of 16 bytes, an empty map
%% several words. So each decode gets a budget of values (`max_result_terms')
%% and of heap bytes (`max_decoded_bytes'), checked by the codec as it goes,
%% before it builds what would pass them (see {@link pyport_codec}).
%%
%% A pool's limits live in its routing data (`decode_limits' in
%% {@link pyport_pool:info/1}), read by the caller that decodes an answer.
%% A worker's port owner decodes what its worker sends on its own
%% (requests to Erlang, stream chunks, log records) with its pool's limits,
%% which it sets for itself with {@link set_process/1}.
-module(pyport_limits).

-export([of_pool/2, default/0, set_process/1, process/0, existing_atoms_only/1]).

-export_type([limits/0]).

-type limits() :: #{atoms := pyport_atoms:budget(),
                    max_terms := pos_integer() | infinity,
                    max_bytes := pos_integer() | infinity,
                    %% Where an answer's ext 7 placeholders are read
                    %% (pyport_payloads:limits/2), and whether they are.
                    payloads => pyport_payloads:source(),
                    payload_mode => read | release}.

-define(KEY, '$pyport_decode_limits').
%% The default max_frame_size (pyport_config:defaults/0).
-define(DEFAULT_FRAME, (64 * 1024 * 1024)).

%% @doc The limits of pool `Pool' from its validated options.
-spec of_pool(atom(), map()) -> limits().
of_pool(Pool, Opts) ->
    Frame = maps:get(max_frame_size, Opts, ?DEFAULT_FRAME),
    #{atoms => pyport_atoms:pool_budget(Pool, Opts),
      max_terms => terms(maps:get(max_result_terms, Opts, auto), Frame),
      max_bytes => bytes(maps:get(max_decoded_bytes, Opts, auto), Frame)}.

%% @doc The limits outside any pool: the node's atom budget, and sizes as
%% for a pool with the default `max_frame_size'.
-spec default() -> limits().
default() ->
    #{atoms => pyport_atoms:node_budget(),
      max_terms => terms(auto, ?DEFAULT_FRAME),
      max_bytes => bytes(auto, ?DEFAULT_FRAME)}.

%% @doc Makes `Limits' those of this process's decodes that name none.
-spec set_process(limits()) -> ok.
set_process(Limits) ->
    _ = put(?KEY, Limits),
    ok.

%% @doc The limits of this process (from {@link set_process/1}), else
%% {@link default/0}.
-spec process() -> limits().
process() ->
    case get(?KEY) of
        undefined -> default();
        Limits -> Limits
    end.

%% @doc `Limits' with no new atoms allowed.
-spec existing_atoms_only(limits()) -> limits().
existing_atoms_only(Limits) ->
    Limits#{atoms := pyport_atoms:no_new_atoms()}.

%% `auto': a list of small integers can hold one value per frame byte at
%% 16 heap bytes each; the defaults stop such a value at the frame size's
%% worth of heap (4 Mi values, 64 MiB for the default 64 MiB frame),
%% whatever shape it has.
terms(auto, Frame) -> max(1, Frame div 16);
terms(Max, _) -> Max.

bytes(auto, Frame) -> Frame;
bytes(Max, _) -> Max.
