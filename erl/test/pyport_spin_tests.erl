%% The pool option spin_us reaches the worker's command line
%% (docs/configuration.md; port_worker/input_reader.hpp, SpinBudget).
-module(pyport_spin_tests).
-include_lib("eunit/include/eunit.hrl").

spin_flags(Opts) ->
    {ok, Pool} = pyport_config:validate_pool(p, Opts),
    flags(pyport_os:args(Pool)).

flags(["--spin-us", Us | Rest]) -> ["--spin-us", Us | flags(Rest)];
flags([_ | Rest]) -> flags(Rest);
flags([]) -> [].

%% The worker's own default needs no flag; any other value is passed.
argv_test() ->
    ?assertEqual([], spin_flags(#{})),
    ?assertEqual([], spin_flags(#{spin_us => 100})),
    ?assertEqual(["--spin-us", "0"], spin_flags(#{spin_us => 0})),
    ?assertEqual(["--spin-us", "10000"], spin_flags(#{spin_us => 10000})).

invalid_values_are_refused_test() ->
    [?assertMatch({error, {invalid_pool_option, p, spin_us, Bad}},
                  pyport_config:validate_pool(p, #{spin_us => Bad}))
     || Bad <- [-1, 10001, 1.5, fast, infinity]].
