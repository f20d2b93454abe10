"""Attack: another pool's `env` values, read from /proc (they travelled on
argv and were blanked only once main() ran: 38 reads in 194 starts). They
now come on the worker's stdin (--env-stdin), a pipe no other process can
open: not on any command line, not in any process environment, not in a
job's /proc."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

SECRET = "pyport-env-secret-77c3"

SCAN = """import os
found = []
for entry in os.listdir('/proc'):
    for what in ('cmdline', 'environ'):
        try:
            with open(f'/proc/{entry}/{what}', 'rb') as f:
                if input.encode() in f.read():
                    found.append((entry, what))
        except OSError:
            pass
found"""


def host_processes_holding(secret: bytes) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for what in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{entry}/{what}", "rb") as f:
                        if secret in f.read():
                            found.append((int(entry), what))
                except OSError:
                    pass
    return found


@pytest.mark.parametrize("mode", MODES)
def test_another_pools_env_is_out_of_reach(start, mode):
    attacker = start(mode)
    # The victim pool starts while the attacker watches (the window was
    # its start): 3 starts, each scanned.
    for _ in range(3):
        victim = start(mode, "--env-stdin", env_frame={"API_TOKEN": SECRET})
        assert job(victim, mode, "__import__('os').environ['API_TOKEN']")[:2] == ("ok", SECRET)
        assert job(attacker, mode, SCAN, SECRET)[:2] == ("ok", [])
        # Not on the host either: no command line or environment shows it.
        assert host_processes_holding(SECRET.encode()) == []
        victim.close()
