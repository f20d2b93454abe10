"""WebSocket (RFC 6455) through ASGI's websocket scope on the HTTP server
of HTTP pools (erlang._websocket on _pyport_ws/libwslay, docs/http.md),
with Debian's python3-websockets as the client and raw sockets for the
frames a well-behaved client never sends."""
import asyncio
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
import websockets

from test_http import free_port, serve, wait_for  # noqa: F401  (the fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
APP = "http_ws_apps:app"


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def events(server):
    return json.loads(server.get("/events")[2])


def url(server, path):
    return f"ws://127.0.0.1:{server.port}{path}"


# -- raw frames (what websockets would refuse to send) ---------------------------


def handshake(server, path="/echo", extra=b"", key=b"dGhlIHNhbXBsZSBub25jZQ=="):
    s = server.sock()
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
              b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    return s, head, rest


def frame(opcode, payload, fin=True, mask=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def parse(buf):
    """The whole frames at the start of buf as (opcode, payload), and the rest."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, "server frames are never masked"
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < off + n:
            break
        out.append((b0 & 0x0F, buf[off:off + n]))
        buf = buf[off + n:]
    return out, buf


def read_frames_until(s, rest, done):
    s.settimeout(10)
    out, buf = parse(rest)
    while not done(out):
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            chunk = b""
        if not chunk:
            return out
        more, buf = parse(buf + chunk)
        out += more
    return out


def read_frames(s, rest=b""):
    """The server's frames until it closes the connection."""
    return read_frames_until(s, rest, lambda fs: False)


def close_code(frames):
    closes = [p for op, p in frames if op == 8]
    assert closes, frames
    return struct.unpack("!H", closes[0][:2])[0], closes[0][2:]


# -- the handshake ---------------------------------------------------------------------


def test_echo_text_and_bytes(serve):
    server = serve(APP)

    async def go():
        async with websockets.connect(url(server, "/echo")) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
            big = os.urandom(200_000)
            await ws.send(big)
            assert await ws.recv() == big
    run(go())


def test_accept_key_and_scope(serve):
    server = serve(APP)
    s, head, rest = handshake(server, "/scope?x=1", extra=b"X-A: b\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    hd = dict(l.split(b": ", 1) for l in lines[1:])
    # RFC 6455 1.3's own example.
    assert hd[b"sec-websocket-accept"] == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert hd[b"upgrade"] == b"websocket"
    op, payload = read_frames_one(s, rest)
    scope = json.loads(payload)
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert scope["path"] == "/scope" and scope["raw_path"] == "/scope"
    assert scope["query_string"] == "x=1" and scope["http_version"] == "1.1"
    assert scope["subprotocols"] == [] and "method" not in scope
    assert scope["asgi"]["version"] == "3.0"
    assert ["x-a", "b"] in scope["headers"]
    s.close()


def read_frames_one(s, rest):
    return read_frames_until(s, rest, lambda fs: fs)[0]


def test_subprotocol_and_extra_headers(serve):
    server = serve(APP)

    async def go():
        async with websockets.connect(url(server, "/subprotocol"),
                                      subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v2"
            assert ws.response_headers["x-extra"] == "yes"
            assert ws.response_headers["set-cookie"] == "a=1"
            assert json.loads(await ws.recv()) == ["chat.v1", "chat.v2"]
    run(go())


@pytest.mark.parametrize("path,status", [("/deny", 403), ("/return", 403), ("/fail", 500)])
def test_close_before_accept_is_403(serve, path, status):
    server = serve(APP)

    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as e:
            async with websockets.connect(url(server, path)):
                pass
        assert e.value.status_code == status
    run(go())
    # The worker serves on.
    assert server.get("/")[0] == 200


def test_handshake_not_answered_in_time_is_504(serve):
    server = serve(APP, request_timeout=0.5)

    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as e:
            async with websockets.connect(url(server, "/hang")):
                pass
        assert e.value.status_code == 504
    run(go())


def test_pings_to_a_client_that_does_not_read_pause_reading(serve):
    # Each ping asks for a pong; a client that reads none cannot make the
    # server buffer pongs without bound.
    server = serve(APP)
    s, _, _ = handshake(server)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(0.3)
    ping = frame(9, b"p" * 125)
    sent = 0
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            s.sendall(ping * 64)
            sent += 64
    except socket.timeout:
        pass
    # 125 B pings: a few MB of socket buffers at most, then reading stopped.
    assert sent < 200_000, sent
    rss = int(open(f"/proc/{server.worker.pid}/status").read().split("VmRSS:")[1].split()[0])
    assert rss < 200_000, rss  # KiB
    s.close()


@pytest.mark.parametrize("headers,status", [
    (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", 400),
    (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Key: short\r\n", 400),
    # Without Connection: Upgrade it is no upgrade: a plain request.
    (b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n", 200),
    (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n", 101),
    (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", 426),
])
def test_bad_handshake_is_refused(serve, headers, status):
    server = serve(APP)
    with server.sock() as s:
        s.sendall(b"GET /push?n=0 HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    assert out.startswith(b"HTTP/1.1 %d " % status), out
    if status == 426:
        assert b"sec-websocket-version: 13" in out


# -- messages and closing ---------------------------------------------------------------


def test_close_codes_both_ways(serve):
    server = serve(APP)

    async def go():
        # The app closes: the client sees its code and reason.
        async with websockets.connect(url(server, "/echo")) as ws:
            await ws.send("close-me")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (4001, "bye")
        # The client closes: the app gets websocket.disconnect with its code.
        async with websockets.connect(url(server, "/echo?tag=client")) as ws:
            await ws.send("x")
            await ws.recv()
            await ws.close(4002, "client-bye")
    run(go())
    assert wait_for(lambda: ["disconnect", "client", 4002] in events(server))
    # After its own close the app's receive() gave the disconnect (the peer echoed 4001).
    assert ["after-close", "websocket.disconnect", 4001] in events(server)


def test_ping_is_answered_with_pong(serve):
    server = serve(APP)

    async def go():
        async with websockets.connect(url(server, "/echo")) as ws:
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 5)
    run(go())


def test_fragmented_message_is_reassembled(serve):
    server = serve(APP)

    async def go():
        async with websockets.connect(url(server, "/echo")) as ws:
            await ws.send(["frag", "ment", "ed ✓"])
            assert await ws.recv() == "fragmented ✓"
            await ws.send([b"a" * 1000, b"b" * 1000])
            assert await ws.recv() == b"a" * 1000 + b"b" * 1000
    run(go())
    # Raw: fragments with a ping between them (control frames may interleave).
    s, _, rest = handshake(server)
    s.sendall(frame(1, b"one ", fin=False) + frame(9, b"p") + frame(0, b"two", fin=True))
    frames = read_frames_until(s, rest, lambda fs: any(op == 1 for op, _ in fs))
    assert frames == [(10, b"p"), (1, b"one two")]
    s.sendall(frame(8, struct.pack("!H", 1000)))
    assert close_code(read_frames(s))[0] == 1000
    s.close()


def test_oversized_message_is_closed_1009(serve):
    server = serve(APP, websocket_max_message_size=1024)

    async def go():
        async with websockets.connect(url(server, "/echo?tag=big")) as ws:
            await ws.send("a" * 1024)
            assert await ws.recv() == "a" * 1024
            await ws.send(["b" * 600, "b" * 600])  # 1200 in two fragments
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1009
    run(go())
    assert wait_for(lambda: ["disconnect", "big", 1009] in events(server))


def test_unmasked_client_frame_is_closed_1002(serve):
    server = serve(APP)
    s, _, rest = handshake(server, "/echo?tag=unmasked")
    s.sendall(frame(1, b"hello", mask=False))
    assert close_code(read_frames(s, rest))[0] == 1002
    s.close()
    assert wait_for(lambda: ["disconnect", "unmasked", 1002] in events(server))


def test_invalid_utf8_text_is_closed_1007(serve):
    server = serve(APP)
    s, _, rest = handshake(server, "/echo?tag=utf8")
    s.sendall(frame(1, b"ok"))
    assert read_frames_until(s, rest, lambda fs: fs) == [(1, b"ok")]
    s.sendall(frame(1, b"bad \xff\xfe"))
    assert close_code(read_frames(s))[0] == 1007
    s.close()
    assert wait_for(lambda: ["disconnect", "utf8", 1007] in events(server))


def test_reserved_bits_without_an_extension_are_1002(serve):
    server = serve(APP)
    s, _, rest = handshake(server)
    f = bytearray(frame(1, b"x"))
    f[0] |= 0x40  # RSV1: permessage-deflate, which was not negotiated
    s.sendall(bytes(f))
    assert close_code(read_frames(s, rest))[0] == 1002
    s.close()


def test_server_push_without_client_traffic(serve):
    server = serve(APP)

    async def go():
        async with websockets.connect(url(server, "/push?n=5")) as ws:
            got = [await ws.recv() for _ in range(5)]
            assert got == [f"tick {i}" for i in range(5)]
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            assert ws.close_code == 1000
    run(go())


def test_client_gone_is_websocket_disconnect(serve):
    server = serve(APP)
    s, _, _ = handshake(server, "/echo?tag=gone")
    s.close()  # no close frame
    assert wait_for(lambda: ["disconnect", "gone", 1006] in events(server))


def test_stopping_the_server_closes_websockets_1001(serve):
    server = serve(APP)
    s, _, rest = handshake(server, "/echo?tag=stop")
    s.sendall(frame(1, b"hi"))
    assert read_frames_until(s, rest, lambda fs: fs) == [(1, b"hi")]
    assert server.worker.call("erlang._http", "stop", [1.0]) is True
    code, reason = close_code(read_frames(s))
    assert code == 1001 and reason == b"server shutting down"
    s.close()


# -- backpressure ---------------------------------------------------------------------------


def test_slow_client_pauses_the_apps_send(serve):
    server = serve(APP, write_timeout=2.0)
    s, _, _ = handshake(server, "/flood")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # The client reads nothing: send() must stop well short of 2000 x 64 KiB.
    time.sleep(1.0)
    flood = [e for e in events(server) if e[0] == "flood"]
    sent = flood[-1][1] if flood else 0
    assert sent < 200, sent  # socket buffers + 256 KiB, not 125 MB
    # write_timeout (2 s here): the client is cut, send() raised.
    assert wait_for(lambda: any(e[0] == "flood-cut" for e in events(server)), 10)
    s.close()


def test_an_app_that_does_not_receive_pauses_reading(serve):
    server = serve(APP)
    s, _, rest = handshake(server, "/idle?wait=1.5")
    s.settimeout(0.2)
    payload = b"y" * 65536
    sent = 0
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        try:
            s.sendall(frame(2, payload))
            sent += 1
        except socket.timeout:
            break
    assert wait_for(lambda: any(e[0] == "idle" for e in events(server)))
    idle = next(e for e in events(server) if e[0] == "idle")
    # Reading paused with about 1 MiB waiting, not everything sent.
    assert idle[2] is True and idle[1] <= 2 * 1024 * 1024, idle
    # Once the app receives, the rest comes through, none lost.
    s.settimeout(20)
    s.sendall(frame(2, b"end"))
    frames = read_frames_until(s, rest, lambda fs: any(op == 1 for op, _ in fs))
    count = int(next(p for op, p in frames if op == 1))
    assert count >= sent  # every whole frame sent, plus "end"
    s.close()


def test_wsgi_app_does_not_take_websockets(serve):
    server = serve("http_wsgi_apps:app")
    with server.sock() as s:
        s.sendall(b"GET /environ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 200"), out


# -- pub/sub across the workers of one HTTP pool (a real node) -------------------------------


@pytest.fixture
def node():
    """An Erlang node serving ws_chat_app on a 2-worker HTTP pool."""
    yield from start_node("ws_chat_app:app", os.path.join(HERE, "worker_side"),
                          "websocket_max_message_size => 65536",
                          "{error, {invalid_http_option, bad, websocket_max_message_size, -1}} = "
                          "pyport:start_http(bad, #{app => \"m:a\", "
                          "websocket_max_message_size => -1}), ")


@pytest.fixture
def example_node():
    """The same for examples/ws_chat (its sys.config's options)."""
    with open(os.path.join(REPO, "examples", "ws_chat", "sys.config")) as f:
        assert "workers => 2" in f.read()
    yield from start_node("chat:app", os.path.join(REPO, "examples", "ws_chat"), "workers => 2",
                          "{ok, [_]} = file:consult(\"" + os.path.join(REPO, "examples", "ws_chat",
                                                                       "sys.config") + "\"), ")


def start_node(app, path, extra, checks):
    erl = shutil.which("erl")
    ebin = os.path.join(REPO, "erl", "_build", "default", "lib", "pyport", "ebin")
    if erl is None or not os.path.isdir(ebin):
        pytest.skip("needs erl and the built OTP application (make build)")
    port = free_port()
    code = (
        "{ok, _} = application:ensure_all_started(pyport), " + checks +
        f"{{ok, _}} = pyport:start_http(chat, #{{app => \"{app}\", "
        f"bind => \"127.0.0.1:{port}\", workers => 2, python_path => [\"{path}\"], "
        f"{extra}}}), "
        "io:format(\"READY~n\"), io:get_line(\"\"), ok = pyport:stop_http(chat), init:stop().")
    proc = subprocess.Popen([erl, "-noshell", "-pa", ebin, "-eval", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        line = b""
        while b"READY" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
        assert b"READY" in line, proc.stdout.read() if proc.poll() is not None else line
        # The node's log, shown by pytest when a test fails.
        drain = threading.Thread(target=lambda: [print(l.decode(errors="replace"), end="")
                                                 for l in proc.stdout], daemon=True)
        drain.start()
        yield port
    finally:
        try:
            proc.stdin.close()
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_workers_chat_through_pubsub(node):
    port = node

    async def connect_to_other_worker(first_pid):
        # The kernel spreads connections over the workers' sockets: open
        # until one lands on the other worker.
        for _ in range(50):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/chat/lobby")
            pid = json.loads(await ws.recv())["pid"]
            if pid != first_pid:
                return ws, pid
            await ws.close()
        raise AssertionError("every connection went to one worker")

    async def go():
        a = await websockets.connect(f"ws://127.0.0.1:{port}/chat/lobby")
        pid_a = json.loads(await a.recv())["pid"]
        b, pid_b = await connect_to_other_worker(pid_a)
        assert pid_a != pid_b
        await a.send("hello from a")
        # Both get it through pg: b on the other worker, a (its own worker) too.
        for ws in (b, a):
            got = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert got == {"from": pid_a, "text": "hello from a"}
        await b.send("and from b")
        for name, ws in (("a", a), ("b", b)):
            try:
                got = json.loads(await asyncio.wait_for(ws.recv(), 10))
            except asyncio.TimeoutError:
                raise AssertionError(f"{name} got nothing") from None
            assert got == {"from": pid_b, "text": "and from b"}
        await a.close()
        await b.close()

    run(go(), 40)


def test_the_chat_example(example_node):
    port = example_node
    page = _http_get(port, "/")
    assert b"new WebSocket" in page

    async def go():
        a = await websockets.connect(f"ws://127.0.0.1:{port}/ws/room1")
        wa = json.loads(await a.recv())["worker"]
        for _ in range(50):
            b = await websockets.connect(f"ws://127.0.0.1:{port}/ws/room1")
            wb = json.loads(await b.recv())["worker"]
            if wb != wa:
                break
            await b.close()
        assert wa != wb
        await b.send("hi from b")
        for ws in (a, b):
            got = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert got == {"from": f"worker {wb}", "text": "hi from b"}
        await a.close()
        await b.close()

    run(go(), 40)


def test_max_message_size_from_erlang(node):
    port = node

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{port}/chat/big") as ws:
            await ws.recv()  # its pid
            await ws.send("x" * 70_000)
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1009

    run(go(), 40)


def test_seed_example_runs_as_written(node):
    port = node

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{port}/seed/u7") as ws:
            # The seed checks the topic after each client message.
            await ws.send("first")
            await asyncio.sleep(0.2)
            r = await asyncio.get_running_loop().run_in_executor(
                None, lambda: _http_get(port, "/publish/user:u7"))
            assert int(r) >= 1
            # The message reaches the worker through Erlang, the client's
            # frames come straight: keep talking until the loop finds it.
            for _ in range(50):
                await ws.send("again")
                try:
                    got = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                    break
                except asyncio.TimeoutError:
                    pass
            else:
                raise AssertionError("the published message never came")
            assert got == ["user:u7", {"n": 1}]

    run(go(), 40)


def _http_get(port, path):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        return c.getresponse().read()
    finally:
        c.close()


# -- the C++ session alone -----------------------------------------------------------------


SESSION_CHECK = r'''
import os, random, struct
from _pyport_ws import Session

def frame(opcode, payload, fin=True):
    key = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack("!H", n)
                                               if n < 65536 else bytes([0x80 | 127]) + struct.pack("!Q", n))
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))

stream = (frame(1, "héllo".encode()) + frame(2, bytes(range(256)) * 300) + frame(9, b"ping")
          + frame(1, b"fr", fin=False) + frame(0, b"ag", fin=False) + frame(0, b"ment")
          + frame(8, struct.pack("!H", 4000) + b"done"))

def events(pieces):
    s = Session(1 << 20)
    out, wire = [], b""
    for p in pieces:
        out += s.feed(p)
        wire += s.output()
    return out, wire, s.close_received, s.close_sent

whole = events([stream])
rng = random.Random(7)
cuts = sorted(rng.sample(range(1, len(stream)), 200))
split = events([stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])])
bytewise = events([stream[i:i + 1] for i in range(len(stream))])
# Garbage after a handshake never crashes: a close with an error code, or nothing yet.
for seed in range(200):
    r = random.Random(seed)
    s = Session(4096)
    s.feed(bytes(r.randrange(256) for _ in range(r.randrange(1, 2000))))
    s.output()
# The events and the close are the same; a pong for a ping read in the same
# feed as the close is dropped by wslay (the connection is closing).
same = whole[0] == split[0] == bytewise[0] and whole[2:] == split[2:] == bytewise[2:]
result = (same, whole[0], bytewise[1], whole[1], whole[2], whole[3])
'''


def test_session_gives_the_same_events_however_the_bytes_are_split(worker):
    worker.exec(SESSION_CHECK)
    same, evs, wire, whole_wire, got_close, sent_close = worker.eval("result")
    assert same
    assert evs[0] == (0, "héllo") and evs[1] == (1, bytes(range(256)) * 300)
    assert evs[2] == (0, "fragment") and evs[3] == (2, 4000, "done")
    # Fed a byte at a time: the pong, then the close echoed (4000) by wslay.
    close = b"\x88\x06" + struct.pack("!H", 4000) + b"done"
    assert wire == b"\x8a\x04ping" + close
    assert whole_wire.endswith(close)
    assert got_close and sent_close


@pytest.mark.parametrize("frames,code", [
    ([frame(8, struct.pack("!H", 999))], 1002),              # not a close code
    ([frame(8, struct.pack("!H", 1005))], 1002),             # never sent on the wire
    # libwslay fails these with a close frame without a code (the peer
    # reads 1005), then the connection closes.
    ([frame(8, b"\x03")], None),                             # a 1-byte close payload
    ([frame(9, b"p" * 126)], None),                          # a control frame over 125 B
    ([frame(9, b"p", fin=False)], None),                     # a fragmented control frame
    ([frame(0, b"orphan")], 1002),                           # continuation of nothing
    ([frame(1, b"a", fin=False), frame(1, b"b")], 1002),     # a new message mid-message
    ([frame(3, b"x")], 1002),                                # a reserved opcode
    ([frame(8, struct.pack("!H", 1000) + b"\xff")], 1007),   # a close reason not UTF-8
])
def test_protocol_violations_fail_the_connection(serve, frames, code):
    server = serve(APP)
    s, _, rest = handshake(server)
    s.sendall(b"".join(frames))
    frames = read_frames(s, rest)  # until the server closes TCP
    if code is None:
        assert frames == [(8, b"")]
    else:
        assert close_code(frames)[0] == code
    s.close()


# -- frameworks (Debian's Starlette 0.26, FastAPI 0.92) ---------------------------------------


def test_starlette_websocket_route(serve):
    pytest.importorskip("starlette")
    server = serve("http_ws_apps:starlette_app", interface="asgi", lifespan="off")

    async def go():
        async with websockets.connect(url(server, "/json"), subprotocols=["json.v1"]) as ws:
            assert ws.subprotocol == "json.v1"
            await ws.send(json.dumps({"a": [1, 2]}))
            assert json.loads(await ws.recv()) == {"echo": {"a": [1, 2]}, "path": "/json"}
            await ws.close(4100)
        with pytest.raises(websockets.InvalidStatusCode) as e:
            async with websockets.connect(url(server, "/refuse")):
                pass
        assert e.value.status_code == 403
    run(go())
    assert server.worker.eval("__import__('http_ws_apps').EVENTS") == [["starlette-disconnect", 4100]]


def test_fastapi_websocket_endpoint(serve):
    pytest.importorskip("fastapi")
    server = serve("http_ws_apps:fastapi_app", interface="asgi", lifespan="off")

    async def go():
        async with websockets.connect(url(server, "/items/42?q=x")) as ws:
            assert await ws.recv() == "item 42 q=x"
            await ws.send("abc")
            assert await ws.recv() == b"cba"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4321
    run(go())


# -- mounts and graceful recycles ---------------------------------------------------------------


def test_websocket_follows_the_mount_of_its_path(serve):
    server = serve("", mounts=[["/ws", APP, ""], ["/legacy", "http_wsgi_apps:app", "wsgi"]],
                   lifespan="off")

    async def go():
        async with websockets.connect(url(server, "/ws/echo")) as ws:
            await ws.send("mounted")
            assert await ws.recv() == "mounted"
        async with websockets.connect(url(server, "/ws/scope")) as ws:
            scope = json.loads(await ws.recv())
            assert (scope["path"], scope["root_path"]) == ("/ws/scope", "/ws")
    run(go())
    # A WSGI mount, and no mount: plain HTTP.
    for path, status in ((b"/legacy/environ", b"200"), (b"/nothing", b"404")):
        with server.sock() as s:
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            out = s.recv(65536)
        assert out.startswith(b"HTTP/1.1 " + status), out


def test_graceful_recycle_tells_websockets_to_go(serve):
    server = serve(APP)
    s, _, rest = handshake(server, "/echo?tag=park")
    s.sendall(frame(1, b"hi"))
    assert read_frames_until(s, rest, lambda fs: fs) == [(1, b"hi")]
    keep = server.sock()  # an HTTP keep-alive connection, open before the recycle
    keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep.recv(65536).startswith(b"HTTP/1.1 200")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", server.worker.call("erlang._http", "park", [10.0])))
    t.start()
    frames = read_frames_until(s, b"", lambda fs: any(op == 8 for op, _ in fs))
    assert close_code(frames) == (1001, b"server shutting down")
    # An upgrade on the open keep-alive connection now: 503, connect again.
    keep.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert keep.recv(65536).startswith(b"HTTP/1.1 503")
    keep.close()
    s.sendall(frame(8, struct.pack("!H", 1001)))  # the client's reply ends it
    started = time.monotonic()
    t.join(15)
    assert result.get("r") is True
    assert time.monotonic() - started < 8  # not the 10 s grace: the socket closed
    s.close()
