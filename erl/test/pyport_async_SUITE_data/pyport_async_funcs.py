"""Coroutines and generators for pyport_async_SUITE."""
import asyncio
import os

import erlang

events = []
_arrived = 0
_all_here = None


async def double(x):
    await asyncio.sleep(0.001)
    return 2 * x


async def fail(message):
    await asyncio.sleep(0)
    raise ValueError(message)


async def greet(name, *, greeting="hello"):
    await asyncio.sleep(0)
    return f"{greeting} {name}"


async def barrier(n):
    """Returns once n calls wait at the same time."""
    global _arrived, _all_here
    if _all_here is None:
        _all_here = asyncio.Event()
    _arrived += 1
    if _arrived == n:
        _all_here.set()
    await _all_here.wait()
    return n


async def wait_forever(tag):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        events.append(["cancelled", tag])
        raise


async def record(tag):
    await asyncio.sleep(0)
    events.append(["ran", tag])
    return tag


def taken_events():
    out = list(events)
    events.clear()
    return out


def os_pid():
    return os.getpid()


def count(n):
    yield from range(n)


async def acount(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def count_then_fail(n):
    yield from range(n)
    raise RuntimeError(f"failed after {n}")


produced = {}


def tracked(tag, n):
    produced[tag] = []
    try:
        for i in range(n):
            produced[tag].append(i)
            yield i
    finally:
        produced[tag].append("closed")


def produced_count(tag):
    items = produced.get(tag, [])
    return [len([i for i in items if i != "closed"]), "closed" in items]


async def ask_erlang(name, x):
    """A task that awaits an Erlang function, and also calls it blocking."""
    awaited = await erlang.async_call(name, x)
    blocking = erlang.call(name, x + 1)
    return [awaited, blocking]


def sleep_then_call(name, x):
    """Synchronous: erlang.sleep lets the worker's loop run, then Erlang."""
    erlang.sleep(0.01)
    return erlang.call(name, x)


def triple(x):
    return 3 * x


async def await_erlang(name, x):
    """A coroutine request awaiting an Erlang function without blocking the
    worker's loop (so that function may call back into this worker)."""
    return await erlang.async_call(name, x)


async def runaway(tag):
    """A task step that never returns to the loop."""
    await asyncio.sleep(0)
    events.append(["spinning", tag])
    while True:
        pass


_factory_tasks = []


def set_task_factory(kind):
    """The worker loop's task factory: "count" makes tasks and counts them,
    "fail" refuses to, "none" is the default."""
    loop = erlang.get_worker_loop()

    def counting(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        _factory_tasks.append(task)
        return task

    def failing(loop, coro, **kwargs):
        coro.close()
        raise RuntimeError("no tasks here")

    loop.set_task_factory({"count": counting, "fail": failing, "none": None}[kind])
    return len(_factory_tasks)
