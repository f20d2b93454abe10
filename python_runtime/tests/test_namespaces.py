"""erlang._namespaces: the globals of py:eval/py:exec, as real modules."""
import pickle
import sys

import pytest

import erlang
from erlang import _namespaces as ns


@pytest.fixture(autouse=True)
def _clean():
    yield
    for n in (0, 101, 102, 103):
        ns.drop(n)


def test_a_namespace_is_a_registered_module_with_erlang_bound():
    g = ns.create(101)
    assert g["__name__"] == "__pyport_ns_101__"
    assert sys.modules["__pyport_ns_101__"].__dict__ is g
    assert g["erlang"] is erlang
    exec("class Point:\n    pass\np = Point()", g)
    # Defined there, found by name: pickle works.
    assert type(pickle.loads(pickle.dumps(g["p"]))) is g["Point"]


def test_drop_unregisters_and_frees():
    ns.create(102)
    before = ns.count()
    assert ns.drop(102) is True
    assert "__pyport_ns_102__" not in sys.modules
    assert ns.count() == before - 1
    assert ns.drop(102) is False


def test_a_process_namespace_starts_from_the_shared_one():
    shared = ns.create(0)
    assert shared["__name__"] == "__pyport__"
    exec("LIMIT = 3", shared)
    own = ns.create(103)
    assert own["LIMIT"] == 3
    assert own["__name__"] == "__pyport_ns_103__"
    exec("LIMIT = 4", own)
    assert shared["LIMIT"] == 3


def test_create_replaces_a_stale_namespace():
    exec("x = 1", ns.create(101))
    assert "x" not in ns.create(101)


def test_call_looks_in_the_namespace_then_main():
    exec("def twice(x, add=0):\n    return 2 * x + add", ns.create(101))
    assert ns.call(101, "twice", [3], {"add": 1}) == 7
    with pytest.raises(AttributeError):
        ns.call(101, "no_such_function", [], {})
    # A namespace that does not exist: the real __main__.
    sys.modules["__main__"].pp_main_fn = lambda: "main"
    try:
        assert ns.call(999, "pp_main_fn", [], {}) == "main"
    finally:
        del sys.modules["__main__"].pp_main_fn
