"""The WSGI thread pool (_pyport_wsgi.Pool, port_worker/wsgi_pool.hpp) and
the native environ (port_worker/wsgi_environ.hpp) behind erlang._wsgi:
requests behind a slow one are not held up, an idle pool uses no CPU,
bursts share one GIL hand-over, results/exceptions/cancellation reach the
loop, and the environ equals PEP 3333's (a reference written here)."""
import os
import socket
import threading
import time
from urllib.parse import unquote_to_bytes

import pytest

from test_http import Reader, serve  # noqa: F401  (serve is a fixture)


def _get_many(port, paths):
    """Sends one request per path, each on its own connection, all at
    once; returns {path: seconds until its response}."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in paths]
    t0 = time.monotonic()
    for s, p in zip(socks, paths):
        s.sendall(f"GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    took = {}
    errors = []

    def read(s, p):
        try:
            status = Reader(s).response()[0]
            took[p] = (status, time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=read, args=(s, p)) for s, p in zip(socks, paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return took


def test_requests_behind_a_blocking_one_are_not_held_up(serve):
    s = serve("wsgi_pool_apps:app", wsgi_threads=4)
    # One request blocks its thread for 3 s; the others, sent at the same
    # moment (so some queue behind it), are answered long before.
    paths = ["/sleep/3"] + [f"/fast{i}" for i in range(6)]
    took = _get_many(s.port, paths)
    assert took["/sleep/3"][0] == 200 and took["/sleep/3"][1] >= 2.9
    for p in paths[1:]:
        assert took[p][0] == 200
        # Answered before the sleeper was: not queued behind it (the order
        # of the outcomes, not a latency bound the machine's load decides).
        assert took[p][1] < took["/sleep/3"][1], (p, took)
    calls = s.worker.call("wsgi_pool_apps", "calls_made")
    sleeper = next(c for c in calls if c[0] == "/sleep/3")
    assert all(c[1].startswith("pyport-wsgi") for c in calls)
    assert all(c[2] < sleeper[3] for c in calls), calls  # they ran while it slept


def test_a_burst_is_run_in_batches(serve):
    s = serve("wsgi_pool_apps:app", wsgi_threads=8)
    for _ in range(5):
        took = _get_many(s.port, [f"/b{i}" for i in range(20)])
        assert all(v[0] == 200 for v in took.values())
    st = s.worker.call("wsgi_pool_apps", "pool_stats")
    assert st["submitted"] == 100 and st["queued"] == 0 and st["active"] == 0
    # Some thread ran several requests under one GIL hand-over.
    assert st["batches"] < st["submitted"], st


def _schedstat(pid):
    """{tid: (name, ns on CPU, times scheduled)} of a process's threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, _, slices = (int(x) for x in f.read().split())
        except FileNotFoundError:
            continue
        out[tid] = (name, run, slices)
    return out


def test_an_idle_pool_uses_no_cpu(serve):
    s = serve("wsgi_pool_apps:app", wsgi_threads=4)
    _get_many(s.port, ["/sleep/0.2"] + [f"/i{i}" for i in range(10)])
    pid = s.worker.hello.os_pid
    time.sleep(0.3)
    before = _schedstat(pid)
    pool = [t for t, v in before.items() if v[0] == "pyport-wsgi"]
    assert pool, before
    time.sleep(2.0)
    after = _schedstat(pid)
    for t in pool:
        ran_ns = after[t][1] - before[t][1]
        woke = after[t][2] - before[t][2]
        # Parked on a condition variable with no timeout: not scheduled at
        # all (a spinning or polling thread would be, hundreds of times).
        assert woke == 0 and ran_ns == 0, (t, ran_ns, woke)


def test_pool_results_errors_and_cancellation(worker):
    worker.exec("import wsgi_pool_apps")
    ok, errors = worker.call("wsgi_pool_apps", "results_and_errors")
    assert ok is True
    assert errors[0] == "ValueError: bad 7"
    assert errors[1].startswith("RuntimeError:") and "StopIteration" in errors[1]
    ran, cancelled, refused = worker.call("wsgi_pool_apps", "shutdown_cancels_queued")
    assert ran == ["first"] and cancelled == [True, True, True]
    assert refused == "the WSGI thread pool is shut down"
    assert worker.call("wsgi_pool_apps", "cancelled_job_is_skipped") == ["first", "third"]
    assert worker.call("wsgi_pool_apps", "bad_arguments") == [
        "ValueError: threads must be 1..1024, not 0",
        "ValueError: threads must be 1..1024, not 2000",
        "ValueError: spin_us must be 0..1000, not -1",
        "TypeError: thread_hook must be callable or None"]


# ---- the environ, against PEP 3333 as written here --------------------------

def reference_environ(scope, mount=""):
    """The str-valued keys of a PEP 3333 environ for an ASGI http scope."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    path = unquote_to_bytes(scope["raw_path"]).decode("latin-1")
    script = scope.get("root_path", "")
    if mount:
        path = path[len(mount.encode("utf-8")):]
    elif script and path.startswith(script):
        path = path[len(script):]
    env = {"REQUEST_METHOD": scope["method"], "SCRIPT_NAME": script, "PATH_INFO": path,
           "QUERY_STRING": scope["query_string"].decode("latin-1"),
           "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
           "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
           "wsgi.url_scheme": scope.get("scheme", "http")}
    if client:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = str(client[0]), str(client[1])
    for name, value in scope["headers"]:
        if b"_" in name:
            continue
        key = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}.get(
            name) or "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        v = value.decode("latin-1")
        env[key] = env[key] + (";" if key == "HTTP_COOKIE" else ",") + v if key in env else v
    return env


def _scope(**kw):
    base = {"type": "http", "method": "GET", "http_version": "1.1", "scheme": "http",
            "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"example.org")], "client": ("10.0.0.1", 4242),
            "server": ("127.0.0.1", 8000)}
    base.update(kw)
    return base


CASES = [
    (_scope(), ""),
    (_scope(raw_path=b"/caf%C3%A9/a%2Fb%zz%4", query_string=b"q=%20\xe9"), ""),
    (_scope(raw_path=b"/app/x%20y", root_path="/app"), ""),
    (_scope(raw_path=b"/other", root_path="/app"), ""),
    (_scope(raw_path=b"/m\xc3\xa9nu/p", root_path="/m\xe9nu"), "/m\u00e9nu"),
    (_scope(method="POST", http_version="1.0", scheme="https", client=None, server=None,
            headers=[(b"content-type", b"text/plain"), (b"content-length", b"3"),
                     (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"x"),
                     (b"accept", b"y"), (b"x_under", b"dropped"), (b"x-\xb5", b"micro"),
                     [b"x-list", b"pair"], (b"x-latin", b"caf\xe9")]), ""),
    (_scope(http_version="2", headers=[]), ""),
]


def test_native_environ_matches_the_reference(worker):
    worker.exec("import _pyport_wsgi\n"
                "def native(scope, mount):\n"
                "    env = _pyport_wsgi.environ(scope, 'INPUT', mount, {'wsgi.version': (1, 0)})\n"
                "    assert env['wsgi.input'] == 'INPUT' and env['wsgi.version'] == (1, 0)\n"
                "    import sys\n"
                "    assert env['wsgi.errors'] is sys.stderr\n"
                "    return {k: v for k, v in env.items() if type(v) is str and k != 'wsgi.input'}\n")
    for scope, mount in CASES:
        got = worker.eval(f"native({scope!r}, {mount!r})")
        assert got == reference_environ(scope, mount), (scope, mount)


@pytest.mark.parametrize("bad, error", [
    ("_scope(headers=[('host', b'x')])", "TypeError: ASGI header names and values must be bytes"),
    ("_scope(headers=[(b'a', b'b', b'c')])", "ValueError: an ASGI header is a (name, value) pair"),
    ("_scope(raw_path='/')", "TypeError: scope['raw_path'] must be bytes"),
    ("{k: v for k, v in _scope().items() if k != 'method'}", "KeyError: 'method'"),
])
def test_native_environ_refuses_a_bad_scope(worker, bad, error):
    import inspect
    worker.exec("import _pyport_wsgi\n" + inspect.getsource(_scope))
    worker.exec("def attempt(scope):\n"
                "    try:\n"
                "        _pyport_wsgi.environ(scope, None, '', {})\n"
                "    except Exception as e:\n"
                "        return f'{type(e).__name__}: {e}'\n"
                "    return 'accepted'\n")
    assert worker.eval(f"attempt({bad})") == error


def test_response_start_as_asgi_wants_it(worker):
    worker.exec("import _pyport_wsgi\n"
                "def start(status, headers):\n"
                "    try:\n"
                "        return _pyport_wsgi.response_start(status, headers)\n"
                "    except Exception as e:\n"
                "        return f'{type(e).__name__}: {e}'\n")
    got = worker.eval(
        "repr(start('404 Not Found', [('Content-Type', 'text/plain'), ('Set-Cookie', 'a=1'),"
        " ('CONNECTION', 'close'), ('Transfer-Encoding', 'chunked'), ['Set-Cookie', 'b=2'],"
        " ('X-Caf\\u00e9', 'cr\\u00e8me'), ('Keep-Alive', '5'), ('Upgrade', 'h2c')]))")
    # (bytes name, bytes value) tuples, as the server's own messages have.
    assert got == repr((404, [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"),
                              (b"Set-Cookie", b"b=2"), (b"X-Caf\xe9", b"cr\xe8me")]))
    assert worker.eval("repr(start('200', ()))") == "(200, [])"
    assert worker.eval("start('20', [])") == "ValueError: bad WSGI status '20'"
    assert worker.eval("start(b'200 OK', [])") == "ValueError: bad WSGI status b'200 OK'"
    assert worker.eval("start('2x0 OK', [])") == "ValueError: bad WSGI status '2x0 OK'"
    assert worker.eval("start('200 OK', [('A', 1)])") == \
        "TypeError: WSGI header names and values must be str"
    assert worker.eval("start('200 OK', [('A',)])") == \
        "ValueError: a WSGI header is a (name, value) pair"
    assert worker.eval("start('200 OK', [('A', '\\u20ac')])").startswith("UnicodeEncodeError")


def test_shutdown_answers_the_running_request(worker):
    worker.exec("import wsgi_pool_apps")
    sent, outcome, unwatched = worker.call("wsgi_pool_apps", "shutdown_while_running")
    assert sent == [200, "late"]
    assert outcome == "cancelled"
    assert unwatched is True
