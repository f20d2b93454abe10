"""Attack: setpriority on other processes (a job set other tenants to nice
19; PRIO_USER reaches every process of the uid, the node's too when it is
unprivileged). Only PRIO_PROCESS with who = 0 (the caller) is allowed."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest


@pytest.mark.parametrize("mode", MODES)
def test_setpriority_beyond_the_caller_is_refused(start, mode, node, node_process):
    w = start(mode)
    other = start(mode)
    victims = tenants(other) + [node_process.pid]
    before = {pid: state_of(pid) for pid in victims}
    attacks = [f"import os\nos.setpriority(os.PRIO_PROCESS, {pid}, 19)" for pid in victims + [1]]
    attacks += ["import os\nos.setpriority(os.PRIO_USER, 0, 19)",
                f"import os\nos.setpriority(os.PRIO_USER, {node.uid}, 19)",
                "import os\nos.setpriority(os.PRIO_PGRP, 0, 19)"]
    for code in attacks:
        assert job(w, mode, code)[:2] == forbidden("setpriority"), code
    assert {pid: state_of(pid) for pid in victims} == before
    assert_healthy(other, mode)
    assert_healthy(w, mode)
