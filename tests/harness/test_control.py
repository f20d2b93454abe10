"""CONTROL (gc, memory_stats, drop_namespace, reload) and EVAL locals seen
from nested scopes, against a real worker process."""
import os
import textwrap

import pytest

from pyport_proto import RemoteError
from conftest import WORKER_PATHS
from wire import assert_in_sync


def write_module(path, body, stamp):
    path.write_text(textwrap.dedent(body))
    # importlib trusts (mtime, size) of the source: make the change visible
    # even within one second.
    os.utime(path, (stamp, stamp))


def test_reload_runs_the_new_code(spawn, tmp_path):
    mod = tmp_path / "pp_reloadable.py"
    write_module(mod, "def f():\n    return 1\n", 1_000_000)
    w = spawn(paths=[str(tmp_path), *WORKER_PATHS])
    assert w.control("reload", "pp_reloadable") == "not_loaded"
    assert w.call("pp_reloadable", "f") == 1
    write_module(mod, "def f():\n    return 22\n", 2_000_000)
    assert w.call("pp_reloadable", "f") == 1          # imported once, until reloaded
    assert w.control("reload", "pp_reloadable") == "reloaded"
    assert w.call("pp_reloadable", "f") == 22


def test_reload_error_is_answered_and_the_old_module_stays(spawn, tmp_path):
    mod = tmp_path / "pp_breaks.py"
    write_module(mod, "def f():\n    return 1\n", 1_000_000)
    w = spawn(paths=[str(tmp_path), *WORKER_PATHS])
    assert w.call("pp_breaks", "f") == 1
    write_module(mod, "def f(:\n", 2_000_000)
    with pytest.raises(RemoteError) as e:
        w.control("reload", "pp_breaks")
    assert e.value.type == "SyntaxError"
    assert w.call("pp_breaks", "f") == 1
    assert_in_sync(w)


def test_extension_modules_need_a_restart(worker):
    worker.call("_json", "__name__.__len__")   # import the C extension
    assert worker.control("reload", "_json") == "needs_restart"
    assert worker.control("reload", "builtins") == "needs_restart"


def test_gc_and_memory_stats(worker):
    worker.exec("import gc; gc.disable()\nclass C: pass\nfor _ in range(10):\n    c = C(); c.me = c\ndel c", ns=4)
    assert worker.control("gc") >= 10
    worker.exec("gc.enable()", ns=4)
    stats = worker.control("memory_stats")
    assert stats["rss_bytes"] > 1 << 20
    assert stats["namespaces"] == 1
    assert len(stats["gc_count"]) == 3
    worker.exec("import tracemalloc; tracemalloc.start()", ns=4)
    stats = worker.control("memory_stats")
    assert stats["traced_memory_peak"] >= stats["traced_memory_current"] >= 0


def test_drop_namespace_frees_its_objects(worker):
    worker.exec("import weakref, harness_worker\n"
                "class Big: pass\nb = Big()\nharness_worker.REFS = [weakref.ref(b)]", ns=8)
    assert worker.eval("__import__('harness_worker').REFS[0]() is not None") is True
    assert worker.control("drop_namespace", 8) is True
    assert worker.eval("__import__('harness_worker').REFS[0]() is None") is True
    assert worker.control("drop_namespace", 8) is False


def test_eval_locals_reach_comprehensions(worker):
    assert worker.eval("[x * i for i in range(3)]", {"x": 2}) == [0, 2, 4]
    assert worker.eval("list(map(lambda v: v * m, items))", {"items": [1, 2], "m": 3}) == [3, 6]
    with pytest.raises(RemoteError) as e:
        worker.eval("x", None, ns=0)
    assert e.value.type == "NameError"
