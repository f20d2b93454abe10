"""The same app (worker_side/http_apps.py) on pyport's HTTP server and on
Debian's uvicorn (httptools): a corpus of requests to both, responses equal
in status, headers (but date and server) and body."""
import json
import os
import socket
import subprocess
import time

import pytest

from test_http import Reader, free_port, serve  # noqa: F401  (serve: the fixture)

WORKER_SIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_side")

uvicorn_missing = subprocess.run(["/usr/bin/python3", "-c", "import uvicorn, httptools"],
                                 capture_output=True).returncode != 0

CORPUS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /stream?n=4 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"HEAD /echo HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /status?c=204 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /status?c=304 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /status?c=418 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /cookies HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /nowhere/%C3%A9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /scope/a%20b/caf%C3%A9?x=%20&y HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nX-Two: 2\r\n"
    b"Accept: */*\r\n\r\n",
    b"GET /scope HTTP/1.0\r\n\r\n",
]

# Scope keys that differ by design: addresses (ports), the ASGI spec
# version each implements, lifespan state (uvicorn 0.17 has none), and
# extensions.
SCOPE_SKIP = {"client", "server", "asgi", "state", "extensions"}


def exchange(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        rd = Reader(s)
        if request.startswith(b"HEAD"):
            line = rd.f.readline()
            headers = []
            while True:
                h = rd.f.readline()
                if h in (b"\r\n", b""):
                    break
                k, v = h.split(b":", 1)
                headers.append((k.strip().lower(), v.strip()))
            return int(line.split()[1]), headers, b""
        return rd.response()


# Framing may differ and both be right: uvicorn 0.17 always streams a body
# sent as its own message with chunked encoding (even to HTTP/1.0 clients,
# which do not know it); pyport sends Content-Length when the whole body
# comes in one message, and ends an HTTP/1.0 body with the close. The
# bodies, compared decoded, must be equal.
FRAMING = (b"date", b"server", b"content-length", b"transfer-encoding", b"connection")


def normalise(resp):
    status, headers, body = resp
    headers = sorted((k, v) for k, v in headers if k not in FRAMING)
    if body.startswith(b"{") and b'"type": "http"' in body:
        scope = json.loads(body)
        body = {k: v for k, v in scope.items() if k not in SCOPE_SKIP}
    if status == 500:
        body = None  # each server's own error page
        headers = []
    return status, headers, body


@pytest.mark.skipif(uvicorn_missing, reason="uvicorn/httptools not installed (python3-uvicorn)")
def test_same_responses_as_uvicorn(serve):
    ours = serve(lifespan="off")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=WORKER_SIDE)
    uv = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "--http", "httptools",
                           "--lifespan", "off", "--log-level", "critical", "--port", str(port),
                           "http_apps:app"], env=env, cwd=WORKER_SIDE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        diffs = []
        for req in CORPUS:
            a = normalise(exchange(ours.port, req))
            b = normalise(exchange(port, req))
            if a != b:
                diffs.append((req, a, b))
        assert not diffs, "\n".join(f"{r!r}:\n  pyport  {a}\n  uvicorn {b}" for r, a, b in diffs)
    finally:
        uv.kill()
        uv.wait()
