"""Attack: answer another caller's request. The job looks for the frame
channel among its descriptors (/proc/self/fd) and its parent's
(/proc/<ppid>/fd), and writes a RESULT frame for the next request's id to
every descriptor it can. The job's process holds no descriptor but its own
pipes, cannot open its parent's, and what it writes on them is only its
own output: the next request gets its genuine answer."""
import pytest

import pyport_proto as P
from hostile_kit import MODES, NODES, assert_healthy, job, start

ATTACK = r"""
import os
mine = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))
written = []
for fd in range(0, 1024):
    if fd == 3:
        continue  # its own result pipe: it would only spoil its own answer
    try:
        os.write(fd, input)
        written.append(fd)
    except OSError:
        pass
theirs = []
for fd in range(0, 64):
    try:
        f = os.open(f'/proc/{os.getppid()}/fd/{fd}', os.O_WRONLY)
    except OSError:
        continue
    theirs.append(fd)
    os.write(f, input)
result = (mine, written, theirs)
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_cannot_answer_another_request(spawn, mode, node):
    w = start(spawn, mode, node)
    # RESULT frames for the ids of the requests that follow the job's.
    forged = b"".join(P.encode_frame(P.RESULT, w._next_id + n, "forged") for n in range(1, 8))
    status, (mine, written, theirs), stats = job(w, mode, ATTACK, forged)
    assert status == "ok"
    # 0-2, the result pipe, and the descriptor that listed the directory.
    assert mine == [0, 1, 2, 3, 4]
    assert written == [1, 2]  # stdout and stderr: the job's own output
    assert theirs == []
    for out in (stats["stdout"], stats["stderr"]):
        assert (out if isinstance(out, bytes) else out.encode("utf-8", "surrogateescape")) == forged
    # Every request gets its own answer.
    for n in range(5):
        assert w.call("operator", "add", [n, 3]) == n + 3
    assert_healthy(w, mode)
