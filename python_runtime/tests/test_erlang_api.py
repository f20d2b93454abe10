"""The erlang package in a worker with no Erlang node behind it
(tools/pyport-run answers every request to Erlang with ConnectionError):
nothing hangs, errors say why, and the parts that need no Erlang work."""
import asyncio

import pytest

import erlang
import hornbeam_erlang


def test_requests_fail_fast_without_an_erlang_node():
    with pytest.raises(erlang.NodeDownError) as e:
        erlang.call("anything", 1)
    assert "pyport-run has no Erlang node" in str(e.value)
    assert isinstance(e.value, ConnectionError) and isinstance(e.value, erlang.ErlangError)
    with pytest.raises(ConnectionError):
        hornbeam_erlang.state_get("key")


def test_async_requests_fail_fast_too():
    async def main():
        with pytest.raises(erlang.NodeDownError):
            await erlang.async_call("anything")
        return True

    assert asyncio.run(main())


def test_attribute_lookup_stays_an_attribute_error():
    # hasattr must answer, whatever happens on the Erlang side.
    assert not hasattr(erlang, "some_function")
    assert not hasattr(erlang, "__wrapped__")
    with pytest.raises(AttributeError, match="cannot ask Erlang"):
        erlang.some_function


def test_public_names_are_all_there():
    for name in erlang.__all__:
        assert getattr(erlang, name) is not None, name
    for name in hornbeam_erlang.__all__:
        assert callable(getattr(hornbeam_erlang, name)), name
    assert issubclass(erlang.ErlangHandler, __import__("logging").Handler)


def test_registered_function_objects():
    f = erlang.ErlangFunction("add")
    assert f.__name__ == "add" and repr(f) == "<Erlang function 'add'>"
    assert f == erlang.ErlangFunction("add") and hash(f) == hash(erlang.ErlangFunction("add"))
    with pytest.raises(erlang.NodeDownError):
        f(1, 2)


def test_schedule_markers():
    marker = erlang.schedule("double", 21)
    assert isinstance(marker, erlang.ScheduleMarker)
    assert (marker.how, marker.target) == ("erlang", ["double", [21]])
    later = erlang.schedule_inline("math", "pow", [2, 10])
    assert later.how == "inline" and later.target() == 1024.0
    assert erlang.schedule_py("os.path", "join", ["a", "b"]).target() == "a/b"


def helper(x):
    return x * 3


def test_schedule_resolves_the_callers_own_functions():
    # The caller's own module by name, or "__main__" as erlang_python names it.
    assert erlang.schedule_inline(__name__, "helper", [2]).target() == 6
    assert erlang.schedule_py("__main__", "helper", [3]).target() == 9


def test_schedule_of_something_missing_fails_at_once():
    with pytest.raises(ModuleNotFoundError):
        erlang.schedule_py("no_such_module_here", "f")
    with pytest.raises(AttributeError):
        erlang.schedule_inline("math", "no_such_function")
    with pytest.raises(TypeError, match="not callable"):
        erlang.schedule_inline("math", "pi")


def test_consume_time_slice_checks_its_argument():
    with pytest.raises(ValueError):
        erlang.consume_time_slice(0)
    with pytest.raises(ValueError):
        erlang.consume_time_slice(101)
    assert erlang.consume_time_slice(1) in (True, False)


def test_spans_never_break_the_traced_code():
    @erlang.trace()
    def traced(x):
        """doc"""
        return x + 1

    assert traced(1) == 2
    assert traced.__name__ == "traced" and traced.__doc__ == "doc"
    with pytest.raises(KeyError):
        with erlang.Span("failing"):
            raise KeyError("kept")

    @erlang.trace("named")
    async def traced_async():
        return "async"

    assert asyncio.run(traced_async()) == "async"


def test_nested_spans_share_a_trace():
    with erlang.Span("outer") as outer:
        with erlang.Span("inner") as inner:
            assert inner.parent_id == outer.span_id
            assert inner.trace_id == outer.trace_id
    assert outer.parent_id is None
    assert outer.end_us >= inner.end_us >= inner.start_us >= outer.start_us


def test_logging_handler_never_raises_into_the_caller():
    import logging
    erlang.setup_logging("INFO")
    try:
        logging.getLogger("test").info("goes to Erlang (here: printed by pyport-run)")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, erlang.ErlangHandler)]:
            root.removeHandler(h)
