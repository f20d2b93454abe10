%% @doc Hornbeam's `hornbeam_pubsub' on pyport: a thin facade over {@link
%% pyport_pubsub}. A topic is used as given, as in Hornbeam: the atom
%% `news', `<<"news">>' and `"news"' are three topics, and a subscriber gets
%% `{pubsub, Topic, Msg}' with the very term that was published. A binary
%% topic is also the topic Python's strings name (`hornbeam_erlang.publish'
%% and pyport's own `py:subscribe/1').
%%
%% One difference: a process subscribed twice counts twice in `publish/2''s
%% result but gets one message (Hornbeam sends one per subscription), since
%% a worker fans each message out to its Python subscriptions itself.
-module(hornbeam_pubsub).

-export([subscribe/1, subscribe/2, unsubscribe/1, unsubscribe/2, publish/2,
         get_members/1, get_local_members/1]).

%% @doc Subscribes the calling process to `Topic'.
-spec subscribe(term()) -> ok.
subscribe(Topic) ->
    subscribe(Topic, self()).

%% @doc Subscribes `Pid' (a local process) to `Topic'.
-spec subscribe(term(), pid()) -> ok.
subscribe(Topic, Pid) ->
    pyport_pubsub:join(Topic, Pid).

%% @doc Ends one subscription of the calling process to `Topic'.
-spec unsubscribe(term()) -> ok.
unsubscribe(Topic) ->
    unsubscribe(Topic, self()).

%% @doc Ends one subscription of `Pid' to `Topic' (ok if there was none).
-spec unsubscribe(term(), pid()) -> ok.
unsubscribe(Topic, Pid) ->
    _ = pyport_pubsub:leave(Topic, Pid),
    ok.

%% @doc Sends `{pubsub, Topic, Msg}' to every subscriber in the cluster;
%% returns the number of subscriptions.
-spec publish(term(), term()) -> non_neg_integer().
publish(Topic, Msg) ->
    pyport_pubsub:broadcast(Topic, Msg).

%% @doc The subscribed processes, on every node (a process subscribed twice
%% is there twice).
-spec get_members(term()) -> [pid()].
get_members(Topic) ->
    pyport_pubsub:group_members(Topic).

%% @doc The subscribed processes of this node.
-spec get_local_members(term()) -> [pid()].
get_local_members(Topic) ->
    pyport_pubsub:local_members(Topic).
