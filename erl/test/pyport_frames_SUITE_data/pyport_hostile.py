"""Worker code that attacks its own frame channel on purpose
(pyport_frames_SUITE): what hostile or broken code running in a worker can
write to the node, bypassing the worker's frame writer."""
from __future__ import annotations

import fcntl
import os
import select
import stat
import struct
import sys
import threading
import time


def _channel_fd() -> int:
    """The worker's frame channel to the node. The worker moves it off fd 1
    to the lowest free descriptors from 3 (port_worker/main.cpp: a copy of
    stdin first, then of stdout): the lowest write-only pipe from 3 up."""
    for fd in range(3, 256):
        try:
            mode = os.fstat(fd).st_mode
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if stat.S_ISFIFO(mode) and flags & os.O_ACCMODE == os.O_WRONLY:
            return fd
    raise RuntimeError("no frame channel found")


def _write_all(data: bytes | memoryview) -> None:
    """Writes all of data to the channel (non-blocking: the worker's loop
    owns it), waiting for room as needed."""
    fd = _channel_fd()
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


def _wait_for(path: str | None, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while path is not None and not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.005)


def _str(text: bytes) -> bytes:
    return (b"\xdb" + struct.pack(">I", len(text)) + text) if len(text) > 31 else bytes([0xA0 | len(text)]) + text


def log_frame(text: bytes, level: bytes = b"info") -> bytes:
    """A LOG frame [18, 0, Level, Text] with its length prefix."""
    payload = b"\x94\x12\x00" + _str(level) + _str(text)
    return struct.pack(">I", len(payload)) + payload


def log_frame_of_size(size: int) -> bytes:
    """A valid LOG frame whose payload is exactly size bytes."""
    overhead = len(b"\x94\x12\x00") + len(_str(b"info")) + 5   # str32 header
    text = b"y" * (size - overhead)
    payload = b"\x94\x12\x00" + _str(b"info") + b"\xdb" + struct.pack(">I", len(text)) + text
    assert len(payload) == size
    return struct.pack(">I", size) + payload


def write_raw(data: bytes | str, flag: str | None = None, stall: float = 0.0) -> int:
    """Once flag exists (if given), writes data as is to the channel, then
    sleeps stall seconds (a header that promises a body never sent). An
    Erlang binary that is valid UTF-8 arrives as str: its bytes are meant."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    _wait_for(flag)
    _write_all(data)
    time.sleep(stall)
    return len(data)


def write_frame_of_size(size: int, flag: str | None = None) -> int:
    """Writes one well-formed LOG frame of exactly size payload bytes."""
    return write_raw(log_frame_of_size(size), flag)


def write_huge_frame(size: int, chunk: int = 1 << 20) -> int:
    """Writes a header claiming size bytes, then that many bytes, 1 MiB at a
    time (the worker never holds it all)."""
    _write_all(struct.pack(">I", size))
    block = b"z" * chunk
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        _write_all(block if n == chunk else block[:n])
        sent += n
    return sent


def flood_log_frames(seconds: float, per_write: int = 4096) -> int:
    """Writes LOG frames as fast as it can for seconds: what the owner must
    survive without its mailbox growing without bound."""
    batch = log_frame(b"flood " + b"f" * 20) * per_write
    end = time.monotonic() + seconds
    frames = 0
    while time.monotonic() < end:
        _write_all(batch)
        frames += per_write
    return frames


def paced_log_frames(count: int, per_ms: int) -> int:
    """Writes count LOG frames straight to the channel, per_ms of them each
    millisecond: more than log_rate, less than the owner can read."""
    one = log_frame(b"paced line")
    sent = 0
    while sent < count:
        n = min(per_ms, count - sent)
        _write_all(one * n)
        sent += n
        time.sleep(0.001)
    return sent


def print_flood(seconds: float) -> bool:
    """Prints lines as fast as it can, in a thread, for seconds; returns at
    once."""
    def run() -> None:
        end = time.monotonic() + seconds
        block = ("flooding the log " + "p" * 60 + "\n") * 1000
        while time.monotonic() < end:
            sys.stdout.write(block)
            sys.stdout.flush()
    threading.Thread(target=run, daemon=True).start()
    return True


def identity(x: object) -> object:
    return x


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def blob(n: int) -> bytes:
    return b"b" * n
