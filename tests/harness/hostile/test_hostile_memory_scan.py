"""Attack: find another job's code and input in one's own memory. Before,
a fresh job's process was a fork of a zygote that had decoded every job
before it, and a warm job ran in the process that had: their bytes stayed
in freed memory. A job now runs in a fork of the worker's job template,
made before the worker read its first frame, which never sees a job's
data: scanning all of its own readable memory finds nothing of the job
before it (fresh: still running next to it; warm: just finished)."""
import hashlib
import os
import secrets
import time

import pytest

from hostile_kit import MODES, NODES, assert_healthy, job, start, start_job

# ASan's interceptors check every buffer the scan hands to write(2) against
# its shadow memory (terabytes, mostly redzones): not a scan it allows.
pytestmark = pytest.mark.skipif(os.environ.get("PYPORT_SANITIZED") == "1",
                                reason="an ASan build's memory cannot be scanned from inside")

VICTIM = "# {secret}\nimport time\ntime.sleep({sleep})\nlen(input)"

# Looks for the victim's secret by its first 12 bytes, and confirms a
# candidate by the hash of the whole: the secret itself is never in the
# scanner's own memory.
SCAN = r"""
import ctypes, hashlib, os, re
prefix, digest, size = input
# Valid UTF-8 binaries arrive as str.
prefix, digest = (x.encode() if isinstance(x, str) else x for x in (prefix, digest))
found = 0
regions = 0
# Anonymous memory (the heap, Python's arenas, stacks): /proc/self/mem is
# closed to a process that is not dumpable, so each region is copied by
# write(2) into a memfd (a region unmapped meanwhile is EFAULT, not SIGSEGV).
with open('/proc/self/maps') as maps:
    lines = maps.read().splitlines()
copy = os.memfd_create('scan')
for line in lines:
    fields = line.split()
    name = fields[5] if len(fields) > 5 else ''
    if not fields[1].startswith('r') or name not in ('', '[heap]', '[stack]'):
        continue
    start, end = (int(x, 16) for x in fields[0].split('-'))
    regions += 1
    for at in range(start, end, 1 << 20):
        n = min(1 << 20, end - at)
        try:
            os.pwrite(copy, (ctypes.c_char * n).from_address(at), 0)
        except OSError:
            continue
        data = os.pread(copy, n, 0)
        for m in re.finditer(re.escape(prefix), data):
            tail = data[m.start():m.start() + size]
            if len(tail) < size:  # across two chunks: read it whole
                tail = ctypes.string_at(at + m.start(), size)
            if hashlib.sha256(tail).digest() == digest:
                found += 1
(found, regions)
"""


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("mode", MODES)
def test_no_job_finds_another_jobs_data_in_its_memory(spawn, mode, node):
    w = start(spawn, mode, node)
    secret = "SECRET-" + secrets.token_hex(16)
    needle = (secret[:12].encode(), hashlib.sha256(secret.encode()).digest(), len(secret))
    victim_code = VICTIM.format(secret=secret, sleep=2 if mode == "fresh" else 0)
    if mode == "fresh":
        victim = start_job(w, mode, victim_code, secret)
        time.sleep(0.3)  # the zygote has read the victim's job
    else:
        assert job(w, mode, victim_code, secret)[:2] == ("ok", len(secret))
    status, value, _ = job(w, mode, SCAN, needle, timeout=30000)
    assert status == "ok", value
    found, regions = value
    assert regions > 10
    assert found == 0
    if mode == "fresh":
        assert w.result(victim)[:2] == ("ok", len(secret))
    assert_healthy(w, mode)


def test_the_scan_finds_what_is_there(spawn):
    """The scanner works: a job finds its own secret input in its memory."""
    w = start(spawn, "warm")
    secret = "SECRET-" + secrets.token_hex(16)
    needle = (secret[:12].encode(), hashlib.sha256(secret.encode()).digest(), len(secret))
    code = SCAN.replace("prefix, digest, size = input\n",
                        "prefix, digest, size = input[0]\nmine = input[1]\n")
    status, (found, _), _ = job(w, "warm", code, [list(needle), secret], timeout=30000)
    assert status == "ok" and found >= 1
