%% Conversions users hit first (docs/type-mapping.md): numpy scalars and
%% other objects with __index__/__float__ as numbers, buffer-protocol
%% objects as bytes, numpy arrays in the three `numpy' forms, the
%% `str_fallback' option (per call and per pool), and the codec's limits
%% kept under them. Needs Debian's python3-numpy (tools/install-deps).
-module(py_conversions_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [numpy_scalars, index_and_float_objects, buffers_as_bytes, numpy_arrays,
     str_fallback_per_call, str_fallback_per_pool, limits_still_hold].

init_per_suite(Config) ->
    ok = pyport_test_util:start(#{default => #{size => 1},
                                  fallback => #{size => 1, str_fallback => true}}),
    case py:eval(<<"__import__('numpy').__version__">>) of
        {ok, V} -> ct:pal("numpy ~ts", [V]), Config;
        {error, E} -> pyport_test_util:stop(), {fail, {numpy_missing, E}}
    end.

end_per_suite(_Config) ->
    pyport_test_util:stop().

ev(Code) ->
    ev(Code, #{}).

ev(Code, Opts) ->
    py:eval(<<"(lambda np, decimal, fractions, array: ", Code/binary, ")(__import__('numpy'), "
              "__import__('decimal'), __import__('fractions'), __import__('array'))">>,
            #{}, Opts).

numpy_scalars(_Config) ->
    ?assertEqual({ok, 5}, ev(<<"np.int64(5)">>)),
    ?assertEqual({ok, -3}, ev(<<"np.int8(-3)">>)),
    ?assertEqual({ok, 18446744073709551615}, ev(<<"np.uint64(2**64 - 1)">>)),
    ?assertEqual({ok, 1.5}, ev(<<"np.float32(1.5)">>)),
    ?assertEqual({ok, 0.25}, ev(<<"np.float64(0.25)">>)),
    ?assertEqual({ok, true}, ev(<<"np.bool_(True)">>)),
    ?assertEqual({ok, false}, ev(<<"np.bool_(False)">>)),
    ?assertEqual({ok, [1, 2.5, true]}, ev(<<"[np.int32(1), np.float16(2.5), np.True_]">>)),
    %% A 0-dimensional array is a number too.
    ?assertEqual({ok, 7}, ev(<<"np.array(7)">>)),
    ?assertEqual({ok, #{<<"n">> => 3}}, ev(<<"{'n': np.int16(3)}">>)),
    %% And they arrive in Python as plain numbers when sent back.
    ?assertEqual({ok, <<"int">>}, py:eval(<<"type(x).__name__">>, #{x => 5})).

index_and_float_objects(_Config) ->
    ?assertEqual({ok, 2.5}, ev(<<"decimal.Decimal('2.5')">>)),
    ?assertEqual({ok, 0.25}, ev(<<"fractions.Fraction(1, 4)">>)),
    ?assertEqual({ok, 42}, py:eval(<<"type('I', (), {'__index__': lambda self: 42})()">>)),
    ?assertEqual({ok, 1.0}, py:eval(<<"type('F', (), {'__float__': lambda self: 1.0})()">>)),
    %% __index__ wins over __float__; a failing __index__ is the answer.
    ?assertEqual({ok, 1}, py:eval(<<"type('B', (), {'__index__': lambda s: 1, "
                                   "'__float__': lambda s: 2.0})()">>)),
    ?assertMatch({error, {'ZeroDivisionError', _}},
                 py:eval(<<"type('E', (), {'__index__': lambda s: 1 // 0})()">>)),
    ?assertMatch({error, {'TypeError', <<"cannot convert complex to an Erlang term">>}},
                 py:eval(<<"1j">>)).

buffers_as_bytes(_Config) ->
    ?assertEqual({ok, <<"abc">>}, py:eval(<<"bytearray(b'abc')">>)),
    ?assertEqual({ok, <<"bc">>}, py:eval(<<"memoryview(b'abcd')[1:3]">>)),
    %% Strided: copied out in order.
    ?assertEqual({ok, <<"ace">>}, py:eval(<<"memoryview(b'abcdef')[::2]">>)),
    ?assertEqual({ok, <<1, 0, 2, 0>>}, ev(<<"array.array('<H'[1:], [1, 2])">>)).

numpy_arrays(_Config) ->
    I32 = <<0:32/little, 1:32/little, 2:32/little>>,
    ?assertEqual({ok, I32}, ev(<<"np.arange(3, dtype='<i4')">>)),
    %% Not contiguous (a transpose): the C-order bytes of what it shows.
    ?assertEqual({ok, <<0, 3, 1, 4, 2, 5>>}, ev(<<"np.arange(6, dtype='u1').reshape(2, 3).T">>)),
    Atoms = erlang:system_info(atom_count),
    ?assertEqual({ok, {ndarray, [3, 2], <<"|u1">>, <<0, 3, 1, 4, 2, 5>>}},
                 ev(<<"np.arange(6, dtype='u1').reshape(2, 3).T">>, #{numpy => array})),
    ?assertEqual({ok, {ndarray, [3], <<"<i4">>, I32}},
                 ev(<<"np.arange(3, dtype='<i4')">>, #{numpy => array})),
    ?assertEqual(Atoms, erlang:system_info(atom_count)),
    ?assertEqual({ok, [[0, 1, 2], [3, 4, 5]]},
                 ev(<<"np.arange(6).reshape(2, 3)">>, #{numpy => list})),
    ?assertEqual({ok, #{<<"m">> => [[1.5]], <<"k">> => [true]}},
                 ev(<<"{'m': np.array([[1.5]]), 'k': [np.bool_(True)]}">>, #{numpy => list})),
    %% The form applies to results kept and converted later as well.
    {ok, H} = ev(<<"np.zeros(2, dtype='<f8')">>, #{return => ref}),
    ?assertEqual({ok, <<0:128>>}, py:to_term(H)),
    ?assertEqual({ok, [0.0, 0.0]}, py:call_method(H, tolist, [])),
    ok = py:release(H).

str_fallback_per_call(_Config) ->
    ?assertMatch({error, {'TypeError', <<"cannot convert object to an Erlang term">>}},
                 py:eval(<<"object()">>)),
    {ok, <<"<object object at ", _/binary>>} = py:eval(<<"object()">>, #{}, #{str_fallback => true}),
    ?assertEqual({ok, [1, <<"1j">>, {<<"{1}">>}]},
                 py:eval(<<"[1, 1j, (type('S', (), {'__str__': lambda s: '{1}'})(),)]">>, #{},
                         #{str_fallback => true})),
    ?assertMatch({ok, #{<<"k">> := <<"<generator", _/binary>>}},
                 py:eval(<<"{'k': (i for i in [])}">>, #{}, #{str_fallback => true})),
    %% Off again for the pool that has it on.
    ?assertMatch({error, {'TypeError', _}},
                 py:eval(<<"object()">>, #{}, #{pool => fallback, str_fallback => false})).

str_fallback_per_pool(_Config) ->
    {ok, <<"<object object at ", _/binary>>} = py:eval(<<"object()">>, #{}, #{pool => fallback}),
    ?assertEqual({ok, <<"1j">>}, py:call(builtins, complex, [0, 1], #{}, #{pool => fallback})),
    %% What converts still converts exactly.
    ?assertEqual({ok, [1 bsl 70, ok, {1}]},
                 py:eval(<<"[2**70, __import__('erlang').Atom('ok'), (1,)]">>, #{},
                         #{pool => fallback})).

limits_still_hold(_Config) ->
    Deep = <<"__import__('functools').reduce(lambda a, _: [a], range(600), 0)">>,
    ?assertMatch({error, {'TypeError', <<"cannot convert a value nested deeper than 512", _/binary>>}},
                 py:eval(Deep)),
    ?assertMatch({error, {'TypeError', <<"cannot convert a value nested deeper than 512", _/binary>>}},
                 py:eval(Deep, #{}, #{str_fallback => true})),
    ?assertMatch({error, {'TypeError', <<"cannot convert a value nested deeper than 512", _/binary>>}},
                 py:eval(Deep, #{}, #{numpy => list})),
    %% An atom-shaped str from the fallback stays a binary.
    ?assertEqual({ok, <<"brand_new_atom_xyz">>},
                 py:eval(<<"type('A', (), {'__str__': lambda s: 'brand_new_atom_xyz'})()">>, #{},
                         #{str_fallback => true})).
