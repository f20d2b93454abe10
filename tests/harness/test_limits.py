"""Resource limits a worker applies to itself (--max-memory, --cpu-seconds,
--max-open-files): what Python sees when it reaches them."""
import os
import signal
import subprocess

import pytest

import pyport_proto as P
from pyport_proto import RemoteError
from wire import assert_in_sync


# AddressSanitizer reserves terabytes of address space for its shadow
# memory: no worker built with it can run under RLIMIT_AS.
needs_no_asan = pytest.mark.skipif(os.environ.get("PYPORT_SANITIZED") == "1",
                                   reason="an address-space limit cannot hold an ASan build")


def rlimits(worker):
    return worker.eval("[__import__('resource').getrlimit(getattr(__import__('resource'), n))"
                       " for n in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_NOFILE')]")


@needs_no_asan
def test_limits_are_applied(spawn):
    w = spawn(args=["--max-memory", str(512 << 20), "--cpu-seconds", "100",
                    "--max-open-files", "64"])
    as_, cpu, nofile = rlimits(w)
    assert as_[0] == 512 << 20
    assert tuple(cpu) == (100, 101)
    assert nofile[0] == 64


def test_no_limits_by_default(worker):
    as_, cpu, _ = rlimits(worker)
    infinity = worker.eval("__import__('resource').RLIM_INFINITY")
    assert as_[0] == infinity and cpu[0] == infinity


@needs_no_asan
def test_memory_limit_is_a_memory_error_and_the_worker_goes_on(spawn):
    w = spawn(args=["--max-memory", str(400 << 20)])
    with pytest.raises(RemoteError) as e:
        w.eval("len(bytearray(1 << 30))")
    assert e.value.type == "MemoryError"
    # Growing a list until it cannot grow: the same, and the memory is back.
    with pytest.raises(RemoteError) as e:
        w.exec("hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))", ns=3)
    assert e.value.type == "MemoryError"
    w.control("drop_namespace", 3)
    assert w.eval("len(bytearray(50 << 20))") == 50 << 20
    assert_in_sync(w)


def test_open_files_limit(spawn):
    w = spawn(args=["--max-open-files", "32"])
    with pytest.raises(RemoteError) as e:
        w.exec("import os\nfds = []\ntry:\n    for _ in range(64):\n"
               "        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
               "finally:\n    for fd in fds:\n        os.close(fd)", ns=2)
    assert e.value.type == "OSError" and "Too many open files" in e.value.message
    assert_in_sync(w)


def test_cpu_limit_kills_the_worker(spawn):
    w = spawn(args=["--cpu-seconds", "1"])
    id = w.request(P.EXEC, "while True: pass", 0)
    with pytest.raises(P.WorkerExited):
        w.wait(id, timeout=30)
    assert w.wait_exit(timeout=10) == -signal.SIGXCPU


@pytest.mark.parametrize("arg,value", [("--max-memory", "1000"), ("--cpu-seconds", "0"),
                                       ("--max-open-files", "x")])
def test_bad_limits_are_refused(arg, value):
    # stdout is the frame channel: it carries the StartError frame (bytes).
    r = subprocess.run([P.locate_worker(), arg, value], capture_output=True, text=True,
                       errors="replace", timeout=30)
    assert r.returncode == 2
    assert arg in r.stderr and f"not '{value}'" in r.stderr


def test_a_refused_limit_is_reported_in_a_frame():
    # Before its HELLO the worker tells the owner why it exits: an ERROR
    # frame with id 0, type StartError, and the option at fault.
    too_big = str(1 << 63)
    r = subprocess.run([P.locate_worker(), "--max-memory", too_big], capture_output=True,
                       timeout=30)
    assert r.returncode == 2
    size = int.from_bytes(r.stdout[:4], "big")
    frame = P.parse_frame(r.stdout[4:4 + size])
    assert (frame.kind, frame.id, frame.fields[0], frame.fields[2]) == \
        (P.ERROR, 0, "StartError", "--max-memory")
    assert too_big in frame.fields[1]


def test_a_start_failure_is_a_worker_exit_with_the_reason(spawn):
    with pytest.raises(P.WorkerExited) as e:
        spawn(args=["--cpu-seconds", str(1 << 32)])
    assert e.value.returncode == 2 and "--cpu-seconds" in str(e.value)
