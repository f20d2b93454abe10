"""ASGI app of test_http_fastpath.py: one response shape per query
string, so the test can walk the one-write path and its fallbacks."""
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    body = q.get("body", "hello").encode()
    headers = [(b"content-type", b"text/plain")]
    if "length" in q:
        headers.append((b"content-length", q["length"].encode()))
    await send({"type": "http.response.start", "status": int(q.get("status", 200)),
                "headers": headers})
    if "str" in q:
        await send({"type": "http.response.body", "body": q["str"]})  # not bytes: the app's bug
        return
    await send({"type": "http.response.body", "body": body})
