"""Attack: read another job's files. Jobs' directories are siblings in the
worker's working directory (job-1, job-2, ...). A fresh job runs next to a
concurrent one that keeps its code's secret in a file; a warm job next to
the directories of the runners kept ready. The job lists the working
directory and opens its neighbours' files by name: its Landlock layer
lets it read its own directory only (and the system's), so every attempt
is refused."""
import os
import time

import pytest

from hostile_kit import MODES, NODES, assert_healthy, job, listdir, lexists, start, start_job, workdir

HOLD = r"""
import os, time
open('secret', 'w').write(input)
time.sleep(1.5)
os.path.basename(os.getcwd())
"""

SNOOP = r"""
import os
me = os.path.basename(os.getcwd())
n = int(me.split('-')[1])
seen = {}
for attempt in ['..'] + [f'../job-{k}' for k in range(max(1, n - 3), n + 4) if k != n]:
    try:
        seen[attempt] = sorted(os.listdir(attempt))
    except OSError as e:
        seen[attempt] = type(e).__name__
    try:
        seen[attempt + '/secret'] = open(attempt + '/secret').read()
    except OSError as e:
        seen[attempt + '/secret'] = type(e).__name__
(me, seen)
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_cannot_read_its_neighbours(spawn, mode, node):
    w = start(spawn, mode, node)
    # After a first job the worker keeps runners ready, each in its own
    # directory: neighbours for the snooper.
    assert job(w, mode, "1")[:2] == ("ok", 1)
    end = time.monotonic() + 10
    while len(listdir(w, workdir(w))) < 2:
        assert time.monotonic() < end
        time.sleep(0.01)
    holder = None
    if mode == "fresh":
        holder = start_job(w, mode, HOLD, "the neighbour's secret")
        # The holder's file is there before the snooper looks.
        end = time.monotonic() + 10
        while not any(lexists(w, os.path.join(workdir(w), d, "secret"))
                      for d in listdir(w, workdir(w))):
            assert time.monotonic() < end
            time.sleep(0.01)
    status, (me, seen), _ = job(w, mode, SNOOP)
    assert status == "ok"
    assert seen[".."] == "PermissionError"
    neighbours = [k for k in seen if k != ".." and not k.endswith("/secret")]
    # Some neighbours were there (the holder, the runners kept ready): the
    # job was refused them...
    assert [k for k in neighbours if seen[k] == "PermissionError"]
    # ...and could list or read none.
    for k in neighbours:
        assert seen[k] in ("PermissionError", "FileNotFoundError"), (k, seen[k])
        assert seen[k + "/secret"] in ("PermissionError", "FileNotFoundError"), (k, seen[k + "/secret"])
    if holder is not None:
        status, _, _ = w.result(holder)
        assert status == "ok"
    assert_healthy(w, mode)
