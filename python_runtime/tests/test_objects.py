"""erlang._objects: the worker's side of objects kept for Erlang (ids the
node chose) and of the WITH options (docs/type-mapping.md)."""
import asyncio

import pytest

import erlang
from erlang import _objects


def test_keep_release_and_early_release():
    before = _objects.count()
    assert _objects.apply([1, 2], {"keep": 10**12 + 1})[0] == 10**12 + 1
    assert _objects._table[10**12 + 1] == [1, 2] and _objects.count() == before + 1
    _objects.release(10**12 + 1)
    assert _objects.count() == before
    # Released before it was stored (the caller gave up on a coroutine):
    # the object is not kept when it comes.
    _objects.release(10**12 + 2)
    _objects.apply("late", {"keep": 10**12 + 2})
    assert 10**12 + 2 not in _objects._table and _objects.count() == before


def test_the_early_released_set_is_bounded():
    for i in range(_objects._MAX_RELEASED_EARLY + 100):
        _objects.release(2**62 + i)
    assert len(_objects._released_early) == _objects._MAX_RELEASED_EARLY


def test_awaitables_are_kept_once_done():
    async def value():
        return "v"

    async def main():
        return await _objects.apply(value(), {"keep": 10**12 + 3})

    assert erlang.run(main())[0] == 10**12 + 3
    assert _objects._table.pop(10**12 + 3) == "v"


def test_str_fallback_and_limits():
    class Odd:
        def __str__(self):
            return "odd"

    value = {"a": [Odd(), 1j, b"x", erlang.Atom("ok")], "s": {Odd()}}
    assert _objects.convert(value, str_fallback=True) == {"a": ["odd", "1j", b"x", "ok"],
                                                        "s": ["odd"]}
    assert isinstance(_objects.convert([erlang.Atom("ok")], True)[0], erlang.Atom)
    # Unconvertible objects stay for the codec to refuse without the option.
    o = object()
    assert _objects.convert([o])[0] is o
    deep = 0
    for _ in range(600):
        deep = [deep]
    with pytest.raises(TypeError, match="deeper than 512"):
        _objects.convert(deep, str_fallback=True)


def test_call_method_and_identity():
    assert _objects.call_method([3, 1, 2], "index", 1) == 1
    assert _objects.call_method("a-b", "split", sep="-") == ["a", "b"]
    assert _objects.identity(x := object()) is x
