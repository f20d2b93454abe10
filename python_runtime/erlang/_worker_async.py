"""The worker's event loop once it has started (see ``_worker``): its
start, the requests and streams that run on it as tasks, and its end.

Imported, with asyncio, only when the worker's loop is first needed.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import selectors
import sys
import threading
import traceback
import types
from asyncio import events as _events
from asyncio import futures as _futures
from typing import Any, Optional

import _pyport_loop

from . import _loop, _worker

# The dispatcher's hooks (C++ TaskHooks) once the loop runs: these, with
# start_task and start_stream below.
_tasks = _worker._tasks
cancel = _worker.cancel
is_awaitable_result = _worker.is_awaitable_result
_CoroutineType = types.CoroutineType

_streams: dict[int, "_Stream"] = {}
_shutting_down = False
# The request whose running task step the worker interrupts (see
# _interrupt_running): its KeyboardInterrupt is expected to reach serve().
_interrupting: Optional[int] = None
# sys.get_asyncgen_hooks() from before the loop started to run.
_saved_agen_hooks: Optional[tuple] = None

# How long cancelled requests get to finish when the worker shuts down.
_SHUTDOWN_GRACE = 1.0

# For the dispatcher (C++), which starts a coroutine request itself as
# start_task below would: request_loop.create_task(coro), answered by
# partial(answer_request, request_id) when done. Set by start().
request_loop: Optional[_loop.ErlangEventLoop] = None
answer_request = _pyport_loop.answer
partial = functools.partial


class _InputHandle(asyncio.Handle):
    """The callback that handles frames from Erlang. Unlike other handles it
    may run again while it runs (a request that calls erlang.sleep() runs the
    loop meanwhile, and frames keep coming), so it does not enter a context
    of its own: each request runs in the worker's main context, as a
    synchronous call does."""

    __slots__ = ()

    # The loop's run_once does this handle's work in C (see set_input_key
    # in port_worker/event_loop.cpp); _run is for debug mode.
    def _run(self) -> None:
        try:
            self._callback(*self._args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._pyport_failed(exc)

    def _pyport_failed(self, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": "pyport: handling frames from Erlang failed", "exception": exc, "handle": self})


def start() -> _loop.ErlangEventLoop:
    """Makes the worker's loop (main thread, once) and puts it in the
    running state, as ``run_forever`` does before its first iteration:
    requests may be running further up the stack, which see it running;
    the worker then calls ``serve()``, which runs it."""
    global _saved_agen_hooks, request_loop
    loop = _loop.ErlangEventLoop(_worker=True)
    request_loop = loop

    def ended() -> None:
        global _shutting_down
        if not _shutting_down:
            _shutting_down = True
            loop._pyport_may_stop = True
            loop.stop()

    def on_input() -> None:
        # Synchronous requests run as plain code, with no running loop (the
        # worker clears it), so they may start loops of their own.
        if not _pyport_loop.process_input():
            ended()

    loop._pyport_poller.set_input_key(
        selectors.SelectorKey(None, -1, selectors.EVENT_READ, (_InputHandle(on_input, (), loop), None)),
        ended,
    )
    # asyncio's default policy becomes the worker's (a policy the code set
    # before, erlang.install()'s included, is kept).
    policy = _events._event_loop_policy
    if policy is None or type(policy) is asyncio.DefaultEventLoopPolicy:
        asyncio.set_event_loop_policy(_loop._WorkerEventLoopPolicy())
    # run_forever's set-up (asyncio 3.11 BaseEventLoop.run_forever).
    loop._check_closed()
    loop._check_running()
    loop._set_coroutine_origin_tracking(loop._debug)
    _saved_agen_hooks = sys.get_asyncgen_hooks()
    loop._thread_id = threading.get_ident()
    sys.set_asyncgen_hooks(firstiter=loop._asyncgen_firstiter_hook, finalizer=loop._asyncgen_finalizer_hook)
    with _worker._lock():
        _loop._worker_loop = loop
    asyncio.set_event_loop(loop)
    _pyport_loop.worker_loop_started()
    for coro, name, future in _worker.take_spawned_early():
        spawn_threadsafe(loop, coro, name, future)
    return loop


def _leave_running(loop: _loop.ErlangEventLoop) -> None:
    """run_forever's tear-down, for the state start() entered."""
    loop._thread_id = None
    loop._set_coroutine_origin_tracking(False)
    if _saved_agen_hooks is not None:
        sys.set_asyncgen_hooks(*_saved_agen_hooks)


def spawn_threadsafe(loop, coro, name, future):
    """Runs coro as a task on loop (from any thread); future (a
    concurrent.futures.Future) gets its outcome, as with
    asyncio.run_coroutine_threadsafe."""

    def begin() -> None:
        try:
            _futures._chain_future(loop.create_task(coro, name=name), future)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
            raise

    loop.call_soon_threadsafe(begin)
    return future


def start_task(request_id: int, awaitable: Any, answer: bool) -> None:
    """Runs ``awaitable`` on the worker's loop; when it is done, answers the
    request (``answer``) or reports a failure on stderr (a cast)."""
    loop = _loop._worker_loop
    if type(awaitable) is _CoroutineType:
        task = loop.create_task(awaitable)  # C++ (see _loop.py)
    else:
        task = asyncio.ensure_future(awaitable, loop=loop)
    if answer:
        _tasks[request_id] = task
        task.add_done_callback(functools.partial(_answer, request_id))
    else:
        task.add_done_callback(_report_cast)


def _answer(request_id: int, task: asyncio.Future) -> None:
    del _tasks[request_id]
    _pyport_loop.answer(request_id, task)


def _report_cast(task: asyncio.Future) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        text = "".join(traceback.format_exception(exc))
        print(f"pyport: cast coroutine failed:\n{text}", end="", file=sys.stderr)


class _Stream:
    """Sends the items of an iterable or async iterable as STREAM_CHUNK
    frames, never more than the credit Erlang granted: with no credit left
    the producer is suspended, so a slow consumer bounds what the worker
    holds to one item."""

    __slots__ = ("id", "source", "credit", "_waiter")

    def __init__(self, stream_id: int, source: Any, credit: int) -> None:
        self.id = stream_id
        self.source = source
        self.credit = credit
        self._waiter: Optional[asyncio.Future] = None

    def grant(self, n: int) -> None:
        self.credit += n
        waiter = self._waiter
        if waiter is not None and self.credit > 0 and not waiter.done():
            waiter.set_result(None)

    async def _send(self, item: Any) -> None:
        while self.credit <= 0:
            self._waiter = _loop._worker_loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.credit -= 1
        _pyport_loop.stream_chunk(self.id, item)

    async def run(self) -> None:
        source = self.source
        if inspect.isawaitable(source):
            source = await source
        if hasattr(source, "__aiter__"):
            iterator = source.__aiter__()
            try:
                async for item in iterator:
                    await self._send(item)
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            return
        try:
            iterator = iter(source)
        except TypeError:
            raise TypeError(
                f"a stream needs an iterable, async iterable or generator, got {type(source).__name__}"
            ) from None
        try:
            for item in iterator:
                await self._send(item)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def start_stream(stream_id: int, source: Any, credit: int) -> None:
    """Streams the items of ``source`` (the value a STREAM_START request
    produced) to Erlang, starting with ``credit`` items of credit."""
    stream = _Stream(stream_id, source, credit)
    task = _loop._worker_loop.create_task(stream.run())
    _streams[stream_id] = stream
    _worker._tasks[stream_id] = task
    task.add_done_callback(functools.partial(_end_stream, stream_id))


def _end_stream(stream_id: int, task: asyncio.Future) -> None:
    del _streams[stream_id]
    del _worker._tasks[stream_id]
    if not task.cancelled() and task.exception() is None:
        _pyport_loop.stream_end(stream_id)
    else:
        _pyport_loop.answer(stream_id, task)


def stream_credit(stream_id: int, n: int) -> None:
    stream = _streams.get(stream_id)
    if stream is not None:
        stream.grant(n)


def _interrupt_running(request_id: int) -> bool:
    """Called by the worker's task interrupter (another thread, GIL held)
    for an INTERRUPT: whether the task of ``request_id`` is the one running
    a step now, in which case the worker raises KeyboardInterrupt in it.

    The main thread gave up the GIL inside that step: in its bytecode, or
    in a call it made (a blocking one), and the exception is raised when it
    next checks, which is in that step either way (a call returning to
    bytecode checks at once), never in another task."""
    global _interrupting
    task = _tasks.get(request_id)
    loop = _loop._worker_loop
    if task is None or loop is None or asyncio.current_task(loop) is not task:
        return False
    _interrupting = request_id
    return True


def serve() -> None:
    """The worker's main thread from the start of its loop to its shutdown:
    runs the loop, then cancels what is still running and closes it."""
    loop = _loop._worker_loop
    _leave_running(loop)  # run_forever enters that state again itself
    try:
        while not _shutting_down:
            try:
                loop.run_forever()
            except (KeyboardInterrupt, SystemExit) as exc:
                # Raised by a task or a signal handler, not by a request
                # (those are answered): the worker goes on. An interrupted
                # task step ends here too; its request answers for it.
                global _interrupting
                if isinstance(exc, KeyboardInterrupt) and _interrupting is not None:
                    _interrupting = None
                    continue
                print(f"pyport: {type(exc).__name__} reached the worker's event loop; it goes on",
                      file=sys.stderr)
    finally:
        _finish(loop)


def _finish(loop: _loop.ErlangEventLoop) -> None:
    """Cancels the requests still running (each is answered CancelledError),
    gives them a moment to finish, then closes the loop."""
    pending = [t for t in _worker._tasks.values() if not t.done()]
    for task in pending:
        task.cancel()
    loop._pyport_may_stop = True
    try:
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=_SHUTDOWN_GRACE))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except BaseException as exc:  # never keep the worker from exiting
        print(f"pyport: shutting down the event loop: {exc!r}", file=sys.stderr)
    finally:
        _worker._finished = True
        asyncio.set_event_loop(None)
        _loop._worker_loop = None
        loop.close()
