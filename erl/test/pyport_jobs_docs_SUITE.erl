%% The examples of docs/jobs.md run as written (see pyport_doc_examples).
-module(pyport_jobs_docs_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(DOC, "docs/jobs.md").

suite() ->
    [{timetrap, {seconds, 120}}].

all() ->
    [jobs_examples].

init_per_suite(Config) ->
    {_Dir, Blocks} = pyport_doc_examples:setup(?DOC, Config),
    ok = pyport_test_util:start(#{default => #{size => 1}}),
    [{blocks, Blocks} | Config].

end_per_suite(_Config) ->
    pyport_test_util:stop().

jobs_examples(Config) ->
    ?assertEqual(4, pyport_doc_examples:run(?DOC, ?config(blocks, Config))).
