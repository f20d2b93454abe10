"""Apps of pyport_http_rest_SUITE."""
import asyncio


async def ws_echo(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        m = await receive()
        if m["type"] == "websocket.disconnect":
            return
        if m.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": m["bytes"]})
        else:
            await send({"type": "websocket.send", "text": m["text"]})


async def hello(scope, receive, send):
    m = await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello " + m["body"]})


async def failing(scope, receive, send):
    raise ValueError("the app broke")


async def slow(scope, receive, send):
    await asyncio.sleep(30)


async def chunks(scope, receive, send):
    """A streamed response: N pieces of 1000 bytes (N from the query)."""
    n = int(scope["query_string"] or b"5")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-n", str(n).encode())]})
    for i in range(n):
        await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * 1000,
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def stream_then_fail(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    raise RuntimeError("broke mid-stream")


_started = []


async def forever(scope, receive, send):
    """Streams until cancelled; /cancelled says whether it was."""
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        _started.append("cancelled")
        raise


def cancelled() -> int:
    return len(_started)
