"""Awaiting Erlang without blocking an asyncio loop.

A request's reply (or a mailbox's next message) lands in a mailbox on the
worker's reading thread. The mailbox is *watched*: its next frame posts a
token. For the worker's own event loop the token goes straight to the
worker's main thread, which hands it to ``_complete_on_loop`` from the
loop's input callback: no other thread is involved. For any other loop
(``asyncio.run``, loops in threads) one daemon thread (started on first
use) collects tokens with the GIL released and hands each to its loop with
``call_soon_threadsafe``. Either way the loop's own thread then takes the
frame and completes the future."""
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
# token -> (loop, callback): waiters on the worker's own loop (main thread only).
_loop_waiting: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = {}


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
    if getattr(loop, "is_worker_loop", False):
        # Only the worker's main thread runs that loop: no lock, no thread.
        _loop_waiting[token] = (loop, callback)
        try:
            _link.watch_on_loop(mailbox, token)
        except BaseException:
            del _loop_waiting[token]
            raise
        return token
    with _lock:
        _waiting[token] = (loop, callback)
        if _router is None or not _router.is_alive():
            _router = threading.Thread(target=_route, name="erlang-async-router", daemon=True)
            _router.start()
    _link.watch(mailbox, token)
    return token


def _forget(token: int) -> None:
    if _loop_waiting.pop(token, None) is None:
        with _lock:
            _waiting.pop(token, None)


def _complete_on_loop(tokens: list[int]) -> None:
    """The worker's main thread, in its loop's input callback: the mailboxes
    watched for these tokens have a frame (or the link closed)."""
    for token in tokens:
        entry = _loop_waiting.pop(token, None)
        if entry is None:  # its waiter gave up
            continue
        loop, callback = entry
        try:
            callback()
        except Exception as exc:
            loop.call_exception_handler({"message": "pyport: completing an Erlang reply failed",
                                         "exception": exc})


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

    token = _when_ready(mailbox, loop, complete)
    try:
        return await future
    except BaseException:
        if not future.done() or future.cancelled():
            # Given up before the reply came (the task was cancelled): the
            # Erlang side ends what serves it, and nothing waits here.
            _forget(token)
            _link.cancel(mailbox)
        raise


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
