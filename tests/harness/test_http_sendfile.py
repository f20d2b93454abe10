"""wsgi.file_wrapper through sendfile (erlang._wsgi.FileWrapper, the
server's http.response.zerocopysend; docs/http.md "WSGI")."""
import os
import time

from test_http import Reader, serve  # noqa: F401  (serve)

SIZE = 50 << 20


def _rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024


def _sent(s):
    return tuple(int(x) for x in s.get("/sent")[2].split())


def _big_file(tmp_path):
    path = tmp_path / "big.bin"
    block = bytes(range(256)) * 4096  # 1 MiB, every byte value
    with open(path, "wb") as f:
        for i in range(SIZE >> 20):
            f.write(block[i % 256:] + block[:i % 256])  # each MiB differs
    return path


def test_50mb_file_goes_out_with_sendfile(serve, tmp_path):
    path = _big_file(tmp_path)
    s = serve("http_sendfile_apps:app", interface="wsgi")
    pid = s.worker.hello.os_pid
    calls0, bytes0 = _sent(s)
    fds0 = int(s.get("/fds")[2])
    before = _rss(pid)
    with s.sock(timeout=60) as sock:
        sock.sendall(b"GET /f?path=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(path).encode())
        rd = Reader(sock)
        status, headers, body = rd.response()
        grown = _rss(pid) - before
        assert status == 200
        h = dict(headers)
        # No Content-Length from the app: the file's size.
        assert h[b"content-length"] == str(SIZE).encode() and b"transfer-encoding" not in h
        assert len(body) == SIZE and body == path.read_bytes()
        # Keep-alive holds after it.
        sock.sendall(b"GET /sent HTTP/1.1\r\nHost: x\r\n\r\n")
        calls, sent = (int(x) for x in rd.response()[2].split())
    assert sent - bytes0 == SIZE and calls > calls0
    print(f"worker RSS grew {grown / 1e6:.1f} MB sending {SIZE >> 20} MB")
    assert grown < 20 << 20, grown
    # The app's file and the server's duplicate are closed (the closed
    # keep-alive connection's socket may take a moment).
    _wait_fds(s, fds0)


def test_offset_length_head_and_fallback(serve, tmp_path):
    path = tmp_path / "small.bin"
    data = os.urandom(300000)
    path.write_bytes(data)
    s = serve("http_sendfile_apps:app", interface="wsgi")
    p = str(path)
    # The rest of the file after the app's seek.
    status, headers, body = s.get(f"/f?path={p}&skip=1000")
    assert (status, body) == (200, data[1000:])
    assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(299000)
    # The app's Content-Length bounds what is sent.
    status, headers, body = s.get(f"/f?path={p}&length=5000")
    assert (status, body) == (200, data[:5000])
    # HEAD: the length, no body.
    status, headers, body = s.get(f"/f?path={p}", method="HEAD")
    assert (status, body) == (200, b"")
    assert dict((k.lower(), v) for k, v in headers)["content-length"] == str(300000)
    # Not a regular file: read in blocks, no sendfile.
    calls0, _ = _sent(s)
    assert s.get("/bytesio")[2] == b"b" * 100000
    assert _sent(s)[0] == calls0


def test_client_gone_mid_file(serve, tmp_path):
    path = _big_file(tmp_path)
    s = serve("http_sendfile_apps:app", interface="wsgi")
    fds0 = int(s.get("/fds")[2])
    with s.sock() as sock:
        sock.sendall(b"GET /f?path=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(path).encode())
        sock.recv(65536)
    # The worker goes on serving; the files are closed.
    assert s.get("/sent")[0] == 200
    _wait_fds(s, fds0)


def _wait_fds(s, fds0):
    deadline = time.time() + 10
    while int(s.get("/fds")[2]) > fds0 and time.time() < deadline:
        time.sleep(0.1)
    assert int(s.get("/fds")[2]) <= fds0
