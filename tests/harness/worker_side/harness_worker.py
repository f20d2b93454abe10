"""Functions the harness calls inside a worker (its directory is passed to
the worker with --path). Also imported by the harness itself for ``same``.
Plain Python: it must run in the worker and in the test process alike."""
import math
import os
import struct
import subprocess
import sys


def same(a, b):
    """Equal with the same types all the way down: Atom is not str, tuple is
    not list, bytes is not str, and a float is compared by its bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        b_keys = {k: k for k in b}
        return all(k in b_keys and same(k, b_keys[k]) and same(v, b[k]) for k, v in a.items())
    return a == b


def _vectors():
    import vectors  # proto/vectors, on the worker's path
    return {name: (direction, value) for name, direction, value in vectors.VECTORS}


def check_vector(name, value):
    """[True, repr] when the worker decoded ``value`` exactly as vectors.py
    says, else [False, what it got]."""
    direction, expected = _vectors()[name]
    return [same(value, expected), f"{type(value).__name__} {value!r}"]


def vector_value(name):
    """The vectors.py value, for the worker to encode."""
    return _vectors()[name][1]


def identity(value):
    return value


def kwargs_echo(*args, **kwargs):
    return [list(args), kwargs]


class Nested:
    class Inner:
        @staticmethod
        def twice(x):
            return 2 * x


def print_bytes(total, line_length=99):
    """Prints ``total`` bytes in lines of ``line_length`` (plus newline) to
    sys.stdout; the last line says 'end of print_bytes'."""
    line = "x" * line_length
    for _ in range(total // (line_length + 1)):
        print(line)
    print("end of print_bytes", flush=True)
    return total


def print_then_wait(line, path, limit):
    """Prints a line, then waits (up to ``limit`` seconds) for ``path`` to
    exist, which the harness creates once it has seen the line. True if it
    appeared."""
    import time
    print(line, flush=True)
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def write_fd(fd, data):
    """os.write straight to a descriptor, under Python's buffering."""
    view = memoryview(data.encode() if isinstance(data, str) else data)
    while view:
        view = view[os.write(fd, view):]
    return True


def run_child(argv):
    """A child process writing to the inherited fds 1 and 2."""
    return subprocess.run(argv, check=False).returncode


def big_string(n):
    return "z" * n


def raise_value_error(message):
    def inner():
        raise ValueError(message)
    inner()


class Unconvertible:
    pass


def unconvertible():
    return [1, Unconvertible()]


def nested_list(depth):
    v = []
    for _ in range(depth - 1):
        v = [v]
    return v


def exit_now(status):
    sys.stdout.flush()
    os._exit(status)


def segfault():
    import ctypes
    ctypes.string_at(0)
