%% @doc A call's `print' output sent to its caller's group leader (the
%% shell, IEx, Livebook) instead of `logger': the `output => caller'
%% option of a pool or of one call (docs/configuration.md, "Output").
%%
%% The caller side ({@link pyport_request}) sends such a call as a call of
%% `erlang._output.call' (python_runtime/erlang/_output.py), which marks
%% what the call prints as this request's, and tells the worker's owner
%% the group leader first (`{'$pyport_output', Id, GroupLeader}', ahead of
%% the request itself). The worker sends each line as `NOTIFY output
%% [Id, Text, Newline]'; the owner passes it to the group leader of a
%% request it has in flight, and logs it like any other output otherwise.
%%
%% The node's limits hold on this path: every line passes the worker's
%% `log_rate' bucket ({@link pyport_worker_log}) before it is decoded, and
%% is cut to it. The owner never waits on a group leader: it sends the
%% `io_request' and drops the `io_reply' (a slow shell cannot stall the
%% owner, and the rate bounds what it is sent).
-module(pyport_output).

-export([call_fields/3, expect/2, forget/1, retain/1, notify/3, is_output_notify/1]).

%% The owner's process dictionary: request id => group leader.
-define(KEY, '$pyport_outputs').
-define(CALL, 1).

%% @doc The fields of a CALL that sends its output to the caller (request
%% `Id'): the call of `erlang._output.call' that runs the original one.
-spec call_fields(pos_integer(), pos_integer(), [term()]) -> {pos_integer(), [term()]}.
call_fields(Id, ?CALL, [Module, Function, Args, Kwargs]) ->
    {?CALL, [<<"erlang._output">>, <<"call">>, [Id, Module, Function, Args], Kwargs]};
call_fields(_Id, Kind, Fields) ->
    {Kind, Fields}.

%% @doc In the owner: request `Id' sends its output to `GroupLeader'.
-spec expect(pos_integer(), pid()) -> ok.
expect(Id, GroupLeader) when is_integer(Id), is_pid(GroupLeader) ->
    put(?KEY, (outputs())#{Id => GroupLeader}),
    ok.

%% @doc In the owner: request `Id' is finished.
-spec forget(pos_integer()) -> ok.
forget(Id) ->
    case get(?KEY) of
        undefined ->
            ok;
        #{Id := _} = Outputs when map_size(Outputs) =:= 1 ->
            erase(?KEY),
            ok;
        #{Id := _} = Outputs ->
            put(?KEY, maps:remove(Id, Outputs)),
            ok;
        _ ->
            ok
    end.

%% @doc In the owner: keeps only the requests `Live' says it still holds
%% (requests dropped unsent, or lost with an OS process).
-spec retain(fun((pos_integer()) -> boolean())) -> ok.
retain(Live) ->
    case get(?KEY) of
        undefined ->
            ok;
        Outputs ->
            case maps:filter(fun(Id, _) -> Live(Id) end, Outputs) of
                Empty when map_size(Empty) =:= 0 -> erase(?KEY);
                Kept -> put(?KEY, Kept)
            end,
            ok
    end.

%% @doc Whether a NOTIFY frame's fields are an `output' line.
-spec is_output_notify(binary()) -> boolean().
is_output_notify(<<16#a6, "output", _/binary>>) -> true;
is_output_notify(_) -> false.

%% @doc A NOTIFY `output' frame (`[<<"output">>, [Id, Text, Newline]]',
%% undecoded): to the group leader of request Id if it is in flight here
%% (`InFlight(Id)'), else to `logger' like the worker's stdout; within the
%% worker's log rate. Returns the log state.
-spec notify(binary(), {fun((pos_integer()) -> boolean()), logger:metadata()},
             pyport_worker_log:state()) -> pyport_worker_log:state().
notify(Fields, {InFlight, Meta}, Log0) ->
    case pyport_worker_log:admit_line(byte_size(Fields), Log0) of
        {true, Max, Log} ->
            case pyport_codec:decode_fields(2, Fields) of
                {ok, [<<"output">>, [Id, Text, Newline]]} when is_integer(Id), is_binary(Text),
                                                               is_boolean(Newline) ->
                    case is_binary(unicode:characters_to_binary(Text)) of
                        true ->
                            deliver(Id, pyport_worker_log:cut(Text, Max), Newline, InFlight, Meta),
                            Log;
                        false ->
                            %% Python sends str: this did not come from print.
                            pyport_worker_log:report(error, "output line is not UTF-8", [], Meta,
                                                     Log)
                    end;
                Other ->
                    pyport_worker_log:report(error, "undecodable output frame: ~0tP", [Other, 8],
                                             Meta, Log)
            end;
        {false, Log} ->
            Log
    end.

deliver(Id, Text, Newline, InFlight, Meta) ->
    case outputs() of
        #{Id := GroupLeader} ->
            case InFlight(Id) of
                true ->
                    Chars = case Newline of
                                true -> [Text, $\n];
                                false -> Text
                            end,
                    %% Not io:put_chars/2: that waits for the group leader.
                    GroupLeader ! {io_request, self(), make_ref(),
                                   {put_chars, unicode, Chars}},
                    ok;
                false ->
                    to_logger(Text, Meta)
            end;
        _ ->
            to_logger(Text, Meta)
    end.

to_logger(Text, Meta) ->
    pyport_worker_log:emit(info, Text, Meta).

outputs() ->
    case get(?KEY) of
        undefined -> #{};
        Outputs -> Outputs
    end.
