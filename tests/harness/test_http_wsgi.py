"""WSGI (PEP 3333) apps on the HTTP server (erlang._wsgi): the environ,
streaming wsgi.input, start_response with exc_info, write(), iterables
closed, repeated headers, file_wrapper, failures, and the thread pool."""
import json
import threading

from test_http import Reader, raw_exchange, serve, status_of, wait_for  # noqa: F401  (serve)


def test_environ_per_pep_3333(serve):
    s = serve("http_wsgi_apps:app")
    status, _, body = s.get("/environ?a=%20b", headers={"X-Thing": "1", "Cookie": "x=1"})
    assert status == 200
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "GET" and env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ" and env["QUERY_STRING"] == "a=%20b"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(s.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and int(env["REMOTE_PORT"]) > 0
    assert env["HTTP_X_THING"] == "1" and env["HTTP_COOKIE"] == "x=1"
    assert env["HTTP_HOST"] == f"127.0.0.1:{s.port}"
    assert env["wsgi.version"] == [1, 0] and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True and env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True and env["errors_is_stderr"] is True


def test_path_info_is_latin1_of_the_decoded_bytes(serve):
    s = serve("http_wsgi_apps:app")
    with s.sock() as sock:
        sock.sendall(b"GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\n"
                     b"Connection: close\r\n\r\n")
        assert Reader(sock).response()[0] == 404
    # PEP 3333: b"/caf\xc3\xa9" carried as latin-1; root_path is SCRIPT_NAME.
    s2 = serve("http_wsgi_apps:app", root_path="/mnt")
    body = s2.get("/mnt/environ")[2]
    env = json.loads(body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/mnt", "/environ")
    out = raw_exchange(s, b"GET /environ/caf%C3%A9 HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: close\r\n\r\n")
    assert status_of(out) == 404  # PATH_INFO "/environ/caf\xc3\xa9" is not "/environ"


def test_streaming_input_and_content_length(serve):
    s = serve("http_wsgi_apps:app")
    payload = bytes(range(256)) * 400  # 102,400 bytes
    status, headers, body = s.get("/echo", method="POST", body=payload)
    assert (status, body) == (200, payload)
    h = dict((k.lower(), v) for k, v in headers)
    assert h["x-pieces"] == "103" and h["content-length"] == str(len(payload))
    # chunked request body, read line by line
    with s.sock() as sock:
        sock.sendall(b"POST /lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\nab\nc\r\n3\r\nd\ne\r\n0\r\n\r\n")
        assert json.loads(Reader(sock).response()[2]) == ["ab\n", "cd\n", "e"]


def test_generator_write_close_and_headers(serve):
    s = serve("http_wsgi_apps:app")
    status, headers, body = s.get("/generator")
    assert body == b"one;two;three;"
    assert dict((k.lower(), v) for k, v in headers)["transfer-encoding"] == "chunked"
    # close() runs right after the last piece went out
    assert wait_for(lambda: "closed" in json.loads(s.get("/events")[2]))
    assert s.get("/write")[2] == b"written;returned"
    _, headers, _ = s.get("/cookies")
    assert [v for k, v in headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]
    assert "keep-alive" not in [v.lower() for k, v in headers if k.lower() == "connection"]
    status, _, body = s.get("/file")
    assert body == b"f" * 200000


def test_failures(serve):
    s = serve("http_wsgi_apps:app")
    assert s.get("/fail")[0] == 500
    status, _, body = s.get("/exc-info")
    assert (status, body) == (500, b"replaced")  # exc_info before the head: replaced
    assert s.get("/environ")[0] == 200


def test_slow_requests_run_on_threads_not_the_loop(serve):
    s = serve("http_wsgi_apps:app", wsgi_threads=4)
    results = []
    threads = [threading.Thread(target=lambda: results.append(s.get("/sleep")[0]))
               for _ in range(3)]
    for t in threads:
        t.start()
    # While they sleep, the loop still answers.
    assert s.get("/environ")[0] == 200
    for t in threads:
        t.join(30)
    assert results == [200, 200, 200]
    spans = json.loads(s.get("/events")[2])[-3:]
    # They overlapped: each started before another ended.
    starts, ends = sorted(x[0] for x in spans), sorted(x[1] for x in spans)
    assert starts[-1] < ends[0], spans
    assert all(x[2].startswith("pyport-wsgi") for x in spans)


def test_interface_is_detected_or_forced(spawn):
    import pyport_proto
    import pytest
    from test_http import free_port
    w = spawn()
    with pytest.raises(pyport_proto.RemoteError) as e:
        w.exec("import erlang._http\n"
               f"erlang._http.start('http_wsgi_apps:app', '127.0.0.1:{free_port()}', "
               "{'lifespan': 'on'})")
    assert "lifespan => on needs an ASGI app" in str(e.value)
    w.exec("import importlib\nis_wsgi = importlib.import_module('erlang._wsgi').is_wsgi")
    assert w.eval("is_wsgi(__import__('http_wsgi_apps').app)") is True
    assert w.eval("is_wsgi(__import__('http_apps').app)") is False
    assert w.eval("is_wsgi(__import__('http_apps').hello)") is False
