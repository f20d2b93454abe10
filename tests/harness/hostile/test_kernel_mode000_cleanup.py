"""Attack: a directory a job made unreadable (mode 000, files inside)
survived its worker when the node was unprivileged (the owner's cleanup
could not descend). The cleanup gives each directory back its owner's
rights as it descends. Exercised where the files reach the host: with the
filesystem relaxed (no private tmpfs, the host directory is the working
directory)."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

LOCK = """import os
os.makedirs('a/b/c')
for d in ('a/b/c', 'a/b', 'a'):
    open(os.path.join(d, 'f'), 'w').write('x')
os.chmod('a/b/c', 0)
os.chmod('a/b', 0)
os.chmod('a', 0)
os.listdir('.')"""


@pytest.mark.parametrize("mode", MODES)
def test_a_mode_000_tree_goes_with_the_worker(start, mode, world_tmp):
    os.chmod(world_tmp, 0o777)
    w = start(mode, "--sandbox-allow", "filesystem", "--workdir-parent", world_tmp)
    workdir = sandbox_of(w)["workdir"]
    # In the working directory itself (a zygote's own code: py:call), and
    # in a fresh job's directory, which the keeper takes along at the end
    # whatever the zygote's own cleanup left.
    if mode == "fresh":
        assert job(w, mode, LOCK)[0] == "ok"
    assert job(w, "warm", LOCK)[0] == "ok"
    assert stat.S_IMODE(os.lstat(os.path.join(workdir, "a")).st_mode) == 0
    w.close()
    assert not os.path.exists(workdir)
