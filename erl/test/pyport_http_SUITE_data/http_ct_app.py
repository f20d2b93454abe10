"""ASGI apps of pyport_http_SUITE."""
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        import asyncio
        await asyncio.sleep(0.05)
    body = b"%d" % os.getpid()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the cache is unreachable"})
        return
    await app(scope, receive, send)


not_callable = 42


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi %d" % os.getpid()]


async def asgi_echo(scope, receive, send):
    """py_asgi:run: the scope's typed fields and the body, echoed."""
    m = await receive()
    import json
    out = {"path": scope["path"], "raw_path": scope["raw_path"].decode("latin-1"),
           "qs_is_bytes": isinstance(scope["query_string"], bytes),
           "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
           "method": scope["method"], "body": m["body"].decode()}
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"x-a", b"1"), (b"x-a", b"2")]})
    await send({"type": "http.response.body", "body": json.dumps(out).encode(),
                "more_body": True})
    await send({"type": "http.response.body", "body": b"!"})


def wsgi_echo(environ, start_response):
    """py_wsgi:run: PATH_INFO, a header and the body, echoed."""
    body = environ["wsgi.input"].read()
    start_response("202 Accepted", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"),
                                    ("Set-Cookie", "b=2")])
    return [environ["PATH_INFO"].encode("latin-1"), b";",
            environ.get("HTTP_X_THING", "").encode(), b";", body]
