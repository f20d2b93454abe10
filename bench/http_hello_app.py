"""The hello-world ASGI app bench/http_bench.py serves on both servers."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo(scope, receive, send):
    """POST: answers the request body as JSON (the 1 KiB echo figure)."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    """The WSGI hello world."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]
