%% pyport's configuration: every key validated by pyport_config, defaults
%% filled in, and a bad configuration stopping application:start with an
%% error that names the pool, the key and the value.
-module(pyport_config_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [{group, validator}, {group, application}].

groups() ->
    [{validator, [parallel],
      [defaults_filled_in, valid_values_kept, sizes, python_paths, frame_sizes,
       timeouts, worker_paths, unknown_keys, malformed_pools, python_settings, limits,
       event_loop_settings]},
     {application, [],
      [no_pools_means_default_pool, bad_size_stops_start, unknown_key_stops_start,
       bad_pools_stop_start, missing_worker_stops_start, runtime_pool_options_checked,
       bad_event_loop_settings_stop_start, bad_max_state_entries_stops_start]}].

init_per_suite(Config) ->
    _ = application:load(pyport),
    Config.

end_per_suite(_Config) ->
    application:unset_env(pyport, pools),
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    _ = application:stop(pyport),
    application:unset_env(pyport, pools),
    application:unset_env(pyport, event_loop_pool),
    application:unset_env(pyport, event_loop_pool_size),
    application:unset_env(pyport, max_state_entries),
    ok.

%%%===================================================================
%%% pyport_config
%%%===================================================================

defaults_filled_in(_Config) ->
    {ok, Opts} = pyport_config:validate_pool(p, #{}),
    ?assertEqual(erlang:system_info(schedulers_online), maps:get(size, Opts)),
    ?assertEqual([], maps:get(python_path, Opts)),
    ?assertEqual(64 * 1024 * 1024, maps:get(max_frame_size, Opts)),
    ?assertEqual(30000, maps:get(call_timeout, Opts)),
    ?assertEqual(10000, maps:get(start_timeout, Opts)),
    Worker = maps:get(worker, Opts),
    ?assertEqual(<<"pyport_worker">>, filename:basename(Worker)),
    ?assertEqual(filename:join(code:priv_dir(pyport), "pyport_worker"), binary_to_list(Worker)),
    ?assertEqual(lists:sort(maps:keys(pyport_config:defaults())), lists:sort(maps:keys(Opts))).

valid_values_kept(_Config) ->
    In = #{size => 3, python_path => ["a", <<"b">>], max_frame_size => 1024,
           call_timeout => infinity, start_timeout => 1, worker => "/opt/w"},
    ?assertEqual({ok, maps:merge(pyport_config:defaults(),
                                 In#{python_path => [<<"a">>, <<"b">>], worker => <<"/opt/w">>})},
                 pyport_config:validate_pool(p, In)).

sizes(_Config) ->
    [?assertEqual({error, {invalid_pool_option, default, size, V}},
                  pyport_config:validate_pool(default, #{size => V}))
     || V <- [-1, 0, 1.5, "2", two]],
    ?assertMatch({ok, #{size := 1}}, pyport_config:validate_pool(default, #{size => 1})).

python_paths(_Config) ->
    [?assertEqual({error, {invalid_pool_option, p, python_path, V}},
                  pyport_config:validate_pool(p, #{python_path => V}))
     || V <- ["not/a/list/of/dirs", <<"dir">>, [42], [""], [<<>>], [dir], ["ok" | bad]]],
    ?assertMatch({ok, #{python_path := [<<"/x/ünï"/utf8>>]}},
                 pyport_config:validate_pool(p, #{python_path => ["/x/ünï"]})),
    %% {priv, App, Dir}: in that application's priv/, wherever it is installed.
    Priv = list_to_binary(filename:join(code:priv_dir(pyport), "python")),
    ?assertMatch({ok, #{python_path := [Priv, <<"b">>]}},
                 pyport_config:validate_pool(p, #{python_path => [{priv, pyport, "python"}, "b"]})),
    [?assertEqual({error, {invalid_pool_option, p, python_path, V}},
                  pyport_config:validate_pool(p, #{python_path => V}))
     || V <- [[{priv, no_such_app_loaded, "python"}], [{priv, pyport, 42}], [{priv, "pyport", "x"}]]].

frame_sizes(_Config) ->
    [?assertEqual({error, {invalid_pool_option, p, max_frame_size, V}},
                  pyport_config:validate_pool(p, #{max_frame_size => V}))
     || V <- [0, 1023, 1 bsl 32, 1.0e6, big]],
    ?assertMatch({ok, #{max_frame_size := 1024}},
                 pyport_config:validate_pool(p, #{max_frame_size => 1024})).

timeouts(_Config) ->
    [?assertEqual({error, {invalid_pool_option, p, call_timeout, V}},
                  pyport_config:validate_pool(p, #{call_timeout => V}))
     || V <- [-1, 1.5, forever]],
    [?assertEqual({error, {invalid_pool_option, p, start_timeout, V}},
                  pyport_config:validate_pool(p, #{start_timeout => V}))
     || V <- [0, -5, infinity]],
    ?assertMatch({ok, #{call_timeout := 0}}, pyport_config:validate_pool(p, #{call_timeout => 0})).

worker_paths(_Config) ->
    [?assertEqual({error, {invalid_pool_option, p, worker, V}},
                  pyport_config:validate_pool(p, #{worker => V}))
     || V <- [42, "", <<>>, [<<"a">> | b]]].

unknown_keys(_Config) ->
    ?assertEqual({error, {unknown_pool_option, default, colour}},
                 pyport_config:validate_pool(default, #{colour => red})),
    ?assertEqual({error, {unknown_pool_option, default, <<"size">>}},
                 pyport_config:validate_pool(default, #{<<"size">> => 2})),
    %% An unknown key is reported even next to valid ones.
    ?assertEqual({error, {unknown_pool_option, default, sise}},
                 pyport_config:validate_pool(default, #{size => 2, sise => 3})).

malformed_pools(_Config) ->
    ?assertEqual({error, {invalid_pools, [{default, #{}}]}},
                 pyport_config:validate_pools([{default, #{}}])),
    ?assertEqual({error, {invalid_pool, default, [{size, 2}]}},
                 pyport_config:validate_pools(#{default => [{size, 2}]})),
    ?assertEqual({error, {invalid_pool_name, "default"}},
                 pyport_config:validate_pools(#{"default" => #{}})),
    %% The first bad pool in name order is the one reported.
    ?assertEqual({error, {invalid_pool_option, a, size, 0}},
                 pyport_config:validate_pools(#{b => #{size => 0}, a => #{size => 0}})),
    {ok, Pools} = pyport_config:validate_pools(#{a => #{size => 1}, b => #{}}),
    ?assertEqual([a, b], lists:sort(maps:keys(Pools))).

python_settings(Config) ->
    Dir = ?config(priv_dir, Config),
    Bad = fun(Key, V) -> ?assertEqual({error, {invalid_pool_option, p, Key, V}},
                                      pyport_config:validate_pool(p, #{Key => V}))
          end,
    %% env: a map or list of names to values (or false: unset).
    ?assertMatch({ok, #{env := [{"A", "1"}, {"B", false}]}},
                 pyport_config:validate_pool(p, #{env => #{"A" => "1", <<"B">> => false}})),
    ?assertMatch({ok, #{env := [{"X", "y"}]}}, pyport_config:validate_pool(p, #{env => [{'X', <<"y">>}]})),
    [Bad(env, V) || V <- [#{"" => "x"}, #{"A=B" => "x"}, #{"A" => 1}, [{"A"}], "A=1",
                          #{"A" => <<0>>}]],
    %% cd: an existing directory.
    ?assertMatch({ok, #{cd := _}}, pyport_config:validate_pool(p, #{cd => Dir})),
    [Bad(cd, V) || V <- ["/nonexistent/dir", 42, ""]],
    %% imports: dotted module names.
    ?assertMatch({ok, #{imports := [<<"json">>, <<"os.path">>, <<"_x1">>]}},
                 pyport_config:validate_pool(p, #{imports => [json, "os.path", <<"_x1">>]})),
    [Bad(imports, V) || V <- [json, ["1abc"], ["a..b"], ["a;import os"], [""], [42]]],
    %% init_code: text.
    ?assertMatch({ok, #{init_code := <<"x = 1">>}}, pyport_config:validate_pool(p, #{init_code => "x = 1"})),
    Bad(init_code, 42),
    %% venv: a directory with pyvenv.cfg.
    [Bad(venv, V) || V <- [Dir, "/nonexistent", 7]].

limits(_Config) ->
    Bad = fun(Key, V) -> ?assertEqual({error, {invalid_pool_option, p, Key, V}},
                                      pyport_config:validate_pool(p, #{Key => V}))
          end,
    Good = fun(Key, V) -> ?assertMatch({ok, #{Key := V}}, pyport_config:validate_pool(p, #{Key => V})) end,
    [Good(K, infinity) || K <- [max_inflight, kill_after, max_requests, max_memory, max_rss,
                                cpu_seconds, max_open_files]],
    [Good(K, 1) || K <- [max_inflight, max_requests, max_rss, cpu_seconds]],
    Good(kill_after, 0),
    Good(shutdown_timeout, 0),
    Good(max_memory, 32 * 1024 * 1024),
    Good(max_open_files, 16),
    [Bad(K, V) || K <- [max_inflight, max_requests, max_rss, cpu_seconds], V <- [0, -1, 1.5, lots]],
    [Bad(K, V) || K <- [kill_after, shutdown_timeout], V <- [-1, 1.5, never]],
    Bad(shutdown_timeout, infinity),
    Bad(max_memory, 1000),
    Bad(max_open_files, 3).

%%%===================================================================
%%% application:start
%%%===================================================================

no_pools_means_default_pool(_Config) ->
    application:unset_env(pyport, pools),
    {ok, _} = application:ensure_all_started(pyport),
    ?assertEqual([default], pyport:pools()),
    {ok, Workers} = pyport:workers(default),
    ?assertEqual(erlang:system_info(schedulers_online), length(Workers)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

event_loop_settings(_Config) ->
    ?assertEqual(ok, pyport_config:validate_event_loops(undefined, undefined)),
    ?assertEqual(ok, pyport_config:validate_event_loops({ok, loops}, {ok, 3})),
    ?assertEqual({error, {invalid_config, event_loop_pool, "loops"}},
                 pyport_config:validate_event_loops({ok, "loops"}, undefined)),
    ?assertEqual({error, {invalid_config, event_loop_pool_size, 0}},
                 pyport_config:validate_event_loops(undefined, {ok, 0})),
    ?assertEqual({error, {invalid_config, event_loop_pool_size, many}},
                 pyport_config:validate_event_loops(undefined, {ok, many})).

bad_event_loop_settings_stop_start(_Config) ->
    application:set_env(pyport, pools, #{default => #{size => 1}}),
    application:set_env(pyport, event_loop_pool_size, -2),
    ?assertEqual({error, {{invalid_config, event_loop_pool_size, -2},
                          {pyport_app, start, [normal, []]}}},
                 application:start(pyport)).

bad_size_stops_start(_Config) ->
    application:set_env(pyport, pools, #{default => #{size => -1}}),
    ?assertEqual({error, {{invalid_pool_option, default, size, -1},
                          {pyport_app, start, [normal, []]}}},
                 application:start(pyport)),
    ?assertEqual(false, lists:keymember(pyport, 1, application:which_applications())).

unknown_key_stops_start(_Config) ->
    application:set_env(pyport, pools, #{default => #{size => 1, colour => red}}),
    ?assertEqual({error, {{unknown_pool_option, default, colour},
                          {pyport_app, start, [normal, []]}}},
                 application:start(pyport)).

bad_pools_stop_start(_Config) ->
    application:set_env(pyport, pools, [{default, #{}}]),
    ?assertEqual({error, {{invalid_pools, [{default, #{}}]},
                          {pyport_app, start, [normal, []]}}},
                 application:start(pyport)).

bad_max_state_entries_stops_start(_Config) ->
    application:set_env(pyport, pools, #{default => #{size => 1}}),
    [begin
         application:set_env(pyport, max_state_entries, Bad),
         ?assertEqual({error, {{invalid_config, max_state_entries, Bad},
                               {pyport_app, start, [normal, []]}}},
                      application:start(pyport))
     end || Bad <- [0, -1, many, 1.5]],
    application:set_env(pyport, max_state_entries, 10),
    ok = application:start(pyport),
    ?assertEqual(10, pyport_state:max_entries()).

missing_worker_stops_start(_Config) ->
    Path = <<"/nonexistent/bin/pyport_worker">>,
    application:set_env(pyport, pools, #{default => #{size => 2, worker => Path}}),
    {error, Reason} = application:start(pyport),
    %% The innermost reason says what is wrong and where.
    ?assertMatch({_, _}, binary:match(list_to_binary(io_lib:format("~0p", [Reason])),
                                      <<"{worker_start_failed,{no_executable,<<\"/nonexistent/bin/pyport_worker\">>}}">>)),
    ?assertEqual(false, lists:keymember(pyport, 1, application:which_applications())).

runtime_pool_options_checked(_Config) ->
    application:set_env(pyport, pools, #{default => #{size => 1}}),
    {ok, _} = application:ensure_all_started(pyport),
    ?assertEqual({error, {invalid_pool_option, extra, size, 0}},
                 pyport:start_pool(extra, #{size => 0})),
    ?assertEqual({error, {unknown_pool_option, extra, colour}},
                 pyport:start_pool(extra, #{colour => blue})),
    {ok, _} = pyport:start_pool(extra, #{size => 1}),
    ?assertEqual({error, {already_started, extra}}, pyport:start_pool(extra, #{size => 1})),
    ?assertEqual([default, extra], lists:sort(pyport:pools())),
    ok = pyport:stop_pool(extra),
    ?assertEqual({error, {no_pool, extra}}, pyport:stop_pool(extra)),
    ?assertEqual([default], pyport:pools()).
