%% @doc The subscriptions of a worker's Python code to pub/sub topics
%% (`erlang.subscribe'), kept by its port owner: the mailboxes (in the
%% worker) subscribed to each topic, and the topics of each mailbox. The
%% owner joins a topic's pg group once per subscription and passes each
%% message on as a MESSAGE frame per subscribed mailbox.
-module(pyport_worker_pubsub).

-include_lib("kernel/include/logger.hrl").
-include("pyport_worker.hrl").

-export([subscribe/3, unsubscribe/3, unsubscribe_all/2, drop_subscriptions/1, forward_pubsub/3]).

-spec subscribe(term(), pos_integer(), #state{}) -> #state{}.
subscribe(Topic, Box, #state{subs = Subs, box_topics = BoxTopics} = State) ->
    Boxes = maps:get(Topic, Subs, []),
    case lists:member(Box, Boxes) of
        true ->
            State;
        false ->
            ok = pyport_pubsub:subscribe(Topic, self()),
            State#state{subs = Subs#{Topic => [Box | Boxes]},
                        box_topics = BoxTopics#{Box => [Topic | maps:get(Box, BoxTopics, [])]}}
    end.

-spec unsubscribe(term(), pos_integer(), #state{}) -> #state{}.
unsubscribe(Topic, Box, #state{subs = Subs, box_topics = BoxTopics} = State) ->
    Boxes = maps:get(Topic, Subs, []),
    case lists:member(Box, Boxes) of
        false ->
            State;
        true ->
            _ = pyport_pubsub:unsubscribe(Topic, self()),
            Subs1 = case lists:delete(Box, Boxes) of
                        [] -> maps:remove(Topic, Subs);
                        Left -> Subs#{Topic := Left}
                    end,
            BoxTopics1 = case lists:delete(Topic, maps:get(Box, BoxTopics, [])) of
                             [] -> maps:remove(Box, BoxTopics);
                             Topics -> BoxTopics#{Box := Topics}
                         end,
            State#state{subs = Subs1, box_topics = BoxTopics1}
    end.

-spec unsubscribe_all(pos_integer(), #state{}) -> #state{}.
unsubscribe_all(Box, #state{box_topics = BoxTopics} = State) ->
    lists:foldl(fun(Topic, S) -> unsubscribe(Topic, Box, S) end, State,
                maps:get(Box, BoxTopics, [])).

%% The OS process is gone, and with it every Python subscription.
-spec drop_subscriptions(#state{}) -> #state{}.
drop_subscriptions(#state{subs = Subs} = State) ->
    maps:foreach(fun(Topic, Boxes) ->
                         [pyport_pubsub:unsubscribe(Topic, self()) || _ <- Boxes]
                 end, Subs),
    State#state{subs = #{}, box_topics = #{}}.

%% One MESSAGE frame per subscribed mailbox; the term is encoded once.
-spec forward_pubsub(term(), term(), #state{}) -> ok.
forward_pubsub(Topic, Msg, #state{status = up, port = Port, subs = Subs} = State) ->
    case maps:get(Topic, Subs, []) of
        [] ->
            ok;
        Boxes ->
            try pyport_codec:encode({Topic, Msg}) of
                Term ->
                    %% [10, Box, {Topic, Msg}]: 16#93 is a 3-element array.
                    _ = [pyport_worker_writer:send_frame(Port, [16#93, ?MESSAGE, pyport_codec:encode(Box), Term])
                         || Box <- Boxes],
                    ok
            catch
                error:{unsupported_term, T} ->
                    ?LOG_WARNING("pyport worker ~tp/~b: cannot pass a message on topic ~0tp "
                                 "to Python: ~0tp cannot be converted",
                                 [State#state.pool, State#state.slot, Topic, T], pyport_worker:metadata(State))
            end
    end;
forward_pubsub(_Topic, _Msg, _State) ->
    ok.