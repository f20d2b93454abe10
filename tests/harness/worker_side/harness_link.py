"""Worker-side functions for test_erlang_link.py: Python code that asks
Erlang (here: the harness, playing the Erlang side) for things."""
import asyncio
import threading

import erlang


def call(name, *args):
    return erlang.call(name, *args)


def call_error_type(name, *args):
    """The exception erlang.call raises, as [type name, message, reason, isinstance checks]."""
    try:
        erlang.call(name, *args)
    except Exception as e:
        return [type(e).__name__, str(e), getattr(e, "reason", None),
                isinstance(e, erlang.ErlangError), isinstance(e, NameError),
                isinstance(e, TimeoutError), isinstance(e, ConnectionError)]
    return None


def chain(n):
    """n + what Erlang's 'down' answers for n - 1 (the harness calls chain
    again, so this nests n levels deep)."""
    if n == 0:
        return 0
    return 1 + erlang.call("down", n - 1)


def threads(n):
    """n threads call Erlang at once; each must get its own answer."""
    results = [None] * n

    def one(i):
        results[i] = erlang.call("square", i)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def async_calls(n):
    """n concurrent erlang.async_call under asyncio.run; a ticker task counts
    loop turns while they wait (the loop must not be blocked)."""
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        results = await asyncio.gather(*(erlang.async_call("square", i) for i in range(n)))
        stop.set()
        await t
        return [results, ticks]

    return asyncio.run(main())


def async_error():
    async def main():
        try:
            await erlang.async_call("missing")
        except erlang.UnknownFunctionError as e:
            return [type(e).__name__, str(e)]
    return asyncio.run(main())


def subscribe_and_receive(topic, timeout):
    erlang.subscribe(topic)
    return erlang.receive_pubsub(timeout)


def receive(timeout):
    return erlang.receive_pubsub(timeout)


def two_threads(topic_a, topic_b):
    """Two threads subscribe to different topics, then say so through
    Erlang ('ready'), then each receives; each must get only its own."""
    got = {}
    barrier = threading.Barrier(2)

    def handler(topic):
        erlang.subscribe(topic)
        barrier.wait()
        if topic == topic_a:
            erlang.call("ready")
        got[topic] = erlang.receive_pubsub(30)

    ts = [threading.Thread(target=handler, args=(t,)) for t in (topic_a, topic_b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return [got[topic_a], got[topic_b]]


def schedule_erlang(name, *args):
    return erlang.schedule(name, *args)


def add(a, b):
    return a + b


def schedule_py(a, b):
    return erlang.schedule_py("harness_link", "add", [a], {"b": b})


def schedule_inline(a, b):
    return erlang.schedule_inline("harness_link", "add", [a, b])


def time_slices(percent, times):
    """consume_time_slice(percent) called `times` times: the answers."""
    return [erlang.consume_time_slice(percent) for _ in range(times)]


def log_and_span():
    import logging
    erlang.setup_logging(logging.INFO)
    logging.getLogger("harness.logger").warning("careful %s", "now")
    with erlang.Span("outer", user=7):
        with erlang.Span("inner"):
            pass
    return True


async def async_calls_on_the_worker_loop(n):
    """n concurrent erlang.async_call in a coroutine request (the worker's
    own loop); also says whether a helper thread was involved."""
    import threading
    results = await asyncio.gather(*(erlang.async_call("square", i) for i in range(n)))
    router = any(t.name == "erlang-async-router" for t in threading.enumerate())
    return [results, router]


async def async_error_on_the_worker_loop():
    try:
        await erlang.async_call("missing")
    except erlang.UnknownFunctionError as e:
        return [type(e).__name__, str(e)]


async def async_call_given_up(name):
    """Awaits an Erlang call with a timeout that passes first."""
    try:
        await asyncio.wait_for(erlang.async_call(name), 0.05)
    except asyncio.TimeoutError:
        return "gave up"
