"""Python functions the benchmarks call."""
import time

import erlang


def identity(value):
    return value


def callback_loop(name, n):
    """n round trips Python -> Erlang (the registered function `name`);
    returns the rate per second, timed here."""
    call = erlang.call
    started = time.perf_counter()
    for i in range(n):
        call(name, i)
    return n / (time.perf_counter() - started)


def state_incr_loop(key, n):
    incr = erlang.state_incr
    started = time.perf_counter()
    for _ in range(n):
        incr(key)
    return n / (time.perf_counter() - started)


def publish_loop(topic, n):
    publish = erlang.publish
    for i in range(n):
        publish(topic, i)
    return n


async def anoop(value):
    """A coroutine that returns at once: the cost of running a task."""
    return value
