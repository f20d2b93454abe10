"""Attack: SysV shared memory and a message queue left for the next job.
The job creates both under fixed keys, puts a secret in them and leaves
them (they are not tied to a process). Each job has an IPC namespace of
its own, gone with it: the next job finds neither the keys nor any object
at all (/proc/sysvipc lists its namespace's)."""
import pytest

from hostile_kit import MODES, NODES, WHO, assert_gone, assert_healthy, job, start

LEAVE = WHO + r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x5EC2E7, 4096, 0o1666)  # IPC_CREAT | 0666
assert shm >= 0, ctypes.get_errno()
addr = libc.shmat(shm, None, 0)
ctypes.memmove(addr, b'secret in shm', 13)
libc.shmdt(ctypes.c_void_p(addr))
q = libc.msgget(0x5EC2E8, 0o1666)
assert q >= 0, ctypes.get_errno()
msg = ctypes.create_string_buffer(8 + 16)
ctypes.c_long.from_buffer(msg).value = 1
msg[8:22] = b'secret in msgq'
assert libc.msgsnd(q, msg, 16, 0) == 0, ctypes.get_errno()
result
"""

FIND = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
found = (libc.shmget(0x5EC2E7, 0, 0), libc.msgget(0x5EC2E8, 0))
listed = [open(f'/proc/sysvipc/{kind}').read().splitlines()[1:] for kind in ('shm', 'msg', 'sem')]
(found, listed)
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_ipc_objects_do_not_outlive_their_job(spawn, mode, node):
    w = start(spawn, mode, node)
    status, pid, _ = job(w, mode, LEAVE)
    assert status == "ok", pid
    assert_gone(int(pid))
    status, (found, listed), _ = job(w, mode, FIND)
    assert status == "ok"
    assert found == (-1, -1)
    assert listed == [[], [], []]
    assert_healthy(w, mode)
