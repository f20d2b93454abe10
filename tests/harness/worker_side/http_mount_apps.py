"""Apps for tests/harness/test_http_mounts.py and pyport_http_SUITE's
mounts and hooks cases: each answers with what it saw, as JSON."""
import json

started = []
calls = []


def _make(name):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    started.append(name)
                    scope["state"]["who"] = name
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        calls.append(scope["path"])
        body = json.dumps({"app": name, "path": scope["path"], "root_path": scope["root_path"],
                           "state": scope.get("state", {}).get("who"),
                           "method": scope["method"],
                           "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]]})
        if scope["path"].endswith("/fail"):
            raise RuntimeError("the app failed on purpose")
        if scope["path"].endswith("/stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"x-app", b"1")]})
            await send({"type": "http.response.body", "body": body.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": body.encode()})
    return app


api = _make("api")
admin = _make("admin")
root = _make("root")


def wsgi(environ, start_response):
    body = json.dumps({"app": "wsgi", "SCRIPT_NAME": environ["SCRIPT_NAME"],
                       "PATH_INFO": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def seen():
    return list(calls)


def lifespan_started():
    return sorted(started)
