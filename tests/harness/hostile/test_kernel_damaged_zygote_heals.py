"""Attack on the pool's health: a worker whose own limits or priority were
changed (a zygote with 4 open files stayed broken for good: it was
replaced only when it stopped answering). Jobs can no longer reach it
(see test_kernel_prlimit_other_processes), and should anything change it
all the same, the keeper, outside the sandbox, notices within a second and
ends the worker so its pool starts a new one. The change is made here from
outside, by a process of the worker's own uid (as a job of that worker
would be)."""
from kernel_fixtures import *  # noqa: F401,F403
import subprocess
import pytest


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("damage", ["nofile", "nice"])
def test_a_damaged_worker_is_replaced(start, node, mode, damage):
    w = start(mode, "--max-open-files", "64")
    assert_healthy(w, mode)
    pid = w.hello.os_pid
    uid = sandbox_of(w)["uid"]
    as_worker = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if damage == "nofile":
        subprocess.run(as_worker + ["prlimit", "--nofile=16:16", f"--pid={pid}"], check=True)
    else:
        subprocess.run(as_worker + ["renice", "-n", "19", "-p", str(pid)], check=True,
                       stdout=subprocess.DEVNULL)
    assert w.wait_exit(timeout=5) == -signal.SIGKILL


@pytest.mark.parametrize("mode", MODES)
def test_an_untouched_worker_is_not_replaced(start, mode):
    w = start(mode, "--max-open-files", "64", "--cpu-seconds", "30")
    time.sleep(1.3)  # past one of the keeper's checks
    assert w.returncode is None
    assert_healthy(w, mode)
