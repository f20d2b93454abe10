"""What the C++ worker calls to run requests on its event loop, and the
lazy start of that loop.

A worker starts without asyncio: its main thread idles in plain libuv and
answers synchronous requests from there. The worker's ``ErlangEventLoop``
is made the first time something needs it: a request whose value is a
coroutine (``start_task``), a stream (``start_stream``), or Python code
asking for the loop (``erlang.get_worker_loop()``, ``erlang.spawn_task``,
``erlang.sleep`` in synchronous code). ``ensure_loop()`` then imports
asyncio, makes the loop and puts it in the running state at once (so code
that started it sees it running, as it always did); the C++ worker calls
``serve()`` as soon as the current request returns, and the main thread
idles in the loop from then on. This module imports no asyncio itself
(``_worker_async`` holds the code that needs it).

Answers go back through ``_pyport_loop`` (RESULT/ERROR, STREAM_CHUNK/
STREAM_END frames, PROTOCOL.md).
"""
from __future__ import annotations

import _collections_abc
import sys
import types

import _pyport_loop

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Requests and streams in flight on the worker's loop, by request id.
_tasks: dict[int, Any] = {}

# What asyncio.iscoroutine() accepts (CPython 3.11), checked without
# importing asyncio.
_COROUTINE_TYPES = (types.CoroutineType, types.GeneratorType, _collections_abc.Coroutine)

# Threads waiting for the loop to start: a threading.Event, made on demand,
# and spawn_task() calls from threads made before it existed.
_started = None
_start_error: BaseException | None = None
_spawned_early: list = []
# The loop has ended (the worker shuts down): it does not start again.
_finished = False


def is_awaitable_result(value: Any) -> bool:
    """Whether a request's result is run as a task rather than sent: a
    coroutine or an asyncio future (as asyncio.iscoroutine/isfuture say)."""
    if isinstance(value, _COROUTINE_TYPES):
        return True
    return getattr(type(value), "_asyncio_future_blocking", None) is not None and \
        value._asyncio_future_blocking is not None


_async_module = None


def _async():
    """erlang._worker_async, imported (with asyncio) on first use."""
    global _async_module
    if _async_module is None:
        from . import _worker_async
        _async_module = _worker_async
    return _async_module


def ensure_loop():
    """The worker's event loop, started if it was not yet. On the main
    thread it starts here; another thread asks the main thread and waits
    until it has started it (it does as soon as it is idle or waits for
    Erlang)."""
    loop = _async_loop()
    if loop is not None or _finished:
        return loop
    if _pyport_loop.on_main_thread():
        global _start_error
        try:
            loop = _start_uninterrupted()
        except BaseException as exc:
            _start_error = exc
            raise
        finally:
            if _started is not None:
                _started.set()
        return loop
    _wait_for_start()
    loop = _async_loop()
    if loop is None and not _finished:
        raise RuntimeError(f"the worker's event loop could not start: {_start_error!r}")
    return loop


def _start_uninterrupted():
    """Imports asyncio and starts the loop with SIGINT (INTERRUPT of the
    running request) held back: a KeyboardInterrupt in the middle of an
    import would leave asyncio half-imported for good. One that came before
    is raised when SIGINT is blocked, one that comes meanwhile when it is
    unblocked: either way before or after the start, never inside it."""
    import signal
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        loop = _async().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return loop


def _async_loop():
    """The worker's loop if it has started (None before)."""
    module = sys.modules.get("erlang._loop")
    return None if module is None else module._worker_loop


def _wait_for_start() -> None:
    global _started
    import threading
    with _lock():
        if _started is None:
            _started = threading.Event()
        started = _started
    if _async_loop() is None:
        _pyport_loop.request_worker_loop()
        started.wait()


_thread_lock = None


def _lock():
    global _thread_lock
    if _thread_lock is None:
        import threading
        _thread_lock = threading.Lock()
    return _thread_lock


def spawn_from_thread(coro, name):
    """``erlang.spawn_task`` from a thread other than the main one: a
    ``concurrent.futures.Future`` of the task's result. Never waits: before
    the loop exists the coroutine waits for it, and the main thread is
    asked to start it."""
    import concurrent.futures
    future = concurrent.futures.Future()
    with _lock():
        loop = _async_loop()
        if loop is None:
            _spawned_early.append((coro, name, future))
    if loop is None:
        _pyport_loop.request_worker_loop()
        return future
    return _async().spawn_threadsafe(loop, coro, name, future)


def take_spawned_early() -> list:
    with _lock():
        early = list(_spawned_early)
        _spawned_early.clear()
    return early


# The hooks the C++ dispatcher calls (TaskHooks). Once the loop runs, the
# worker takes them from _worker_async instead, which needs no check.

def start_task(request_id: int, awaitable: Any, answer: bool) -> None:
    """Runs ``awaitable`` on the worker's loop (started if need be); when it
    is done, answers the request (``answer``) or reports a failure on
    stderr (a cast)."""
    try:
        if ensure_loop() is None:
            raise RuntimeError("the worker is shutting down")
    except BaseException:
        if isinstance(awaitable, types.CoroutineType):
            awaitable.close()  # it never ran: no "never awaited" warning
        raise
    _async().start_task(request_id, awaitable, answer)


def start_stream(stream_id: int, source: Any, credit: int) -> None:
    """Streams the items of ``source`` (the value a STREAM_START request
    produced) to Erlang, starting with ``credit`` items of credit."""
    if ensure_loop() is None:
        raise RuntimeError("the worker is shutting down")
    _async().start_stream(stream_id, source, credit)


def cancel(request_id: int) -> None:
    """Cancels the task or stream of a request, if it is still running (its
    caller gave up). The request is then answered with CancelledError."""
    task = _tasks.get(request_id)
    if task is not None:
        task.cancel()


def stream_credit(stream_id: int, n: int) -> None:
    """Erlang took ``n`` more items of a stream (unknown ids are streams that
    already ended, or never were: then asyncio is not even imported)."""
    if _tasks:
        _async().stream_credit(stream_id, n)


def serve() -> None:
    """Called by the worker once its loop has started: the main thread idles
    in it until the worker shuts down, then what still runs is cancelled
    and the loop closed."""
    _async().serve()
