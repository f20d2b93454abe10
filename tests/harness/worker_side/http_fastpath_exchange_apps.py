"""ASGI app of test_http_fastpath_exchange.py: the C++ send()/receive()
(port_worker/http_exchange.cpp) at the edges of their fast path. The
path picks the case; what the app saw is answered in the body, or kept
in SEEN for /seen (asked on another connection)."""
import asyncio

SEEN: dict = {}

START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/plain")]}


async def _answer(send, text):
    await send(START)
    await send({"type": "http.response.body", "body": text.encode()})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/seen":
        await _answer(send, repr(sorted(SEEN.items())))
    elif path == "/refs":
        # References to the C++ types and the objects the collector sees:
        # steady across requests when nothing leaks.
        import gc
        import sys
        import _pyport_http
        gc.collect()
        await _answer(send, repr([sys.getrefcount(_pyport_http.Ready),
                                  sys.getrefcount(_pyport_http.Send),
                                  sys.getrefcount(_pyport_http.Receive),
                                  len(gc.get_objects())]))
    elif path == "/bad":
        # Bad messages: each raises its error and changes nothing, so a
        # good response follows.
        errors = []
        for bad in ({"type": "http.response.start", "status": "200"},
                    {"type": "http.response.start", "status": 199},
                    {"type": "http.response.start", "status": 200, "headers": [("a", "b")]},
                    {"type": "http.response.start", "status": 200, "headers": [(b"a\n", b"b")]},
                    {"type": "http.response.body", "body": b"early"},
                    {"type": "http.response.nonsense"},
                    ["not", "a", "dict"]):
            try:
                await send(bad)
                errors.append("no error")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")
        await _answer(send, "\n".join(errors))
    elif path == "/after-end":
        await send(START)
        await send({"type": "http.response.body", "body": b"done"})
        for late in (START, {"type": "http.response.body", "body": b"late"}):
            try:
                await send(late)
                SEEN["after-end"] = "no error"
            except Exception as e:  # noqa: BLE001
                SEEN.setdefault("after-end-errors", []).append(f"{type(e).__name__}: {e}")
    elif path == "/awaitable":
        # The finished awaitable is a coroutine to asyncio.
        a = send(START)
        kinds = [asyncio.iscoroutine(a), hasattr(a, "__await__")]
        await asyncio.ensure_future(a)
        await asyncio.get_running_loop().create_task(
            send({"type": "http.response.body", "body": repr(kinds).encode()}))
    elif path == "/echo":
        body = b""
        messages = 0
        while True:
            m = await receive()
            messages += 1
            body += m.get("body", b"")
            if not m.get("more_body", False):
                break
        await send(START)
        await send({"type": "http.response.body", "body": b"%d:%s" % (messages, body)})
    elif path == "/stream":
        # The client reads nothing at first: send() must wait (the slow
        # path's backpressure), so the count stays small.
        SEEN["stream"] = 0
        await send(START)
        chunk = b"x" * (1 << 20)
        for _ in range(64):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            SEEN["stream"] += 1
        await send({"type": "http.response.body", "body": b""})
    else:
        await _answer(send, "hello")
