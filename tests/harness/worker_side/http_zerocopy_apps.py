"""ASGI apps of test_http_zerocopysend.py: ASGI's http.response.zerocopysend
extension (the file named by the query string, sent in one or more
messages)."""
import json
import os
from urllib.parse import parse_qs

from http_sendfile_apps import _sent  # noqa: F401  (counts os.sendfile: it patches os)


def _q(scope):
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = _q(scope)
    if scope["path"] == "/extensions":
        body = json.dumps(scope.get("extensions")).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/sent":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d %d" % tuple(_sent)})
        return
    headers = [(b"content-type", b"application/octet-stream")]
    if "length" in q:
        headers.append((b"content-length", q["length"].encode()))
    if "te" in q:
        headers.append((b"transfer-encoding", b"chunked"))
    f = open(q["path"], "rb")
    try:
        if "seek" in q:
            f.seek(int(q["seek"]))
        await send({"type": "http.response.start", "status": int(q.get("status", 200)),
                    "headers": headers})
        target = f.fileno() if "fd" in q else f
        # parts=a,b,...: one message per count, the last one ending the
        # response (no offset after the first: the file's position).
        if "parts" in q:
            counts = [int(c) for c in q["parts"].split(",")]
            for i, count in enumerate(counts):
                m = {"type": "http.response.zerocopysend", "file": target, "count": count,
                     "more_body": i < len(counts) - 1}
                if i == 0 and "offset" in q:
                    m["offset"] = int(q["offset"])
                await send(m)
            return
        m = {"type": "http.response.zerocopysend", "file": target,
             "more_body": "tail" in q}
        for key in ("offset", "count"):
            if key in q:
                m[key] = int(q[key])
        try:
            await send(m)
        except ValueError as exc:
            if "bad" not in q:
                raise
            await send({"type": "http.response.body", "body": str(exc).encode()})
            return
        if "tail" in q:
            await send({"type": "http.response.body", "body": q["tail"].encode()})
    finally:
        f.close()
