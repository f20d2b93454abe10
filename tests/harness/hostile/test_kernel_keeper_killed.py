"""Attack on the process tree's seams: the keeper (the port's own process,
outside the sandbox) dies by SIGKILL and cannot clean up. Every process of
the sandbox dies with it all the same (parent-death signals down the chain
keeper, relay, namespace init, worker), so nothing of a job outlives the
port. (The owner then removes the working directory and the cgroups:
erl/test/pyport_hostile_kernel_SUITE.erl, killed_keeper_leaves_nothing.)"""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

from hostile_kit import parent_map


@pytest.mark.parametrize("mode", MODES)
def test_nothing_outlives_a_killed_keeper(start, mode):
    w = start(mode)
    if mode == "fresh":  # a job's child too, the zygote's
        assert job(w, mode, "import time\ntime.sleep(0.01)\n1")[:2] == ("ok", 1)
    tree = descendants(w.pid)
    # The relay, the zygote or a warm worker's init and the worker.
    assert w.hello.os_pid in tree and len(tree) >= 2
    os.kill(w.pid, signal.SIGKILL)
    assert w.wait_exit(timeout=5) == -signal.SIGKILL

    def gone(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    assert wait_for(lambda: all(gone(p) for p in tree), timeout=5)


def descendants(root: int) -> list[int]:
    parents = parent_map()
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        found += kids
        frontier += kids
    return found
