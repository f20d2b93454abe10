"""CPython's own timer tests from test.test_asyncio.test_events, run on
ErlangEventLoop (Debian's libpython3.11-testsuite), and the loop's cost of
waiting: a timed wait sleeps in the kernel rather than polling."""
import asyncio
import time
import unittest

import pytest

import erlang

test_events = pytest.importorskip(
    "test.test_asyncio.test_events",
    reason="CPython's asyncio tests: install the Debian package libpython3.11-testsuite")
test_utils = pytest.importorskip("test.test_asyncio.utils")


class ErlangLoopEventTests(test_events.EventLoopTestsMixin, test_utils.TestCase):
    def create_event_loop(self):
        return erlang.new_event_loop()


@pytest.mark.parametrize("name", [
    "test_timeout_rounding",   # 5 sleeps from 10 ms to 0.1 ns: at most 20 iterations
    "test_call_later",
    "test_call_soon",
    "test_run_until_complete",
    "test_run_until_complete_stopped",
])
def test_cpython_event_loop_test(name):
    result = unittest.TestResult()
    ErlangLoopEventTests(name).run(result)
    assert result.testsRun == 1
    assert not result.errors and not result.failures, result.errors + result.failures
    assert not result.skipped, result.skipped


def test_timed_waits_sleep_in_the_kernel():
    """200 sleeps of 1 ms: about two loop iterations each (the sleep's and the
    wake-up's) and a small fraction of the wall time in CPU. Polling the end
    of each wait, as the loop once did, took ~180 iterations per sleep."""
    loop = erlang.new_event_loop()
    count = 0
    original = loop._run_once

    def counting_run_once():
        nonlocal count
        count += 1
        original()

    loop._run_once = counting_run_once

    async def sleeps():
        for _ in range(200):
            await asyncio.sleep(0.001)

    try:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        loop.run_until_complete(sleeps())
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
    finally:
        loop.close()
    assert wall >= 0.2
    assert count <= 2 * 200 + 10, count
    assert cpu < wall / 2, (cpu, wall)
