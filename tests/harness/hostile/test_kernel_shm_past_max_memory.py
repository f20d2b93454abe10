"""Attack: SysV shared memory past max_memory. Segments attached one at a
time stay under RLIMIT_AS, but their pages stay allocated after shmdt
(1.5 GiB against a 1 GiB max_memory). The memory cgroup counts them: the
OOM killer ends the worker, and its IPC namespace takes the segments
along. Without a cgroup (an unprivileged node on cgroup v1) shmget and
msgget are refused."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

SHM = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
size = 16 << 20
for _ in range(input // 16):
    id = libc.shmget(0, ctypes.c_size_t(size), 0o1600)
    p = libc.shmat(id, None, 0)
    assert id >= 0 and p != ctypes.c_void_p(-1).value, ctypes.get_errno()
    for off in range(0, size, 4096):
        ctypes.memset(p + off, 1, 1)
    libc.shmdt(ctypes.c_void_p(p))
'held'"""


@needs_no_asan
@pytest.mark.parametrize("mode", MODES)
def test_shared_memory_past_max_memory_ends_the_worker(start, mode, node_process):
    w = start(mode, "--max-memory", str(128 * MIB))
    other = start(mode, "--max-memory", str(128 * MIB))
    if sandbox_of(w)["cgroup"]:
        assert job(w, mode, SHM, 32)[:2] == ("ok", "held")
        assert_oom_killed(w, mode, SHM, 256)
    else:
        # No cgroup (an unprivileged node): nothing would count them, so
        # no segment (nor message queue) may be made.
        assert job(w, mode, SHM, 32)[:2] == forbidden("shmget")
        code = "import ctypes\nctypes.CDLL(None).msgget(0, 0o1600)"
        assert job(w, mode, code)[:2] == forbidden("msgget")
    assert_healthy(other, mode)
    assert node_process.poll() is None
    # No segment of the worker reached the host's IPC namespace.
    with open("/proc/sysvipc/shm") as f:
        assert not [line for line in f.read().splitlines()[1:] if "16777216" in line.split()[3:4]]
