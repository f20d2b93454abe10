"""Worker side of pyport_payloads_SUITE: big binaries off the pipe."""
from __future__ import annotations

import os
import time

import erlang.payloads


def kind(x: object) -> list:
    """The type name and length of what arrived."""
    return [type(x).__name__, len(x)]  # type: ignore[arg-type]


def echo(x: object) -> object:
    return x


def make(n: int) -> bytes:
    """n bytes of a pattern the suite computes too."""
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def make_str(n: int) -> str:
    return "é" * n


def sleep_then(x: object, seconds: float) -> object:
    time.sleep(seconds)
    return x


def zero_copy(on: bool) -> bool:
    return erlang.payloads.zero_copy(on)


def view_sum(x: object) -> list:
    """A zero-copy view's type and the sum of its first bytes."""
    return [type(x).__name__, sum(bytes(x[:1000]))]  # type: ignore[index]


def _payload_fd() -> int:
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "/pyport-" in target and "payloads" in target:
            return int(name)
    raise RuntimeError("no payload file")


def truncate_payloads() -> int:
    """Hostile code shrinking the payload file under the node's feet."""
    os.ftruncate(_payload_fd(), 4096)
    return os.fstat(_payload_fd()).st_size


def payload_file_open() -> bool:
    try:
        _payload_fd()
        return True
    except RuntimeError:
        return False


def stubborn(x: object, seconds: float) -> object:
    """Returns x even when interrupted: an answer that comes after its
    caller gave up."""
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    return x


def payload_file_bytes() -> int:
    """Bytes of memory the payload file holds (its allocated blocks)."""
    return os.fstat(_payload_fd()).st_blocks * 512


def resize_payloads(n: int) -> int:
    """Hostile code growing (sparse) or shrinking the payload file."""
    os.ftruncate(_payload_fd(), n)
    return os.fstat(_payload_fd()).st_size


def payload_file_path() -> str:
    """Where the payload file was (its name is unlinked: ' (deleted)')."""
    return os.readlink(f"/proc/self/fd/{_payload_fd()}")


# The answer regions' words in the header: 8 bytes each, at 64 + 8 * k.
_ANSWER_WORDS_AT = 64
_ANSWER_WORDS_SIZE = 8 * 8


def mark_all_answer_regions() -> None:
    """Hostile code marking every answer region busy, so that no answer
    region is ever free."""
    os.pwrite(_payload_fd(), b"\xff" * _ANSWER_WORDS_SIZE, _ANSWER_WORDS_AT)


def answer_regions_free() -> bool:
    """Whether every answer region's word is clear: the node has released
    all it read (its file server clears them after the caller's decode)."""
    words = os.pread(_payload_fd(), _ANSWER_WORDS_SIZE, _ANSWER_WORDS_AT)
    return words == bytes(_ANSWER_WORDS_SIZE)
