"""hornbeam_erlang and hornbeam_ml in a worker with no Erlang node behind
it: errors are RuntimeErrors that keep pyport's classes, and the parts that
need no Erlang work."""
import pytest

import erlang
import hornbeam_erlang as hb
import hornbeam_ml


def test_erlang_side_failures_are_runtime_errors_of_their_own_class():
    with pytest.raises(RuntimeError) as e:
        hb.state_get("key")
    assert isinstance(e.value, ConnectionError) and isinstance(e.value, erlang.NodeDownError)
    assert "pyport-run has no Erlang node" in str(e.value)
    with pytest.raises(RuntimeError):
        hb.call("anything", 1)
    with pytest.raises(ConnectionError) as e:
        hb.rpc_call("n@h", "m", "f", [])
    assert isinstance(e.value, RuntimeError)


def test_hook_failures_are_hook_errors():
    for fn, prefix in ((lambda: hb.execute("p", "a"), "Execute failed"),
                       (lambda: hb.execute_async("p", "a"), "Execute async failed"),
                       (lambda: hb.await_result("task-1"), "Await failed"),
                       (lambda: list(hb.stream("p", "a")), "Stream failed")):
        with pytest.raises(hb.HookError) as e:
            fn()
        assert isinstance(e.value, RuntimeError) and str(e.value).startswith(prefix + ":")


def test_a_refused_registration_leaves_no_local_handler():
    with pytest.raises(RuntimeError):
        hb.register_hook("h", lambda action: action)
    assert "h" not in hb._hooks
    with pytest.raises(TypeError):
        hb.register_hook(42, lambda action: action)


def test_handlers_are_called_as_documented():
    class Service:
        def __init__(self):
            self.n = 0

        def bump(self, by=1):
            self.n += by
            return self.n

    hb._hooks["svc"] = Service()
    hb._hooks["fn"] = lambda action, *args, **kw: [action, list(args), kw]
    try:
        assert hb._run_hook("svc", "bump", [2], {}) == 2
        assert hb._run_hook("fn", "go", [1], {"k": 3}) == ["go", [1], {"k": 3}]
        with pytest.raises(AttributeError):
            hb._run_hook("svc", "__class__", [], {})
        assert hb._hook_stream("svc", "bump", [], {}) == [3]
    finally:
        hb._hooks.clear()
    with pytest.raises(LookupError):
        hb._run_hook("nobody", "x", [], {})
    with pytest.raises(LookupError):
        hb._run_hook("os:_exit", "x", [], {})


def test_ml_cache_keys():
    assert hornbeam_ml._cache_key("ml", "abc") == hornbeam_ml._cache_key("ml", b"abc")
    assert hornbeam_ml._cache_key("p", "abc").startswith("p:")

    class Array:
        def __init__(self, data):
            self.data, self.shape, self.dtype = bytes(data), (len(data),), "uint8"

        def tobytes(self):
            return self.data

        def __str__(self):
            return "[...]"

    assert hornbeam_ml._cache_key("ml", Array([0, 1])) != hornbeam_ml._cache_key("ml", Array([1, 0]))
    with pytest.raises(ValueError):
        hornbeam_ml.set_max_entries(-1)
