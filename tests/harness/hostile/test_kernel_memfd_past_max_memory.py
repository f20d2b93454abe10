"""Attack: memory that RLIMIT_AS does not count. A memfd written to (never
mapped) held 1.4 GiB against a 1 GiB max_memory. The worker's memory
cgroup counts every page it charges: past max_memory the kernel's OOM
killer ends the worker (a warm worker, or the zygote with its job), the
pool replaces it, and nothing else is touched. Where the node cannot make
a cgroup (an unprivileged node on cgroup v1), memfd_create is refused."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

# Many memfds, each under max_file_size (RLIMIT_FSIZE bounds one memfd).
MEMFD = """import os
fds = []
chunk = b'x' * (1 << 20)
for i in range(input):
    if i % 16 == 0:
        fds.append(os.memfd_create('hoard'))
    os.write(fds[-1], chunk)
'held'"""


@needs_no_asan
@pytest.mark.parametrize("mode", MODES)
def test_a_memfd_past_max_memory_ends_the_worker(start, mode, node_process):
    w = start(mode, "--max-memory", str(128 * MIB), "--max-file-size", str(64 * MIB))
    if not sandbox_of(w)["cgroup"]:
        # No cgroup (an unprivileged node): nothing would count a memfd,
        # so none may be made.
        assert "cgroup" in dict(sandbox_of(w)["unavailable"])
        assert job(w, mode, MEMFD, 1)[:2] == forbidden("memfd_create")
        assert_healthy(w, mode)
        assert node_process.poll() is None
        return
    other = start(mode, "--max-memory", str(128 * MIB))
    before = state_of(other.hello.os_pid)
    # Under the limit: fine.
    assert job(w, mode, MEMFD, 32)[:2] == ("ok", "held")
    assert_oom_killed(w, mode, MEMFD, 256)
    assert state_of(other.hello.os_pid) == before
    assert_healthy(other, mode)
    assert node_process.poll() is None
