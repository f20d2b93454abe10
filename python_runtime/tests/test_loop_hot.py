"""The loop's hot paths: iterations that run ready callbacks without polling
for I/O (and the bound that keeps I/O served), and the loop methods bound
to C (get_debug, create_future, time)."""
import asyncio
import socket
import time

import pytest

import erlang
from erlang._loop import ErlangEventLoop

# The longest a loop busy with ready callbacks goes without polling
# (kPollIntervalNs in port_worker/event_loop.cpp).
POLL_INTERVAL = 50e-6


@pytest.fixture
def loop():
    loop = erlang.new_event_loop()
    yield loop
    loop.close()


def test_ready_callbacks_skip_the_poll_but_not_for_long(loop):
    # A chain of callbacks keeps the ready queue non-empty: iterations poll
    # only once the interval has passed since the last poll, never more
    # often, so a 2,000-iteration chain polls at most once per interval of
    # its duration (it polled every iteration before).
    left = 2000
    polls = loop._pyport_poller.polls

    def tick():
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(tick)
        else:
            loop.stop()

    loop.call_soon(tick)
    started = time.monotonic()
    loop.run_forever()
    elapsed = time.monotonic() - started
    polled = loop._pyport_poller.polls - polls
    assert left == 0
    assert 1 <= polled <= 2 + elapsed / POLL_INTERVAL, (polled, elapsed)


def test_io_is_served_while_callbacks_are_always_ready(loop):
    # A callback that reschedules itself forever must not starve a reader:
    # the data arrives while the chain still runs.
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    spins = 0
    got = []

    def spin():
        nonlocal spins
        spins += 1
        if not got:
            loop.call_soon(spin)

    def readable():
        got.append((a.recv(100), spins))
        loop.stop()

    try:
        loop.add_reader(a, readable)
        loop.call_soon(spin)
        loop.call_soon(b.send, b"ping")
        deadline = loop.call_later(10, loop.stop)
        loop.run_forever()
        deadline.cancel()
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert got and got[0][0] == b"ping"
    assert got[0][1] > 0  # the chain was running when the data came


def test_an_idle_loop_waits_in_the_kernel(loop):
    # Nothing ready: each iteration polls (waits), none spins.
    polls = loop._pyport_poller.polls
    cpu = time.thread_time()
    loop.run_until_complete(asyncio.sleep(0.2))
    cpu = time.thread_time() - cpu
    assert loop._pyport_poller.polls - polls <= 5
    assert cpu < 0.1


def test_tasks_and_io_interleave_on_a_busy_loop(loop):
    # Many tasks yielding with sleep(0) while an echo runs over a socket
    # pair: both finish, and the echo does not wait for the tasks.
    async def busy(n):
        for _ in range(n):
            await asyncio.sleep(0)

    async def main():
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        workers = [asyncio.ensure_future(busy(50_000)) for _ in range(4)]
        started = time.monotonic()
        for i in range(200):
            wa.write(b"%d\n" % i)
            assert await rb.readline() == b"%d\n" % i
        echo_time = time.monotonic() - started
        all_done = [w.done() for w in workers]
        await asyncio.gather(*workers)
        wa.close()
        wb.close()
        return echo_time, all_done

    echo_time, all_done = loop.run_until_complete(main())
    # The echo finished while the busy tasks still ran: I/O was served
    # between their steps rather than after them.
    assert not all(all_done)
    assert echo_time < 10


def test_get_debug_create_future_and_time_are_the_loops():
    loop = erlang.new_event_loop()
    try:
        assert loop.get_debug() is False
        loop.set_debug(True)
        assert loop.get_debug() is True
        loop.set_debug(False)
        fut = loop.create_future()
        assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
        assert abs(loop.time() - time.monotonic()) < 0.5
        assert loop.time() <= time.monotonic()
    finally:
        loop.close()


def test_subclasses_keep_their_own_time_and_create_future():
    class Shifted(ErlangEventLoop):
        def time(self):
            return super().time() + 1000.0

        def create_future(self):
            fut = super().create_future()
            fut.made_by_subclass = True
            return fut

    loop = Shifted()
    try:
        assert loop.time() - time.monotonic() > 900
        assert loop.create_future().made_by_subclass
    finally:
        loop.close()
