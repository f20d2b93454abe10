"""The WSGI app of tests/harness/test_http_diff_wsgi.py, served as it is by
pyport and by Debian's gunicorn (sync worker). Every response the app
makes itself carries `x-app: 1`, so the test tells it from a server's own
error page."""
import io
import json
import sys

# Which generator bodies were closed (PEP 3333: the server calls close()).
closed: list = []

# The environ keys PEP 3333 / CGI define (server-specific ones left out:
# SERVER_PORT is each server's own port, wsgi.multithread/multiprocess
# their own process model, wsgi.errors/file_wrapper their objects).
PEP_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
            "CONTENT_LENGTH", "SERVER_PROTOCOL", "SERVER_NAME", "REMOTE_ADDR",
            "wsgi.url_scheme", "wsgi.version", "wsgi.run_once", "wsgi.input_terminated")

APP = ("X-App", "1")


def _environ(environ):
    out = {k: environ[k] for k in PEP_KEYS if k in environ}
    out.update({k: v for k, v in environ.items() if k.startswith("HTTP_")})
    # Every str of the environ is a "native string" (PEP 3333): latin-1
    # code points only. Sent as the code points, so JSON cannot hide it.
    out["types"] = sorted({type(v).__name__ for k, v in out.items()})
    return out


def _closing(parts, tag, fail_at=None):
    class Body:
        def __iter__(self):
            for i, p in enumerate(parts):
                if i == fail_at:
                    raise RuntimeError("the body broke on purpose")
                yield p

        def close(self):
            closed.append(tag)
    return Body()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path.startswith("/environ"):
        body = json.dumps(_environ(environ), sort_keys=True).encode()
        start_response("200 OK", [("Content-Type", "application/json"), APP])
        return [body]
    if path == "/echo":
        inp = environ["wsgi.input"]
        pieces = []
        while True:
            b = inp.read(7)  # small reads: the stream is read in pieces
            if not b:
                break
            pieces.append(b)
        data = b"".join(pieces)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("X-Method", method), ("X-Length", str(len(data))), APP])
        return [data]
    if path == "/lines":
        lines = [ln.decode("latin-1") for ln in environ["wsgi.input"]]
        start_response("200 OK", [("Content-Type", "application/json"), APP])
        return [json.dumps(lines).encode()]
    if path == "/read-all":
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), APP])
        return [b"%d:" % len(data), data]
    if path == "/cookies":
        start_response("200 OK", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2"),
                                  ("X-Multi", "x"), ("X-Multi", "y"), APP])
        return [b"cookies"]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain"), APP])
        write(b"written;")
        write(b"")
        write(b"again;")
        return [b"returned"]
    if path == "/generator":
        start_response("200 OK", [("Content-Type", "text/plain"), APP])
        return _closing([b"one;", b"", b"two;", b"three;"], "generator")
    if path == "/generator-fails":
        start_response("200 OK", [("Content-Type", "text/plain"), APP])
        return _closing([b"one;", b"two;", b"never"], "generator-fails", fail_at=2)
    if path == "/closed":
        start_response("200 OK", [("Content-Type", "application/json"), APP])
        return [json.dumps(closed).encode()]
    if path == "/length":
        # The app's own Content-Length, the body in three pieces.
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9"),
                                  ("X-App-Length", "1"), APP])
        return [b"abc", b"def", b"ghi"]
    if path == "/status":
        code = environ["QUERY_STRING"].split("=", 1)[1]
        reasons = {"204": "No Content", "304": "Not Modified", "418": "I'm a teapot",
                   "299": "Custom Reason Here", "404": "Not Found"}
        start_response(f"{code} {reasons[code]}", [("Content-Type", "text/plain"), APP])
        return [b"body of " + code.encode()] if code not in ("204", "304") else []
    if path == "/exc-info-before":
        # exc_info before anything was sent: the new status and headers win.
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1"), APP])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"),
                                                       ("X-Second", "1"), APP], sys.exc_info())
        return [b"replaced"]
    if path == "/exc-info-after":
        # exc_info once the head went out: start_response re-raises (PEP 3333).
        return _exc_after(start_response)
    if path == "/start-twice":
        # A second start_response without exc_info is an error (PEP 3333).
        start_response("200 OK", [APP])
        start_response("200 OK", [APP])
        return [b"never"]
    if path == "/fail":
        raise RuntimeError("the app broke on purpose")
    if path == "/no-start":
        return [b"start_response never called"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), APP])
        return environ["wsgi.file_wrapper"](io.BytesIO(bytes(range(256)) * 300), 1000)
    if path == "/latin1-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Latin", "caf\xe9"), APP])
        return [b"latin"]
    start_response("404 Not Found", [("Content-Type", "text/plain"), APP])
    return [b"not found: " + path.encode("latin-1")]


def _exc_after(start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), APP])
    yield b"first;"
    try:
        raise ValueError("too late")
    except ValueError:
        start_response("500 Internal Server Error", [APP], sys.exc_info())
    yield b"never"
