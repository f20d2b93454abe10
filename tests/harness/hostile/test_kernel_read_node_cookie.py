"""Attack: the node's cookie in its command line (`erl -setcookie ...`),
read from /proc/<node>/cmdline. A job's /proc is its own pid namespace's:
no other process of the host is there to read."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

SCAN = """import os
found = []
for entry in os.listdir('/proc'):
    if entry.isdigit():
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as f:
                if input.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
found"""


@pytest.mark.parametrize("mode", MODES)
def test_the_node_command_line_is_out_of_reach(start, mode, node_process):
    w = start(mode)
    code = "open(f'/proc/{input}/cmdline', 'rb').read()"
    status, (reason, info), _ = job(w, mode, code, node_process.pid)
    assert (status, reason, info["type"]) == ("error", "exception", "FileNotFoundError")
    assert job(w, mode, SCAN, COOKIE)[:2] == ("ok", [])
    # Only the worker's own processes are in its /proc (the worker, a warm
    # worker's init, the job template, the runners: a few small pids).
    status, pids, _ = job(w, mode, "[int(p) for p in __import__('os').listdir('/proc') if p.isdigit()]")
    assert status == "ok" and 1 in pids and max(pids) < 64 and len(pids) <= 8
