"""The worker's asyncio loop starts on first use: a worker that only answers
synchronous requests never imports asyncio, and whatever needs the loop
(a coroutine request, a stream, Python asking for it from any thread)
starts it, after which it behaves as if it had always run."""
import pytest

import pyport_proto as P
from pyport_proto import RemoteError
from wire import assert_in_sync

ASYNCIO_LOADED = "'asyncio' in __import__('sys').modules"
LOOP_RUNNING = ("__import__('erlang')._loop._worker_loop is not None and "
                "__import__('erlang')._loop._worker_loop.is_running()")


def test_synchronous_requests_do_not_import_asyncio(worker):
    assert worker.call("math", "sqrt", [16.0]) == 4.0
    worker.exec("x = 2")
    assert worker.eval("x * 21") == 42
    assert worker.eval("{1, 2}") == [1, 2]  # a result the dispatcher asks Python about
    # CANCEL and STREAM_CREDIT for requests that never ran as tasks.
    worker.send_frame(P.CANCEL, 4242)
    worker.send_frame(P.STREAM_CREDIT, 4243, 5)
    assert_in_sync(worker)
    assert worker.eval(ASYNCIO_LOADED) is False


def test_a_coroutine_request_starts_the_loop(worker):
    worker.exec("async def triple(x):\n    return 3 * x")
    assert worker.eval(ASYNCIO_LOADED) is False
    assert worker.eval("triple(5)") == 15
    assert worker.eval(LOOP_RUNNING) is True
    # From now on it is the loop it always was.
    assert worker.call("harness_async", "double", [21]) == 42
    assert worker.eval("__import__('asyncio').get_event_loop() is __import__('erlang').get_worker_loop()")


def test_a_stream_starts_the_loop(worker):
    assert worker.eval(ASYNCIO_LOADED) is False
    sid = worker.request(P.STREAM_START, 10, [1, "builtins", "range", [3], {}])
    chunks = [worker.read_frame() for _ in range(4)]
    assert [(f.kind, f.id) for f in chunks] == [(P.STREAM_CHUNK, sid)] * 3 + [(P.STREAM_END, sid)]
    assert [f.fields[0] for f in chunks[:3]] == [0, 1, 2]
    assert worker.eval(LOOP_RUNNING) is True


def test_get_worker_loop_in_synchronous_code_starts_it_running(worker):
    assert worker.eval("__import__('erlang').get_worker_loop().is_running()") is True
    assert worker.eval("__import__('erlang').get_worker_loop().is_worker_loop") is True
    # Tasks it was given run once the request has returned.
    worker.exec("import asyncio, erlang\n"
                "ran = []\n"
                "async def note():\n    ran.append(1)\n"
                "erlang.spawn_task(note())")
    for _ in range(100):
        if worker.eval("ran") == [1]:
            break
        worker.call("erlang", "sleep", [0.01])
    assert worker.eval("ran") == [1]


def test_erlang_sleep_in_synchronous_code_starts_the_loop_and_serves_tasks(worker):
    worker.exec("async def slow(x):\n"
                "    await __import__('asyncio').sleep(0.05)\n"
                "    return x")
    sleeper = worker.request(P.CALL, "erlang", "sleep", [0.3], {})
    # Coroutine requests that arrive while the synchronous one sleeps finish first.
    tasks = [worker.request(P.EVAL, f"slow({i})", None, 0) for i in range(3)]
    assert [worker.result(t) for t in tasks] == [0, 1, 2]
    assert worker.result(sleeper) is None


def test_a_thread_asking_for_the_loop_waits_until_the_main_thread_starts_it(worker):
    worker.exec("import threading, erlang\n"
                "seen = []\n"
                "def ask():\n"
                "    loop = erlang.get_worker_loop()\n"
                "    seen.append((loop.is_worker_loop, loop.is_running()))\n"
                "asker = threading.Thread(target=ask)\n"
                "asker.start()")
    # The main thread is idle between requests: it starts the loop for the thread.
    for _ in range(200):
        if worker.eval("seen"):
            break
        worker.call("time", "sleep", [0.01])
    assert worker.eval("seen") == [(True, True)]
    worker.exec("asker.join()")


def test_spawn_task_from_a_thread_never_waits_for_the_loop(worker):
    # The main thread joins the thread before the loop exists: spawn_task
    # must not wait for the main thread.
    worker.exec("import threading, erlang\n"
                "async def seven():\n    return 7\n"
                "futures = []\n"
                "t = threading.Thread(target=lambda: futures.append(erlang.spawn_task(seven())))\n"
                "t.start()\n"
                "t.join()")
    # The main thread starts the loop once that request has returned.
    for _ in range(200):
        if worker.eval("futures[0].done()"):
            break
        worker.call("time", "sleep", [0.01])
    assert worker.eval("futures[0].result()") == 7


def test_shutdown_before_the_loop_started(worker):
    assert worker.call("builtins", "abs", [-3]) == 3
    assert worker.shutdown() == 0


def test_shutdown_cancels_tasks_of_a_loop_started_late(worker):
    assert worker.call("builtins", "abs", [-3]) == 3
    waiting = worker.request(P.CALL, "harness_async", "wait_forever", ["late"], {})
    worker.call("erlang", "sleep", [0])
    worker.send_frame(P.SHUTDOWN, 0)
    with pytest.raises(RemoteError) as e:
        worker.result(waiting)
    assert e.value.type == "CancelledError"
    assert worker.wait_exit() == 0
