"""ASGI's http.response.zerocopysend extension (docs/http.md "ASGI"):
advertised in every http scope, a file (object or descriptor) sent with
sendfile(2) from offset/count, read and encrypted over TLS."""
import json
import os

import pytest

from test_http import Reader, serve  # noqa: F401  (the fixture)
from test_http_tls import cert, client_ctx  # noqa: F401  (the fixture)

APP = "http_zerocopy_apps:app"


@pytest.fixture
def data_file(tmp_path):
    data = os.urandom(300_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return str(path), data


def _sent(s):
    return tuple(int(x) for x in s.get("/sent")[2].split())


def _h(headers):
    return {k.lower(): v for k, v in headers}


def test_advertised_in_the_http_scope(serve):
    s = serve(APP)
    status, _, body = s.get("/extensions")
    assert status == 200
    assert json.loads(body) == {"http.response.zerocopysend": {}}


def test_whole_file_offset_count_and_sendfile_used(serve, data_file):
    path, data = data_file
    s = serve(APP)
    calls0, bytes0 = _sent(s)
    status, headers, body = s.get(f"/f?path={path}")
    assert (status, body) == (200, data)
    assert _h(headers)["content-length"] == str(len(data))
    status, headers, body = s.get(f"/f?path={path}&offset=1000&count=5000")
    assert (status, body) == (200, data[1000:6000])
    assert _h(headers)["content-length"] == "5000"
    # No offset: from the file's current position.
    assert s.get(f"/f?path={path}&seek=299990")[2] == data[299990:]
    # A bare descriptor rather than a file object.
    assert s.get(f"/f?path={path}&fd=1&offset=7&count=9")[2] == data[7:16]
    calls, sent = _sent(s)
    assert calls > calls0 and sent - bytes0 == len(data) + 5000 + 10 + 9


def test_edges(serve, data_file):
    path, data = data_file
    s = serve(APP)
    n = len(data)
    # count 0, offset at the end, offset past the end: empty bodies.
    for q in ("offset=5&count=0", f"offset={n}", f"offset={n + 100}"):
        status, headers, body = s.get(f"/f?path={path}&{q}")
        assert (status, body, _h(headers)["content-length"]) == (200, b"", "0"), q
    # The app's Content-Length bounds what goes.
    assert s.get(f"/f?path={path}&length=10&offset=3")[2] == data[3:13]
    # Several messages, the file's position carrying on between them, then
    # a body message: chunked framing, no Content-Length known in advance.
    status, headers, body = s.get(f"/f?path={path}&offset=100&parts=10,20,5")
    assert (status, body) == (200, data[100:135])
    assert _h(headers).get("transfer-encoding") == "chunked"
    assert s.get(f"/f?path={path}&count=4&tail=xyz")[2] == data[:4] + b"xyz"
    # The app declared chunked itself: read and framed.
    assert s.get(f"/f?path={path}&te=1&count=70000")[2] == data[:70000]
    # HEAD and 304: no body.
    status, headers, body = s.get(f"/f?path={path}", method="HEAD")
    assert (status, body, _h(headers)["content-length"]) == (200, b"", str(n))
    assert s.get(f"/f?path={path}&status=304")[2] == b""
    # Bad offset/count: the app's send raises ValueError, nothing was sent.
    status, _, body = s.get(f"/f?path={path}&offset=-1&bad=1")
    assert status == 200 and b"bad offset -1" in body


def test_count_past_the_end_closes_the_connection(serve, data_file):
    path, data = data_file
    s = serve(APP)
    with s.sock() as sock:
        sock.sendall(b"GET /f?path=%s&offset=299000&count=5000 HTTP/1.1\r\nHost: x\r\n\r\n"
                     % path.encode())
        sock.settimeout(10)
        got = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break  # closed: the promised length cannot be met
            got += piece
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"content-length: 5000" in head.lower() and body == data[299000:]
    assert s.get("/extensions")[0] == 200  # the worker serves on


def test_over_tls_read_and_encrypted(serve, cert, data_file):
    import http.client
    path, data = data_file
    certfile, keyfile = cert
    s = serve(APP, certfile=certfile, keyfile=keyfile)
    c = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=10,
                                    context=client_ctx(certfile))
    try:
        for q, want in ((f"path={path}", data), (f"path={path}&offset=5&count=100000",
                                                   data[5:100005]),
                        (f"path={path}&fd=1&offset=200000", data[200000:]),
                        (f"path={path}&offset=0&parts=3,4", data[:7])):
            c.request("GET", f"/f?{q}")
            r = c.getresponse()
            assert (r.status, r.read()) == (200, want), q
        c.request("GET", "/sent")
        assert c.getresponse().read() == b"0 0"  # no os.sendfile under TLS
    finally:
        c.close()
