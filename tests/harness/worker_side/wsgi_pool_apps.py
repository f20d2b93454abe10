"""Worker side of tests/harness/test_wsgi_pool.py: a WSGI app whose calls
are recorded, and checks that drive _pyport_wsgi.Pool directly."""
import asyncio
import threading
import time

import _pyport_wsgi

calls = []  # (path, thread name, start, end) per app call


def app(environ, start_response):
    path = environ["PATH_INFO"]
    t0 = time.monotonic()
    if path.startswith("/sleep/"):
        time.sleep(float(path[len("/sleep/"):]))
    calls.append((path, threading.current_thread().name, t0, time.monotonic()))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [path.encode()]


def calls_made() -> list:
    return list(calls)


def pool_stats() -> dict:
    import erlang._http
    return erlang._http._servers[0].app.pool.stats()


def _square(x):
    return x * x


def _fail(x):
    raise ValueError(f"bad {x}")


def _stop(x):
    raise StopIteration(x)


async def results_and_errors() -> list:
    """Jobs' results and exceptions reach their futures; StopIteration
    (which a future cannot hold) arrives as a RuntimeError."""
    loop = asyncio.get_running_loop()
    pool = _pyport_wsgi.Pool(2)
    loop.add_reader(pool.fileno(), pool.drain)
    try:
        futs = []
        for i in range(50):
            f = loop.create_future()
            pool.submit(_square, i, f)
            futs.append(f)
        out = [await f for f in futs]
        bad = loop.create_future()
        pool.submit(_fail, 7, bad)
        stop = loop.create_future()
        pool.submit(_stop, 1, stop)
        errors = []
        for f in (bad, stop):
            try:
                await f
            except BaseException as e:  # noqa: BLE001  (what arrived is the point)
                errors.append(f"{type(e).__name__}: {e}")
        return [out == [i * i for i in range(50)], errors]
    finally:
        loop.remove_reader(pool.fileno())
        pool.shutdown()


async def shutdown_cancels_queued() -> list:
    """shutdown(): the running job finishes, queued ones are cancelled and
    never run, and submit() is refused after."""
    loop = asyncio.get_running_loop()
    pool = _pyport_wsgi.Pool(1)
    loop.add_reader(pool.fileno(), pool.drain)
    ran = []
    try:
        first = loop.create_future()
        pool.submit(lambda x: (time.sleep(0.3), ran.append(x)), "first", first)
        await asyncio.sleep(0.05)  # the thread is in the first job
        queued = [loop.create_future() for _ in range(3)]
        for i, f in enumerate(queued):
            pool.submit(ran.append, f"q{i}", f)
        pool.shutdown()
        await first
        refused = ""
        try:
            pool.submit(ran.append, "late", loop.create_future())
        except RuntimeError as e:
            refused = str(e)
        await asyncio.sleep(0.1)
        return [ran, [f.cancelled() for f in queued], refused]
    finally:
        loop.remove_reader(pool.fileno())


async def cancelled_job_is_skipped() -> list:
    """A job whose future was cancelled while it waited does not run."""
    loop = asyncio.get_running_loop()
    pool = _pyport_wsgi.Pool(1)
    loop.add_reader(pool.fileno(), pool.drain)
    ran = []
    try:
        first = loop.create_future()
        pool.submit(lambda x: (time.sleep(0.2), ran.append(x)), "first", first)
        await asyncio.sleep(0.05)
        second = loop.create_future()
        pool.submit(ran.append, "second", second)
        second.cancel()
        third = loop.create_future()
        pool.submit(ran.append, "third", third)
        await first
        await third
        return ran
    finally:
        loop.remove_reader(pool.fileno())
        pool.shutdown()


def bad_arguments() -> list:
    out = []
    for kwargs in ({"threads": 0}, {"threads": 2000}, {"threads": 2, "spin_us": -1},
                   {"threads": 2, "thread_hook": 3}):
        try:
            _pyport_wsgi.Pool(**kwargs)
            out.append("accepted")
        except (ValueError, TypeError) as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


async def shutdown_while_running() -> list:
    """WsgiAdapter.shutdown() while a request runs: that request is still
    answered (its task ends), a queued one is cancelled, and the loop
    stops watching the pool once the running one ended."""
    from erlang._wsgi import WsgiAdapter

    def slow(environ, start_response):
        time.sleep(0.3)
        start_response("200 OK", [])
        return [b"late"]

    adapter = WsgiAdapter(slow, 1)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message.get("status", message.get("body")))

    scope = {"type": "http", "method": "GET", "http_version": "1.1", "scheme": "http",
             "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
             "headers": [], "client": None, "server": None}
    running = asyncio.ensure_future(adapter(scope, receive, send))
    await asyncio.sleep(0.1)
    queued = asyncio.ensure_future(adapter(dict(scope), receive, send))
    await asyncio.sleep(0)
    adapter.shutdown()
    await asyncio.wait_for(running, 5)
    outcome = "cancelled" if queued.cancelled() else "not cancelled"
    try:
        await asyncio.wait_for(queued, 5)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0.1)
    return [sent, outcome, adapter._loop is None]
