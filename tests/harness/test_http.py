"""The HTTP server of HTTP pools (erlang._http on _pyport_http, docs/http.md),
driven directly: a worker runs erlang._http.start() as an HTTP pool's init
code does, and clients talk to it with http.client and raw sockets."""
import ast
import http.client
import json
import os
import socket
import time

import pytest

CRLF = b"\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, worker, port):
        self.worker = worker
        self.port = port

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def sock(self, timeout=10):
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def get(self, path, method="GET", body=None, headers=None):
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            c.close()


@pytest.fixture
def serve(spawn):
    def start(app="http_apps:app", **opts):
        w = spawn()
        port = free_port()
        w.exec("import erlang._http\n"
               f"erlang._http.start({app!r}, '127.0.0.1:{port}', {opts!r})")
        assert w.call("erlang._http", "wait_serving") is True
        return Server(w, port)
    return start


class Reader:
    """Reads HTTP/1.1 responses one after another off one socket."""

    def __init__(self, sock):
        self.f = sock.makefile("rb")

    def response(self):
        line = self.f.readline()
        if not line:
            return None
        version, status, _ = line.split(b" ", 2)
        headers = []
        while True:
            h = self.f.readline()
            if h in (CRLF, b""):
                break
            k, v = h.split(b":", 1)
            headers.append((k.strip().lower(), v.strip()))
        hd = dict(headers)
        status = int(status)
        body = b""
        if b"content-length" in hd:
            body = self.f.read(int(hd[b"content-length"]))
        elif hd.get(b"transfer-encoding") == b"chunked":
            while True:
                n = int(self.f.readline().strip(), 16)
                chunk = self.f.read(n + 2)
                if n == 0:
                    break
                body += chunk[:-2]
        return status, headers, body

    def rest(self):
        return self.f.read()


def raw_exchange(server, data, timeout=10):
    """Sends `data`, returns everything until the server closes."""
    with server.sock(timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                return out
            if not b:
                return out
            out += b


def events(server):
    return json.loads(server.get("/events")[2])


def wait_for(pred, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


# -- basics --------------------------------------------------------------------


def test_hello_world(serve):
    s = serve("http_apps:hello", lifespan="off")
    status, headers, body = s.get("/")
    assert (status, body) == (200, b"Hello, world!")
    h = dict((k.lower(), v) for k, v in headers)
    assert h["content-length"] == "13" and h["content-type"] == "text/plain"
    assert "date" in h and "transfer-encoding" not in h


def test_scope_is_typed_as_the_asgi_spec_says(serve):
    s = serve()
    status, _, body = s.get("/sc%6Fpe?a=1&b=%20x", headers={"X-Mixed-Case": "Value "})
    # /sc%6Fpe decodes to /scope
    assert status == 200, body
    scope = json.loads(body)
    assert scope["type"] == "http" and scope["method"] == "GET"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1" and scope["scheme"] == "http"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == {"bytes": "/sc%6Fpe"}
    assert scope["query_string"] == {"bytes": "a=1&b=%20x"}
    assert scope["root_path"] == ""
    headers = {h[0]["bytes"]: h[1]["bytes"] for h in scope["headers"]}
    assert headers["x-mixed-case"] == "Value"
    assert headers["host"] == f"127.0.0.1:{s.port}"
    assert scope["server"] == ["127.0.0.1", s.port]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["state"] == {"greeting": "from lifespan"}


def test_path_is_percent_and_utf8_decoded(serve):
    s = serve()
    scope = json.loads(s.get("/%73cope/caf%C3%A9/a%2Fb%zz?q=%C3%A9")[2])
    assert scope["path"] == "/scope/caf\u00e9/a/b%zz"
    assert scope["raw_path"] == {"bytes": "/%73cope/caf%C3%A9/a%2Fb%zz"}
    assert scope["query_string"] == {"bytes": "q=%C3%A9"}


def test_root_path_is_given_to_the_app(serve):
    # As uvicorn 0.17 (Debian's) does: root_path set, path as received.
    s = serve(root_path="/mount")
    scope = json.loads(s.get("/scope")[2])
    assert (scope["root_path"], scope["path"]) == ("/mount", "/scope")


def test_keep_alive_reuses_the_connection(serve):
    s = serve()
    c = s.conn()
    c.request("GET", "/scope")
    r = c.getresponse()
    port = json.loads(r.read())["client"][1]
    for _ in range(30):
        c.request("POST", "/echo", body=b"abc")
        r = c.getresponse()
        assert r.read() == b"abc"
    c.request("GET", "/scope")
    assert json.loads(c.getresponse().read())["client"][1] == port
    c.close()


def test_pipelining_100_requests_answered_in_order(serve):
    s = serve()
    reqs = b"".join(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(str(i)), str(i).encode()) for i in range(100))
    with s.sock() as sock:
        sock.sendall(reqs)
        rd = Reader(sock)
        bodies = [rd.response()[2] for _ in range(100)]
    assert bodies == [str(i).encode() for i in range(100)]


def test_http10_closes_after_the_response(serve):
    s = serve()
    out = raw_exchange(s, b"GET /scope HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in out.lower()
    assert b'"http_version": "1.0"' in out


# -- bodies --------------------------------------------------------------------


def test_chunked_request_body(serve):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"hello ", b"chunked ", b"world"):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.02)
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = Reader(sock).response()
    assert (status, body) == (200, b"hello chunked world")


def test_chunked_response(serve):
    s = serve()
    status, headers, body = s.get("/stream?n=5")
    h = dict((k.lower(), v) for k, v in headers)
    assert h["transfer-encoding"] == "chunked" and "content-length" not in h
    assert body == b"".join(b"chunk%d;" % i for i in range(5))


def test_expect_100_continue(serve):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        rd = Reader(sock)
        line = rd.f.readline()
        assert line == b"HTTP/1.1 100 Continue\r\n"
        assert rd.f.readline() == CRLF
        sock.sendall(b"12345")
        status, _, body = rd.response()
    assert (status, body) == (200, b"12345")


def test_head_has_no_body_and_keeps_the_connection(serve):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /stream?n=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(sock)
        line = rd.f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        head = b""
        while True:
            h = rd.f.readline()
            if h == CRLF:
                break
            head += h
        assert b"content-length: 3" in head.lower()
        # No body: the next bytes are the second response.
        status, _, body = rd.response()
    assert (status, body) == (200, b"chunk0;chunk1;")


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(serve, code):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"GET /status?c=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /stream?n=1 HTTP/1.1\r\nHost: x\r\n\r\n" % code)
        rd = Reader(sock)
        line = rd.f.readline()
        assert line.startswith(b"HTTP/1.1 %d" % code)
        head = b""
        while True:
            h = rd.f.readline()
            if h == CRLF:
                break
            head += h.lower()
        assert b"content-length" not in head and b"transfer-encoding" not in head
        assert rd.response()[2] == b"chunk0;"


def test_upgrade_is_answered_then_the_connection_closes(serve):
    s = serve()
    # (A WebSocket upgrade is served: test_http_websocket.py.)
    out = raw_exchange(s, b"GET /stream?n=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                       b"Upgrade: h2c\r\n\r\n\x81\x85not http at all")
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1") == 1
    assert b"connection: close" in out


def test_repeated_response_headers_kept(serve):
    s = serve()
    _, headers, _ = s.get("/cookies")
    assert [v for k, v in headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]


# -- limits and malformed requests ------------------------------------------------


def status_of(out: bytes) -> int:
    assert out.startswith(b"HTTP/1.1 "), out[:100]
    return int(out[9:12])


def test_request_target_too_long(serve):
    s = serve(max_request_line=100)
    out = raw_exchange(s, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == 414 and b"connection: close" in out


def test_too_many_headers(serve):
    s = serve(max_headers=10)
    hs = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    assert status_of(raw_exchange(s, b"GET / HTTP/1.1\r\n" + hs + b"\r\n")) == 431


def test_headers_too_large(serve):
    s = serve(max_header_bytes=1000)
    out = raw_exchange(s, b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n")
    assert status_of(out) == 431


def test_body_too_large_by_content_length(serve):
    s = serve(max_body=1000)
    out = raw_exchange(s, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
    assert status_of(out) == 413
    assert events(s) == []  # the app never saw it


def test_body_too_large_chunked(serve):
    s = serve(max_body=1000)
    out = raw_exchange(s, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"200\r\n" + b"x" * 512 + b"\r\n" + b"300\r\n" + b"x" * 768 + b"\r\n0\r\n\r\n")
    assert status_of(out) == 413


@pytest.mark.parametrize("request_bytes", [
    # Content-Length and Transfer-Encoding together
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /events HTTP/1.1\r\nHost: x\r\n\r\n",
    # two different Content-Lengths
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    # a chunk size that is not hexadecimal
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    # Transfer-Encoding not ending in chunked
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    # garbage
    b"\x00\x01 nonsense\r\n\r\n",
    # a space before the colon
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    # HTTP/1.1 without Host, and with two
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # a NUL inside a header value
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
], ids=["cl-and-te", "two-lengths", "bad-chunk-size", "te-not-chunked", "garbage",
        "space-before-colon", "no-host", "two-hosts", "nul-in-value"])
def test_smuggling_and_malformed_refused(serve, request_bytes):
    s = serve()
    out = raw_exchange(s, request_bytes)
    assert status_of(out) == 400
    assert out.count(b"HTTP/1.1 ") == 1  # nothing after it was served
    assert b"connection: close" in out


def test_requests_before_a_malformed_one_are_answered(serve):
    s = serve()
    out = raw_exchange(s, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
                       b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 400 " in out and out.index(b"HTTP/1.1 400") > out.index(b"ok")


# -- faults --------------------------------------------------------------------


def test_app_exception_is_500_with_traceback_logged(serve):
    s = serve()
    status, _, body = s.get("/fail")
    assert status == 500 and b"the app broke on purpose" not in body
    assert wait_for(lambda: any("the app broke on purpose" in m for _, m in s.worker.logs))
    assert any("Traceback" in m for _, m in s.worker.logs)
    assert s.get("/stream?n=1")[0] == 200  # the worker serves on


@pytest.mark.parametrize("path", ["/none", "/start-only", "/start-then-fail", "/too-long",
                                  "/status?c=1000", "/status?c=103"])
def test_no_valid_response_is_500(serve, path):
    # No response, a start without a body, a failure after the start but
    # before any body, a body longer than its Content-Length, a bad status:
    # nothing was written yet, so the client gets a 500 (and the connection
    # closes).
    s = serve()
    out = raw_exchange(s, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    assert status_of(out) == 500 and out.count(b"HTTP/1.1") == 1
    assert b"abcdef" not in out


def test_head_of_a_chunked_response_has_no_body(serve):
    s = serve()
    out = raw_exchange(s, b"HEAD /head-chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200 and b"transfer-encoding: chunked" in out.lower()
    assert out.index(b"\r\n\r\n") + 4 == len(out), out  # nothing after the head


def test_failure_after_the_response_started_cuts_the_connection(serve):
    s = serve()
    out = raw_exchange(s, b"GET /fail-late HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and b"partial" in out
    assert not out.endswith(b"0\r\n\r\n")  # no final chunk: the client sees it broke


def test_client_gone_mid_response(serve):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: events(s)[-2:] == ["send-raised", "http.disconnect"]), events(s)


def test_client_close_is_http_disconnect_for_a_waiting_app(serve):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
    assert wait_for(lambda: ["waited", "http.disconnect"] in events(s)), events(s)


def test_half_closed_client_still_gets_its_responses(serve):
    s = serve()
    with s.sock() as sock:
        sock.sendall(b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            b = sock.recv(65536)
            if not b:
                break
            out += b
    assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"hi")


# -- flow control ----------------------------------------------------------------


def test_slow_client_pauses_the_apps_send(serve):
    s = serve()
    size = 64 << 20
    with s.sock(timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        assert sock.recv(10) == b"HTTP/1.1 2"
        time.sleep(1.0)
        progress = [e for e in events(s) if e[0] == "big"]
        sent = progress[-1][1] if progress else 0
        # Kernel buffers plus the write watermark, far below 64 MiB.
        assert sent <= 16 << 20, sent
        got = 10
        while True:
            b = sock.recv(1 << 20)
            if not b:
                break
            got += len(b)
            if got >= size:
                break
    assert got > size


def test_an_app_that_does_not_read_pauses_reading(serve):
    s = serve(max_body=64 << 20)
    size = 32 << 20
    with s.sock(timeout=30) as sock:
        sock.sendall(b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.setblocking(False)
        sent = 0
        chunk = b"y" * 65536
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and sent < size:
            try:
                sent += sock.send(chunk[:min(65536, size - sent)])
            except BlockingIOError:
                time.sleep(0.01)
        buffered = int(s.get("/buffered")[2])
        assert buffered <= 1 << 20, buffered
        assert sent < size
        s.get("/release")
        sock.settimeout(30)
        while sent < size:
            sent += sock.send(chunk[:min(65536, size - sent)])
        status, _, body = Reader(sock).response()
    assert (status, body) == (200, str(size).encode())


def test_a_client_that_does_not_read_is_cut_after_write_timeout(serve):
    s = serve(write_timeout=0.5)
    with s.sock(timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        # reads nothing: the app's send() blocks, then the server cuts
        assert wait_for(lambda: "flood-raised" in events(s), 20), events(s)
        got = b""
        while True:
            try:
                b = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not b:
                break
            got += b
    assert got.startswith(b"HTTP/1.1 200") and not got.endswith(b"0\r\n\r\n")


def test_access_log(spawn):
    # One INFO record per response to Erlang's logger (a NOTIFY "log" frame).
    records = []

    def on_request(frame):
        if frame.fields[0] == "log":
            records.append(frame.fields[1])

    w = spawn(on_request=on_request)
    port = free_port()
    w.exec("import erlang._http\n"
           f"erlang._http.start('http_apps:app', '127.0.0.1:{port}', {{'access_log': True}})")
    w.call("erlang._http", "wait_serving")
    s = Server(w, port)
    s.get("/stream?n=2")
    s.get("/fail")
    assert wait_for(lambda: len(records) >= 2), records
    lines = [r[1] for r in records if r[0] == "info"]
    assert any('"GET /stream?n=2 HTTP/1.1" 200 14 ' in m for m in lines), records
    assert any('"GET /fail HTTP/1.1" 500 0 ' in m for m in lines), records
    assert all(r[2]["logger"] == "pyport.http.access" for r in records if r[0] == "info")


# -- timeouts --------------------------------------------------------------------


def test_header_timeout(serve):
    s = serve(header_timeout=0.3)
    t = time.monotonic()
    out = raw_exchange(s, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends its head
    assert status_of(out) == 408 and time.monotonic() - t < 8


def test_body_timeout(serve):
    s = serve(body_timeout=0.3)
    out = raw_exchange(s, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    assert status_of(out) == 408


def test_request_timeout_is_504_and_the_task_is_cancelled(serve):
    s = serve(request_timeout=0.3)
    out = raw_exchange(s, b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == 504
    assert wait_for(lambda: any("504" in m for _, m in s.worker.logs))
    # A response that started runs on past the timeout.
    status, _, body = s.get("/stream?n=3")
    assert status == 200
    with s.sock() as sock:
        sock.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.8)
        data = b""
        while data.count(b"tick") < 50:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
    # Pipelined: each request gets its own time.
    out = raw_exchange(s, b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 2


def test_keepalive_timeout_closes_idle_connections(serve):
    s = serve(keepalive_timeout=0.3)
    with s.sock() as sock:
        sock.sendall(b"GET /stream?n=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(sock)
        assert rd.response()[0] == 200
        t = time.monotonic()
        assert rd.rest() == b""  # closed by the server
        assert time.monotonic() - t < 8


# -- lifespan --------------------------------------------------------------------


def test_lifespan_startup_failed_fails_the_start(spawn):
    import pyport_proto
    w = spawn()
    port = free_port()
    w.exec("import erlang._http\n"
           f"erlang._http.start('http_apps:failing_lifespan', '127.0.0.1:{port}', {{'lifespan': 'on'}})")
    with pytest.raises(pyport_proto.RemoteError) as e:
        w.call("erlang._http", "wait_serving")
    assert "no database here" in str(e.value)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_stop_runs_lifespan_shutdown_and_closes_the_listener(serve):
    s = serve()
    assert s.get("/stream?n=1")[0] == 200
    assert s.worker.call("erlang._http", "stop", [1.0]) is True
    assert s.worker.eval("__import__('http_apps').events") == ["shutdown"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()


@pytest.mark.parametrize("app,message", [
    ("http_apps:nothing_here", "has no attribute 'nothing_here'"),
    ("no_such_module_x:app", "cannot import module 'no_such_module_x'"),
    ("no-colon", 'expected "module:attr"'),
])
def test_app_errors_name_the_app(spawn, app, message):
    import pyport_proto
    w = spawn()
    with pytest.raises(pyport_proto.RemoteError) as e:
        w.exec(f"import erlang._http\nerlang._http.start({app!r}, '127.0.0.1:{free_port()}', {{}})")
    assert message in str(e.value)


# -- the parser alone ----------------------------------------------------------------

SPLIT_CORPUS = (
    b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nX-Long-Header-Name: some value  \r\n"
    b"Content-Length: 5\r\n\r\nhello"
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
    b"GET http://example.com/abs/path?q=%41 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    b"GET / HTTP/1.0\r\n\r\n"
)


def test_parser_gives_the_same_events_however_the_bytes_are_split(worker):
    # Requests split anywhere (one byte at a time, then in 7-byte pieces)
    # parse to the same events as in one piece: callbacks that span reads
    # are joined.
    code = f"""
import _pyport_http
data = {SPLIT_CORPUS!r}

def run(step):
    p = _pyport_http.Parser()
    events = []
    for i in range(0, len(data), step):
        events += p.feed(data[i:i + step])
    merged = []
    for e in events:
        if e[0] == _pyport_http.BODY and merged and merged[-1][0] == _pyport_http.BODY:
            merged[-1] = (e[0], merged[-1][1] + e[1])
        else:
            merged.append(e)
    return merged

whole = run(len(data))
"""
    worker.exec(code)
    whole = ast.literal_eval(worker.eval("repr(whole)"))  # bytes stay bytes
    assert worker.eval("run(1) == whole and run(7) == whole") is True
    heads = [e for e in whole if e[0] == 0]
    scopes = [h[1] for h in heads]
    assert [(c["method"], c["path"], c["raw_path"], c["query_string"]) for c in scopes] == [
        ("POST", "/a b", b"/a%20b", b"x=1"),
        ("POST", "/c", b"/c", b""),
        ("GET", "/abs/path", b"/abs/path", b"q=%41"),
        ("GET", "/", b"/", b""),
    ]
    assert scopes[0]["headers"] == [(b"host", b"h"), (b"x-long-header-name", b"some value"),
                                    (b"content-length", b"5")]
    assert scopes[1]["headers"][2:] == [(b"x-a", b"1"), (b"x-a", b"2")]
    assert [c["http_version"] for c in scopes] == ["1.1", "1.1", "1.1", "1.0"]
    assert [h[2] for h in heads] == [True, True, True, False]  # keep-alive
    assert [h[4] for h in heads] == [5, -1, -1, -1]  # content length
    bodies = [e[1] for e in whole if e[0] == 1]
    assert bodies == [b"hello", b"abc0123456789abcdef"]
    assert sum(1 for e in whole if e[0] == 2) == 4


def test_large_upload_and_download_keep_the_worker_small(serve):
    # 200 MB up and 200 MB down on one connection: the worker's RSS grows by
    # far less (bodies stream through bounded buffers).
    s = serve(max_body=0)
    pid = s.worker.hello.os_pid

    def rss():
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024

    before = rss()
    size = 200 << 20
    with s.sock(timeout=60) as sock:
        sock.sendall(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"z" * (1 << 20)
        for _ in range(size >> 20):
            sock.sendall(chunk)
        rd = Reader(sock)
        status, _, body = rd.response()
        assert (status, body) == (200, str(size).encode())
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        line = rd.f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        while rd.f.readline() != CRLF:
            pass
        got = 0
        while got < size:
            b = rd.f.read1(1 << 20)
            assert b
            got += len(b)
    assert got == size
    grown = rss() - before
    # Under ASan freed blocks stay resident in its quarantine (256 MB by
    # default): the bound is only meaningful for a plain build.
    if os.environ.get("PYPORT_SANITIZED") != "1":
        assert grown < 64 << 20, grown
