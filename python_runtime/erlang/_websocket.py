"""WebSocket (RFC 6455) for the HTTP server of HTTP pools: ASGI's
``websocket`` scope and messages (docs/http.md, "WebSocket").

An HTTP/1.1 ``GET`` with ``Upgrade: websocket`` that the parser stopped at
is handed here by ``erlang._http.HttpConnection``; the connection's
transport then gets a ``WebSocketConnection`` as its protocol. The
handshake is checked here, the app decides (``websocket.accept`` → 101,
``websocket.close`` before it → 403), and frames are parsed and built in
C++ by ``_pyport_ws.Session`` (libwslay): masking, control frames, pings,
fragments, the size limit and UTF-8 are its job.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections import deque
from typing import Any, Optional

from _pyport_ws import BINARY, CLOSE, TEXT, Session

from ._write_flow import ClientDisconnected, WriteFlow

__all__ = ["is_upgrade", "take_over", "WebSocketConnection", "configure"]

log = logging.getLogger("pyport.http")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3

# An app that does not receive: reading stops while this many bytes (or
# messages) wait in its inbox, and resumes below half.
INBOX_HIGH_BYTES = 1024 * 1024
INBOX_HIGH_COUNT = 1024
# How long the server waits for the peer's close frame after sending its
# own before it drops the TCP connection.
CLOSE_TIMEOUT = 5.0

_CONNECTING, _OPEN, _CLOSED = 0, 1, 2

# Idle checks (docs/http.md `websocket_ping_interval`/`_timeout`): after
# PING_INTERVAL s with nothing from the peer the server pings it; when
# nothing at all comes within PING_TIMEOUT s of that ping, the connection
# fails (close 1011 sent, TCP dropped, the app told 1006). None: no pings.
PING_INTERVAL: Optional[float] = 20.0
PING_TIMEOUT: Optional[float] = 20.0
# permessage-deflate (RFC 7692) offered by a client is accepted.
COMPRESS = False


def configure(ping_interval: Optional[float], ping_timeout: Optional[float],
              compress: bool = False) -> None:
    """Sets this worker's idle checks (in seconds; None: off) and whether
    permessage-deflate is negotiated (an HTTP pool's init code calls it
    with the pool's options)."""
    global PING_INTERVAL, PING_TIMEOUT, COMPRESS
    for name, value in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"WebSocket {name} {value!r}: expected seconds > 0 or None")
    if not isinstance(compress, bool):
        raise ValueError(f"WebSocket compress {compress!r}: expected True or False")
    PING_INTERVAL, PING_TIMEOUT, COMPRESS = ping_interval, ping_timeout, compress


def negotiate_deflate(offers: Optional[bytes]) -> Optional[tuple[bytes, bool, int]]:
    """The first acceptable permessage-deflate offer of a
    Sec-WebSocket-Extensions value (RFC 7692 7.1): (the response's
    extension, server_no_context_takeover, server_max_window_bits), or None.
    An offer with an unknown, repeated or bad parameter is skipped, and so
    is server_max_window_bits=8 (zlib's raw deflate cannot make 256-byte
    windows)."""
    if not offers:
        return None
    for offer in offers.split(b","):
        parts = [p.strip() for p in offer.split(b";")]
        if parts[0].lower() != b"permessage-deflate":
            continue
        params: dict[bytes, Optional[bytes]] = {}
        ok = True
        for p in parts[1:]:
            if not p:
                ok = False
                break
            name, eq, value = p.partition(b"=")
            name = name.strip().lower()
            value = value.strip().strip(b'"') if eq else None
            if name in params:
                ok = False
                break
            params[name] = value
        if not ok:
            continue
        response = [b"permessage-deflate"]
        no_context = False
        bits = 15
        for name, value in params.items():
            if name == b"server_no_context_takeover" and value is None:
                no_context = True
                response.append(b"server_no_context_takeover")
            elif name == b"client_no_context_takeover" and value is None:
                response.append(b"client_no_context_takeover")
            elif name == b"server_max_window_bits" and value is not None \
                    and value.isdigit() and not value.startswith(b"0") and 9 <= int(value) <= 15:
                bits = int(value)
                response.append(b"server_max_window_bits=" + value)
            elif name == b"client_max_window_bits" and (
                    value is None or (value.isdigit() and not value.startswith(b"0")
                                      and 8 <= int(value) <= 15)):
                pass  # our inflater takes any window; nothing to answer
            else:
                ok = False
                break
        if ok:
            return b"; ".join(response), no_context, bits
    return None


def _header(headers: list, name: bytes) -> Optional[bytes]:
    found = None
    for k, v in headers:
        if k == name:
            found = v if found is None else found + b"," + v
    return found


def _tokens(value: Optional[bytes]) -> list[bytes]:
    if not value:
        return []
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def is_upgrade(scope: dict) -> bool:
    """The request asks for a WebSocket (``Upgrade: websocket``)."""
    return b"websocket" in _tokens(_header(scope["headers"], b"upgrade"))


def _handshake_error(scope: dict) -> Optional[tuple[int, str]]:
    """(status, why) when the opening handshake is not RFC 6455's."""
    headers = scope["headers"]
    if scope.get("method") != "GET" or scope["http_version"] != "1.1":
        return 400, "a WebSocket handshake is an HTTP/1.1 GET"
    if b"upgrade" not in _tokens(_header(headers, b"connection")):
        return 400, "WebSocket handshake without Connection: Upgrade"
    version = _header(headers, b"sec-websocket-version")
    if version is None or version.strip() != b"13":
        return 426, "unsupported Sec-WebSocket-Version (13 is)"
    key = _header(headers, b"sec-websocket-key")
    try:
        ok = key is not None and len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        return 400, "missing or malformed Sec-WebSocket-Key"
    return None


def _accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def take_over(conn: Any, req: Any) -> None:
    """Serves the upgrade request `req` of HTTP connection `conn` as a
    WebSocket: a bad handshake is answered (400, or 426 for a version
    other than 13) and the connection closes; else the app runs with a
    ``websocket`` scope on a new protocol of the same transport."""
    from ._http import _error_response
    if req.task is not None:
        req.task.cancel()  # not started yet: the app runs with the websocket scope instead
    conn.pipeline.clear()
    conn._stop_timer()
    scope = req.scope
    error = _handshake_error(scope)
    if error is None and getattr(conn.server, "draining", False):
        # A graceful recycle: the client reconnects to the replacement.
        error = 503, "the worker is being replaced; connect again"
    if error is not None:
        status, why = error
        response = _error_response(status, why)
        if status == 426:
            response = response.replace(b"\r\n\r\n", b"\r\nsec-websocket-version: 13\r\n\r\n", 1)
        conn.transport.write(response)
        conn._close()
        return
    ws = WebSocketConnection(conn, scope)
    conn.server.connections.discard(conn)
    conn.server.connections.add(ws)
    conn.transport.set_protocol(ws)
    ws.task = conn.loop.create_task(ws.run(conn.app))
    if conn.cfg["request_timeout"] > 0:
        # The app must accept or refuse within request_timeout, as an
        # HTTP response must start.
        ws.handshake_timer = conn.loop.call_later(conn.cfg["request_timeout"],
                                                  ws._handshake_timeout)


class WebSocketConnection(WriteFlow, asyncio.Protocol):
    """One WebSocket: the protocol of its transport and the ASGI receive
    and send of its app task."""

    pipeline = ()  # for HttpServer.stop(): never "in flight" as a request is
    flow_kind = "WebSocket"

    def __init__(self, conn: Any, http_scope: dict) -> None:
        self.server = conn.server
        self.loop = conn.loop
        self.cfg = conn.cfg
        self.transport = conn.transport
        self.client = conn.client
        headers = http_scope["headers"]
        self.key = _header(headers, b"sec-websocket-key") or b""
        scope = dict(http_scope)
        scope.pop("method", None)
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if http_scope.get("scheme") == "https" else "ws"
        scope["subprotocols"] = [p.decode("latin-1") for p in
                                 (t.strip() for t in
                                  (_header(headers, b"sec-websocket-protocol") or b"").split(b","))
                                 if p]
        self.scope = scope
        self.state = _CONNECTING
        self.session: Optional[Session] = None
        self.connect_delivered = False
        self.inbox: deque[dict] = deque()
        self.inbox_bytes = 0
        self.waiter: Optional[asyncio.Future] = None
        self.drain_waiters: list[asyncio.Future] = []
        self.read_paused = True  # until the app accepts
        self.write_paused = False
        self.lost = False
        self.close_code: Optional[int] = None  # the disconnect's code, once known
        self.close_reason = ""
        self.close_timer: Optional[asyncio.TimerHandle] = None
        self.task: Optional[asyncio.Task] = None
        self.handshake_timer: Optional[asyncio.TimerHandle] = None
        self.timed_out = False
        # The idle check: when the peer was last heard, when the
        # unanswered ping went (None: none), the one timer.
        self.ping_interval = PING_INTERVAL
        self.ping_timeout = PING_TIMEOUT or PING_INTERVAL
        self.last_rx = 0.0
        self.ping_sent_at: Optional[float] = None
        self.ping_timer: Optional[asyncio.TimerHandle] = None
        self.transport.pause_reading()

    # -- asyncio.Protocol ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or self.lost:
            return
        self.last_rx = self.loop.time()
        for ev in session.feed(data):
            kind = ev[0]
            if kind == TEXT:
                self._queue({"type": "websocket.receive", "text": ev[1]}, len(ev[1]))
            elif kind == BINARY:
                self._queue({"type": "websocket.receive", "bytes": ev[1]}, len(ev[1]))
            elif kind == CLOSE:
                if self.close_code is None:
                    self.close_code, self.close_reason = ev[1], ev[2]
        out = session.output()  # pongs, the close reply, a protocol error's close
        if out:
            self.transport.write(out)
        if session.close_sent and self.close_code is None:
            # wslay failed the connection (1002, 1007, 1009, ...): that code;
            # a frame-level violation it closes without one is a 1002.
            code = session.code_sent
            self.close_code = 1002 if code == 1005 else code
        if session.close_sent and (session.close_received or not session.reading):
            # The closing handshake is done (or the connection failed):
            # the server closes TCP first (RFC 6455 7.1.1).
            self._finish()
        self._wake()
        if not self.read_paused and (self.inbox_bytes > INBOX_HIGH_BYTES
                                     or len(self.inbox) > INBOX_HIGH_COUNT
                                     or self.write_paused):
            # An app that does not receive, or a client that does not read
            # what it asks for (pongs): stop reading until that changes.
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = True
        self.state = _CLOSED
        if self.close_code is None:
            self.close_code = 1006  # gone without a close frame
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        self.server.connections.discard(self)
        self._wake()
        self.resolve_drains()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        if self.read_paused and self.state == _OPEN and not self.lost and not self.write_paused \
                and self.inbox_bytes <= INBOX_HIGH_BYTES // 2 \
                and len(self.inbox) <= INBOX_HIGH_COUNT // 2:
            self.read_paused = False
            self.transport.resume_reading()

    # -- for HttpServer.stop() ------------------------------------------------

    def _close(self) -> None:
        """The server stops: close 1001 (going away), or 503 before accept."""
        if self.lost:
            return
        if self.state == _CONNECTING:
            from ._http import _error_response
            self.state = _CLOSED
            self.transport.write(_error_response(503, "the server is stopping"))
            self.transport.close()
        elif self.session is not None and not self.session.close_sent:
            self._send_close(1001, "server shutting down")

    # -- ASGI ---------------------------------------------------------------

    async def receive(self) -> dict:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self.inbox:
                message = self.inbox.popleft()
                self.inbox_bytes -= len(message.get("text") or message.get("bytes") or b"")
                self._maybe_resume_reading()
                return message
            if self.close_code is not None:
                return {"type": "websocket.disconnect", "code": self.close_code,
                        "reason": self.close_reason}
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if self.state == _CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
                return
            if kind == "websocket.close":
                self._deny()
                return
            raise RuntimeError(f"{kind!r} before websocket.accept")
        if self.lost or self.session is None or self.session.close_sent:
            raise ClientDisconnected("the WebSocket is closed")
        if kind == "websocket.send":
            text, data = message.get("text"), message.get("bytes")
            if (text is None) == (data is None):
                raise ValueError("websocket.send needs exactly one of 'text' and 'bytes'")
            out = self.session.send_text(text) if text is not None \
                else self.session.send_bytes(data)
            self.transport.write(out)
            if self.write_paused:
                await self.drained()
        elif kind == "websocket.close":
            code = message.get("code", 1000)
            reason = message.get("reason") or ""
            self._send_close(code, reason)
        elif kind == "websocket.accept":
            raise RuntimeError("websocket.accept sent twice")
        else:
            raise ValueError(f"unexpected ASGI message type {kind!r} for a websocket scope")

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            if self.timed_out:
                log.warning("ASGI app did not accept or refuse the WebSocket %s within %ss: "
                            "cancelled, 504", self.scope["path"], self.cfg["request_timeout"])
                self._end_after_app(1001, 504)
                return
            self._end_after_app(1001)
            raise
        except BaseException:
            log.exception("ASGI app failed on WebSocket %s", self.scope["path"])
            self._end_after_app(1011, 500)
            return
        self._end_after_app(1000, 403)

    # -- internals --------------------------------------------------------------

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if self.state == _CONNECTING and not self.lost and self.task is not None:
            self.timed_out = True
            self.task.cancel()

    def _accept(self, message: dict) -> None:
        lines = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                 b"connection: Upgrade\r\nsec-websocket-accept: ", _accept_value(self.key), b"\r\n"]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            value = subprotocol.encode("latin-1")
            _check_value(value)
            lines += [b"sec-websocket-protocol: ", value, b"\r\n"]
        deflate = negotiate_deflate(_header(self.scope["headers"], b"sec-websocket-extensions")) \
            if self.cfg.get("websocket_compress", COMPRESS) else None
        if deflate is not None:
            lines += [b"sec-websocket-extensions: ", deflate[0], b"\r\n"]
        for name, value in message.get("headers") or ():
            name, value = bytes(name), bytes(value)
            _check_value(name)
            _check_value(value)
            lower = name.lower()
            if lower in (b"upgrade", b"connection", b"sec-websocket-accept",
                         b"sec-websocket-protocol", b"sec-websocket-extensions",
                         b"content-length", b"transfer-encoding"):
                continue  # the handshake's own headers are the server's
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        self.session = Session(int(self.cfg.get("websocket_max_message_size", 16 << 20)),
                               None if deflate is None else deflate[1:])
        self.state = _OPEN
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self.lost:
            return
        self.transport.write(b"".join(lines))
        self.read_paused = False
        self.transport.resume_reading()
        if self.ping_interval:
            self.last_rx = self.loop.time()
            self.ping_timer = self.loop.call_at(self.last_rx + self.ping_interval,
                                                self._idle_check)

    def _idle_check(self) -> None:
        """The one timer of the idle check: ping a peer silent for
        ping_interval; fail the connection when nothing came within
        ping_timeout of the ping (RFC 6455 5.5.2: the peer must pong)."""
        self.ping_timer = None
        session = self.session
        if self.lost or session is None or session.close_sent:
            return
        now = self.loop.time()
        if self.read_paused:
            # Our own backpressure stopped reading: the peer's pongs wait
            # unread, its silence says nothing.
            self.last_rx, self.ping_sent_at = now, None
        elif self.ping_sent_at is not None:
            if self.last_rx >= self.ping_sent_at:
                self.ping_sent_at = None  # heard from since the ping
            elif now - self.ping_sent_at >= self.ping_timeout:
                self._fail_idle()
                return
            else:
                self.ping_timer = self.loop.call_at(self.ping_sent_at + self.ping_timeout,
                                                    self._idle_check)
                return
        due = self.last_rx + self.ping_interval
        if now < due:
            self.ping_timer = self.loop.call_at(due, self._idle_check)
            return
        self.transport.write(session.ping(b""))
        self.ping_sent_at = now
        self.ping_timer = self.loop.call_at(now + self.ping_timeout, self._idle_check)

    def _fail_idle(self) -> None:
        """No answer to a ping: close 1011 to the peer (RFC 6455 7.4.1,
        as python3-websockets does), TCP closed without waiting for its
        close; the app's disconnect says 1006 (no close frame came)."""
        log.info("WebSocket %s: no answer to a ping within %ss: closed",
                 self.scope["path"], self.ping_timeout)
        if self.close_code is None:
            self.close_code = 1006
            self.close_reason = ""
        assert self.session is not None
        self.transport.write(self.session.close(1011, "keepalive ping timeout"))
        self._finish()
        if self.close_timer is None:
            # A peer that does not read either: what is buffered is dropped.
            self.close_timer = self.loop.call_later(1.0, self._close_timeout)
        self._wake()

    def _deny(self) -> None:
        from ._http import _error_response
        self.state = _CLOSED
        if self.close_code is None:
            self.close_code = 1006
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if not self.lost:
            self.transport.write(_error_response(403, "the application refused the WebSocket"))
            self.transport.close()

    def _send_close(self, code: int, reason: str) -> None:
        assert self.session is not None
        out = self.session.close(code, reason)
        if self.lost:
            return
        self.transport.write(out)
        if self.session.close_received:
            self._finish()
        elif self.close_timer is None:
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._close_timeout)

    def _close_timeout(self) -> None:
        self.close_timer = None
        if not self.lost:
            self.transport.abort()

    def _finish(self) -> None:
        self.state = _CLOSED
        if not self.lost:
            self.transport.close()  # after what is buffered is written

    def _end_after_app(self, code: int, status: int = 403) -> None:
        """The app's task ended: a handshake it left open is refused, an
        open WebSocket it did not close is closed with `code`."""
        if self.lost:
            return
        if self.state == _CONNECTING:
            if status == 403:
                self._deny()
            else:
                from ._http import _error_response
                self.state = _CLOSED
                self.transport.write(_error_response(
                    status, "the application did not respond in time" if status == 504
                    else "the application failed"))
                self.transport.close()
        elif self.session is not None and not self.session.close_sent:
            self._send_close(code, "")

    def _queue(self, message: dict, size: int) -> None:
        self.inbox.append(message)
        self.inbox_bytes += size

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)



def _check_value(value: bytes) -> None:
    if b"\r" in value or b"\n" in value or b"\0" in value:
        raise ValueError(f"bad header text {value!r}: CR, LF and NUL are not allowed")
