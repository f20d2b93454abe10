"""Write-side flow control shared by the HTTP and WebSocket connections of
an HTTP pool (erlang._http, erlang._websocket): the transport pauses and
resumes writing, and an app's send awaits drained() while the client reads
too slowly; a client that reads nothing for write_timeout is cut off."""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("pyport.http")


class ClientDisconnected(OSError):
    """Raised by send() once the client has gone (ASGI spec 2.4)."""


class WriteFlow:
    """Mixed into an asyncio.Protocol that has ``loop``, ``cfg``
    (``write_timeout`` in seconds), ``lost``, ``client`` and ``transport``,
    and sets ``write_paused = False`` and ``drain_waiters = []`` itself."""

    #: How the log line and the ClientDisconnected message name the client.
    flow_kind = "HTTP"

    write_paused: bool
    drain_waiters: list[asyncio.Future]

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resolve_drains()

    def resolve_drains(self) -> None:
        """Wakes every send waiting for the buffer to drain (it resumed, or
        the connection is lost: the waiter then raises)."""
        for w in self.drain_waiters:
            if not w.done():
                w.set_result(None)
        self.drain_waiters.clear()

    async def drained(self) -> None:
        """Returns once the client has read enough; raises
        ClientDisconnected if it went (or was cut off) meanwhile."""
        if not self.write_paused or self.lost:
            return
        w = self.loop.create_future()
        self.drain_waiters.append(w)
        timer = self.loop.call_later(self.cfg["write_timeout"], self._write_timeout, w)
        try:
            await w
        finally:
            timer.cancel()
        if self.lost:
            raise ClientDisconnected(f"the {self.flow_kind} client has disconnected")

    def _write_timeout(self, waiter: asyncio.Future) -> None:
        # A client that reads nothing for write_timeout: the connection is
        # cut, the app's send() raises ClientDisconnected.
        if not waiter.done() and not self.lost:
            log.info("%s client %s read nothing for %ss: connection aborted", self.flow_kind,
                     self.client, self.cfg["write_timeout"])
            self.abort_slow_reader()

    def abort_slow_reader(self) -> None:
        self.transport.abort()
