"""ErlangEventLoop inside a real worker: its libuv selector, callbacks,
timers, threads, cancellation, the exception handler and debug mode."""
import asyncio
import logging
import os
import selectors
import socket
import threading

import pytest

import _pyport_loop
import erlang
from erlang._loop import _UvSelector


@pytest.fixture
def loop():
    loop = erlang.new_event_loop()
    yield loop
    loop.close()


# ---------------------------------------------------------------- the selector

@pytest.fixture
def selector():
    sel = _UvSelector(_pyport_loop.Poller())
    yield sel
    sel.close()


def test_selector_keys_and_map(selector):
    a, b = socket.socketpair()
    with a, b:
        key = selector.register(a, selectors.EVENT_READ, "data")
        assert (key.fileobj, key.fd, key.events, key.data) == (a, a.fileno(), selectors.EVENT_READ, "data")
        assert selector.get_key(a) is key
        assert selector.get_key(a.fileno()) is key
        assert dict(selector.get_map()) == {a.fileno(): key}
        assert len(selector.get_map()) == 1 and a in selector.get_map()
        with pytest.raises(KeyError):
            selector.register(a, selectors.EVENT_READ)
        with pytest.raises(ValueError):
            selector.register(b, 0)
        with pytest.raises(ValueError):
            selector.register(b, 4)
        new = selector.modify(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "other")
        assert new.events == selectors.EVENT_READ | selectors.EVENT_WRITE and new.data == "other"
        assert selector.get_key(a) is new
        assert selector.unregister(a) is new
        with pytest.raises(KeyError):
            selector.get_key(a)
        with pytest.raises(KeyError):
            selector.unregister(a)
        with pytest.raises(KeyError):
            selector.modify(a, selectors.EVENT_READ)


def test_selector_reports_readiness(selector):
    a, b = socket.socketpair()
    with a, b:
        selector.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "a")
        # Writable at once, not readable.
        [(key, events)] = selector.select(0)
        assert key.data == "a" and events == selectors.EVENT_WRITE
        selector.modify(a, selectors.EVENT_READ, "a")
        assert selector.select(0) == []
        b.send(b"x")
        [(key, events)] = selector.select(5)
        assert events == selectors.EVENT_READ
        # Level-triggered: still readable until read.
        assert [ev for _, ev in selector.select(0)] == [selectors.EVENT_READ]
        a.recv(1)
        assert selector.select(0) == []


def test_selector_reports_an_error_condition_as_every_event(selector):
    # A UDP socket connected to a port nobody listens on gets ICMP port
    # unreachable: POLLERR, which libuv reports as an error.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.connect(("127.0.0.1", port))
        selector.register(s, selectors.EVENT_READ)
        s.send(b"x")
        [(_, events)] = selector.select(5)
        assert events == selectors.EVENT_READ
        with pytest.raises(ConnectionRefusedError):
            s.recv(1)
        # Still watched after the error.
        s.send(b"y")
        [(_, events)] = selector.select(5)
        assert events == selectors.EVENT_READ


def test_selector_timeout_returns_empty(selector):
    a, b = socket.socketpair()
    with a, b:
        selector.register(a, selectors.EVENT_READ)
        assert selector.select(0.01) == []
        assert selector.select(0) == []


def test_selector_keeps_blocking_mode(selector):
    a, b = socket.socketpair()
    with a, b:
        assert a.getblocking()
        selector.register(a, selectors.EVENT_READ)
        assert a.getblocking()


def test_closed_selector_refuses_work():
    sel = _UvSelector(_pyport_loop.Poller())
    a, b = socket.socketpair()
    with a, b:
        sel.close()
        with pytest.raises(ValueError):
            sel._poller.register(a.fileno(), selectors.EVENT_READ, None)
        with pytest.raises(ValueError):
            sel._poller.poll(0)


def test_unwatchable_descriptor_is_an_oserror(tmp_path, selector):
    # epoll refuses regular files, as asyncio's own selectors do.
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(PermissionError):
            selector.register(f, selectors.EVENT_READ)
        assert len(selector.get_map()) == 0


def test_only_the_worker_makes_the_worker_poller():
    with pytest.raises(RuntimeError, match="already exists"):
        _pyport_loop.Poller(worker=True)
    assert _pyport_loop.in_worker()


def test_loops_in_threads_have_their_own_libuv_loop():
    results = []

    def run(tag):
        async def main():
            await asyncio.sleep(0.01)
            return tag

        results.append(erlang.run(main()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]


def test_the_worker_loop_refuses_other_threads():
    wl = erlang.get_worker_loop()
    errors = []

    def use():
        try:
            wl.add_reader(0, lambda: None)
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]


# ---------------------------------------------------------------- callbacks and timers

def test_call_soon_runs_in_order(loop):
    seen = []
    for i in range(100):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == list(range(100))


def test_call_at_orders_by_time(loop):
    seen = []
    now = loop.time()
    # Scheduled out of order, some closer together than a millisecond.
    for delay, tag in [(0.03, "e"), (0.0101, "b"), (0.02, "d"), (0.0100, "a"), (0.0, "start"), (0.0102, "c")]:
        loop.call_at(now + delay, seen.append, tag)
    loop.call_at(now + 0.04, loop.stop)
    loop.run_forever()
    assert seen == ["start", "a", "b", "c", "d", "e"]


def test_timers_never_fire_early(loop):
    # Sub-millisecond deadlines included: the loop waits out the last
    # fraction of a millisecond instead of rounding it away.
    early = []
    fired = []

    def check(when):
        fired.append(when)
        if loop.time() < when:
            early.append(when - loop.time())

    start = loop.time()
    deadlines = [start + i * 0.0003 for i in range(1, 60)]
    for when in reversed(deadlines):
        loop.call_at(when, check, when)
    loop.call_at(deadlines[-1] + 0.001, loop.stop)
    loop.run_forever()
    assert early == []
    assert fired == deadlines


def test_cancelled_timers_do_not_run(loop):
    seen = []
    handles = [loop.call_later(0.001 * i, seen.append, i) for i in range(300)]
    for h in handles[::2]:
        h.cancel()
    loop.call_later(0.35, loop.stop)
    loop.run_forever()
    assert seen == list(range(1, 300, 2))


def test_call_soon_threadsafe_wakes_a_waiting_loop(loop):
    done = loop.create_future()

    def from_thread():
        loop.call_soon_threadsafe(done.set_result, threading.get_ident())

    async def main():
        # Nothing else is scheduled: only the thread's call can end the wait.
        t = threading.Thread(target=from_thread)
        t.start()
        ident = await done
        t.join()
        return ident

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_cancellation_and_wait_for(loop):
    async def forever(started):
        started.set_result(None)
        await asyncio.sleep(3600)

    async def main():
        started = loop.create_future()
        task = loop.create_task(forever(started))
        await started
        task.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)
        async with asyncio.timeout(10):
            await asyncio.sleep(0)
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


def test_gather_many_tasks(loop):
    async def one(i):
        await asyncio.sleep(0)
        return i

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10000)))

    assert loop.run_until_complete(main()) == list(range(10000))


def test_exception_handler_gets_callback_errors(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))

    def boom():
        raise ValueError("boom")

    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(seen) == 1
    assert isinstance(seen[0]["exception"], ValueError)
    assert loop.get_exception_handler() is not None


def test_debug_mode_reports_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.0
    loop.call_soon(sum, [1, 2])
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert any("Executing" in r.getMessage() and "took" in r.getMessage() for r in caplog.records)


def test_shutdown_asyncgens_closes_unfinished_generators(loop):
    closed = []

    async def gen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = gen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]
    del g


def test_run_in_executor_and_default_executor_shutdown(loop):
    async def main():
        ident = await loop.run_in_executor(None, threading.get_ident)
        await loop.shutdown_default_executor()
        return ident

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_add_reader_and_writer(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        got = loop.create_future()
        loop.add_reader(a, lambda: got.set_result(a.recv(10)))
        writable = loop.create_future()
        loop.add_writer(b, lambda: writable.done() or writable.set_result(True))
        assert loop.run_until_complete(writable)
        assert loop.remove_writer(b)
        b.send(b"ping")
        assert loop.run_until_complete(got) == b"ping"
        assert loop.remove_reader(a)
        assert not loop.remove_reader(a)


def test_call_soon_returns_asyncio_handles_and_honours_context(loop):
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    seen = []
    h1 = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    h2 = loop.call_soon(seen.append, "args")
    h3 = loop.call_soon(seen.append, "cancelled")
    # asyncio Handles (a C subclass of asyncio.Handle) with asyncio's methods.
    assert all(isinstance(h, asyncio.Handle) and not isinstance(h, asyncio.TimerHandle)
               for h in (h1, h2, h3))
    assert h1._context is ctx  # (Handle.get_context() is Python 3.12)
    assert repr(h2).startswith("<Handle ") and "'args'" in repr(h2)
    h3.cancel()
    assert h3.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in ctx", "args"]
    with pytest.raises(TypeError, match="unexpected keyword"):
        loop.call_soon(print, colour="red")


def test_call_soon_in_debug_mode_checks_the_callback(loop):
    loop.set_debug(True)

    async def coro():
        pass

    c = coro()
    with pytest.raises(TypeError, match="coroutines cannot be used"):
        loop.call_soon(c)
    c.close()
    h = loop.call_soon(print)
    assert h._source_traceback  # debug mode records where it was made
    h.cancel()


def test_call_soon_on_a_closed_loop():
    loop = erlang.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(print)
