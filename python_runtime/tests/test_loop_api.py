"""The erlang module's asyncio entry points, subprocesses and signal
handlers, and the worker's own loop, inside a real worker."""
import asyncio
import os
import signal
import sys
import threading

import pytest

import erlang


async def double(x):
    await asyncio.sleep(0.001)
    return 2 * x


def wait_until(predicate, what, tries=400):
    """Lets the worker's loop run (erlang.sleep) until predicate() holds."""
    for _ in range(tries):
        if predicate():
            return
        erlang.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


# ---------------------------------------------------------------- entry points

def test_run_returns_the_result_on_a_fresh_erlang_loop():
    loops = []

    async def main():
        loops.append(asyncio.get_running_loop())
        return await double(21)

    assert erlang.run(main()) == 42
    assert erlang.run(main()) == 42
    assert all(isinstance(lp, erlang.ErlangEventLoop) for lp in loops)
    assert loops[0] is not loops[1] and loops[0].is_closed()
    assert not loops[0].is_worker_loop


def test_run_propagates_exceptions_and_cancels_leftover_tasks():
    cancelled = []

    async def background():
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.append(True)

    async def main():
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)
        raise KeyError("from main")

    with pytest.raises(KeyError, match="from main"):
        erlang.run(main())
    assert cancelled == [True]


def test_run_refuses_a_running_loop():
    async def main():
        coro = double(1)
        try:
            erlang.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="running event loop"):
        erlang.run(main())


def test_asyncio_run_from_synchronous_code():
    # pyport-run runs these tests from a py:call: synchronous code with no
    # running loop, although the worker's loop is up.
    assert asyncio.run(double(4)) == 8
    # The worker's loop stays the current one afterwards.
    assert asyncio.get_event_loop() is erlang.get_worker_loop()


def test_runner_with_erlang_loop_factory():
    with asyncio.Runner(loop_factory=erlang.new_event_loop) as runner:
        assert runner.run(double(1)) == 2
        assert runner.run(double(2)) == 4
        assert isinstance(runner.get_loop(), erlang.ErlangEventLoop)


def test_manual_loop_management():
    loop = erlang.new_event_loop()
    try:
        assert loop.run_until_complete(double(5)) == 10
        assert not loop.is_running()
    finally:
        loop.close()
    assert loop.is_closed()


def test_install_makes_asyncio_create_erlang_loops():
    saved = asyncio.get_event_loop_policy()
    try:
        erlang.install()
        assert isinstance(asyncio.get_event_loop_policy(), erlang.ErlangEventLoopPolicy)
        seen = []

        async def main():
            seen.append(asyncio.get_running_loop())

        asyncio.run(main())
        assert isinstance(seen[0], erlang.ErlangEventLoop) and not seen[0].is_worker_loop
        # In the main thread the current loop stays the worker's.
        assert asyncio.get_event_loop_policy().get_event_loop() is erlang.get_worker_loop()
        assert isinstance(asyncio.new_event_loop(), erlang.ErlangEventLoop)
    finally:
        asyncio.set_event_loop_policy(saved)
    assert asyncio.get_event_loop() is erlang.get_worker_loop()


def test_sleep_is_awaitable_in_coroutines():
    async def main():
        result = erlang.sleep(0.001)
        assert asyncio.iscoroutine(result)
        await result
        return "done"

    assert erlang.run(main()) == "done"


def test_sleep_in_synchronous_code_keeps_the_worker_loop_running():
    progress = []

    async def ticker():
        for i in range(3):
            progress.append(i)
            await asyncio.sleep(0.001)

    task = erlang.spawn_task(ticker())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is erlang.get_worker_loop()
    assert progress == []  # it starts once this code yields to the loop
    wait_until(task.done, "the spawned task")
    assert progress == [0, 1, 2]


def test_sleep_in_a_thread_is_a_plain_sleep():
    out = []
    t = threading.Thread(target=lambda: out.append(erlang.sleep(0.001)))
    t.start()
    t.join()
    assert out == [None]


def test_spawn_task_in_async_code_uses_the_running_loop():
    async def main():
        task = erlang.spawn_task(double(3), name="tripled")
        assert task.get_name() == "tripled"
        assert task.get_loop() is asyncio.get_running_loop()
        return await task

    assert erlang.run(main()) == 6


def test_spawn_task_from_a_thread_returns_a_concurrent_future():
    futures = []
    t = threading.Thread(target=lambda: futures.append(erlang.spawn_task(double(7))))
    t.start()
    t.join()
    wait_until(futures[0].done, "the task spawned from a thread")
    assert futures[0].result() == 14


def test_spawn_task_needs_a_coroutine():
    with pytest.raises(TypeError):
        erlang.spawn_task(lambda: None)


def test_detect_mode():
    mode = erlang.detect_mode()
    assert isinstance(mode, erlang.ExecutionMode)
    # CPython 3.11: one GIL, main interpreter of the worker process.
    assert mode is erlang.ExecutionMode.SHARED_GIL


def test_the_worker_loop():
    wl = erlang.get_worker_loop()
    assert isinstance(wl, erlang.ErlangEventLoop) and wl.is_worker_loop
    assert wl.is_running()
    # Synchronous code runs without a running loop, as in plain Python.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert asyncio.get_event_loop() is wl


def test_stopping_the_worker_loop_from_python_does_not_stop_the_worker():
    wl = erlang.get_worker_loop()
    with pytest.warns(RuntimeWarning, match="runs until the worker shuts down"):
        wl.stop()
    ran = []
    wl.call_soon(ran.append, True)
    wait_until(lambda: ran, "the loop to go on")


# ---------------------------------------------------------------- subprocesses and signals

def test_subprocess_exec_and_shell_output():
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        shell = await asyncio.create_subprocess_shell(
            "echo shell; cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        sout, _ = await shell.communicate(b"fed through stdin\n")
        return proc.returncode, out, err, shell.returncode, sout

    rc, out, err, src, sout = erlang.run(main())
    assert (rc, out, err) == (3, b"out\n", b"err\n")
    assert (src, sout) == (0, b"shell\nfed through stdin\n")


def test_subprocess_many_at_once():
    async def one(i):
        proc = await asyncio.create_subprocess_exec("echo", str(i), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return int(out)

    async def main():
        return await asyncio.gather(*(one(i) for i in range(20)))

    assert erlang.run(main()) == list(range(20))


def test_signal_handler_on_a_new_loop():
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            return await asyncio.wait_for(got, 10)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    assert erlang.run(main()) == "usr1"


def test_signal_handler_on_the_worker_loop():
    wl = erlang.get_worker_loop()
    got = []
    wl.add_signal_handler(signal.SIGUSR2, got.append, "usr2")
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: got, "the signal handler")
    finally:
        wl.remove_signal_handler(signal.SIGUSR2)
    assert got == ["usr2"]
