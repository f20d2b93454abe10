"""Server pings to idle WebSocket clients (docs/http.md
`websocket_ping_interval`, `websocket_ping_timeout`; Hornbeam's
`websocket_timeout`): a peer that answers stays open, a silent one is
failed with close 1011 and its app told 1006."""
import asyncio
import struct
import time

import pytest
import websockets

from test_http import free_port, Server, wait_for
from test_http_websocket import events, frame, handshake, parse, run, url

APP = "http_ws_apps:app"


@pytest.fixture
def serve_pings(spawn):
    def start(interval, timeout):
        w = spawn()
        port = free_port()
        w.exec("import erlang._websocket, erlang._http\n"
               f"erlang._websocket.configure({interval!r}, {timeout!r})\n"
               f"erlang._http.start({APP!r}, '127.0.0.1:{port}', {{}})")
        assert w.call("erlang._http", "wait_serving") is True
        return Server(w, port)
    return start


def frames_for(s, rest, seconds, first=False):
    """The server's frames for `seconds` (or until it closes; `first`: or
    until one came), whether it closed, and the unparsed rest."""
    out, buf = parse(rest)
    deadline = time.monotonic() + seconds
    while not (first and out):
        left = deadline - time.monotonic()
        if left <= 0:
            return out, False, buf
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return out, False, buf
        except ConnectionResetError:
            return out, True, buf
        if not chunk:
            return out, True, buf
        more, buf = parse(buf + chunk)
        out += more
    return out, False, buf


def test_silent_peer_is_pinged_then_closed_1011(serve_pings):
    s = serve_pings(0.3, 0.4)
    sock, head, rest = handshake(s, "/echo?tag=silent")
    assert head.startswith(b"HTTP/1.1 101")
    t0 = time.monotonic()
    frames, closed, _ = frames_for(sock, rest, 10)
    took = time.monotonic() - t0
    sock.close()
    assert closed, frames
    ops = [op for op, _ in frames]
    # One ping (empty payload), no answer, then close 1011 and the TCP close.
    assert ops == [9, 8], frames
    assert frames[0][1] == b""
    assert struct.unpack("!H", frames[1][1][:2])[0] == 1011
    assert frames[1][1][2:] == b"keepalive ping timeout"
    assert 0.6 <= took < 5, took  # interval + timeout, with room
    # The app heard no close frame: 1006 (RFC 6455 7.1.5).
    assert wait_for(lambda: ["disconnect", "silent", 1006] in events(s))


def test_peer_answering_pings_stays_open(serve_pings):
    s = serve_pings(0.2, 0.3)
    sock, head, rest = handshake(s, "/echo")
    assert head.startswith(b"HTTP/1.1 101")
    pings = 0
    buf = rest
    deadline = time.monotonic() + 2.0  # ten intervals
    while time.monotonic() < deadline:
        frames, closed, buf = frames_for(sock, buf, deadline - time.monotonic(), first=True)
        assert not closed, frames
        for op, payload in frames:
            assert op == 9, frames
            pings += 1
            sock.sendall(frame(10, payload))  # the pong
    assert pings >= 3, pings
    sock.sendall(frame(1, b"still here"))
    seen = []
    deadline = time.monotonic() + 5
    while (1, b"still here") not in seen and time.monotonic() < deadline:
        frames, closed, buf = frames_for(sock, buf, deadline - time.monotonic(), first=True)
        assert not closed, seen + frames
        seen += frames
    assert (1, b"still here") in seen, seen
    sock.close()


def test_websockets_client_live_and_stopped(serve_pings):
    """python3-websockets (pings answered by its own reader): an idle
    client stays open; one that stops reading, so stops answering, is
    closed with 1011."""
    s = serve_pings(0.2, 0.3)

    async def go():
        async with websockets.connect(url(s, "/echo?tag=live"), ping_interval=None) as live, \
                websockets.connect(url(s, "/echo?tag=deaf"), ping_interval=None) as deaf:
            deaf.transport.pause_reading()  # its pongs stop
            await asyncio.sleep(2.0)
            await live.send("hello")
            assert await live.recv() == "hello"
            deaf.transport.resume_reading()
            with pytest.raises(websockets.ConnectionClosed) as info:
                await deaf.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            assert live.open
    run(go())
    assert wait_for(lambda: ["disconnect", "deaf", 1006] in events(s))


def test_no_pings_when_off(serve_pings):
    s = serve_pings(None, None)
    sock, head, rest = handshake(s, "/echo")
    frames, closed, _ = frames_for(sock, rest, 1.5)
    assert (frames, closed) == ([], False)
    sock.sendall(frame(1, b"x"))
    frames, _, _ = frames_for(sock, b"", 5, first=True)
    assert (1, b"x") in frames
    sock.close()


def test_configure_checks_its_values(spawn):
    w = spawn()
    for bad in ("0, 1", "-1, 1", "'5', 1", "1, 0"):
        with pytest.raises(Exception, match="expected seconds > 0 or None"):
            w.exec(f"import erlang._websocket\nerlang._websocket.configure({bad})")
