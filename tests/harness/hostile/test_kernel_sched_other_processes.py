"""Attack: the scheduler and I/O priority of other processes
(sched_setscheduler to SCHED_IDLE, sched_setaffinity, sched_setparam,
sched_setattr, ioprio_set, migrate_pages). Each acts on the caller only:
another pid is refused and named."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

SYSCALL = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
"""

ATTACKS = [
    ("sched_setscheduler", "import os\nos.sched_setscheduler({pid}, os.SCHED_IDLE, os.sched_param(0))"),
    ("sched_setaffinity", "import os\nos.sched_setaffinity({pid}, {{0}})"),
    ("sched_setparam", "import os\nos.sched_setparam({pid}, os.sched_param(0))"),
    # sched_setattr(pid, attr, 0): SCHED_IDLE in a 56-byte struct sched_attr.
    ("sched_setattr", SYSCALL + "attr = (ctypes.c_uint32 * 14)(56, 5)\nlibc.syscall(314, {pid}, attr, 0)"),
    # ioprio_set(IOPRIO_WHO_PROCESS, pid, idle class).
    ("ioprio_set", SYSCALL + "libc.syscall(251, 1, {pid}, 3 << 13)"),
    ("migrate_pages", SYSCALL + "m = ctypes.c_ulong(1)\nlibc.syscall(256, {pid}, 64, ctypes.byref(m), ctypes.byref(m))"),
]


@pytest.mark.parametrize("mode", MODES)
def test_scheduling_other_processes_is_refused(start, mode, node_process):
    w = start(mode)
    other = start(mode)
    victims = tenants(other) + [node_process.pid]
    before = {pid: state_of(pid) for pid in victims}
    for name, code in ATTACKS:
        for pid in victims + [1]:
            assert job(w, mode, code.format(pid=pid))[:2] == forbidden(name), (name, pid)
    # ioprio_set on the whole uid (IOPRIO_WHO_USER), who = 0.
    assert job(w, mode, SYSCALL + "libc.syscall(251, 3, 0, 3 << 13)")[:2] == forbidden("ioprio_set")
    assert {pid: state_of(pid) for pid in victims} == before
    assert_healthy(other, mode)
    assert_healthy(w, mode)
