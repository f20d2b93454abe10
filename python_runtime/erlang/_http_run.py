"""One request's ASGI scope or WSGI environ, from Erlang, run on a worker:
erlang_python's ``py_asgi:run/4,5`` and ``py_wsgi:run/3,4`` (for an HTTP
server the user already has in Erlang; docs/http.md, "py_asgi and
py_wsgi"). The apps are the same adapters' as the HTTP server's.
"""
from __future__ import annotations

import asyncio
import io
import sys
from typing import Any, AsyncIterator, Awaitable, Callable

from ._http import ASGI_VERSION, load_app
from ._types import atom

__all__ = ["run_asgi", "run_wsgi", "stream_asgi"]

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


async def _drive(module: str, callable_: str, scope: dict, body: Any,
                 on_start: Callable[[int, list], Awaitable[None]],
                 on_body: Callable[[bytes], Awaitable[None]]) -> None:
    """Runs the ASGI app once: the request body given whole, the response
    handed to `on_start`/`on_body` as the app sends it. Shared by the
    collecting and the streaming runner."""
    app = _app(module, callable_)
    body_bytes = _bytes(body)
    sent_body = False
    started = False
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
        nonlocal started, done
        kind = message["type"]
        if done:
            raise RuntimeError(f"{kind} after the response ended")
        if kind == "http.response.start":
            if started:
                raise RuntimeError("http.response.start sent twice")
            started = True
            await on_start(int(message["status"]),
                           [(bytes(k), bytes(v)) for k, v in message.get("headers", ())])
        elif kind == "http.response.body":
            if not started:
                raise RuntimeError("http.response.body before http.response.start")
            if not message.get("more_body", False):
                done = True
            await on_body(bytes(message.get("body", b"")))

    await app(_scope(scope), receive, send)
    if not started:
        raise RuntimeError("the ASGI app sent no response")
    if not done:
        raise RuntimeError("the ASGI app did not finish its response")


async def run_asgi(module: str, callable_: str, scope: dict, body: Any) -> tuple:
    """Runs the ASGI app on `scope` with `body`; (status, headers, body)."""
    head: list = []
    out: list = []

    async def on_start(status: int, headers: list) -> None:
        head.extend((status, headers))

    async def on_body(chunk: bytes) -> None:
        out.append(chunk)

    await _drive(module, callable_, scope, body, on_start, on_body)
    return (head[0], head[1], b"".join(out))


# Pieces the app may have sent ahead of a consumer that has not taken them:
# the app's send() waits beyond this (the stream's own credit bounds the rest).
_STREAM_AHEAD = 8


async def stream_asgi(module: str, callable_: str, scope: dict,
                      body: Any) -> AsyncIterator[tuple]:
    """Runs the ASGI app, yielding ``(start, Status, Headers)`` and then
    ``(body, Chunk)`` for each non-empty piece as the app sends them
    (``py_asgi:stream/4,5``). The app is cancelled when the stream is."""
    queue: asyncio.Queue = asyncio.Queue(_STREAM_AHEAD)
    start_tag, body_tag = atom("start"), atom("body")

    async def on_start(status: int, headers: list) -> None:
        await queue.put((start_tag, status, headers))

    async def on_body(chunk: bytes) -> None:
        if chunk:
            await queue.put((body_tag, chunk))

    task = asyncio.ensure_future(_drive(module, callable_, scope, body, on_start, on_body))
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            try:
                await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                yield get.result()
                continue
            while not queue.empty():
                yield queue.get_nowait()
            task.result()  # the app's exception, if it raised
            return
    finally:
        task.cancel()


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
