"""ASGI WebSocket apps for tests/harness/test_http_websocket.py."""
import asyncio
import json
import os
from urllib.parse import parse_qs

EVENTS: list = []  # what the apps saw, read back over HTTP at /events


def _query(scope) -> dict:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def _http(scope, receive, send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        if scope["path"] == "/events":
            await _http(scope, receive, send, json.dumps(EVENTS).encode())
        else:
            await _http(scope, receive, send, b"{}")
        return
    path = scope["path"][len(scope.get("root_path", "")):]  # as a mounted app routes
    q = _query(scope)
    first = await receive()
    assert first == {"type": "websocket.connect"}, first
    if path == "/deny":
        await send({"type": "websocket.close", "code": 1008})
        return
    if path == "/return":
        return  # neither accept nor close: 403
    if path == "/hang":
        await asyncio.sleep(3600)  # neither accepts nor refuses
    if path == "/fail":
        raise RuntimeError("the app failed before accepting")
    if path == "/scope":
        await send({"type": "websocket.accept"})
        s = {k: (v.decode("latin-1") if isinstance(v, bytes) else v)
             for k, v in scope.items() if k not in ("headers", "state")}
        s["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        s["client"] = list(scope["client"])
        s["server"] = list(scope["server"])
        await send({"type": "websocket.send", "text": json.dumps(s)})
        await receive()
        return
    if path == "/subprotocol":
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][-1],
                    "headers": [(b"x-extra", b"yes"), (b"set-cookie", b"a=1")]})
        await send({"type": "websocket.send", "text": json.dumps(scope["subprotocols"])})
        await receive()
        return
    await send({"type": "websocket.accept"})
    if path == "/echo":
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                EVENTS.append(["disconnect", q.get("tag", ""), m["code"]])
                return
            if m.get("text") is not None:
                if m["text"] == "close-me":
                    await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                    m2 = await receive()
                    EVENTS.append(["after-close", m2["type"], m2.get("code")])
                    return
                await send({"type": "websocket.send", "text": m["text"]})
            else:
                await send({"type": "websocket.send", "bytes": m["bytes"]})
    elif path == "/push":
        # Server push: no client traffic needed.
        for i in range(int(q.get("n", "5"))):
            await asyncio.sleep(0.05)
            await send({"type": "websocket.send", "text": f"tick {i}"})
        await send({"type": "websocket.close", "code": 1000})
    elif path == "/flood":
        # Sends 64 KiB messages as fast as send() lets it; a client that
        # does not read must stop it (backpressure).
        sent = 0
        blob = b"x" * 65536
        ws = receive.__self__
        EVENTS.append(["flood-start"])
        try:
            while sent < 2000:
                await send({"type": "websocket.send", "bytes": blob})
                sent += 1
                EVENTS[-1] = ["flood", sent]
        except OSError:
            EVENTS.append(["flood-cut", sent])
        del ws
    elif path == "/idle":
        # Does not receive: reading must pause; reports what waits.
        ws = receive.__self__
        await asyncio.sleep(float(q.get("wait", "1")))
        EVENTS.append(["idle", ws.inbox_bytes, ws.read_paused])
        n = 0
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                break
            n += 1
            if m.get("bytes") == b"end":
                await send({"type": "websocket.send", "text": str(n)})
        EVENTS.append(["idle-done", n])
    elif path == "/pid":
        await send({"type": "websocket.send", "text": str(os.getpid())})
        await receive()


def _starlette():
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo_json(ws: WebSocket) -> None:
        await ws.accept(subprotocol="json.v1" if "json.v1" in ws.scope["subprotocols"] else None)
        try:
            while True:
                data = await ws.receive_json()
                await ws.send_json({"echo": data, "path": ws.url.path})
        except WebSocketDisconnect as exc:
            EVENTS.append(["starlette-disconnect", exc.code])

    async def refuse(ws: WebSocket) -> None:
        await ws.close(code=1008)

    return Starlette(routes=[WebSocketRoute("/json", echo_json), WebSocketRoute("/refuse", refuse)])


def _fastapi():
    from fastapi import FastAPI, WebSocket

    api = FastAPI()

    @api.websocket("/items/{item_id}")
    async def items(ws: WebSocket, item_id: int, q: str = "") -> None:
        await ws.accept()
        await ws.send_text(f"item {item_id} q={q}")
        text = await ws.receive_text()
        await ws.send_bytes(text.encode()[::-1])
        await ws.close(code=4321)

    return api


class _Lazy:
    """Builds the framework app on first use (the module loads without it)."""

    def __init__(self, make):
        self.make, self.app = make, None

    async def __call__(self, scope, receive, send):
        if self.app is None:
            self.app = self.make()
        await self.app(scope, receive, send)


starlette_app = _Lazy(_starlette)
fastapi_app = _Lazy(_fastapi)
