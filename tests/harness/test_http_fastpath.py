"""The one-write response path of erlang._http_request (a whole body in
one http.response.body: head and body in one write) and where it hands
over to the general path: the app's Content-Length right, short or long,
HEAD, 204/304, a body that is not bytes, pipelined requests."""
from test_http import serve  # noqa: F401  (the fixture)

APP = "http_fastpath_apps:app"


def _read_head(f):
    status = int(f.readline().split(b" ", 2)[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            return status, headers
        k, v = line.split(b":", 1)
        headers[k.strip().lower()] = v.strip()


def _exchange(s, requests):
    """Sends `requests` pipelined on one connection; reads until the close
    (everything the server wrote)."""
    with s.sock() as sock:
        sock.sendall(b"".join(requests))
        sock.shutdown(1)  # our half: the server answers what it read, then closes
        out = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                return out
            out += piece


def _get(target, method=b"GET"):
    return b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (method, target)


def test_lengths_head_and_keepalive(serve):
    s = serve(APP)
    with s.sock() as sock:
        f = sock.makefile("rb")
        # No Content-Length from the app: the server's, body in the same write.
        sock.sendall(_get(b"/?body=abc"))
        status, h = _read_head(f)
        assert (status, h[b"content-length"], f.read(3)) == (200, b"3", b"abc")
        # The app's own Content-Length, right.
        sock.sendall(_get(b"/?body=abcd&length=4"))
        status, h = _read_head(f)
        assert (status, h[b"content-length"], f.read(4)) == (200, b"4", b"abcd")
        assert b"connection" not in h
        # HEAD with the app's length: no body, and the connection stays.
        sock.sendall(_get(b"/?body=abcd&length=4", b"HEAD"))
        status, h = _read_head(f)
        assert (status, h[b"content-length"]) == (200, b"4")
        # HEAD without: the length the body would have had.
        sock.sendall(_get(b"/?body=abcdef", b"HEAD"))
        status, h = _read_head(f)
        assert (status, h[b"content-length"]) == (200, b"6")
        # 204: no body, no length; still keep-alive.
        sock.sendall(_get(b"/?status=204&body="))
        status, h = _read_head(f)
        assert status == 204 and b"content-length" not in h
        # Still the same connection: one more.
        sock.sendall(_get(b"/?body=end"))
        status, h = _read_head(f)
        assert (status, f.read(3)) == (200, b"end")


def test_content_length_mismatch(serve):
    s = serve(APP)
    # Body shorter than its Content-Length: sent, then the connection ends
    # (the client sees the short body, not a next response).
    out = _exchange(s, [_get(b"/?body=ab&length=5"), _get(b"/?body=next")])
    assert out.endswith(b"\r\n\r\nab") and b"next" not in out
    # Longer: the app's error, before anything was written: a 500.
    out = _exchange(s, [_get(b"/?body=abcdef&length=2")])
    assert out.startswith(b"HTTP/1.1 500 ")
    # A str body: the app's bug, a 500, the worker serves on.
    out = _exchange(s, [_get(b"/?str=x")])
    assert out.startswith(b"HTTP/1.1 500 ")
    assert s.get("/?body=ok")[2] == b"ok"


def test_pipelined_mix_in_order(serve):
    s = serve(APP)
    reqs = []
    want = []
    for i in range(30):
        if i % 3 == 0:
            reqs.append(_get(b"/?body=n%d" % i))
            want.append(b"n%d" % i)
        elif i % 3 == 1:
            b = b"L%d" % i
            reqs.append(_get(b"/?body=%s&length=%d" % (b, len(b))))
            want.append(b)
        else:
            reqs.append(_get(b"/?body=h%d" % i, b"HEAD"))
            want.append(b"")
    out = _exchange(s, reqs)
    import io
    f = io.BytesIO(out)
    for i, w in enumerate(want):
        status, h = _read_head(f)
        assert status == 200, i
        if w:
            assert f.read(int(h[b"content-length"])) == w, i
    assert f.read() == b""
