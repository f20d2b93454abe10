"""Where an HTTP pool listens (erlang._http): the `bind` option parsed,
and the listening socket every worker of the pool binds (SO_REUSEPORT)."""
from __future__ import annotations

import os
import socket
from typing import Any


def parse_bind(bind: str) -> tuple[int, Any]:
    """(family, address) of "host:port", "[v6]:port", "port" or "unix:/path"."""
    if bind.startswith("unix:"):
        return socket.AF_UNIX, bind[5:]
    if bind.startswith("/"):
        return socket.AF_UNIX, bind
    host, port = "127.0.0.1", bind
    if bind.startswith("["):
        end = bind.find("]")
        if end < 0 or bind[end + 1:end + 2] != ":":
            raise ValueError(f"bind {bind!r}: expected \"[address]:port\"")
        host, port = bind[1:end], bind[end + 2:]
    elif ":" in bind:
        host, port = bind.rsplit(":", 1)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bind {bind!r}: bad port {port!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"bind {bind!r}: bad address {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


def bind_socket(bind: str, backlog: int) -> socket.socket:
    """A listening socket on `bind`, with SO_REUSEPORT so that every worker
    of the pool binds the same address."""
    family, address = parse_bind(bind)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            # One path cannot be shared: the first worker binds, the others
            # would fail; unix sockets are for single-worker pools.
            if os.path.exists(address):
                import stat
                if stat.S_ISSOCK(os.stat(address).st_mode):
                    os.unlink(address)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno is None:
                raise OSError(f"bind {bind!r}: {exc}") from None
            raise OSError(exc.errno, f"bind {bind!r}: {exc.strerror}") from None
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
