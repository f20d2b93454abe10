"""10,000 idle keep-alive connections held by one HTTP worker
(erlang._http, docs/http.md "Figures"): all are served and stay open, the
worker answers new requests promptly meanwhile, and its RSS per connection
is reported."""
import resource
import socket
import time

import pytest

from test_http import serve  # noqa: F401  (serve)

N = 10_000
BATCH = 500
REQUEST = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"


def _rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024


def _raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}: cannot hold {N} connections")
    try:
        # This process only (the worker inherits it); never machine-wide.
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError) as e:
        pytest.skip(f"cannot raise RLIMIT_NOFILE to {need}: {e}")


def _read_response(sock):
    """One small response (Content-Length) off a blocking socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = sock.recv(4096)
        assert b, "connection closed"
        buf += b
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    return head


def test_ten_thousand_idle_keepalive_connections(serve):
    _raise_nofile(N + 1024)  # ours; the worker inherits the limit for its own
    s = serve(keepalive_timeout=120.0, backlog=4096)
    pid = s.worker.hello.os_pid
    before = _rss(pid)
    socks = []
    t0 = time.monotonic()
    try:
        for _ in range(0, N, BATCH):
            batch = [socket.create_connection(("127.0.0.1", s.port), timeout=30)
                     for _ in range(BATCH)]
            for c in batch:
                c.sendall(REQUEST)
            for c in batch:
                head = _read_response(c)
                assert b"connection: close" not in head.lower()
            socks.extend(batch)
        opened = time.monotonic() - t0
        time.sleep(0.5)
        held = _rss(pid)
        # A new client is answered promptly while all of them are open.
        t1 = time.monotonic()
        status = s.get("/echo")[0]
        latency = time.monotonic() - t1
        assert status == 200
        assert latency < 5.0, latency
        # Every connection is still open and still serves (keep-alive).
        for c in socks[::100]:
            c.sendall(REQUEST)
            _read_response(c)
        per_conn = (held - before) / N
        print(f"{N} keep-alive connections opened and served in {opened:.1f} s; "
              f"worker RSS {before / 1e6:.1f} -> {held / 1e6:.1f} MB "
              f"({per_conn / 1024:.1f} KiB per connection); new request answered in "
              f"{latency * 1000:.0f} ms")
        # Bounded: well under 64 KiB a connection.
        assert per_conn < 64 * 1024, per_conn
    finally:
        for c in socks:
            c.close()
