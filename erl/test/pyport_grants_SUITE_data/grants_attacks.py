"""Attacks on the node from a sandboxed pool's Python code, written as an
attacker would: through the erlang module, and by writing frames straight
to the worker's channel descriptor. Each returns what happened:
["ok", value] or [exception type, message]."""
from __future__ import annotations

import fcntl
import os
import struct
from typing import Any, Callable

import erlang


def _caught(fn: Callable[[], Any]) -> list:
    try:
        return ["ok", fn()]
    except Exception as e:  # the exception is the answer
        return [type(e).__name__, str(e)]


def rpc_call_os_cmd(marker: str) -> list:
    return _caught(lambda: erlang.rpc_call(erlang.node(), "os", "cmd", ["touch " + marker]))


def rpc_call(module: str, function: str, args: list) -> list:
    return _caught(lambda: erlang.rpc_call(erlang.node(), module, function, args))


def rpc_cast_os_cmd(marker: str) -> list:
    return _caught(lambda: erlang.rpc_cast(erlang.node(), "os", "cmd", ["touch " + marker]))


def send_init() -> list:
    # What init:stop/0 sends: the node would stop.
    stop = erlang.Atom("stop")
    return _caught(lambda: erlang.send("init", (stop, stop)))


def send(name: str, message: Any) -> list:
    return _caught(lambda: erlang.send(name, message))


def send_pid(pid: Any, message: Any) -> list:
    return _caught(lambda: erlang.send(pid, message))


def state_set(key: str, value: Any) -> list:
    return _caught(lambda: erlang.state_set(key, value))


def state_get(key: str) -> list:
    return _caught(lambda: erlang.state_get(key))


def publish(topic: str, message: Any) -> list:
    return _caught(lambda: erlang.publish(topic, message))


def call(name: str, *args: Any) -> list:
    return _caught(lambda: erlang.call(name, *args))


def cast(name: str, *args: Any) -> list:
    return _caught(lambda: erlang.cast(name, *args))


def registered(name: str) -> list:
    from erlang import _callbacks
    return _caught(lambda: _callbacks.registered(name))


def attribute(name: str) -> list:
    return _caught(lambda: getattr(erlang, name))


def _mp(v: Any) -> bytes:
    """Just enough msgpack for a NOTIFY frame."""
    if isinstance(v, int):
        assert 0 <= v < 128
        return bytes([v])
    if isinstance(v, str):
        b = v.encode()
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else bytes([0xD9, len(b)])) + b
    assert len(v) < 16
    return bytes([0x90 | len(v)]) + b"".join(_mp(x) for x in v)


def _writable_pipes() -> list[int]:
    """The descriptors an attacker would aim at, found in /proc/self/fd:
    pipes this process may write whose read end is not in this process
    (the worker's own internal pipes have both ends here; the channel's
    read end is in the node). 0-2 are not the channel."""
    links: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            links[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    read_ends = set()
    writable = []
    for fd, link in links.items():
        if not link.startswith("pipe:"):
            continue
        try:
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            continue
        if mode in (os.O_RDONLY, os.O_RDWR):
            read_ends.add(link)
        if mode in (os.O_WRONLY, os.O_RDWR) and fd > 2:
            writable.append((fd, link))
    return [fd for fd, link in writable if link not in read_ends]


def notify_by_fd(node: str, marker: str) -> int:
    """Hand-made NOTIFY frames (rpc_cast os:cmd, cast of a function) written
    straight to every writable pipe; returns how many descriptors took
    them."""
    frames = b""
    for payload in ([20, 0, "rpc_cast", [node, "os", "cmd", ["touch " + marker]]],
                    [20, 0, "cast", ["secret_fn", [marker]]]):
        body = _mp(payload)
        frames += struct.pack(">I", len(body)) + body
    wrote = 0
    for fd in _writable_pipes():
        try:
            os.write(fd, frames)
            wrote += 1
        except OSError:
            pass
    return wrote


def schedule(name: str, *args: Any) -> Any:
    """Ends the call with erlang.schedule: the caller runs the function."""
    return erlang.schedule(name, *args)
