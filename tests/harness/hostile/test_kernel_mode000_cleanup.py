"""Attack: a directory a job made unreadable (mode 000, files inside)
survived its worker when the node was unprivileged (the owner's cleanup
could not descend). A job's directory is removed by its worker after the
job (test_hostile_mode_000_directory.py); here the worker dies in the
middle of the job, so the keeper must remove the tree: it gives each
directory back its owner's rights as it descends. Exercised where the files
reach the host: with the filesystem relaxed (no private tmpfs, the host
directory is the working directory)."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

LOCK = """import os, time
os.makedirs('a/b/c')
for d in ('a/b/c', 'a/b', 'a'):
    open(os.path.join(d, 'f'), 'w').write('x')
os.chmod('a/b/c', 0)
os.chmod('a/b', 0)
os.chmod('a', 0)
time.sleep(60)"""


def locked_dirs(top):
    found = []
    for root, dirs, _ in os.walk(top):
        found += [os.path.join(root, d) for d in dirs
                  if stat.S_IMODE(os.lstat(os.path.join(root, d)).st_mode) == 0]
    return found


@pytest.mark.parametrize("mode", MODES)
def test_a_mode_000_tree_goes_with_the_worker(start, mode, world_tmp):
    os.chmod(world_tmp, 0o777)
    w = start(mode, "--sandbox-allow", "filesystem", "--workdir-parent", world_tmp)
    workdir = sandbox_of(w)["workdir"]
    opts = {Atom("fresh"): True} if mode == "fresh" else {}
    w.request(P.CALL, "erlang._jobs", "run_job", [LOCK, None, opts], {})
    assert wait_for(lambda: locked_dirs(workdir), timeout=10)
    os.kill(w.hello.os_pid, signal.SIGKILL)
    assert w.wait_exit(timeout=10) == -signal.SIGKILL
    assert not os.path.exists(workdir)
