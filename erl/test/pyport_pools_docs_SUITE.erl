%% The examples of docs/pools.md run as written (see pyport_doc_examples).
-module(pyport_pools_docs_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(DOC, "docs/pools.md").

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [pools_examples].

init_per_suite(Config) ->
    {Dir, Blocks} = pyport_doc_examples:setup(?DOC, Config),
    _ = application:load(pyport),
    application:set_env(pyport, pools, #{default => #{size => 2, python_path => [Dir]}}),
    {ok, _} = application:ensure_all_started(pyport),
    [{blocks, Blocks} | Config].

end_per_suite(_Config) ->
    ok = application:stop(pyport),
    application:unset_env(pyport, pools),
    ok.

pools_examples(Config) ->
    ?assert(pyport_doc_examples:run(?DOC, ?config(blocks, Config)) >= 10).
