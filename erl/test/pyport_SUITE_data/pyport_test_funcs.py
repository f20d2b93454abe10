"""Functions the Erlang Common Test suites call inside real workers."""
from __future__ import annotations

import ctypes
import os
import sys
import time

_remembered: list = []


class KnownToErlang(Exception):
    """Its name is an atom in the test suite, so it must arrive as an atom."""


class PyportNeverAnAtom(Exception):
    """No Erlang code names this, so it must arrive as a binary."""


def identity(value):
    return value


def type_name(value):
    return type(value).__name__


def add(a, b):
    return a + b


def echo_call(*args, **kwargs):
    """What Python received: positional args and keyword names/values."""
    return [list(args), kwargs]


def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


def make_bytes(n):
    return b"\x00" * n


def unconvertible():
    return object()


def raise_known(message):
    raise KnownToErlang(message)


def raise_unknown(message):
    raise PyportNeverAnAtom(message)


def remember(value):
    _remembered.append(value)


def remembered():
    return list(_remembered)


def fail_in_cast(message):
    raise ValueError(message)


def print_stdout(n):
    """Writes n bytes to stdout in one line, returns n."""
    sys.stdout.write("x" * n + "\n")
    sys.stdout.flush()
    return n


def wait_for_file(path, limit=120.0):
    """Blocks this worker until path exists (bounded, so a broken test ends)."""
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return True


def crash_when(path, how, status=0):
    """Waits until path exists, then kills this worker process in the way
    asked: the test makes its other requests pending first."""
    wait_for_file(path)
    if how == "exit":
        os._exit(status)
    elif how == "abort":
        os.abort()
    elif how == "segv":
        ctypes.string_at(0)
    raise ValueError(f"unknown crash {how!r}")


def spin_after_touch(path):
    """Creates path, then keeps the worker busy forever."""
    with open(path, "w"):
        pass
    while True:
        pass


def getpid_after(seconds):
    """The worker's OS pid, after keeping it busy for a while."""
    time.sleep(seconds)
    return os.getpid()


def cpu_work(n):
    """Pure-Python CPU work: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def runaway_after_touch(path, how):
    """Creates path, then runs away in the way asked: a busy loop, a sleep
    that never ends, or a sleep with SIGINT blocked (code that ignores
    interrupts, like a C library that masks signals)."""
    with open(path, "w"):
        pass
    if how == "spin":
        while True:
            pass
    elif how == "sleep":
        time.sleep(1e9)
    elif how == "masked":
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        time.sleep(1e9)
    raise ValueError(f"unknown runaway {how!r}")


_hoard: list = []


def hoard(megabytes):
    """Keeps megabytes of touched memory alive in this worker."""
    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _hoard.append(block)
    return len(_hoard)


def memory_bomb():
    """Allocates until Python cannot."""
    chunks = []
    while True:
        chunks.append(bytearray(16 << 20))


def c_call_ignoring_signals(path):
    """Creates path, then sits in a C function that holds the GIL with
    SIGINT blocked: nothing Python can do interrupts it."""
    import signal
    with open(path, "w"):
        pass
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    ctypes.PyDLL(None).sleep(1000000)


def small_object_bomb():
    """Many small objects until memory runs out."""
    hoard = []
    while True:
        hoard.append(list(range(10000)))


def string_doubling_bomb():
    s = "x"
    while True:
        s = s + s
