"""WSGI apps of test_http_sendfile.py: wsgi.file_wrapper over files."""
import io
import os
from urllib.parse import parse_qs

# Counts what goes through os.sendfile in this worker (asyncio's
# loop.sendfile calls it through the module), so the test can tell
# sendfile from the read-and-write fallback.
_sent = [0, 0]
_real_sendfile = os.sendfile


def _counting_sendfile(out_fd, in_fd, offset, count):
    n = _real_sendfile(out_fd, in_fd, offset, count)
    _sent[0] += 1
    _sent[1] += n
    return n


os.sendfile = _counting_sendfile


def app(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    path = environ["PATH_INFO"]
    if path == "/sent":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d %d" % tuple(_sent)]
    if path == "/fds":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(os.listdir("/proc/self/fd"))]
    if path == "/bytesio":
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"b" * 100000))
    f = open(q["path"], "rb")
    if "skip" in q:
        f.seek(int(q["skip"]))
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"]))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f)
