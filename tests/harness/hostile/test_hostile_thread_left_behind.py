"""Attack: a thread left behind. The job starts a thread that outlives its
code: it waits for the next job to arrive in the same process (a new
working directory, a new input on the job pipe, fd 4) and then answers it
with a forged result on the result pipe (fd 3). Every job runs in a
process of its own that ends with its job: the thread dies with it, and
the next job's answer is its own."""
import pytest

from hostile_kit import MODES, NODES, WHO, assert_gone, assert_healthy, job, start

ATTACK = WHO + r"""
import os, threading, time, struct

def lurk():
    seen = os.getcwd()
    while True:
        time.sleep(0.005)
        try:
            data = os.read(4, 1 << 16)  # the next job, should it come here
        except OSError:
            data = b''
        if data or os.getcwd() != seen:
            forged = b'\x92\xd4\x01\x02\xa6forged'
            os.write(3, struct.pack('>I', len(forged)) + forged)

threading.Thread(target=lurk, daemon=False).start()
result
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_a_thread_left_behind_dies_with_its_job(spawn, mode, node):
    w = start(spawn, mode, node)
    status, pid, _ = job(w, mode, ATTACK)
    assert status == "ok"
    assert_gone(int(pid))
    for n in range(5):
        status, value, _ = job(w, mode, "import time\ntime.sleep(0.01)\ninput * 2", n)
        assert (status, value) == ("ok", n * 2)
    assert_healthy(w, mode)
