"""The same WSGI app (worker_side/http_diff_wsgi_app.py) on pyport's HTTP
server and on Debian's gunicorn (sync worker): a corpus of requests to
both, responses equal in status line, headers (but Date, Server and the
framing each server chooses) and decoded body.

Where the two differ by design, or because gunicorn is wrong, the
difference is listed in DIFFERENCES with pyport's exact (normalised)
answer, so a change in pyport's output fails the test either way."""
import json
import os
import socket
import subprocess
import time

import pytest

from test_http import free_port, serve  # noqa: F401  (serve: the fixture)

WORKER_SIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_side")
APP = "http_diff_wsgi_app:app"

gunicorn_missing = subprocess.run(["/usr/bin/python3", "-c", "import gunicorn"],
                                  capture_output=True).returncode != 0


def req(method, target, headers=(), body=b"", version=b"HTTP/1.1"):
    head = [b"%s %s %s" % (method, target, version), b"Host: a"]
    head += list(headers)
    if version == b"HTTP/1.1":
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


CHUNKED = (b"Transfer-Encoding: chunked",)

# (name, request, server): "root" or "mount" (SCRIPT_NAME /mnt).
CORPUS = [
    ("get", req(b"GET", b"/environ"), "root"),
    ("get-query", req(b"GET", b"/environ/x?a=%20b&c=%C3%A9&d=+&e", [b"Accept: */*"]), "root"),
    ("get-path-escapes", req(b"GET", b"/environ/a%20b/caf%C3%A9/%2Fslash/%25"), "root"),
    ("get-path-raw-utf8", req(b"GET", b"/environ/caf\xc3\xa9"), "root"),
    ("get-repeated-header", req(b"GET", b"/environ", [b"X-Two: 1", b"X-Two: 2",
                                                      b"Content-Type: text/x"]), "root"),
    ("head", req(b"HEAD", b"/environ"), "root"),
    ("head-echo", req(b"HEAD", b"/echo"), "root"),
    ("post", req(b"POST", b"/echo", [b"Content-Length: 11", b"Content-Type: text/plain"],
                 b"hello world"), "root"),
    ("post-empty", req(b"POST", b"/echo", [b"Content-Length: 0"]), "root"),
    ("post-binary", req(b"POST", b"/echo", [b"Content-Length: 256"], bytes(range(256))), "root"),
    ("put-chunked", req(b"PUT", b"/echo", CHUNKED,
                        b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"), "root"),
    ("post-chunked-ext", req(b"POST", b"/read-all", CHUNKED,
                             b"4;name=v\r\nwxyz\r\n0\r\n\r\n"), "root"),
    ("post-lines", req(b"POST", b"/lines", [b"Content-Length: 8"], b"ab\ncd\nef"), "root"),
    ("post-expect", req(b"POST", b"/echo", [b"Content-Length: 3", b"Expect: 100-continue"],
                        b"xyz"), "root"),
    ("cookies", req(b"GET", b"/cookies"), "root"),
    ("write", req(b"GET", b"/write"), "root"),
    ("generator", req(b"GET", b"/generator"), "root"),
    ("generator-fails", req(b"GET", b"/generator-fails"), "root"),
    ("length", req(b"GET", b"/length"), "root"),
    ("file", req(b"GET", b"/file"), "root"),
    ("latin1-header", req(b"GET", b"/latin1-header"), "root"),
    ("204", req(b"GET", b"/status?c=204"), "root"),
    ("304", req(b"GET", b"/status?c=304"), "root"),
    ("closed", req(b"GET", b"/closed"), "root"),
    ("418", req(b"GET", b"/status?c=418"), "root"),
    ("299-reason", req(b"GET", b"/status?c=299"), "root"),
    ("exc-info-before", req(b"GET", b"/exc-info-before"), "root"),
    ("exc-info-after", req(b"GET", b"/exc-info-after"), "root"),
    ("start-twice", req(b"GET", b"/start-twice"), "root"),
    ("fail", req(b"GET", b"/fail"), "root"),
    ("no-start", req(b"GET", b"/no-start"), "root"),
    ("not-found", req(b"GET", b"/nowhere/%C3%A9"), "root"),
    ("http10", req(b"GET", b"/environ", version=b"HTTP/1.0"), "root"),
    ("http10-generator", req(b"GET", b"/generator", version=b"HTTP/1.0"), "root"),
    ("mount", req(b"GET", b"/mnt/environ/x%20y?q=1"), "mount"),
    ("mount-post", req(b"POST", b"/mnt/echo", [b"Content-Length: 2"], b"hi"), "mount"),
]

# Headers each server sets by its own choice of framing and identity.
FRAMING = (b"date", b"server", b"transfer-encoding", b"connection")


def exchange(port, request, head_only):
    """Sends one request, reads until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
    return parse(out, head_only)


def parse(raw, head_only):
    """(status line, headers, body, complete) of the last final response
    (a 100 Continue before it is left out)."""
    while raw.startswith(b"HTTP/1.1 100 "):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    if not raw:
        return ("<closed without a response>", [], b"", False)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 1)[1].decode("latin-1")
    headers = []
    for h in lines[1:]:
        k, v = h.split(b":", 1)
        headers.append((k.strip().lower(), v.strip()))
    hd = dict(headers)
    code = int(status.split()[0]) if status.split()[0].isdigit() else -1
    if head_only or code in (204, 304):
        return status, headers, rest, rest == b""
    if hd.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return status, headers, body, False
            n = int(line.split(b";")[0], 16)
            if n == 0:
                return status, headers, body, rest.startswith(b"\r\n") or rest == b""
            if len(rest) < n + 2:
                return status, headers, body + rest[:n], False
            body += rest[:n]
            rest = rest[n + 2:]
    if b"content-length" in hd:
        n = int(hd[b"content-length"])
        return status, headers, rest[:n], len(rest) >= n
    return status, headers, rest, True  # ended by the close


def normalise(resp):
    status, headers, body, complete = resp
    app_made = (b"x-app", b"1") in headers
    keep_length = (b"x-app-length", b"1") in headers
    headers = sorted((k, v) for k, v in headers
                     if k not in FRAMING and (k != b"content-length" or keep_length))
    if not app_made:
        # The server's own error page: its status is compared, not its text.
        return status, None, None, complete
    if body.startswith(b"{") and b'"REQUEST_METHOD"' in body:
        body = json.loads(body)
    return status, headers, body, complete


# Where pyport and gunicorn 20.1 differ, pyport's answer (normalised) and
# why. Each is checked: pyport must give exactly this, gunicorn must still
# differ (a difference gone is a row to remove).
def _environ(**over):
    env = {"HTTP_CONNECTION": "close", "HTTP_HOST": "a", "QUERY_STRING": "",
           "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "GET", "SCRIPT_NAME": "",
           "SERVER_NAME": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1",
           "types": ["bool", "str", "tuple"], "wsgi.input_terminated": True,
           "wsgi.run_once": False, "wsgi.url_scheme": "http", "wsgi.version": [1, 0]}
    env.update(over)
    return env


_JSON = [(b"content-type", b"application/json"), (b"x-app", b"1")]
_TEXT = [(b"content-type", b"text/plain"), (b"x-app", b"1")]

DIFFERENCES = {
    # gunicorn bug: it decodes the raw request target as latin-1, then
    # unquote_to_wsgi_str encodes it to UTF-8 and decodes it as latin-1
    # again: "caf\xc3\xa9" becomes "caf\xc3\x83\xc2\xa9". PEP 3333: the
    # bytes, each as one latin-1 code point (what %C3%A9 gives on both).
    "get-path-raw-utf8": (("200 OK", _JSON, _environ(PATH_INFO="/environ/caf\xc3\xa9"), True),
                          "PEP 3333 native string of the raw bytes"),
    # gunicorn bug: it sends the body of a HEAD response (RFC 9110 9.3.2:
    # none); pyport sends the head only.
    "head": (("200 OK", _JSON, b"", True), "HEAD has no body"),
    # A choice: pyport's status line carries the standard reason phrase
    # of the code (an unknown code: none), not the app's text; RFC 9112
    # 4: clients ignore it. gunicorn passes the app's text on.
    "418": (("418 I'm a Teapot", _TEXT, b"body of 418", True), "reason phrase from the table"),
    "299-reason": (("299 ", _TEXT, b"body of 299", True), "no reason for an unknown code"),
    # gunicorn bug: start_response with exc_info before anything was sent
    # must replace the status and headers (PEP 3333); gunicorn appends the
    # second list to the first (two Content-Types, X-First kept).
    "exc-info-before": (("503 Service Unavailable",
                         [(b"content-type", b"text/plain"), (b"x-app", b"1"), (b"x-second", b"1")],
                         b"replaced", True), "exc_info replaces the headers"),
    # gunicorn bug: an app that returns without calling start_response
    # gets "HTTP/1.1 None" with its body; pyport answers 500 (its own page).
    "no-start": (("500 Internal Server Error", None, None, True), "no start_response: 500"),
}


def start_gunicorn(port, env_extra):
    env = dict(os.environ, PYTHONPATH=WORKER_SIDE, **env_extra)
    return subprocess.Popen(["/usr/bin/python3", "-m", "gunicorn", "-k", "sync", "-w", "1",
                             "--log-level", "critical", "-b", f"127.0.0.1:{port}", APP],
                            env=env, cwd=WORKER_SIDE)


def wait_listening(port, proc, what):
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)


@pytest.mark.skipif(gunicorn_missing, reason="gunicorn not installed (Debian's gunicorn)")
def test_same_responses_as_gunicorn(serve):
    ours = serve(APP, interface="wsgi", mounts=[["/mnt", APP, "wsgi"]])
    g_root, g_mount = free_port(), free_port()
    procs = [start_gunicorn(g_root, {}), start_gunicorn(g_mount, {"SCRIPT_NAME": "/mnt"})]
    try:
        wait_listening(g_root, procs[0], "gunicorn")
        wait_listening(g_mount, procs[1], "gunicorn (SCRIPT_NAME=/mnt)")
        diffs, seen = [], {}
        for name, request, where in CORPUS:
            head_only = request.startswith(b"HEAD")
            a = normalise(exchange(ours.port, request, head_only))
            b = normalise(exchange(g_root if where == "root" else g_mount, request, head_only))
            seen[name] = (a, b)
            if name in DIFFERENCES:
                expected, why = DIFFERENCES[name]
                if a != expected:
                    diffs.append(f"{name}: pyport changed ({why}):\n  pyport   {a}\n"
                                 f"  expected {expected}")
                elif a == b:
                    diffs.append(f"{name}: pyport and gunicorn agree now: drop the entry")
            elif a != b:
                diffs.append(f"{name}:\n  pyport   {a}\n  gunicorn {b}")
        assert not diffs, "\n".join(diffs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
