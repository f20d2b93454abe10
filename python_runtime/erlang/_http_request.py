"""One HTTP request/response cycle (erlang._http): the ASGI `receive` and
`send` of the task running the app on it, the response framing, the
zero-copy send extension, request_timeout and the Erlang hooks' round
trips (on_request, on_response, on_error)."""
from __future__ import annotations

import asyncio
import collections.abc
import logging
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional
from urllib.parse import quote

from _pyport_http import (HEAD_CHUNKED, HEAD_CLOSE, Ready, Receive, RequestFields, Send,
                          register_fields, request_done, response_head, setup_exchange)

from . import _callbacks
from ._http_response import _error_response, _reasons
from ._write_flow import ClientDisconnected

# The C++ send/receive (port_worker/http_exchange.cpp) take the common
# cases themselves and call _send_slow/_receive_slow for the rest.
# Their finished awaitables are coroutines to asyncio (create_task,
# run_coroutine_threadsafe): send/throw/close, done at the first step.
setup_exchange(_reasons)
collections.abc.Coroutine.register(Ready)

if TYPE_CHECKING:
    from ._http_conn import HttpConnection

log = logging.getLogger("pyport.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class _Request(RequestFields):
    """One request/response cycle: the ASGI receive and send of its task
    (Receive(self)/Send(self), C++, which call _receive_slow/_send_slow for
    all but the common cases). port_worker/http_connection.cpp makes
    requests without __init__, setting the same five fields.

    Its state is RequestFields' C fields (port_worker/http_fields.cpp),
    which the C++ paths read and write directly; each starts as:
    chunks None (body pieces not received yet, a deque from the first),
    buffered 0, body_done False, delivered_end False, waiter None,
    started False, complete False, status 0, chunked False, no_body False,
    task None, length_left -1, chunked_declared False, _head None (the
    response head until its first body), broken False (the stream broke
    while its body was read), timed_out False (request_timeout passed
    before the response started), started_at 0.0, sent_bytes 0,
    own_response False (a hook's answer: on_response does not see it).
    A class attribute of one of these names would hide the field:
    register_fields refuses it."""

    def __init__(self, conn: "HttpConnection", scope: dict, keep_alive: bool,
                 expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.method_head = scope["method"] == "HEAD"
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _receive_slow(self) -> dict:
        conn = self.conn
        while True:
            chunks = self.chunks
            if chunks:
                body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                conn.unbuffer(self.buffered)
                self.buffered = 0
                more = not self.body_done
                if not more:
                    self.delivered_end = True
                return {"type": "http.request", "body": body, "more_body": more}
            if self.body_done and not self.delivered_end:
                self.delivered_end = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # After the body: the response's end, or the client's (its
            # close, even a half-close: it sends nothing more), is the
            # disconnect a long-polling or streaming app waits for.
            if conn.lost or self.broken or (self.delivered_end and (self.complete or conn.eof)):
                return {"type": "http.disconnect"}
            if not self.body_done and self.expect_continue and not self.started:
                self.expect_continue = False
                conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiter = conn.loop.create_future()
            timer = None
            if not self.body_done and not conn.lost:
                timer = conn.loop.call_later(conn.cfg["body_timeout"], self._body_timeout)
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()

    def _body_timeout(self) -> None:
        if not self.body_done and not self.conn.lost:
            self.conn.fail(408, "request body not received in time")

    async def _send_slow(self, message: dict) -> None:
        conn = self.conn
        if conn.lost:
            raise ClientDisconnected("the client has disconnected")
        kind = message["type"]
        head = self._head
        if head is not None and kind == "http.response.body" and self.keep_alive \
                and not self.chunked_declared and not self.no_body \
                and not message.get("more_body", False) and not conn.server.draining:
            # The common response: a whole body in one message; head and
            # body leave in one write.
            body = message.get("body", b"")
            declared = self.length_left
            if declared < 0:  # its length known now
                if self.method_head:
                    conn.transport.write(b"%bcontent-length: %d\r\n\r\n" % (head, len(body)))
                else:
                    conn.transport.write(b"%bcontent-length: %d\r\n\r\n%b"
                                         % (head, len(body), body))
                    self.sent_bytes = len(body)
            elif declared == len(body) or self.method_head:  # the app's Content-Length
                if self.method_head:
                    conn.transport.write(head + b"\r\n")
                else:
                    conn.transport.write(b"%b\r\n%b" % (head, body))
                    self.sent_bytes = declared
                    self.length_left = 0
            else:
                return await self._send_body(message, head)
            self._head = None
            if conn.deadline_kind == "request":
                conn._disarm()  # the response started: request_timeout is met
            self.complete = True
            if self.waiter is not None:
                self.wake()
            return
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            hooks = conn.server.hooks
            if hooks is not None and "on_response" in hooks and not self.own_response:
                r = await _hook(conn, "on_response", {
                    "status": message["status"], "headers": list(message.get("headers", ())),
                    "method": self.scope["method"], "path": self.scope["path"]})
                if r is None or conn.lost:
                    if not conn.lost:
                        self._write_error(500, "the on_response hook failed")
                    raise ClientDisconnected("the response was replaced: on_response failed")
                message = {"type": kind, "status": r[1], "headers": r[2]}
            self._start(message)  # raises on a bad message: nothing started
            self.started = True
            return
        if kind == "http.response.zerocopysend":
            await self._send_file(message)
            return
        if kind != "http.response.body":
            raise ValueError(f"unexpected ASGI message type {kind!r} for an http scope")
        await self._send_body(message, head)

    async def _send_body(self, message: dict, head: Optional[bytes]) -> None:
        """http.response.body, every case: streamed, chunked, HEAD, 204/304,
        the app's Content-Length checked, the connection's end."""
        conn = self.conn
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            raise RuntimeError("http.response.body after the response ended")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        bodyless = self.no_body or self.method_head
        if not bodyless and 0 <= self.length_left < len(body):
            raise RuntimeError("response body longer than its content-length")
        if head is not None:
            self._head = None
            head = [head]
            if not more and self.length_left < 0 and not self.chunked_declared:
                # The whole body at once: Content-Length rather than chunks
                # (HEAD: the length the body would have had).
                if not self.no_body:
                    head.append(b"content-length: %d\r\n" % len(body))
            elif self.length_left < 0 and not self.no_body:
                if self.scope["http_version"] == "1.1":
                    head.append(b"transfer-encoding: chunked\r\n")
                    self.chunked = True
                else:
                    self.keep_alive = False  # HTTP/1.0: the end of the body is the close
            if conn.server.draining:
                self.keep_alive = False  # a graceful recycle: the client reconnects elsewhere
            if not self.keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            if body and not bodyless:
                if self.chunked:
                    head.append(b"%x\r\n" % len(body))
                    head.append(body)
                    head.append(b"\r\n")
                else:
                    head.append(body)
            if not more and self.chunked and not bodyless:
                head.append(b"0\r\n\r\n")
            conn.transport.write(b"".join(head))
            if conn.deadline_kind == "request":
                conn._disarm()  # the response started: request_timeout is met
        elif not bodyless:
            if self.chunked:
                if body:
                    conn.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
                if not more:
                    conn.transport.write(b"0\r\n\r\n")
            elif body:
                conn.transport.write(body)
        if not bodyless:
            self.sent_bytes += len(body)
            if self.length_left >= 0:
                self.length_left -= len(body)
        if not more:
            self.complete = True
            if self.length_left > 0:
                self.keep_alive = False
            self.wake()
        elif conn.write_paused:
            await conn.drained()

    async def _send_file(self, message: dict) -> None:
        """ASGI's zero-copy send extension (``http.response.zerocopysend``:
        ``file``, ``offset``, ``count``, ``more_body``), what
        ``wsgi.file_wrapper`` becomes: the file goes to the socket with
        ``loop.sendfile`` (``os.sendfile``; read and written if the
        transport cannot), with a Content-Length of ``count`` when the app
        set none and the response ends with it."""
        if not self.started or self.complete:
            raise RuntimeError("http.response.zerocopysend outside a response")
        f = message["file"]
        if type(f) is int:
            # A bare descriptor: a file object over it that leaves it open.
            f = open(f, "rb", buffering=0, closefd=False)
            try:
                await self._send_file_object(f, message)
            finally:
                f.close()
            return
        await self._send_file_object(f, message)

    async def _send_file_object(self, f: Any, message: dict) -> None:
        conn = self.conn
        offset = message.get("offset")
        if offset is None:
            offset = f.tell()
        count = message.get("count")
        if type(offset) is not int or offset < 0 or \
                (count is not None and (type(count) is not int or count < 0)):
            raise ValueError(f"http.response.zerocopysend: bad offset {offset!r} or count "
                             f"{count!r} (integers >= 0)")
        if count is None:
            count = max(0, os.fstat(f.fileno()).st_size - offset)
        more = message.get("more_body", False)
        if self.length_left >= 0:
            count = min(count, self.length_left)  # never past the app's length
        elif self._head is not None and not more and not self.chunked_declared:
            if not self.no_body:
                self._head += b"content-length: %d\r\n" % count
                self.length_left = count
        # The head (and the end, for a bodiless response) through the usual path.
        bodyless = self.no_body or self.method_head
        await self._send_slow({"type": "http.response.body", "body": b"",
                               "more_body": more or (count > 0 and not bodyless)})
        if bodyless or count == 0:
            return
        if self.chunked:
            # Chunked framing needs the bytes: read them (rare: the app
            # declared Transfer-Encoding itself).
            f.seek(offset)
            left = count
            while left > 0:
                data = f.read(min(left, 1 << 16))
                if not data:
                    break
                left -= len(data)
                await self._send_slow({"type": "http.response.body", "body": data, "more_body": True})
        else:
            sent = 0
            while sent < count:
                if conn.lost or conn.transport.is_closing():
                    raise ClientDisconnected("the client has disconnected")
                try:
                    # Slices of at most 8 MiB, each bounded by write_timeout:
                    # a client that reads nothing is cut, as for send().
                    n = await asyncio.wait_for(
                        conn.loop.sendfile(conn.transport, f, offset + sent,
                                           min(count - sent, 8 << 20)),
                        conn.cfg["write_timeout"])
                except asyncio.TimeoutError:
                    log.info("HTTP client %s read nothing for %ss: connection aborted",
                             conn.client, conn.cfg["write_timeout"])
                    conn.closing = True
                    conn.transport.abort()
                    raise ClientDisconnected("the client read nothing") from None
                except (ConnectionError, RuntimeError) as e:
                    raise ClientDisconnected(f"the client has disconnected: {e}") from None
                if n == 0:
                    break  # the file is shorter than it said
                sent += n
            self.sent_bytes += sent
            if self.length_left >= 0:
                self.length_left -= sent
        if not more:
            await self._send_slow({"type": "http.response.body", "body": b"", "more_body": False})

    def _start(self, message: dict) -> None:
        status = message["status"]
        if type(status) is not int or not 100 <= status <= 999:
            raise ValueError(f"bad status {status!r}")
        self.status = status
        if status < 200:
            raise ValueError("1xx responses are the server's (use 100-continue)")
        self.no_body = status in (204, 304)
        # The Date header's value is response_head's own (cached per second).
        head, self.length_left, flags = response_head(
            status, _reasons.get(status, b""), message.get("headers", ()))
        if flags:
            self.chunked_declared = bool(flags & HEAD_CHUNKED)
            if flags & HEAD_CLOSE:
                self.keep_alive = False
            self.chunked = self.chunked_declared and not self.no_body
        self._head = head

    def _hook_request(self) -> dict:
        scope = self.scope
        return {"method": scope["method"], "path": scope["path"],
                "query_string": scope["query_string"], "headers": scope["headers"],
                "client": self.conn.client, "root_path": scope["root_path"]}

    async def _on_request(self) -> bool:
        """The on_request hook: True to run the app (on the request as the
        hook left it), False when the hook answered."""
        r = await _hook(self.conn, "on_request", self._hook_request())
        if r is None:
            self._write_error(500, "the on_request hook failed")
            return False
        if r[0] == "respond":
            await self._respond(r[1], r[2], r[3])
            return False
        _, method, path, query, headers = r
        scope = self.scope
        if method != scope["method"]:
            scope["method"] = method
            self.method_head = method == "HEAD"
        if path != scope["path"]:
            scope["path"] = path
            scope["raw_path"] = quote(path).encode("ascii")
        scope["query_string"] = query
        scope["headers"] = headers
        return True

    async def _on_error(self, exc: BaseException) -> bool:
        """The on_error hook's answer to the app's failure: True when it
        answered, False for the server's own 500."""
        r = await _hook(self.conn, "on_error",
                        {"type": type(exc).__name__, "message": str(exc)}, self._hook_request())
        if r is None or r[0] != "respond" or self.conn.lost:
            return False
        # What the app started is dropped: nothing of it was written.
        self.started = False
        self._head = None
        await self._respond(r[1], r[2], r[3])
        return True

    async def _respond(self, status: int, headers: list, body: bytes) -> None:
        self.own_response = True
        await self._send_slow({"type": "http.response.start", "status": status, "headers": headers})
        await self._send_slow({"type": "http.response.body", "body": body})

    async def run(self, app: ASGIApp) -> None:
        conn = self.conn
        self.started_at = conn._time()
        try:
            hooks = conn.server.hooks
            if hooks is None or "on_request" not in hooks or await self._on_request():
                await app(self.scope, Receive(self), Send(self))
        except ClientDisconnected:
            pass
        except BaseException as exc:
            if self.broken and not self.started:
                self._answer_broken()
                self.conn.request_done(self)
                return
            if self.timed_out and isinstance(exc, asyncio.CancelledError):
                log.warning("ASGI app did not respond within %ss to %s %s: cancelled, 504",
                            conn.cfg["request_timeout"], self.scope["method"], self.scope["path"])
                self._write_error(504, "the application did not respond in time")
                self.conn.request_done(self)
                return
            log.exception("ASGI app failed on %s %s", self.scope["method"], self.scope["path"])
            if (not self.started or self._head is not None) and not self.conn.lost:
                # Nothing written yet (a started response's head waits for
                # its first body): the failure can still be a 500.
                hooks = conn.server.hooks
                answered = False
                if hooks is not None and "on_error" in hooks and not self.own_response:
                    try:
                        answered = await self._on_error(exc)
                    except Exception:
                        log.exception("on_error's answer could not be sent")
                        answered = self.complete
                if not answered and not self.complete:
                    self._write_error(500, "the application failed")
            self.keep_alive = False
        else:
            if self.broken and not self.started:
                self._answer_broken()
            elif (not self.started or self._head is not None) and not self.conn.lost:
                log.error("ASGI app returned without a response on %s %s",
                          self.scope["method"], self.scope["path"])
                self._write_error(500, "the application sent no response")
        if not self.complete:
            self.keep_alive = False
        request_done(conn, self)  # conn.request_done(self), its common case in C++

    def _timeout(self) -> None:
        # Only while nothing was written: a response that has started
        # (a stream, server-sent events) runs as long as it likes.
        if (not self.started or self._head is not None) and not self.complete \
                and self.task is not None and not self.conn.lost:
            self.timed_out = True
            self.task.cancel()

    def _answer_broken(self) -> None:
        # The request could not be read to its end: the stream's error.
        self._write_error(*(self.conn.pending_error or (400, "bad request")))

    def _write_error(self, status: int, text: str) -> None:
        """Answers with the server's own error response (nothing of the
        app's was written) and ends the connection after it."""
        self.started = self.complete = True
        self._head = None
        self.status = status
        self.keep_alive = False
        if not self.conn.lost:
            self.conn.transport.write(_error_response(status, text))


register_fields(_Request)  # the C++ paths use its fields directly


async def _hook(conn: "HttpConnection", which: str, *args: Any) -> Optional[list]:
    """Runs the pool's Erlang hook `which` (pyport_http_hooks:dispatch/1,
    over the worker's link): its checked answer, or None when it failed,
    timed out or answered something invalid (Erlang logged why)."""
    cfg = conn.cfg
    try:
        # Erlang bounds the hook by hook_timeout; this bounds the trip.
        r = await asyncio.wait_for(
            _callbacks.async_call("pyport.http_hook", cfg["hook_pool"], which, *args),
            cfg["hook_timeout"] + 2.0)
    except (asyncio.TimeoutError, Exception) as exc:
        log.error("HTTP hook %s failed: %r", which, exc)
        return None
    if not isinstance(r, (list, tuple)) or not r or r[0] == "error":
        return None
    return list(r)
