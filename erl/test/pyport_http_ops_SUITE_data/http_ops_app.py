"""Apps and helpers of pyport_http_ops_SUITE."""
import os

import erlang

_hoard: list = []


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/grow":
        # This worker keeps 64 MiB more, touched so that it is resident.
        _hoard.append(bytearray(b"x" * (64 << 20)))
        body = b"grown"
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def ask_recycle(pool, os_pid):
    """What a worker's _http.py asks at max_requests, asked by anyone:
    "ok", or the refusal's text."""
    try:
        erlang.call("pyport.http_recycle", pool, os_pid)
        return "ok"
    except Exception as exc:  # the refusal, as Python sees it
        return f"{type(exc).__name__}: {exc}"


def my_pid():
    return os.getpid()
