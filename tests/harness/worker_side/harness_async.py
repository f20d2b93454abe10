"""Coroutines, generators and streams the asyncio harness tests call inside
a worker."""
import asyncio

import erlang

# State shared by the requests of one worker.
_arrived = 0
_all_here = None
events = []
flags = {}


async def double(x):
    await asyncio.sleep(0.001)
    return 2 * x


async def fail(message):
    await asyncio.sleep(0)
    raise ValueError(message)


def returns_coroutine(x):
    """A plain function returning a coroutine: run as a task too."""
    return double(x)


def returns_future(x):
    fut = asyncio.get_event_loop().create_future()
    asyncio.get_event_loop().call_later(0.001, fut.set_result, x)
    return fut


async def barrier(n):
    """Returns once n calls of barrier are waiting at the same time: all of
    them finishing shows they ran concurrently on the worker's loop."""
    global _arrived, _all_here
    if _all_here is None:
        _all_here = asyncio.Event()
    _arrived += 1
    if _arrived == n:
        _all_here.set()
    await _all_here.wait()
    return _arrived


async def wait_forever(tag):
    try:
        events.append(("started", tag))
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        events.append(("cancelled", tag))
        raise


def taken_events():
    out = [list(e) for e in events]
    events.clear()
    return out


async def record_later(tag):
    await asyncio.sleep(0.001)
    events.append(("cast", tag))


def sleep_until_flag(name):
    """Synchronous: sleeps with erlang.sleep until another request sets the
    flag, which it can only do if the worker serves it meanwhile."""
    while not flags.get(name):
        erlang.sleep(0.005)
    return f"{name} seen"


def set_flag(name):
    flags[name] = True
    return True


def count(n):
    yield from range(n)


async def acount(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def count_then_fail(n):
    yield from range(n)
    raise RuntimeError(f"failed after {n}")


produced = []


def tracked(n):
    """A generator that records how far it got and whether it was closed."""
    try:
        for i in range(n):
            produced.append(i)
            yield i
    finally:
        produced.append("closed")


def produced_so_far():
    return list(produced)


async def async_source(n):
    """A coroutine whose value is the iterable to stream."""
    await asyncio.sleep(0)
    return [f"item {i}" for i in range(n)]


async def runaway(tag):
    """A task step that never returns to the loop."""
    await asyncio.sleep(0)
    print(tag, flush=True)
    while True:
        pass

