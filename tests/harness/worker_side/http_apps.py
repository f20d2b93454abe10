"""ASGI apps the HTTP tests serve (tests/harness/test_http.py)."""
import asyncio
import json

# What the apps saw, for the tests to ask through /events.
events: list = []
hold = None  # an asyncio.Event /hold waits on


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


def _jsonable(v):
    if isinstance(v, bytes):
        return {"bytes": v.decode("latin-1")}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


async def _read_body(receive):
    body = []
    pieces = 0
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            events.append("disconnect-while-reading")
            return None, pieces
        body.append(m["body"])
        pieces += 1
        if not m.get("more_body", False):
            return b"".join(body), pieces


async def _reply(send, status, body, headers=(), content_type=b"application/json"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *headers]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    """Routes by path; see each branch."""
    global hold
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "from lifespan"
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                events.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path.startswith("/scope"):
        s = {k: v for k, v in scope.items() if k not in ("extensions",)}
        await _reply(send, 200, json.dumps(_jsonable(s)).encode())
    elif path == "/echo":
        body, pieces = await _read_body(receive)
        if body is None:
            return
        await _reply(send, 200, body, [(b"x-pieces", str(pieces).encode())],
                     content_type=b"application/octet-stream")
    elif path == "/stream":
        n = int(scope["query_string"].split(b"=")[1]) if scope["query_string"] else 3
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"chunk%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/big":
        # size bytes in 64 KiB pieces; records how far it got.
        size = int(scope["query_string"].split(b"=")[1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        sent = 0
        piece = b"x" * 65536
        while sent < size:
            n = min(65536, size - sent)
            await send({"type": "http.response.body", "body": piece[:n], "more_body": True})
            sent += n
            events.append(("big", sent)) if sent % (1 << 20) == 0 else None
        await send({"type": "http.response.body", "body": b""})
    elif path == "/forever":
        # Streams until the client goes: send raises, receive says disconnect.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.01)
        except OSError:
            events.append("send-raised")
        m = await receive()
        if m["type"] == "http.request":
            m = await receive()
        events.append(m["type"])
    elif path == "/flood":
        # 64 KiB pieces as fast as the client takes them, until it goes.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"f" * 65536
        try:
            while True:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except OSError:
            events.append("flood-raised")
    elif path == "/wait-disconnect":
        # Long-poll: reads its body, then waits for the client to go.
        await _read_body(receive)
        m = await receive()
        events.append(("waited", m["type"]))
    elif path == "/hold":
        # Reads nothing until /release is called.
        if hold is None:
            hold = asyncio.Event()
        await hold.wait()
        body, _ = await _read_body(receive)
        await _reply(send, 200, b"%d" % len(body or b""))
    elif path == "/release":
        if hold is not None:
            hold.set()
        await _reply(send, 200, b"ok")
    elif path == "/buffered":
        from erlang import _http
        n = sum(c.buffered for s in _http._servers for c in s.connections)
        await _reply(send, 200, str(n).encode())
    elif path == "/events":
        await _reply(send, 200, json.dumps(events).encode())
    elif path == "/fail":
        raise RuntimeError("the app broke on purpose")
    elif path == "/fail-late":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("late failure")
    elif path == "/status":
        code = int(scope["query_string"].split(b"=")[1])
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b"body-not-sent"})
    elif path == "/count":
        # Reads the body, keeps only its length.
        n = 0
        while True:
            m = await receive()
            if m["type"] != "http.request":
                return
            n += len(m["body"])
            if not m.get("more_body"):
                break
        await _reply(send, 200, str(n).encode())
    elif path == "/none":
        return
    elif path == "/start-only":
        await send({"type": "http.response.start", "status": 200, "headers": []})
    elif path == "/start-then-fail":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("failed between start and body")
    elif path == "/too-long":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"abcdef"})
    elif path == "/head-chunked":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"transfer-encoding", b"chunked")]})
        await send({"type": "http.response.body", "body": b"abc"})
    elif path == "/cookies":
        await _reply(send, 200, b"c", [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")])
    elif path == "/sleep":
        await asyncio.sleep(float(scope["query_string"].split(b"=")[1]))
        await _reply(send, 200, b"slept")
    else:
        await _reply(send, 404, b"not found", content_type=b"text/plain")


async def failing_lifespan(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database here"})
        return
    await hello(scope, receive, send)
