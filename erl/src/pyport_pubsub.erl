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
%% The same on a topic as given, not normalised (Hornbeam's topics: the
%% atom `news', `<<"news">>' and `"news"' are three topics; a binary topic is
%% the one Python's strings name).
-export([join/2, leave/2, broadcast/2, group_members/1, local_members/1]).

-define(SCOPE, pyport).
-define(GROUP(Topic), {pyport_topic, Topic}).

%% @doc Subscribes the calling process to `Topic'.
-spec subscribe(term()) -> ok.
subscribe(Topic) ->
    subscribe(Topic, self()).

%% @doc Subscribes `Pid' (a local process) to `Topic'.
-spec subscribe(term(), pid()) -> ok.
subscribe(Topic, Pid) ->
    join(topic(Topic), Pid).

%% @doc Ends one subscription of the calling process to `Topic'.
-spec unsubscribe(term()) -> ok | not_joined.
unsubscribe(Topic) ->
    unsubscribe(Topic, self()).

%% @doc Ends one subscription of `Pid' to `Topic'.
-spec unsubscribe(term(), pid()) -> ok | not_joined.
unsubscribe(Topic, Pid) ->
    leave(topic(Topic), Pid).

%% @doc Sends `{pubsub, Topic, Message}' to every subscriber of `Topic' on
%% every node; returns the number of subscriptions reached (a process
%% subscribed twice counts twice but gets one message; a worker forwards it
%% to each Python subscription).
-spec publish(term(), term()) -> non_neg_integer().
publish(Topic, Message) ->
    broadcast(topic(Topic), Message).

%% @doc The processes subscribed to `Topic' (with repeats).
-spec members(term()) -> [pid()].
members(Topic) ->
    group_members(topic(Topic)).

%% @doc Subscribes `Pid' to `Topic' as given.
-spec join(term(), pid()) -> ok.
join(Topic, Pid) ->
    pg:join(?SCOPE, ?GROUP(Topic), Pid).

%% @doc Ends one subscription of `Pid' to `Topic' as given.
-spec leave(term(), pid()) -> ok | not_joined.
leave(Topic, Pid) ->
    pg:leave(?SCOPE, ?GROUP(Topic), Pid).

%% @doc {@link publish/2} on `Topic' as given: subscribers get `{pubsub,
%% Topic, Message}' with that very term.
-spec broadcast(term(), term()) -> non_neg_integer().
broadcast(Topic, Message) ->
    Members = pg:get_members(?SCOPE, ?GROUP(Topic)),
    Msg = {pubsub, Topic, Message},
    _ = [Pid ! Msg || Pid <- lists:usort(Members)],
    length(Members).

%% @doc The processes subscribed to `Topic' as given, on every node.
-spec group_members(term()) -> [pid()].
group_members(Topic) ->
    pg:get_members(?SCOPE, ?GROUP(Topic)).

%% @doc The processes of this node subscribed to `Topic' as given.
-spec local_members(term()) -> [pid()].
local_members(Topic) ->
    pg:get_local_members(?SCOPE, ?GROUP(Topic)).

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
