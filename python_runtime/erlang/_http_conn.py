"""One HTTP/1.1 client connection of the server (erlang._http): the
parser fed, requests pipelined in order, keep-alive, the header, body and
keep-alive timeouts, flow control both ways, the WebSocket hand-over."""
from __future__ import annotations

import asyncio
import socket
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from _pyport_http import (BODY, END, HEAD, ConnFields, Parser, c_weakset,
                          connection_data_received, register_fields, setup_connection)

from . import _websocket
from ._http_access import _access_log
from ._http_mounts import _Mounts
from ._http_request import ASGI_VERSION, _Request
from ._http_response import _error_response
from ._write_flow import WriteFlow

if TYPE_CHECKING:
    from ._http_server import HttpServer

# Flow control: the app's send() waits while the transport holds more than
# WRITE_HIGH bytes; reading pauses while requests hold more than READ_HIGH
# bytes of body the app has not received, or PIPELINE_MAX requests wait.
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
READ_HIGH = 256 * 1024
PIPELINE_MAX = 128

# ASGI extensions of every http scope (the parser gives each its own copy):
# zero-copy send is _Request._send_file (sendfile(2); read over TLS).
HTTP_EXTENSIONS: dict = {"http.response.zerocopysend": {}}


# The C++ fast paths make requests of this class (without its __init__:
# they set the same fields) and start them as _start does.
setup_connection(_Request, READ_HIGH)

# Every request is a Task, and every Task runs WeakSet.add (registering in
# asyncio.all_tasks()'s set) and, when freed, WeakSet's weakref callback:
# both Python. The same set gets them in C, same rules (c_weakset in
# port_worker/http_connection.cpp); only an untouched WeakSet.
_all_tasks = getattr(asyncio.tasks, "_all_tasks", None)
if type(_all_tasks) is weakref.WeakSet and "add" not in vars(_all_tasks):
    c_weakset(_all_tasks)


class HttpConnection(ConnFields, WriteFlow, asyncio.Protocol):
    """One client connection: parsing, pipelining, timeouts, flow control.
    The attributes its C++ paths read per request are ConnFields' C
    fields (port_worker/http_fields.cpp), set by __init__."""

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
        self.timer_when = _NEVER  # self.timer's time (no when() call per request)
        # Per-request settings read once (attribute reads, not cfg lookups).
        self.request_timeout: float = self.cfg["request_timeout"]
        self.keepalive_timeout: float = self.cfg["keepalive_timeout"]
        self.access_log: bool = bool(self.cfg["access_log"])
        self._time = _clock(self.loop)
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
            "extensions": HTTP_EXTENSIONS,
        }
        cfg = self.cfg
        self.parser = Parser(cfg["max_request_line"], cfg["max_headers"], cfg["max_header_bytes"],
                             cfg["max_body"], template)
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.cfg["keepalive_timeout"], "idle")

    # data_received(data) is C++ (port_worker/http_connection.cpp): if not
    # closing, parser.feed(data), a request's head and end handled there in
    # the common case and every event else by _event (stopping after an
    # ERROR), then _after_events() unless it has nothing to do.
    data_received = connection_data_received

    def _event(self, ev: tuple) -> bool:
        """One parser event; False when the stream broke (ERROR)."""
        kind = ev[0]
        if kind == BODY:
            req = self.reading
            if req is not None:
                if req.chunks is None:
                    req.chunks = deque()
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
            return False
        return True

    def _after_events(self) -> None:
        """After the events of one read: an upgrade, the timer, flow control."""
        if self.parser.upgrade and self.reading is None:
            if len(self.pipeline) == 1 and self.pipeline[0].task is not None \
                    and not self.pipeline[0].started_at \
                    and _serves_websocket(self, self.pipeline[0].scope) \
                    and _websocket.is_upgrade(self.pipeline[0].scope):
                # A WebSocket (erlang._websocket): the transport gets a new
                # protocol; the request's task, not run yet, is replaced.
                # Its scope is built from this one: no http extension in it.
                req = self.pipeline[0]
                req.scope = {**req.scope, "extensions": {}}
                _websocket.take_over(self, req)
                return
            # Other upgrades, CONNECT, a WebSocket behind pipelined requests
            # or for a WSGI app: what follows the request is not HTTP, so
            # the connection ends with its response.
            for item in self.pipeline:
                item.keep_alive = False
            self._pause()
        if self.deadline_kind != "request" or not self.pipeline:
            self._update_timer()  # (a request in the app keeps request_timeout's)
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
        if self.request_timeout > 0:
            self._arm(self.request_timeout, "request")

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
        if req.buffered or self.read_paused:
            self.unbuffer(req.buffered)
            req.buffered = 0
        if self.access_log:
            _access_log(self, req)
        server = self.server
        server.served += 1
        if server.served == server.max_requests:
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
        if self.read_paused:
            self.unbuffer(0)
        if not self.pipeline and self.parser.idle and not self.closing:
            self._arm(self.keepalive_timeout, "idle")  # _update_timer's usual case
        else:
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
        when = self._time() + seconds
        self.deadline = when
        self.deadline_kind = kind
        if when < self.timer_when:
            t = self.timer
            if t is not None:
                t.cancel()
            self.timer = self.loop.call_at(when, self._on_timer)
            self.timer_when = when

    def _disarm(self) -> None:
        self.deadline = None
        self.deadline_kind = ""

    def _stop_timer(self) -> None:
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_when = _NEVER

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_when = _NEVER
        when = self.deadline
        if when is None or self.lost or self.closing:
            return
        if self._time() < when:
            self.timer = self.loop.call_at(when, self._on_timer)
            self.timer_when = when
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


_NEVER = float("inf")


register_fields(HttpConnection)  # the C++ paths use its fields directly


def _clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """loop.time, or time.monotonic itself when that is all loop.time
    does (asyncio's own): one Python call less per timer use."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def _serves_websocket(conn: HttpConnection, scope: dict) -> bool:
    """An ASGI app (the mount of the path, with mounts) takes WebSockets."""
    from ._wsgi import WsgiAdapter
    app = conn.app
    if isinstance(app, _Mounts):
        mount = app.find(scope["path"])
        return mount is not None and not mount.wsgi
    return not isinstance(app, WsgiAdapter)


def _address(addr: Any) -> Any:
    # A tuple (as uvicorn gives it): shared by the connection's scopes, so
    # it must not be mutable.
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (addr[0], addr[1])
    return None
