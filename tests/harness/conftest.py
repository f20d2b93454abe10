"""Fixtures that start real pyport workers (tools/pyport_proto.py).

The worker is found as tools/pyport_proto.locate_worker says: $PYPORT_WORKER,
else build/pyport_worker, else erl/priv/pyport_worker."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKER_SIDE = os.path.join(HERE, "worker_side")
VECTORS_DIR = os.path.join(REPO, "proto", "vectors")
for _p in (os.path.join(REPO, "tools"), WORKER_SIDE, VECTORS_DIR):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pyport_proto  # noqa: E402

# Directories every harness worker gets on its Python path.
WORKER_PATHS = (WORKER_SIDE, VECTORS_DIR)


@pytest.fixture
def spawn():
    """spawn(**Worker kwargs) -> a started Worker. At teardown, a worker the
    test left running must still exit with status 0 when its stdin closes:
    a test that confused a worker fails here even if its own asserts passed."""
    workers = []

    def start(**kwargs):
        kwargs.setdefault("paths", WORKER_PATHS)
        w = pyport_proto.Worker(**kwargs)
        workers.append(w)
        return w

    yield start
    problems = []
    for w in workers:
        if w.returncode is None:
            try:
                rc = w.close()
            except TimeoutError:
                problems.append(f"worker {w.pid} did not exit when its stdin closed")
                continue
            if rc != 0:
                problems.append(f"worker {w.pid} {pyport_proto.describe_exit(rc)} when its stdin closed")
    assert not problems, "; ".join(problems)


@pytest.fixture
def worker(spawn):
    return spawn()
