"""Python side of py_buffer_SUITE: reading a py_buffer as a file."""
import os

from erlang import PyBuffer


def read_all(buf):
    return PyBuffer(buf).read()


def read_sizes(buf, sizes):
    b = PyBuffer(buf)
    return [b.read(n) for n in sizes]


def lines(buf):
    return list(PyBuffer(buf))


def readline_limited(buf, n):
    b = PyBuffer(buf)
    return [b.readline(n), b.readline(), b.readlines()]


def file_api(buf):
    b = PyBuffer(buf)
    first = b.read(5)
    pos = b.tell()
    found = b.find(b"lo")
    b.seek(0)
    again = b.read(5)
    rest = b.read()
    end = b.seek(0, 2)
    return [first, pos, found, again, rest, end, b.at_eof(), len(b), b.readable(),
            b.seekable(), b.writable()]


def nonblock(buf):
    b = PyBuffer(buf)
    return [b.read_nonblock(), b.readable_amount()]


def close_early(buf):
    b = PyBuffer(buf)
    first = b.read(3)
    b.close()
    try:
        b.read()
    except ValueError:
        return [first, "closed"]


def total(buf):
    """Reads in 64 KiB pieces: how many bytes came."""
    b = PyBuffer(buf)
    n = 0
    while True:
        chunk = b.read(65536)
        if not chunk:
            return n
        n += len(chunk)


def worker_pid():
    return os.getpid()
