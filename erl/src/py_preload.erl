%% @doc erlang_python's `py_preload': code run once in every *new*
%% worker's shared namespace before it serves (workers running now are
%% not touched). A thin facade over {@link pyport_preload}; see
%% docs/channels.md. A failure in the code is logged; the worker starts.
-module(py_preload).

-export([set_code/1, get_code/0, clear_code/0, has_preload/0]).

%% @doc Sets the code (statements) for workers started from now on.
-spec set_code(iodata()) -> ok.
set_code(Code) ->
    pyport_preload:set_code(unicode:characters_to_binary(Code)).

-spec get_code() -> binary() | undefined.
get_code() ->
    pyport_preload:code().

-spec clear_code() -> ok.
clear_code() ->
    pyport_preload:set_code(undefined).

-spec has_preload() -> boolean().
has_preload() ->
    pyport_preload:code() =/= undefined.
