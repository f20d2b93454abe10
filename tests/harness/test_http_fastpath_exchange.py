"""The C++ ASGI send()/receive() of a request (port_worker/
http_exchange.cpp): a finished awaitable for the common cases, the
Python path, with its errors, for the rest."""
import ast
import socket
import time

from test_http import serve  # noqa: F401  (the fixture)

APP = "http_fastpath_exchange_apps:app"


def _seen(s):
    return dict(ast.literal_eval(s.get("/seen")[2].decode()))


def test_bad_messages_raise_and_change_nothing(serve):
    s = serve(APP)
    status, _, body = s.get("/bad")
    assert status == 200
    assert body.decode().split("\n") == [
        "ValueError: bad status '200'",
        "ValueError: 1xx responses are the server's (use 100-continue)",
        "TypeError: response header names and values must be bytes",
        "ValueError: response header name empty, or with ':', CR or LF",
        "RuntimeError: http.response.body before http.response.start",
        "ValueError: unexpected ASGI message type 'http.response.nonsense' for an http scope",
        "TypeError: list indices must be integers or slices, not str",
    ]


def test_send_after_the_end(serve):
    s = serve(APP)
    status, _, body = s.get("/after-end")
    assert (status, body) == (200, b"done")
    seen = _seen(s)
    assert seen["after-end-errors"] == [
        "RuntimeError: http.response.start sent twice",
        "RuntimeError: http.response.body after the response ended",
    ]
    assert "after-end" not in seen


def test_finished_awaitable_is_a_coroutine_to_asyncio(serve):
    s = serve(APP)
    assert s.get("/awaitable")[2] == b"[True, True]"


def test_receive_whole_and_in_pieces(serve):
    s = serve(APP)
    assert s.get("/echo", "POST", b"abc")[2] == b"1:abc"
    assert s.get("/echo", "POST", b"")[2] == b"1:"
    # Chunked, in three writes: more than one message, all of the body.
    with s.sock() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n")
        time.sleep(0.2)
        sock.sendall(b"2\r\nde\r\n")
        time.sleep(0.2)
        sock.sendall(b"0\r\n\r\n")
        f = sock.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        while f.readline() != b"\r\n":
            pass
        rest = f.read1(100)
        count, body = rest.split(b":")
        assert body == b"abcde" and int(count) >= 2


def test_backpressure_still_pauses_send(serve):
    s = serve(APP)
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)
        # 64 MiB to send, a client reading nothing: send() waits after a
        # few MiB (the write buffer's 256 KiB and the sockets' buffers).
        sent = _seen(s)["stream"]
        assert 0 < sent < 32, sent
        total = 0
        while True:
            piece = sock.recv(1 << 20)
            total += len(piece)
            if b"0\r\n\r\n" in piece[-5:]:
                break
        assert total > 64 * (1 << 20)
        assert _seen(s)["stream"] == 64
    finally:
        sock.close()


def test_nothing_leaks(serve):
    s = serve(APP)

    def refs():
        return ast.literal_eval(s.get("/refs")[2].decode())

    for _ in range(20):
        s.get("/echo", "POST", b"warm")
    before = refs()
    c = s.conn()
    try:
        for i in range(400):  # receive()'s finished awaitables, send()'s, keep-alive
            c.request("POST", "/echo", body=b"x%d" % i)
            assert c.getresponse().read() == b"1:x%d" % i
    finally:
        c.close()
    after = refs()
    assert [a - b for a, b in zip(after[:3], before[:3])] == [0, 0, 0], (before, after)
    assert after[3] - before[3] < 200, (before, after)
