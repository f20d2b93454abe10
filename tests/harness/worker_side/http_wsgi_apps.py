"""WSGI apps of tests/harness/test_http_wsgi.py."""
import json
import sys
import threading
import time

events: list = []


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        env = {k: v for k, v in environ.items() if isinstance(v, (str, int, bool, tuple))}
        env["input_type"] = type(environ["wsgi.input"]).__name__
        env["errors_is_stderr"] = environ["wsgi.errors"] is sys.stderr
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(env).encode()]
    if path == "/echo":
        # Reads in 1000-byte pieces: a streaming wsgi.input.
        inp = environ["wsgi.input"]
        pieces = []
        while True:
            b = inp.read(1000)
            if not b:
                break
            pieces.append(b)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("X-Pieces", str(len(pieces)))])
        return [b"".join(pieces)]
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([l.decode() for l in lines]).encode()]
    if path == "/generator":
        return _generator(start_response)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written;")
        return [b"returned"]
    if path == "/cookies":
        start_response("200 OK", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                  ("Connection", "keep-alive")])
        return [b"c"]
    if path == "/fail":
        raise RuntimeError("wsgi app broke")
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("late")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"replaced"]
    if path == "/sleep":
        t0 = time.monotonic()
        time.sleep(0.5)
        events.append((t0, time.monotonic(), threading.current_thread().name))
        start_response("200 OK", [])
        return [b"slept"]
    if path == "/events":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(events).encode()]
    if path == "/file":
        import io
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"f" * 200000), 8192)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


class _Closing:
    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        events.append("closed")


def _generator(start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Closing([b"one;", b"", b"two;", b"three;"])
