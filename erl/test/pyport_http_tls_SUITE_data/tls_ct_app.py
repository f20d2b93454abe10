"""The ASGI and WSGI apps of pyport_http_tls_SUITE: the scheme and the pid."""
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"%s %d" % (scope["scheme"].encode(), os.getpid())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%s %d" % (environ["wsgi.url_scheme"].encode(), os.getpid())]
