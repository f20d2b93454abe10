"""Attack: a lock held for ever. The job takes exclusive flock and fcntl
locks on a file every job can read (a module of the pool's path) and
leaves a thread holding them. The locks belong to the job's process and
descriptors, which end with the job: the next job takes the same locks at
once."""
import pytest

from hostile_kit import MODES, NODES, WHO, assert_gone, assert_healthy, job, start

ATTACK = WHO + r"""
import erlang, fcntl, threading, time
f = open(erlang.__file__, 'rb')
fcntl.flock(f, fcntl.LOCK_EX)
g = open(erlang.__file__, 'rb')
threading.Thread(target=lambda: (f, g, time.sleep(3600)), daemon=False).start()
result
"""

TAKE = r"""
import erlang, fcntl
f = open(erlang.__file__, 'rb')
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
'locked'
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_a_lock_left_behind_is_released_with_its_job(spawn, mode, node):
    w = start(spawn, mode, node)
    status, pid, _ = job(w, mode, ATTACK)
    assert status == "ok", pid
    assert_gone(int(pid))
    assert job(w, mode, TAKE)[:2] == ("ok", "locked")
    assert_healthy(w, mode)
