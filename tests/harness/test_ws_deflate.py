"""permessage-deflate (RFC 7692) on the WebSocket server (docs/http.md,
`websocket_compress`): negotiated with python3-websockets (which offers it
by default) and with raw frames, compressed both ways on the wire, the
context kept or not as agreed, inflated size bounded, bad data refused."""
import asyncio
import os
import struct
import zlib

import pytest
import websockets

from test_http import free_port, Server
from test_http_websocket import close_code, frame, parse, read_frames, read_frames_until, run, url

APP = "http_ws_apps:app"
TAIL = b"\x00\x00\xff\xff"


@pytest.fixture
def serve_ws(spawn):
    def start(compress=True, **opts):
        w = spawn()
        port = free_port()
        w.exec("import erlang._websocket, erlang._http\n"
               f"erlang._websocket.configure(None, None, {compress!r})\n"
               f"erlang._http.start({APP!r}, '127.0.0.1:{port}', {opts!r})")
        assert w.call("erlang._http", "wait_serving") is True
        return Server(w, port)
    return start


def upgrade(server, extensions):
    s = server.sock()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              + (b"Sec-WebSocket-Extensions: " + extensions + b"\r\n" if extensions else b"")
              + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    ext = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
           if line.lower().startswith(b"sec-websocket-extensions:")]
    return s, (ext[0] if ext else None), rest


def raw_frames(buf):
    """(rsv1, opcode, payload) of the whole frames in buf."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < off + n:
            break
        out.append((bool(b0 & 0x40), b0 & 0x0F, buf[off:off + n]))
        buf = buf[off + n:]
    return out, buf


def recv_frames(s, rest, count):
    s.settimeout(10)
    out, buf = raw_frames(rest)
    while len(out) < count:
        chunk = s.recv(65536)
        assert chunk, out
        more, buf = raw_frames(buf + chunk)
        out += more
    return out, buf


def compressed_frame(opcode, payload, co):
    data = co.compress(payload) + co.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    data = data[:-4]
    f = bytearray(frame(opcode, data))
    f[0] |= 0x40  # RSV1: compressed
    return bytes(f)


def test_websockets_client_negotiates_and_echoes(serve_ws):
    s = serve_ws()

    async def go():
        async with websockets.connect(url(s, "/echo")) as ws:
            ext = ws.response_headers.get("Sec-WebSocket-Extensions")
            assert ext is not None and ext.startswith("permessage-deflate"), ext
            assert [type(e).__name__ for e in ws.extensions] == ["PerMessageDeflate"]
            big = "pyport " * 30000 + "é"
            for m in ("short", big, big, b"\x00\x01" * 5000, "x" * 64, ""):
                await ws.send(m)
                assert await ws.recv() == m
    run(go())


def test_compressed_both_ways_with_context_takeover(serve_ws):
    s = serve_ws()
    sock, ext, rest = upgrade(s, b"permessage-deflate; client_max_window_bits")
    assert ext == b"permessage-deflate"
    co = zlib.compressobj(wbits=-15)
    do = zlib.decompressobj(wbits=-15)
    text = ("the same sentence, again and again; " * 200).encode()
    sizes = []
    for _ in range(2):
        sock.sendall(compressed_frame(1, text, co))
        (f,), rest = recv_frames(sock, rest, 1)
        rsv1, op, payload = f
        assert (rsv1, op) == (True, 1)
        assert do.decompress(payload + TAIL) == text
        sizes.append(len(payload))
    # Small on the wire, and the second message refers back to the first.
    assert sizes[0] < len(text) // 10 and sizes[1] < sizes[0], sizes
    # Short messages go uncompressed (RSV1 clear).
    sock.sendall(frame(1, b"tiny"))
    (f,), rest = recv_frames(sock, rest, 1)
    assert f == (False, 1, b"tiny")
    sock.close()


def test_server_no_context_takeover(serve_ws):
    s = serve_ws()
    sock, ext, rest = upgrade(s, b"permessage-deflate; server_no_context_takeover; "
                                 b"server_max_window_bits=10")
    assert ext == b"permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    text = ("no context kept between messages. " * 100).encode()
    payloads = []
    for _ in range(2):
        sock.sendall(frame(1, text))
        (f,), rest = recv_frames(sock, rest, 1)
        assert f[0] is True
        payloads.append(f[2])
        # A fresh stream each message, within a 1 KiB window.
        assert zlib.decompressobj(wbits=-10).decompress(f[2] + TAIL) == text
    assert payloads[0] == payloads[1]
    sock.close()


@pytest.mark.parametrize("offer, expected", [
    (b"permessage-deflate; server_max_window_bits=8", None),  # zlib cannot
    (b"permessage-deflate; bogus_param", None),
    (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    (b"permessage-deflate; server_max_window_bits=16", None),
    (b"x-other, permessage-deflate; bogus, permessage-deflate; client_no_context_takeover",
     b"permessage-deflate; client_no_context_takeover"),
    (b"permessage-deflate; client_max_window_bits=12", b"permessage-deflate"),
    (b"x-webkit-deflate-frame", None),
])
def test_offers(serve_ws, offer, expected):
    s = serve_ws()
    sock, ext, _ = upgrade(s, offer)
    assert ext == expected
    sock.close()


def test_off_by_default_and_rsv1_is_then_1002(serve_ws):
    s = serve_ws(compress=False)
    sock, ext, rest = upgrade(s, b"permessage-deflate")
    assert ext is None
    sock.sendall(compressed_frame(1, b"a" * 100, zlib.compressobj(wbits=-15)))
    assert close_code(read_frames(sock, rest))[0] == 1002
    sock.close()


def test_inflated_size_is_bounded_1009(serve_ws):
    s = serve_ws(websocket_max_message_size=1 << 20)
    sock, ext, rest = upgrade(s, b"permessage-deflate")
    assert ext == b"permessage-deflate"
    bomb = zlib.compressobj(wbits=-15)
    sock.sendall(compressed_frame(2, bytes(20 << 20), bomb))  # 20 MB of zeros: ~20 KB
    assert close_code(read_frames(sock, rest))[0] == 1009
    sock.close()


def test_bad_deflate_data_is_1002(serve_ws):
    s = serve_ws()
    sock, ext, rest = upgrade(s, b"permessage-deflate")
    f = bytearray(frame(1, b"\xff\xff\xff\xff not deflate"))
    f[0] |= 0x40
    sock.sendall(bytes(f))
    assert close_code(read_frames(sock, rest))[0] == 1002
    sock.close()


def test_rsv1_on_a_control_frame_is_1002(serve_ws):
    s = serve_ws()
    sock, ext, rest = upgrade(s, b"permessage-deflate")
    f = bytearray(frame(9, b"ping"))
    f[0] |= 0x40
    sock.sendall(bytes(f))
    assert close_code(read_frames(sock, rest))[0] == 1002
    sock.close()


def test_fragmented_compressed_message_and_utf8_after_inflating(serve_ws):
    s = serve_ws()
    sock, ext, rest = upgrade(s, b"permessage-deflate")
    co = zlib.compressobj(wbits=-15)
    text = ("fragmented and compressed " * 50).encode()
    data = co.compress(text) + co.flush(zlib.Z_SYNC_FLUSH)
    data = data[:-4]
    first = bytearray(frame(1, data[:10], fin=False))
    first[0] |= 0x40  # RSV1 on the first frame only (RFC 7692 6.1)
    sock.sendall(bytes(first) + frame(0, data[10:]))
    (f,), rest = recv_frames(sock, rest, 1)
    assert zlib.decompressobj(wbits=-15).decompress(f[2] + TAIL) == text
    # Text is checked as UTF-8 once inflated: 1007.
    sock.sendall(compressed_frame(1, b"\xff\xfe" * 100, co))
    assert close_code(read_frames(sock, rest))[0] == 1007
    sock.close()
