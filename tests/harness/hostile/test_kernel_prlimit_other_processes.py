"""Attack: prlimit64 on another process (a job lowered another pool's
worker's CPU limit, set a zygote's open files to 4, and with an
unprivileged node set the node's own RLIMIT_CPU to 1). prlimit64 acts on
the caller only (pid 0): any other pid is refused and named, and every
worker lives in a pid namespace where no other tenant has a pid."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest


@pytest.mark.parametrize("mode", MODES)
def test_prlimit_on_other_tenants_and_the_node_is_refused(start, mode, node_process):
    w = start(mode)
    other = start(mode)
    victims = tenants(other) + [node_process.pid]
    before = {pid: state_of(pid) for pid in victims}
    # Another pool's worker and keeper, the node, and the job's own
    # namespace init (a zygote, or a warm worker's init).
    for pid in victims + [1]:
        code = "import resource\nresource.prlimit(input, resource.RLIMIT_CPU, (1, 1))"
        assert job(w, mode, code, pid)[:2] == forbidden("prlimit64"), pid
        code = "import resource\nresource.prlimit(input, resource.RLIMIT_NOFILE, (4, 4))"
        assert job(w, mode, code, pid)[:2] == forbidden("prlimit64"), pid
    assert {pid: state_of(pid) for pid in victims} == before
    assert node_process.poll() is None
    assert_healthy(other, mode)
    assert_healthy(w, mode)
    # Its own limits, through pid 0, as glibc's setrlimit does: allowed.
    code = "import resource\nresource.prlimit(0, resource.RLIMIT_NOFILE)[0]"
    assert job(w, mode, code)[0] == "ok"
