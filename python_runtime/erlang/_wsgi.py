"""WSGI (PEP 3333) apps on the HTTP server of erlang._http.

A WSGI app runs as an ASGI app: ``WsgiAdapter`` builds the environ from
the ASGI scope and runs the app on a bounded thread pool of the worker
(``wsgi_threads``), so a slow request does not stop the event loop.
``wsgi.input`` reads the body through the ASGI ``receive()`` and the
response goes out through ``send()``, each a hop to the loop that waits
for it: the server's limits, flow control and timeouts apply unchanged.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import stat
import sys
import threading
from typing import Any, Callable, Iterable, Optional

from _pyport_wsgi import Pool, environ, response_start

__all__ = ["WsgiAdapter", "is_wsgi"]


def is_wsgi(app: Any) -> bool:
    """`interface => auto`: an app is WSGI unless it is a coroutine
    function (or an object whose __call__ is one) or takes 3 arguments."""
    import inspect
    target = app
    if not inspect.isfunction(app) and not inspect.ismethod(app) and hasattr(app, "__call__"):
        target = app.__call__
    if inspect.iscoroutinefunction(target):
        return False
    try:
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) == 2


class _Input:
    """wsgi.input: the request body, read from the loop on demand."""

    __slots__ = ("_loop", "_receive", "_buf", "_done")

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Callable) -> None:
        self._loop = loop
        self._receive = receive
        self._buf = bytearray()
        self._done = False

    def _fill(self) -> bool:
        if self._done:
            return False
        m = asyncio.run_coroutine_threadsafe(self._receive(), self._loop).result()
        if m["type"] == "http.disconnect":
            self._done = True
            raise OSError("the client disconnected before the whole body was read")
        self._buf += m.get("body", b"")
        if not m.get("more_body", False):
            self._done = True
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            out = bytes(self._buf)
            self._buf.clear()
            return out
        while len(self._buf) < size and self._fill():
            pass
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def readline(self, size: Optional[int] = -1) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            limit = size if size is not None and size >= 0 else None
            if i >= 0 and (limit is None or i < limit):
                n = i + 1
                break
            if limit is not None and len(self._buf) >= limit:
                n = limit
                break
            if not self._fill():
                n = len(self._buf) if limit is None else min(limit, len(self._buf))
                break
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def readlines(self, hint: int = -1) -> list:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class FileWrapper:
    """wsgi.file_wrapper (PEP 3333): returned by the app as its body, a
    regular file is sent with sendfile (``zerocopy``); anything else is
    read in blocks."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def zerocopy(self) -> Optional[dict]:
        """The ``http.response.zerocopysend`` message for the rest of the
        file, on a duplicate of its descriptor (the app's file is closed by
        ``close()`` before the loop sends; the receiver closes the copy);
        None when it is not a regular file in binary mode."""
        f = self.filelike
        try:
            if "b" not in getattr(f, "mode", "b"):
                return None
            fd = f.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            offset = f.tell()
        except (AttributeError, OSError, ValueError):
            return None
        return {"type": "http.response.zerocopysend", "file": os.fdopen(os.dup(fd), "rb"),
                "offset": offset, "count": max(0, st.st_size - offset), "more_body": False}

    def __iter__(self):
        while True:
            data = self.filelike.read(self.blksize)
            if not data:
                return
            yield data


# The environ's constant keys (PEP 3333); _pyport_wsgi.environ copies them
# and adds the request's (port_worker/wsgi_environ.hpp).
_BASE_ENVIRON = {
    "wsgi.version": (1, 0),
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.input_terminated": True,
    "wsgi.file_wrapper": FileWrapper,
}


class WsgiAdapter:
    """A WSGI app as an ASGI app (http scopes; lifespan is not WSGI's).

    Each request is a job of the worker's C++ thread pool
    (``_pyport_wsgi.Pool``, port_worker/wsgi_pool.hpp): the loop queues it
    and awaits a future; a pool thread takes the GIL to run the app, and
    keeps it while more requests are queued; finished requests come back
    in one loop callback per batch (an eventfd the loop watches)."""

    def __init__(self, app: Callable, threads: int, mount: str = "") -> None:
        self.app = app
        self.mount = mount  # the prefix it is mounted at ("" : none)
        self.pool = Pool(threads, thread_hook=_thread_hook)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._check: Optional[asyncio.TimerHandle] = None  # while jobs wait

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Finished requests are handed to `loop` (the one serving)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.pool.fileno())
        loop.add_reader(self.pool.fileno(), self.pool.drain)
        self._loop = loop

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return  # lifespan: WSGI has none; the server treats it as unsupported
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        done = loop.create_future()
        if self.pool.submit(_run, (self, scope, receive, send, loop), done) and self._check is None:
            self._check = loop.call_later(_CHECK_EVERY, self._check_pool)
        last = await done
        # The response's last messages go out from here, on the loop: no
        # hop back from the thread for them.
        if type(last) is tuple:
            # A whole response (status, headers, body): its messages are
            # made here, so few objects wait between thread and loop (the
            # fewer survive, the fewer garbage collections).
            await send({"type": "http.response.start", "status": last[0], "headers": last[1]})
            await send({"type": "http.response.body", "body": last[2]})
            return
        try:
            for message in last:
                await send(message)
        finally:
            for message in last:
                if message["type"] == "http.response.zerocopysend":
                    message["file"].close()  # FileWrapper.zerocopy's duplicate

    def _check_pool(self) -> None:
        """While requests wait for a thread: those behind a request that
        blocks in the app go to another thread (``Pool.check``)."""
        loop = self._loop
        if loop is not None and self.pool.check():
            self._check = loop.call_later(_CHECK_EVERY, self._check_pool)
        else:
            self._check = None

    def shutdown(self) -> None:
        """No more requests: queued ones are cancelled; those running
        finish and their answers still reach the loop, which then stops
        watching the pool."""
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self.pool.shutdown()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.pool.fileno())
            loop.add_reader(self.pool.fileno(), self._drain_last)
            self._drain_last()

    def _drain_last(self) -> None:
        """The pool's reader after shutdown(): answers until no job runs."""
        pool = self.pool
        pool.drain()
        if pool.stats()["active"] == 0:
            pool.drain()  # what the last job posted before it ended
            loop, self._loop = self._loop, None
            if loop is not None and not loop.is_closed():
                loop.remove_reader(pool.fileno())


# How often the loop looks for requests stuck behind one that blocks in the
# app, while requests wait for a thread (seconds).
_CHECK_EVERY = 0.001

_thread_count = itertools.count(1)


def _thread_hook(starting: bool) -> None:
    """A pool thread starts or ends: `threading` knows it by a name (an
    app's logs show it), and forgets it when it ends."""
    if starting:
        threading.current_thread().name = f"pyport-wsgi_{next(_thread_count)}"
    else:
        threading._active.pop(threading.get_ident(), None)  # its _DummyThread


def _run(job: tuple) -> Any:
    """One request, on a pool thread: runs the app, returns the response's
    last messages for the loop to send, or (status, headers, body) for a
    whole response (a list or tuple body)."""
    adapter, scope, receive, send, loop = job
    run = _Run(loop, send)
    wsgi_input = _Input(loop, receive)
    result: Iterable = adapter.app(environ(scope, wsgi_input, adapter.mount, _BASE_ENVIRON),
                                   run.start_response)
    try:
        if isinstance(result, (list, tuple)):
            if not run.head_sent:
                # The whole body known: one message, so a Content-Length.
                if run.status is None:
                    raise AssertionError("the WSGI app sent a body before start_response")
                run.head_sent = True
                return run.status, run.headers, b"".join(result)
        elif isinstance(result, FileWrapper) and not run.head_sent:
            message = result.zerocopy()
            if message is not None:
                # A regular file: sendfile from the loop.
                return run._messages(b"", True)[:1] + [message]
        for chunk in result:
            if chunk:
                run.write(chunk)
        return run._messages(b"", False)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


class _Run:
    """One request's response on a pool thread: start_response and write."""

    __slots__ = ("loop", "send", "status", "headers", "head_sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable) -> None:
        self.loop = loop
        self.send = send
        self.status: Optional[int] = None
        self.headers: list = []
        self.head_sent = False

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        # The status's code, the headers as latin-1 bytes without the
        # hop-by-hop ones (port_worker/wsgi_environ.hpp).
        self.status, self.headers = response_start(status, headers)
        return self.write

    async def _send_all(self, messages: list) -> None:
        for m in messages:
            await self.send(m)

    def _messages(self, body: bytes, more: bool) -> list:
        messages = []
        if not self.head_sent:
            if self.status is None:
                raise AssertionError("the WSGI app sent a body before start_response")
            self.head_sent = True
            messages.append({"type": "http.response.start", "status": self.status,
                             "headers": self.headers})
        messages.append({"type": "http.response.body", "body": body, "more_body": more})
        return messages

    def _send(self, body: bytes, more: bool) -> None:
        """Sends a piece of the body, the head with it the first time: one
        hop to the loop for both."""
        asyncio.run_coroutine_threadsafe(self._send_all(self._messages(body, more)),
                                         self.loop).result()

    def write(self, data: bytes) -> None:
        if data:
            self._send(bytes(data), True)

