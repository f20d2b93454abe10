%% py_buffer (erlang_python's API, docs/channels.md): Python reads what
%% Erlang writes as a file; the node holds at most max_size unread bytes.
-module(py_buffer_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [write_close_read, blocks_until_data, lines_and_readline, file_api, read_nonblock,
     content_length_and_bad_input, python_closes, backpressure_bounded, large_stream,
     owner_exit_frees, worker_killed_while_reading].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 2, python_path => [?config(data_dir, Config)],
                                               kill_after => 2000}}),
    Config.

end_per_suite(_Config) ->
    pyport_test_util:stop().

init_per_testcase(_Case, Config) ->
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    Config.

ctx() -> py:context(1).

async_call(F, Args) ->
    pyport_test_util:async(fun() -> py:call(ctx(), buf_mod, F, Args) end).

write_close_read(_Config) ->
    {ok, Buf} = py_buffer:new(),
    ok = py_buffer:write(Buf, <<"hello ">>),
    ok = py_buffer:write(Buf, [<<"wor">>, "ld"]),
    ok = py_buffer:close(Buf),
    ?assertEqual({ok, <<"hello world">>}, py:call(ctx(), buf_mod, read_all, [Buf])),
    ?assertEqual({error, write_failed}, py_buffer:write(Buf, <<"late">>)),
    ?assertMatch(#{written := 11, eof := true}, py_buffer:info(Buf)).

blocks_until_data(_Config) ->
    {ok, Buf} = py_buffer:new(),
    Ref = async_call(read_sizes, [Buf, [4, 100]]),
    timer:sleep(200),
    ok = py_buffer:write(Buf, <<"ab">>),
    timer:sleep(100),
    ok = py_buffer:write(Buf, <<"cdef">>),
    timer:sleep(100),
    ok = py_buffer:close(Buf),
    %% read(4) waited for 4 bytes; read(100) returned at end of file.
    ?assertEqual({ok, [<<"abcd">>, <<"ef">>]}, pyport_test_util:await(Ref)).

lines_and_readline(_Config) ->
    {ok, Buf} = py_buffer:new(),
    ok = py_buffer:write(Buf, <<"one\ntw">>),
    ok = py_buffer:write(Buf, <<"o\nthree">>),
    ok = py_buffer:close(Buf),
    ?assertEqual({ok, [<<"one\n">>, <<"two\n">>, <<"three">>]}, py:call(ctx(), buf_mod, lines, [Buf])),
    {ok, Buf2} = py_buffer:new(),
    ok = py_buffer:write(Buf2, <<"abcdef\nx\ny\n">>),
    ok = py_buffer:close(Buf2),
    ?assertEqual({ok, [<<"abc">>, <<"def\n">>, [<<"x\n">>, <<"y\n">>]]},
                 py:call(ctx(), buf_mod, readline_limited, [Buf2, 3])).

file_api(_Config) ->
    {ok, Buf} = py_buffer:new(11),
    ok = py_buffer:write(Buf, <<"hello world">>),
    ok = py_buffer:close(Buf),
    ?assertEqual({ok, [<<"hello">>, 5, 3, <<"hello">>, <<" world">>, 11, true, 11, true, true, false]},
                 py:call(ctx(), buf_mod, file_api, [Buf])).

read_nonblock(_Config) ->
    {ok, Buf} = py_buffer:new(),
    ok = py_buffer:write(Buf, <<"now">>),
    ?assertEqual({ok, [<<"now">>, 0]}, py:call(ctx(), buf_mod, nonblock, [Buf])),
    py_buffer:close(Buf).

content_length_and_bad_input(_Config) ->
    {ok, Buf} = py_buffer:new(4),
    ok = py_buffer:write(Buf, <<"abc">>),
    ?assertEqual({error, {content_length_exceeded, 4}}, py_buffer:write(Buf, <<"de">>)),
    ok = py_buffer:write(Buf, <<"d">>),
    ?assertEqual({error, invalid_buffer}, py_buffer:write(Buf, [foo])),
    ?assertEqual({error, invalid_buffer}, py_buffer:write(not_a_buffer, <<"x">>)),
    ?assertEqual({error, {invalid_option, content_length, -1}}, py_buffer:new(-1)),
    ?assertEqual({error, {invalid_option, max_size, 0}}, py_buffer:new(#{max_size => 0})).

python_closes(_Config) ->
    {ok, Buf} = py_buffer:new(),
    ok = py_buffer:write(Buf, <<"abcdef">>),
    ?assertEqual({ok, [<<"abc">>, <<"closed">>]}, py:call(ctx(), buf_mod, close_early, [Buf])),
    ?assertEqual({error, write_failed}, py_buffer:write(Buf, <<"more">>)),
    ?assertMatch(#{size := 0, closed_by_python := true}, py_buffer:info(Buf)).

backpressure_bounded(_Config) ->
    {ok, Buf} = py_buffer:new(#{max_size => 1000}),
    ok = py_buffer:write(Buf, binary:copy(<<"a">>, 1000)),
    %% Full: the next write waits, then times out (nothing read).
    ?assertEqual({error, timeout}, py_buffer:write(Buf, <<"b">>, 100)),
    ?assertMatch(#{size := 1000, written := 1000}, py_buffer:info(Buf)),
    %% A write larger than the cap goes in as Python reads.
    Self = self(),
    spawn(fun() -> Self ! {wrote, py_buffer:write(Buf, binary:copy(<<"c">>, 5000), 10000),
                           py_buffer:close(Buf)} end),
    timer:sleep(100),
    ?assertMatch(#{size := S} when S =< 1000, py_buffer:info(Buf)),
    ?assertEqual({ok, 6000}, py:call(ctx(), buf_mod, total, [Buf])),
    receive {wrote, ok, ok} -> ok after 5000 -> ct:fail(writer_stuck) end.

large_stream(_Config) ->
    %% 8 MiB through a 256 KiB buffer: bounded memory, every byte arrives.
    {ok, Buf} = py_buffer:new(#{max_size => 262144}),
    Chunk = binary:copy(<<"0123456789abcdef">>, 4096),     % 64 KiB
    Ref = async_call(total, [Buf]),
    [ok = py_buffer:write(Buf, Chunk) || _ <- lists:seq(1, 128)],
    ok = py_buffer:close(Buf),
    ?assertEqual({ok, 128 * 65536}, pyport_test_util:await(Ref)).

owner_exit_frees(_Config) ->
    Procs0 = erlang:system_info(process_count),
    Self = self(),
    Owner = spawn(fun() -> {ok, B} = py_buffer:new(), Self ! {buf, B}, receive stop -> ok end end),
    Buf = receive {buf, B} -> B end,
    Ref = async_call(read_all, [Buf]),
    timer:sleep(200),
    Owner ! stop,
    %% The waiting read ends with an error, not a hang.
    ?assertMatch({error, {'ValueError', _}}, pyport_test_util:await(Ref)),
    ?assertEqual({error, invalid_buffer}, py_buffer:write(Buf, <<"x">>)),
    pyport_test_util:wait_until(fun() -> pyport_handles:count() =:= 0 end),
    pyport_test_util:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 end).

worker_killed_while_reading(_Config) ->
    Procs0 = erlang:system_info(process_count),
    {ok, Buf} = py_buffer:new(),
    {ok, OsPid} = py:call(ctx(), buf_mod, worker_pid, []),
    Ref = async_call(read_all, [Buf]),
    timer:sleep(300),
    pyport_os:kill(OsPid),
    ?assertMatch({error, {worker_exited, _}}, pyport_test_util:await(Ref)),
    ok = py_buffer:write(Buf, <<"still here">>),
    ok = py_buffer:close(Buf),
    pyport_test_util:wait_until(
      fun() -> case py:call(ctx(), buf_mod, worker_pid, []) of
                   {ok, P} -> P =/= OsPid;
                   _ -> false
               end
      end),
    ?assertEqual({ok, <<"still here">>}, py:call(ctx(), buf_mod, read_all, [Buf])),
    pyport_test_util:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 + 1 end).
