"""ASGI's lifespan scope for the HTTP server (erlang._http): startup
before a worker serves, shutdown when it stops."""
from __future__ import annotations

import asyncio
import logging
from typing import Optional

from ._http_request import ASGI_VERSION, ASGIApp

log = logging.getLogger("pyport.http")


class _Lifespan:
    """The lifespan scope of one ASGI app: startup before the socket is
    served (a failure stops this worker's listener, its message in the
    log), shutdown when the server stops."""

    def __init__(self, app: ASGIApp, mode: str, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.mode = mode  # auto | on
        self.loop = loop
        self.inbox: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None

    async def startup(self) -> Optional[dict]:
        """The app's lifespan state, or None when it does no lifespan."""
        state: dict = {}
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": state}
        inbox: asyncio.Queue = asyncio.Queue()
        outcome = self.loop.create_future()

        async def receive() -> dict:
            return await inbox.get()

        async def send(message: dict) -> None:
            kind = message["type"]
            if kind in ("lifespan.startup.complete", "lifespan.startup.failed",
                        "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if not outcome.done():
                    outcome.set_result(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not outcome.done():
                    outcome.set_exception(exc)
            if not outcome.done():
                outcome.set_exception(RuntimeError("the app returned from the lifespan scope"))

        inbox.put_nowait({"type": "lifespan.startup"})
        self.task = self.loop.create_task(run())
        try:
            message = await outcome
        except Exception as exc:
            if self.mode == "on":
                log.error("lifespan startup failed: %r", exc)
                raise RuntimeError(f"lifespan startup failed: {exc!r}") from None
            return None  # auto: the app does not do lifespan
        if message["type"] == "lifespan.startup.failed":
            text = message.get("message", "")
            log.error("lifespan startup failed: %s", text)
            raise RuntimeError(f"lifespan startup failed: {text}")
        # Shutdown goes to the same task through the same inbox.
        self.inbox = inbox
        return state

    async def shutdown(self, timeout: float) -> None:
        if self.inbox is None or self.task is None:
            return
        self.inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self.task, timeout)
        except BaseException:
            log.warning("lifespan shutdown did not finish in time")
