"""The HTTP/1.1 server of an HTTP pool's workers: ASGI apps served on the
worker's own event loop (docs/http.md).

Every worker of the pool runs ``start()`` from its init code: it imports
the app, binds its own listening socket on the pool's address with
SO_REUSEPORT (the kernel spreads connections over the workers' sockets),
and serves on the worker's ``ErlangEventLoop``, whose socket transports are
C++ over the worker's libuv loop. Requests are parsed in C++ by
``_pyport_http.Parser`` (libhttp-parser); each request is an asyncio task
running the app with an ASGI 3.0 ``http`` scope. A request never crosses
the port.
"""
from __future__ import annotations

import asyncio
import http
import importlib
import logging
import os
import socket
import ssl
import time
from collections import deque
from typing import Any, Awaitable, Callable, Optional

from urllib.parse import quote

from . import _callbacks
from _pyport_http import BODY, END, HEAD, HEAD_CHUNKED, HEAD_CLOSE, Parser, response_head

from . import _websocket
from ._write_flow import ClientDisconnected, WriteFlow

__all__ = ["start", "load_app", "bind_socket", "ClientDisconnected", "server_info"]

log = logging.getLogger("pyport.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]

# Defaults; every one can be set per pool (docs/http.md, pyport_http.erl).
DEFAULTS: dict[str, Any] = {
    "max_request_line": 8190,       # bytes of the request target (414 above)
    "max_headers": 100,             # header fields (431 above)
    "max_header_bytes": 65536,      # bytes of all header fields (431 above)
    "max_body": 16 * 1024 * 1024,   # bytes of a request body (413 above); 0: no limit
    "header_timeout": 10.0,         # s to read a request head once it started (408)
    "body_timeout": 30.0,           # s the app waits for the next piece of body (408)
    "keepalive_timeout": 5.0,       # s an idle keep-alive connection stays open
    "write_timeout": 30.0,          # s send() may wait for a client that does not read
    "request_timeout": 30.0,        # s until the response starts (504 after); 0: none
    "backlog": 1024,
    "root_path": "",
    "lifespan": "auto",             # auto | on | off
    "access_log": False,            # one INFO record per response (logger pyport.http.access)
    "interface": "auto",            # asgi | wsgi | auto (erlang._wsgi.is_wsgi)
    "wsgi_threads": 8,              # threads running a WSGI app's requests
    "mounts": [],                   # [[prefix, "module:attr", interface], ...] (_Mounts)
    "hooks": [],                    # the Erlang hooks the pool has (pyport_http_hooks)
    "hook_pool": "",                # the pool's name, for pyport_http_hooks:dispatch/1
    "hook_timeout": 5.0,            # s Erlang gives a hook (then 500)
    "handoff": "",                  # the pool's private directory for listener hand-off (reload)
    "pool": "",                     # the pool's name
    "max_requests": 0,              # HTTP requests, then a graceful recycle (0: none)
    "websocket_max_message_size": 16 * 1024 * 1024,  # bytes (close 1009 above); 0: no limit
    "certfile": "",                 # TLS: PEM certificate chain ("" : plain HTTP)
    "keyfile": "",                  # TLS: PEM private key of certfile
    "cacertfile": "",               # TLS: CAs client certificates are checked against
    "verify": "",                   # verify_none | verify_peer ("": verify_peer with cacertfile)
}

# Flow control: the app's send() waits while the transport holds more than
# WRITE_HIGH bytes; reading pauses while requests hold more than READ_HIGH
# bytes of body the app has not received, or PIPELINE_MAX requests wait.
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
READ_HIGH = 256 * 1024
PIPELINE_MAX = 128

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


_reasons = {s.value: s.phrase.encode("latin-1") for s in http.HTTPStatus}
_date_cache = [0, b""]


def _date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _date_cache[1]


def _error_response(status: int, text: str) -> bytes:
    body = f"{status} {_reasons.get(status, b'').decode()}: {text}\n".encode("utf-8", "replace")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\ndate: %s\r\n\r\n"
            % (status, _reasons.get(status, b"Error"), len(body), _date())) + body


def load_app(spec: str) -> ASGIApp:
    """The callable named by "module:attr" (attr may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app {spec!r}: expected \"module:attr\"")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"app {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"app {spec!r}: module {module_name!r} has no attribute {attr!r}") \
                from None
    if not callable(obj):
        raise TypeError(f"app {spec!r}: {attr!r} is not callable")
    return obj


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


class _Request:
    """One request/response cycle: the ASGI receive and send of its task."""

    __slots__ = ("conn", "scope", "method_head", "keep_alive", "expect_continue", "chunks",
                 "buffered", "body_done", "delivered_end", "waiter", "started", "complete",
                 "status", "chunked", "no_body", "task", "length_left", "chunked_declared", "_head",
                 "broken", "timed_out", "started_at", "sent_bytes", "own_response")

    def __init__(self, conn: "HttpConnection", scope: dict, keep_alive: bool,
                 expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.method_head = scope["method"] == "HEAD"
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.body_done = False
        self.delivered_end = False
        self.waiter: Optional[asyncio.Future] = None
        self.started = False
        self.complete = False
        self.status = 0
        self.chunked = False
        self.no_body = False
        self.task: Optional[asyncio.Task] = None
        self.length_left = -1
        self.chunked_declared = False
        self._head: Optional[list] = None
        self.broken = False  # the stream broke while its body was read
        self.timed_out = False  # request_timeout passed before the response started
        self.started_at = 0.0
        self.sent_bytes = 0
        self.own_response = False  # a hook's answer: on_response does not see it

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def receive(self) -> dict:
        conn = self.conn
        while True:
            if self.chunks:
                body = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
                self.chunks.clear()
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

    async def send(self, message: dict) -> None:
        conn = self.conn
        if conn.lost:
            raise ClientDisconnected("the client has disconnected")
        kind = message["type"]
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
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            raise RuntimeError("http.response.body after the response ended")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        bodyless = self.no_body or self.method_head
        if not bodyless and 0 <= self.length_left < len(body):
            raise RuntimeError("response body longer than its content-length")
        head = self._head
        if head is not None:
            self._head = None
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
        conn = self.conn
        f = message["file"]
        offset = message.get("offset")
        if offset is None:
            offset = f.tell()
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(f.fileno()).st_size - offset)
        more = message.get("more_body", False)
        if self.length_left >= 0:
            count = min(count, self.length_left)  # never past the app's length
        elif self._head is not None and not more and not self.chunked_declared:
            if not self.no_body:
                self._head.append(b"content-length: %d\r\n" % count)
                self.length_left = count
        # The head (and the end, for a bodiless response) through the usual path.
        bodyless = self.no_body or self.method_head
        await self.send({"type": "http.response.body", "body": b"",
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
                await self.send({"type": "http.response.body", "body": data, "more_body": True})
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
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _start(self, message: dict) -> None:
        status = message["status"]
        if type(status) is not int or not 100 <= status <= 999:
            raise ValueError(f"bad status {status!r}")
        self.status = status
        if status < 200:
            raise ValueError("1xx responses are the server's (use 100-continue)")
        self.no_body = status in (204, 304)
        head, self.length_left, flags = response_head(
            status, _reasons.get(status, b""), message.get("headers", ()), _date())
        self.chunked_declared = bool(flags & HEAD_CHUNKED)
        if flags & HEAD_CLOSE:
            self.keep_alive = False
        self.chunked = self.chunked_declared and not self.no_body
        self._head = [head]

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
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def run(self, app: ASGIApp) -> None:
        conn = self.conn
        self.started_at = conn.loop.time()
        try:
            hooks = conn.server.hooks
            if hooks is None or "on_request" not in hooks or await self._on_request():
                await app(self.scope, self.receive, self.send)
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
        self.conn.request_done(self)

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




class HttpConnection(WriteFlow, asyncio.Protocol):
    """One client connection: parsing, pipelining, timeouts, flow control."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.app = server.app
        self.cfg = server.cfg
        self.loop = server.loop
        self.transport: Any = None
        self.parser: Any = None  # made in connection_made (the scope needs the addresses)
        self.pipeline: deque[_Request] = deque()  # read, not yet answered, in order
        self.pending_error: Optional[tuple[int, str]] = None
        self.reading: Optional[_Request] = None  # the request whose body is being read
        self.lost = False
        self.eof = False  # the client sent FIN
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future] = []
        self.buffered = 0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.deadline: Optional[float] = None  # loop time, or None: no timeout now
        self.deadline_kind = ""
        self.client: Any = None
        self.server_addr: Any = None

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.client = _address(transport.get_extra_info("peername"))
        self.server_addr = _address(transport.get_extra_info("sockname"))
        # What every request's scope on this connection shares; the parser
        # copies it and adds the request's own fields (see _pyport_http).
        template = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "scheme": self.server.scheme,
            "root_path": self.cfg["root_path"],
            "client": self.client,
            "server": self.server_addr,
        }
        cfg = self.cfg
        self.parser = Parser(cfg["max_request_line"], cfg["max_headers"], cfg["max_header_bytes"],
                             cfg["max_body"], template)
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.cfg["keepalive_timeout"], "idle")

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        for ev in self.parser.feed(data):
            kind = ev[0]
            if kind == BODY:
                req = self.reading
                if req is not None:
                    req.chunks.append(ev[1])
                    n = len(ev[1])
                    req.buffered += n
                    self.buffered += n
                    req.wake()
            elif kind == HEAD:
                self._head(ev)
            elif kind == END:
                req = self.reading
                if req is not None:
                    req.body_done = True
                    req.wake()
                    self.reading = None
            else:  # ERROR
                self.fail(ev[1], ev[2])
                return
        if self.parser.upgrade and self.reading is None:
            if len(self.pipeline) == 1 and self.pipeline[0].task is not None \
                    and not self.pipeline[0].started_at \
                    and _serves_websocket(self, self.pipeline[0].scope) \
                    and _websocket.is_upgrade(self.pipeline[0].scope):
                # A WebSocket (erlang._websocket): the transport gets a new
                # protocol; the request's task, not run yet, is replaced.
                _websocket.take_over(self, self.pipeline[0])
                return
            # Other upgrades, CONNECT, a WebSocket behind pipelined requests
            # or for a WSGI app: what follows the request is not HTTP, so
            # the connection ends with its response.
            for item in self.pipeline:
                item.keep_alive = False
            self._pause()
        self._update_timer()
        if self.buffered > READ_HIGH or len(self.pipeline) > PIPELINE_MAX:
            self._pause()

    def eof_received(self) -> bool:
        # The client sends no more; requests already read are answered
        # (it may only have half-closed), and apps waiting in receive()
        # after their body get http.disconnect.
        self.eof = True
        for item in self.pipeline:
            item.wake()
        if self.reading is not None or not self.parser.idle:
            self.fail(400, "request cut short")
            return True
        if not self.pipeline:
            self.transport.close()
        # request_done closes after the last response. Over TLS the close
        # is SSLProtocol's (no half-close there): say so, or it warns.
        return self.server.ssl is None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self._stop_timer()
        # Requests not yet started never run: nobody can get their answer.
        self.pipeline = deque(r for r in self.pipeline if r.task is not None)
        for item in self.pipeline:
            item.wake()
        self.resolve_drains()

    def abort_slow_reader(self) -> None:
        self.closing = True
        self.transport.abort()

    # -- requests -----------------------------------------------------------

    def _head(self, ev: tuple) -> None:
        # ev[1]: the scope, made in C++ from self.scope_template.
        scope = ev[1]
        if self.server.state is not None:
            scope["state"] = self.server.state.copy()
        req = _Request(self, scope, ev[2], ev[3])
        self.reading = req
        self.pipeline.append(req)
        if len(self.pipeline) == 1:
            self._start(req)

    def _start(self, req: _Request) -> None:
        req.task = self.loop.create_task(req.run(self.app))
        if self.cfg["request_timeout"] > 0:
            self._arm(self.cfg["request_timeout"], "request")

    def unbuffer(self, n: int) -> None:
        self.buffered -= n
        if self.read_paused and self.buffered <= READ_HIGH // 2 \
                and len(self.pipeline) <= PIPELINE_MAX and not self.closing \
                and not self.parser.upgrade:
            self.read_paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def request_done(self, req: _Request) -> None:
        if self.pipeline and self.pipeline[0] is req:
            self.pipeline.popleft()
        self.unbuffer(req.buffered)
        req.buffered = 0
        if self.cfg["access_log"]:
            _access_log(self, req)
        server = self.server
        server.served += 1
        if server.served == server.cfg["max_requests"]:
            server.ask_recycle()
        if self.lost:
            return
        if req.broken or not req.keep_alive or not req.body_done:
            # A body the app did not read to its end would have to be
            # skipped; the connection ends instead.
            self._close()
            return
        if self.pipeline:
            self._start(self.pipeline[0])
        elif self.pending_error is not None:
            self._answer_error(*self.pending_error)
            return
        elif self.eof:
            self._close()
            return
        self.unbuffer(0)
        self._update_timer()

    def fail(self, status: int, reason: str) -> None:
        """The request stream is broken: the requests read whole are
        answered, then `status`, then the connection closes."""
        if self.closing or self.lost or self.pending_error is not None:
            return
        self.pending_error = (status, reason)
        self.reading = None
        self._pause()
        kept: deque[Any] = deque()
        for item in self.pipeline:
            if not item.body_done:
                if item.task is None:
                    continue  # never started: the error answers in its place
                item.broken = True
                item.wake()
            kept.append(item)
        self.pipeline = kept
        if not self.pipeline:
            self._answer_error(status, reason)

    def _answer_error(self, status: int, reason: str) -> None:
        self.transport.write(_error_response(status, reason))
        self._close()

    def _close(self) -> None:
        self.closing = True
        self._stop_timer()
        self.transport.close()

    # -- timeouts -------------------------------------------------------------

    # One timer per connection, rescheduled lazily: a request moves the
    # deadline, not the timer (no call_later/cancel per request).

    def _update_timer(self) -> None:
        if self.closing or self.lost:
            return
        if self.pipeline:
            # The app has the request: request_timeout runs until its
            # response starts; body_timeout is receive()'s.
            if self.deadline_kind != "request":
                self._disarm()
        elif self.parser.idle:
            self._arm(self.cfg["keepalive_timeout"], "idle")
        elif self.deadline is None or self.deadline_kind != "header":
            self._arm(self.cfg["header_timeout"], "header")

    def _arm(self, seconds: float, kind: str) -> None:
        when = self.loop.time() + seconds
        self.deadline = when
        self.deadline_kind = kind
        t = self.timer
        if t is None or t.when() > when:
            if t is not None:
                t.cancel()
            self.timer = self.loop.call_at(when, self._on_timer)

    def _disarm(self) -> None:
        self.deadline = None
        self.deadline_kind = ""

    def _stop_timer(self) -> None:
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        when = self.deadline
        if when is None or self.lost or self.closing:
            return
        if self.loop.time() < when:
            self.timer = self.loop.call_at(when, self._on_timer)
            return
        kind = self.deadline_kind
        self._disarm()
        if kind == "request":
            if self.pipeline:
                self.pipeline[0]._timeout()
        elif kind == "header":
            self.fail(408, "request head not received in time")
        elif not self.pipeline:
            self._close()


def _serves_websocket(conn: HttpConnection, scope: dict) -> bool:
    """An ASGI app (the mount of the path, with mounts) takes WebSockets."""
    from ._wsgi import WsgiAdapter
    app = conn.app
    if isinstance(app, _Mounts):
        mount = app.find(scope["path"])
        return mount is not None and not mount.wsgi
    return not isinstance(app, WsgiAdapter)


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


access_log = logging.getLogger("pyport.http.access")


def _enable_access_log() -> None:
    # Straight to the Erlang logger at INFO, whatever the root logger's
    # level (py:configure_logging sets that one for everything).
    from ._logging import ErlangHandler
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    if not any(isinstance(h, ErlangHandler) for h in access_log.handlers):
        access_log.addHandler(ErlangHandler())


def _access_log(conn: HttpConnection, req: _Request) -> None:
    scope = req.scope
    client = f"{conn.client[0]}:{conn.client[1]}" if conn.client else "-"
    status = req.status if req.complete else 0  # 0: cut before the response ended
    path = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("latin-1")
    access_log.info('%s "%s %s HTTP/%s" %d %d %.1fms', client, scope["method"], path,
                    scope["http_version"], status, req.sent_bytes,
                    (conn.loop.time() - req.started_at) * 1000)


def _address(addr: Any) -> Any:
    # A tuple (as uvicorn gives it): shared by the connection's scopes, so
    # it must not be mutable.
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (addr[0], addr[1])
    return None


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


class _Mount:
    __slots__ = ("prefix", "app", "wsgi", "state")

    def __init__(self, prefix: str, app: ASGIApp, wsgi: bool) -> None:
        self.prefix = prefix  # "" for "/"
        self.app = app
        self.wsgi = wsgi
        self.state: Optional[dict] = None


class _Mounts:
    """Several apps on one server (`mounts`): the longest prefix that
    matches whole path segments wins. As the ASGI spec says (its WSGI
    compatibility section), `root_path` gets the prefix and `path` stays
    whole; a WSGI mount's SCRIPT_NAME is the prefix, PATH_INFO the rest.
    No match: 404."""

    def __init__(self, mounts: list[_Mount]) -> None:
        self.mounts = sorted(mounts, key=lambda m: len(m.prefix), reverse=True)

    def find(self, path: str) -> Optional[_Mount]:
        for m in self.mounts:
            p = m.prefix
            if not p or (path.startswith(p) and (len(path) == len(p) or path[len(p)] == "/")):
                return m
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        mount = self.find(scope["path"])
        if mount is None:
            body = b"404 Not Found: no application is mounted at this path\n"
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": body})
            return
        scope["root_path"] = scope.get("root_path", "") + mount.prefix
        if mount.state is not None:
            scope["state"] = mount.state.copy()
        await mount.app(scope, receive, send)

    def shutdown(self) -> None:
        for m in self.mounts:
            stop = getattr(m.app, "shutdown", None)  # a WSGI adapter's threads
            if stop is not None:
                stop()


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


def tls_context(cfg: dict) -> Optional[ssl.SSLContext]:
    """The server's TLS context from ``certfile``/``keyfile`` (and
    ``cacertfile``/``verify`` for client certificates), or None for plain
    HTTP. TLS 1.2 at least, ALPN ``http/1.1``. A file that does not load
    raises ``ValueError("TLS: ...")`` naming it (pyport_http's tls_error)."""
    certfile, keyfile = cfg["certfile"], cfg["keyfile"]
    if not certfile and not keyfile:
        return None
    if not certfile or not keyfile:
        raise ValueError("TLS: certfile and keyfile go together")
    verify = cfg["verify"] or ("verify_peer" if cfg["cacertfile"] else "verify_none")
    if verify not in ("verify_none", "verify_peer"):
        raise ValueError(f"TLS: verify {verify!r}: expected verify_none or verify_peer")
    if verify == "verify_peer" and not cfg["cacertfile"]:
        raise ValueError("TLS: verify_peer needs cacertfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: {_which_file(certfile, keyfile)}: {exc}") from None
    if cfg["cacertfile"]:
        try:
            ctx.load_verify_locations(cafile=cfg["cacertfile"])
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS: cacertfile {cfg['cacertfile']}: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if verify == "verify_peer" else ssl.CERT_NONE
    return ctx


def _which_file(certfile: str, keyfile: str) -> str:
    """Which of the two files load_cert_chain refused: the certificate if
    it does not load alone, else the key (or both: a key of another cert)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except (ssl.SSLError, OSError):
        return f"certfile {certfile}"
    try:
        with open(keyfile, "rb") as f:
            pem = f.read(1 << 20)
    except OSError:
        return f"keyfile {keyfile}"
    if b"PRIVATE KEY-----" not in pem:
        return f"keyfile {keyfile}"
    return f"certfile {certfile} with keyfile {keyfile}"


def _load_mount(prefix: str, spec: str, interface: str, cfg: dict) -> _Mount:
    """The app named by `spec`, a WSGI one wrapped in the adapter."""
    from . import _wsgi
    app = load_app(spec)
    if interface not in ("asgi", "wsgi", "auto"):
        raise ValueError(f"app {spec!r}: interface {interface!r}: expected asgi, wsgi or auto")
    if interface == "wsgi" or (interface == "auto" and _wsgi.is_wsgi(app)):
        return _Mount(prefix, _wsgi.WsgiAdapter(app, int(cfg["wsgi_threads"]), prefix), True)
    return _Mount(prefix, app, False)


def start(app_spec: str, bind: str, options: Optional[dict] = None) -> None:
    """Loads the app, binds the socket and serves on the worker's loop.
    Raises (so the worker's start fails naming it) when the app cannot be
    loaded or the address cannot be bound."""
    cfg = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown HTTP option {key!r}")
        cfg[key] = value
    interface = cfg["interface"]
    if interface not in ("asgi", "wsgi", "auto"):
        raise ValueError(f"interface {interface!r}: expected asgi, wsgi or auto")
    if cfg["mounts"]:
        mounts = [_load_mount("" if prefix == "/" else prefix, spec, iface or interface, cfg)
                  for prefix, spec, iface in cfg["mounts"]]
        if app_spec:
            mounts.append(_load_mount("", app_spec, interface, cfg))
        app: ASGIApp = _Mounts(mounts)
        if cfg["lifespan"] == "on" and all(m.wsgi for m in mounts):
            raise ValueError("lifespan => on needs an ASGI app (every mount is WSGI)")
    else:
        mount = _load_mount("", app_spec, interface, cfg)
        app = mount.app
        if mount.wsgi:
            if cfg["lifespan"] == "on":
                raise ValueError(f"app {app_spec!r}: lifespan => on needs an ASGI app "
                                 "(this is WSGI)")
            cfg["lifespan"] = "off"
    if cfg["access_log"]:
        _enable_access_log()
    tls = tls_context(cfg)  # before binding: a bad file fails the start, no socket held
    sock = _adopt(cfg["handoff"], bind) or bind_socket(bind, cfg["backlog"])
    from . import _worker
    loop = _worker.ensure_loop()
    server = HttpServer(app, sock, cfg, loop, tls)
    _servers.append(server)
    task = server.serving = loop.create_task(server.serve())

    def started(t: asyncio.Task) -> None:
        if t.cancelled() or t.exception() is not None:
            if not t.cancelled():
                log.error("HTTP server on %s did not start: %r", bind, t.exception())
            sock.close()

    task.add_done_callback(started)


async def wait_serving() -> bool:
    """Waits until this worker's servers listen (lifespan startup done);
    raises the reason one did not start (the app's startup.failed message)."""
    for server in _servers:
        if server.serving is not None:
            await asyncio.shield(server.serving)
    return True


async def stop(grace: float = 5.0) -> bool:
    """Stops this worker's servers (pyport_http:stop/1, before the pool)."""
    servers = list(_servers)
    _servers.clear()
    await asyncio.gather(*(s.stop(grace) for s in servers), return_exceptions=True)
    return True


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


def server_info() -> list[dict]:
    """What this worker serves (for pyport_http:http_info/1)."""
    return [{"connections": len(s.connections), "serving": s.server is not None,
             "fd": s.sock.fileno()} for s in _servers]
