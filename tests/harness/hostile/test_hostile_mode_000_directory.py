"""Attack: leave files that cleanup cannot remove. The job builds a deep
tree, puts a secret at the bottom, a symbolic link to /etc, then takes
every permission away (mode 000 on the directories, and on its own
directory last), hoping its directory survives for a later job (or the
host) to read. The worker removes whatever a job made, whatever its modes,
without following links: nothing of the job is left."""
import os

import pytest

from hostile_kit import MODES, NODES, WHO, assert_gone, assert_healthy, job, lexists, start, workdir

ATTACK = WHO + r"""
os.makedirs('a/b/c')
open('a/b/c/secret', 'w').write('left for later')
os.symlink('/etc', 'a/etc')
here = os.getcwd()
for d in ('a/b/c', 'a/b', 'a'):
    os.chmod(d, 0)
os.chmod(here, 0)
result = (result, os.path.basename(here))
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_what_a_job_made_is_removed_whatever_its_modes(spawn, mode, node):
    w = start(spawn, mode, node)
    status, (pid, name), _ = job(w, mode, ATTACK)
    assert status == "ok"
    assert_gone(int(pid))
    assert not lexists(w, os.path.join(workdir(w), name))
    assert os.path.isdir("/etc/ssl")  # the link was removed, not followed
    assert_healthy(w, mode)
