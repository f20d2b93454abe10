%% @doc Publish/subscribe shared by Erlang processes and Python code, on the
%% `pg' scope `pyport' (started by pyport_sup), so topics span the cluster.
%% Topic `T' is the group `{pyport_topic, T}', apart from the pools'
%% membership groups in the same scope.
%%
%% A subscriber receives `{pubsub, Topic, Message}'. Python subscriptions
%% are held by the worker's port owner, which joins the topic's group once
%% per subscription and forwards each message to the subscribing mailbox in
%% its worker (see {@link pyport_worker}). Topics are any term; Python
%% strings arrive as binaries, so `py:subscribe(<<"news">>)' and Python's
%% `subscribe("news")' are the same topic (and so is the atom `news':
%% atoms and strings are turned into binaries here).
-module(pyport_pubsub).

-export([subscribe/1, subscribe/2, unsubscribe/1, unsubscribe/2, publish/2, members/1,
         topic/1]).

-define(SCOPE, pyport).
-define(GROUP(Topic), {pyport_topic, Topic}).

%% @doc Subscribes the calling process to `Topic'.
-spec subscribe(term()) -> ok.
subscribe(Topic) ->
    subscribe(Topic, self()).

%% @doc Subscribes `Pid' (a local process) to `Topic'.
-spec subscribe(term(), pid()) -> ok.
subscribe(Topic, Pid) ->
    pg:join(?SCOPE, ?GROUP(topic(Topic)), Pid).

%% @doc Ends one subscription of the calling process to `Topic'.
-spec unsubscribe(term()) -> ok | not_joined.
unsubscribe(Topic) ->
    unsubscribe(Topic, self()).

%% @doc Ends one subscription of `Pid' to `Topic'.
-spec unsubscribe(term(), pid()) -> ok | not_joined.
unsubscribe(Topic, Pid) ->
    pg:leave(?SCOPE, ?GROUP(topic(Topic)), Pid).

%% @doc Sends `{pubsub, Topic, Message}' to every subscriber of `Topic' on
%% every node; returns the number of subscriptions reached (a process
%% subscribed twice counts twice but gets one message; a worker forwards it
%% to each Python subscription).
-spec publish(term(), term()) -> non_neg_integer().
publish(Topic0, Message) ->
    Topic = topic(Topic0),
    Members = pg:get_members(?SCOPE, ?GROUP(Topic)),
    Msg = {pubsub, Topic, Message},
    _ = [Pid ! Msg || Pid <- lists:usort(Members)],
    length(Members).

%% @doc The processes subscribed to `Topic' (with repeats).
-spec members(term()) -> [pid()].
members(Topic) ->
    pg:get_members(?SCOPE, ?GROUP(topic(Topic))).

%% @doc The normal form of a topic: atoms and strings become binaries.
-spec topic(term()) -> term().
topic(T) when is_atom(T), T =/= none, T =/= undefined, T =/= nil -> atom_to_binary(T, utf8);
topic(T) when is_list(T) ->
    try unicode:characters_to_binary(T) of
        B when is_binary(B) -> B;
        _ -> T
    catch error:badarg -> T
    end;
topic(T) -> T.
