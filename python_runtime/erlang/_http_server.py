"""The listener of one worker of an HTTP pool (erlang._http): lifespan
of its app(s), the connections it serves, graceful stop, max_requests."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Optional

from . import _callbacks
from ._http_conn import HttpConnection
from ._http_lifespan import _Lifespan
from ._http_request import ASGIApp

log = logging.getLogger("pyport.http")


class HttpServer:
    """The listener of one worker."""

    def __init__(self, app: ASGIApp, sock: socket.socket, cfg: dict,
                 loop: asyncio.AbstractEventLoop, tls: Optional[ssl.SSLContext] = None) -> None:
        self.app = app
        self.sock = sock
        self.cfg = cfg
        self.loop = loop
        self.connections: set[HttpConnection] = set()
        self.server: Optional[asyncio.base_events.Server] = None
        # The worker's own TLS context over the (maybe handed-off) listener.
        self.ssl = tls
        self.scheme = "https" if self.ssl is not None else "http"
        self.state: Optional[dict] = None
        self.serving: Optional[asyncio.Task] = None
        self.lifespans: list[_Lifespan] = []
        self.draining = False  # park(): responses end their connections
        self.served = 0  # HTTP requests answered (max_requests)
        self.max_requests: int = cfg["max_requests"]
        self._recycle_task: Optional[asyncio.Task] = None
        # The Erlang hooks the pool has; None: no hook, no round trip.
        self.hooks: Optional[frozenset] = frozenset(cfg["hooks"]) if cfg["hooks"] else None

    def ask_recycle(self) -> None:
        """max_requests reached: Erlang replaces this worker as
        reload_http/1 does (pyport_http_reload:recycle_request/1)."""
        async def ask() -> None:
            try:
                await _callbacks.async_call("pyport.http_recycle", self.cfg["pool"], os.getpid())
            except Exception as exc:
                log.error("max_requests reached, but no recycle: %r", exc)
        self._recycle_task = self.loop.create_task(ask())

    async def serve(self) -> None:
        if self.cfg["lifespan"] != "off":
            mounts = getattr(self.app, "mounts", None)
            if mounts is None:
                self.lifespans = [_Lifespan(self.app, self.cfg["lifespan"], self.loop)]
                self.state = await self.lifespans[0].startup()
            else:
                # Every ASGI mount does its own lifespan, with its own state.
                for mount in mounts:
                    if not mount.wsgi:
                        life = _Lifespan(mount.app, self.cfg["lifespan"], self.loop)
                        self.lifespans.append(life)
                        mount.state = await life.startup()
        self.server = await self.loop.create_server(
            lambda: HttpConnection(self), sock=self.sock, backlog=self.cfg["backlog"],
            ssl=self.ssl, ssl_handshake_timeout=self.cfg["header_timeout"] if self.ssl else None)

    async def stop(self, grace: float) -> None:
        """Closes the listener, lets requests in flight finish for up to
        `grace` seconds, closes the connections, runs lifespan shutdown."""
        if self.server is not None:
            self.server.close()
        elif self.serving is not None:
            self.serving.cancel()
        self.sock.close()
        deadline = self.loop.time() + grace
        for conn in list(self.connections):
            if not conn.pipeline and not conn.lost:
                conn._close()
        while any(c.pipeline for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if not conn.lost:
                conn.transport.abort()
        shutdown = getattr(self.app, "shutdown", None)  # the WSGI adapter's threads
        if shutdown is not None:
            shutdown()
        for life in self.lifespans:
            await life.shutdown(max(0.1, deadline - self.loop.time()))


_servers: list[HttpServer] = []
