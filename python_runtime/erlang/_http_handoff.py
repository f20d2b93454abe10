"""The listener hand-off of a graceful recycle or reload
(pyport_http_reload, docs/http.md "Reload"): hold, adopt, park."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from typing import Optional

from . import _websocket
from ._http_bind import parse_bind
from ._http_server import HttpServer, _servers

log = logging.getLogger("pyport.http")

# -- listener hand-off (pyport_http_reload, docs/http.md "Reload") ---------

# During a reload a worker of a temporary pool (pyport_http_reload) holds
# the listening socket of the worker being replaced: the socket is never
# closed, so the connections in its accept queue wait for the replacement
# instead of being reset (closing one SO_REUSEPORT listener resets its
# queue). Not a child of the leaving worker: a worker's descendants end
# with it.


def _handoff_path(directory: str) -> str:
    return os.path.join(directory, "listener.sock")


def hold(directory: str) -> bool:
    """Runs the holder (in the temporary pool's worker): a thread serving
    the pool's hand-off socket. `P` + a descriptor: hold it; `T`: hand the
    oldest held one over (`N`: none held)."""
    import threading
    path = _handoff_path(directory)
    tmp = path + ".new"
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        u.bind(tmp)
    finally:
        os.umask(old)
    u.listen(16)
    os.rename(tmp, path)  # visible only once it listens
    held: deque[int] = deque()

    def serve() -> None:
        while True:
            try:
                c, _ = u.accept()
            except OSError:
                return
            with c:
                try:
                    c.settimeout(10.0)
                    msg, fds, _, _ = socket.recv_fds(c, 1, 4)
                    if msg == b"P" and fds:
                        held.append(fds[0])
                        for extra in fds[1:]:
                            os.close(extra)
                        c.sendall(b"k")
                    elif msg == b"T" and held:
                        fd = held.popleft()
                        socket.send_fds(c, [b"L"], [fd])
                        c.recv(1)  # the taker has it: this copy may go
                        os.close(fd)
                    else:
                        for fd in fds:
                            os.close(fd)
                        c.sendall(b"N")
                except OSError:
                    pass

    threading.Thread(target=serve, name="pyport-http-hold", daemon=True).start()
    return True


def _adopt(directory: str, bind: str) -> Optional[socket.socket]:
    """The listener a leaving worker of this pool handed off, if one is
    held: a listening socket on `bind`'s address, else None (bind anew)."""
    if not directory:
        return None
    path = _handoff_path(directory)
    try:
        st = os.stat(directory)
    except OSError:
        return None  # no reload under way
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("hand-off directory %s is not this user's private one: ignored", directory)
        return None
    if not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5.0)
            c.connect(path)
            c.sendall(b"T")
            _, fds, _, _ = socket.recv_fds(c, 1, 1)
            if fds:
                c.sendall(b"k")
    except OSError as exc:
        log.warning("no listener taken over from %s: %r", path, exc)
        return None
    if not fds:
        return None
    sock = socket.socket(fileno=fds[0])
    try:
        family, address = parse_bind(bind)
        if sock.family != family or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) \
                or sock.getsockname()[:2] != address[:2]:
            raise OSError("not a listener on " + bind)
    except OSError as exc:
        log.warning("listener handed off refused: %r", exc)
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _hand_off(server: "HttpServer") -> bool:
    """Gives the holder a copy of the server's listener; True once held."""
    path = _handoff_path(server.cfg["handoff"])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5.0)
            c.connect(path)
            socket.send_fds(c, [b"P"], [server.sock.fileno()])
            return c.recv(1) == b"k"
    except OSError as exc:
        log.warning("listener not handed off (%r): its queued connections are lost", exc)
        return False


async def park(grace: float = 15.0) -> bool:
    """A graceful recycle's first half (pyport_http:reload/1): this worker
    hands its listener to a holder process (the next worker of the pool
    takes it over), stops accepting, lets requests in flight finish and
    ends every keep-alive connection at its next response (`connection:
    close`); idle ones at their keep-alive timeout. Returns when no
    connection is left, or after `grace` seconds (the rest is cut)."""
    loop = asyncio.get_running_loop()
    for server in _servers:
        if server.sock.family != socket.AF_UNIX and server.cfg["handoff"] \
                and server.sock.fileno() >= 0:
            _hand_off(server)
    for server in _servers:
        server.draining = True
        # A WebSocket has no next response to end it: it is told to go
        # (close 1001), so its client reconnects to the replacement.
        for conn in list(server.connections):
            if isinstance(conn, _websocket.WebSocketConnection):
                conn._close()
        if server.server is not None:
            server.server.close()  # this copy only: the holder keeps the socket open
        elif server.serving is not None:
            server.serving.cancel()
        server.sock.close()
        # A connection's next response says `connection: close` (a response
        # already sent without it keeps its connection to the next one);
        # an idle one closes at its keep-alive timeout, as always.
    # Connections accepted just before the close become protocols a few
    # loop turns later (asyncio's accept tasks): let them show up.
    await asyncio.sleep(0.1)
    deadline = loop.time() + grace
    while any(s.connections for s in _servers) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return True
