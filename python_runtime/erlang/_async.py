"""Awaiting Erlang without blocking an asyncio loop.

A request's reply (or a mailbox's next message) lands in a mailbox on the
worker's reading thread. The mailbox is *watched*: its next frame posts a
token, which one daemon thread (started on first use) collects with the GIL
released and hands to the waiting loop with ``call_soon_threadsafe``. The
loop's own thread then takes the frame and completes the future."""
from __future__ import annotations

import itertools
import threading

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Callable

from . import _link

_lock = threading.Lock()
_tokens = itertools.count(1)
# token -> (loop, callback run on that loop)
_waiting: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = {}
_router: threading.Thread | None = None


def _route() -> None:
    while True:
        token = _link.next_completion()
        if token == 0:  # the worker's link to Erlang closed
            with _lock:
                pending = list(_waiting.values())
                _waiting.clear()
        else:
            with _lock:
                entry = _waiting.pop(token, None)
            pending = [entry] if entry else []
        for loop, callback in pending:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass
        if token == 0:
            return


def _when_ready(mailbox: int, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> int:
    """Runs callback on loop once mailbox has a frame (or the link closed)."""
    global _router
    token = next(_tokens)
    with _lock:
        _waiting[token] = (loop, callback)
        if _router is None or not _router.is_alive():
            _router = threading.Thread(target=_route, name="erlang-async-router", daemon=True)
            _router.start()
    _link.watch(mailbox, token)
    return token


def _forget(token: int) -> None:
    with _lock:
        _waiting.pop(token, None)


async def request(op: str, args: list) -> Any:
    """``_link.request(op, args)`` without blocking the running loop."""
    import asyncio
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    mailbox = _link.start_request(op, args)

    def complete() -> None:
        # Always take the reply: that also closes the mailbox.
        try:
            value = _link.take_reply(mailbox)
        except BaseException as e:  # the exception the reply stands for
            if not future.done():
                future.set_exception(e)
        else:
            if not future.done():
                future.set_result(value)

    _when_ready(mailbox, loop, complete)
    return await future


async def receive(mailbox: int, timeout: float | None) -> tuple[bool, Any]:
    """``_link.receive(mailbox, timeout)`` without blocking the running loop."""
    import asyncio
    got = _link.receive(mailbox, 0)
    if got[0] or timeout is not None and timeout <= 0:
        return got
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    token = _when_ready(mailbox, loop, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        return (False, None)
    finally:
        _forget(token)
    return _link.receive(mailbox, 0)
