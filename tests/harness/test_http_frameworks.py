"""Real frameworks on the HTTP server: Debian's Starlette 0.26 (routing,
JSON, forms where python3-multipart is installed, uploads, server-sent
events, lifespan state, background tasks), FastAPI 0.92 (path and query
parameters, pydantic bodies, validation errors, HTTPException, startup
events, OpenAPI) and Flask 2.2 over WSGI (routing, JSON, forms, a 3 MiB upload, streaming,
cookies)."""
import json
import subprocess

import pytest

from test_http import serve  # noqa: F401  (the fixture)

starlette_missing = subprocess.run(["/usr/bin/python3", "-c", "import starlette"],
                                   capture_output=True).returncode != 0
multipart_missing = subprocess.run(["/usr/bin/python3", "-c", "import multipart"],
                                   capture_output=True).returncode != 0
pytestmark = pytest.mark.skipif(starlette_missing,
                                reason="starlette not installed (python3-starlette)")


def test_starlette_app(serve):
    s = serve("http_starlette_app:app", lifespan="on")
    status, _, body = s.get("/items/42?q=x")
    assert status == 200
    assert json.loads(body) == {"id": 42, "q": "x", "state": {"started": True}}
    assert s.get("/items/notanint")[0] == 404
    assert s.get("/upload")[0] == 405
    payload = bytes(range(256)) * 4096  # 1 MiB
    status, _, body = s.get("/upload", method="POST", body=payload,
                            headers={"Content-Type": "application/octet-stream"})
    assert json.loads(body) == {"size": len(payload), "type": "application/octet-stream"}
    # Form parsing needs python3-multipart (not a pyport dependency): Starlette
    # raises, and the app's exception is a 500.
    if multipart_missing:
        assert s.get("/form", method="POST", body="a=1")[0] == 500
    else:
        status, _, body = s.get("/form", method="POST", body="a=1&b=two+words",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert json.loads(body) == {"a": "1", "b": "two words"}
    status, headers, body = s.get("/sse")
    assert dict(headers)["content-type"].startswith("text/event-stream")
    assert body == b"".join(b"data: %d\n\n" % i for i in range(5))
    assert s.get("/background")[2] == b"queued"
    assert json.loads(s.get("/done")[2]) == ["background"]
    assert s.worker.call("erlang._http", "stop", [2.0]) is True
    assert s.worker.eval("__import__('http_starlette_app').done") == ["background", "shutdown"]


fastapi_missing = subprocess.run(["/usr/bin/python3", "-c", "import fastapi"],
                                 capture_output=True).returncode != 0


@pytest.mark.skipif(fastapi_missing, reason="fastapi not installed (python3-fastapi)")
def test_fastapi_app(serve):
    s = serve("http_fastapi_app:app", lifespan="on")
    status, _, body = s.get("/items/7?q=abc")
    assert (status, json.loads(body)) == (200, {"item_id": 7, "q": "abc", "started": ["startup"]})
    status, _, body = s.get("/items/0")
    assert (status, json.loads(body)) == (404, {"detail": "no item 0"})
    status, _, body = s.get("/items/x")
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["path", "item_id"]
    status, _, body = s.get("/items", method="POST",
                            body=json.dumps({"name": "pen", "price": 1.5, "tags": ["a"]}),
                            headers={"Content-Type": "application/json"})
    assert (status, json.loads(body)) == (200, {"name": "pen", "total": 3.0, "tags": ["a"]})
    status, _, body = s.get("/items", method="POST", body=b"{not json",
                            headers={"Content-Type": "application/json"})
    assert status == 422
    status, _, body = s.get("/openapi.json")
    assert status == 200 and "/items/{item_id}" in json.loads(body)["paths"]


flask_missing = subprocess.run(["/usr/bin/python3", "-c", "import flask"],
                               capture_output=True).returncode != 0


@pytest.mark.skipif(flask_missing, reason="flask not installed (python3-flask)")
def test_flask_app(serve):
    s = serve("http_flask_app:app")  # WSGI, detected
    status, _, body = s.get("/items/5?q=z")
    assert (status, json.loads(body)) == (200, {"item_id": 5, "q": "z"})
    assert s.get("/items/x")[0] == 404
    status, _, body = s.get("/form", method="POST", body="a=1&b=two+words",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert json.loads(body) == {"a": "1", "b": "two words"}
    payload = b"u" * (3 << 20)
    assert json.loads(s.get("/upload", method="POST", body=payload)[2]) == {"size": len(payload)}
    assert s.get("/stream")[2] == b"line 0\nline 1\nline 2\n"
    _, headers, _ = s.get("/cookie")
    assert sorted(v.split(";")[0] for k, v in headers if k.lower() == "set-cookie") == ["a=1", "b=2"]
