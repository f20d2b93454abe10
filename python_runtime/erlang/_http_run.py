"""One request's ASGI scope or WSGI environ, from Erlang, run on a worker:
erlang_python's ``py_asgi:run/4,5`` and ``py_wsgi:run/3,4`` (for an HTTP
server the user already has in Erlang; docs/http.md, "py_asgi and
py_wsgi"). The apps are the same adapters' as the HTTP server's.
"""
from __future__ import annotations

import io
import sys
from typing import Any

from ._http import ASGI_VERSION, load_app

__all__ = ["run_asgi", "run_wsgi"]

_apps: dict = {}


def _app(module: str, callable_: str) -> Any:
    key = (module, callable_)
    app = _apps.get(key)
    if app is None:
        app = _apps[key] = load_app(f"{module}:{callable_}")
    return app


def _bytes(v: Any) -> bytes:
    # Erlang binaries arrive as str when they are UTF-8: their bytes back.
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"expected a binary, got {type(v).__name__}")


def _str(v: Any) -> str:
    return v if isinstance(v, str) else bytes(v).decode("latin-1")


def _scope(given: dict) -> dict:
    s = {str(k): v for k, v in given.items()}
    path = _str(s.get("path", "/"))
    scope = {
        "type": _str(s.get("type", "http")),
        "asgi": ASGI_VERSION,
        "http_version": _str(s.get("http_version", "1.1")),
        "method": _str(s.get("method", "GET")).upper(),
        "scheme": _str(s.get("scheme", "http")),
        "path": path,
        "raw_path": _bytes(s["raw_path"]) if "raw_path" in s else path.encode("utf-8"),
        "query_string": _bytes(s.get("query_string", b"")),
        "root_path": _str(s.get("root_path", "")),
        "headers": [(_bytes(h[0]).lower(), _bytes(h[1])) for h in s.get("headers", [])],
        "client": tuple(s["client"]) if s.get("client") else None,
        "server": tuple(s["server"]) if s.get("server") else None,
        "extensions": dict(s.get("extensions") or {}),
    }
    if "state" in s:
        scope["state"] = dict(s["state"])
    return scope


async def run_asgi(module: str, callable_: str, scope: dict, body: Any) -> tuple:
    """Runs the ASGI app on `scope` with `body`; (status, headers, body)."""
    app = _app(module, callable_)
    body_bytes = _bytes(body)
    sent_body = False
    status = None
    headers: list = []
    out: list = []
    done = False

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body_bytes, "more_body": False}
        # Nothing more will come: the request is whole, the "client" is the
        # caller, which waits for the whole response.
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status, headers, done
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif kind == "http.response.body":
            if status is None:
                raise RuntimeError("http.response.body before http.response.start")
            out.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done = True

    await app(_scope(scope), receive, send)
    if status is None:
        raise RuntimeError("the ASGI app sent no response")
    if not done:
        raise RuntimeError("the ASGI app did not finish its response")
    return (status, headers, b"".join(out))


def run_wsgi(module: str, callable_: str, environ: dict) -> tuple:
    """Runs the WSGI app on `environ` (its `wsgi.input` a binary, the body);
    (status line, headers, body)."""
    app = _app(module, callable_)
    env: dict = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.errors": sys.stderr,
        "wsgi.input_terminated": True,
    }
    body = b""
    for k, v in environ.items():
        k = str(k)
        if k == "wsgi.input":
            body = _bytes(v)
        elif isinstance(v, str):
            # PEP 3333: native strings carry bytes as latin-1.
            env[k] = v.encode("utf-8").decode("latin-1")
        elif isinstance(v, (bytes, bytearray)):
            env[k] = bytes(v).decode("latin-1")
        else:
            env[k] = v
    env["wsgi.input"] = io.BytesIO(body)
    env.setdefault("CONTENT_LENGTH", str(len(body)))
    from ._wsgi import FileWrapper
    env["wsgi.file_wrapper"] = FileWrapper
    state: dict = {}
    written: list = []

    def start_response(status: str, headers: list, exc_info: Any = None):
        if exc_info is not None:
            try:
                if written:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif "status" in state:
            raise AssertionError("start_response called twice without exc_info")
        state["status"] = status
        state["headers"] = [(str(n).encode("latin-1"), str(v).encode("latin-1"))
                            for n, v in headers]
        return written.append

    result = app(env, start_response)
    try:
        for chunk in result:
            if chunk:
                written.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in state:
        raise RuntimeError("the WSGI app did not call start_response")
    return (state["status"].encode("latin-1"), state["headers"], b"".join(written))
