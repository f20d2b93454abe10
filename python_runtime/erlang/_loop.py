"""asyncio on libuv: ``ErlangEventLoop`` and the ``erlang`` entry points
that run coroutines (``run``, ``new_event_loop``, ``install``, ``sleep``,
``spawn_task``, ``detect_mode``).

``ErlangEventLoop`` is asyncio's own Unix selector event loop (so transports,
TLS, subprocesses, signal handlers, executors and DNS are the standard
library's proven code) over a selector whose waiting is done by libuv: one
``uv_poll_t`` per descriptor and a timerfd for the timeout, in the
worker's ``_pyport_loop`` module. Its ready queue, timer heap,
``call_soon``, ``call_at``, ``call_later``, ``create_task`` and
``_run_once`` are C++ there too, making asyncio's own handle and task
objects. The worker's own loop, the one its main thread idles in, runs on
the worker's libuv loop, so frames from Erlang are read and handled by the
same loop that runs the tasks.
"""
from __future__ import annotations

import asyncio
import enum
import operator
import selectors
import sys
import sysconfig
import threading
import time
import warnings
from asyncio import base_events as _base_events
from asyncio import constants as _constants
from asyncio import events as _events
from asyncio import format_helpers as _format_helpers
from asyncio import sslproto as _sslproto
from asyncio import unix_events as _unix_events
from asyncio.log import logger as _logger
from typing import Any, Awaitable, Coroutine, Optional, TypeVar

import _pyport_loop

from erlang._transports import DatagramTransport, SocketTransport

__all__ = [
    "ErlangEventLoop",
    "ErlangEventLoopPolicy",
    "EventLoopPolicy",
    "ExecutionMode",
    "get_event_loop_policy",
    "detect_mode",
    "install",
    "new_event_loop",
    "run",
    "sleep",
    "spawn_task",
]

_T = TypeVar("_T")

# The worker's own loop (None outside a worker, or before it started:
# erlang._worker starts it on first use).
_worker_loop: Optional["ErlangEventLoop"] = None


class _UvSelector(selectors._BaseSelectorImpl):
    """A selector (the ``selectors`` API asyncio uses) whose waiting is done by
    libuv. Bookkeeping (keys, the fd map, argument checks) is the standard
    library's; the poller holds one libuv handle per descriptor and returns
    the keys that became ready."""

    def __init__(self, poller: _pyport_loop.Poller) -> None:
        super().__init__()
        self._poller = poller

    def register(self, fileobj, events, data=None):
        key = super().register(fileobj, events, data)
        try:
            self._poller.register(key.fd, events, key)
        except BaseException:
            super().unregister(fileobj)
            raise
        return key

    def unregister(self, fileobj):
        key = super().unregister(fileobj)
        try:
            self._poller.unregister(key.fd)
        except (KeyError, ValueError):
            pass  # the poller is closed, or never took it
        return key

    def modify(self, fileobj, events, data=None):
        try:
            key = self._fd_to_key[self._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events and (not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE)):
            raise ValueError(f"Invalid events: {events!r}")
        if events == key.events and data is key.data:
            return key
        key = key._replace(events=events, data=data)
        try:
            self._poller.modify(key.fd, events, key)
        except BaseException:
            super().unregister(fileobj)
            raise
        self._fd_to_key[key.fd] = key
        return key

    def select(self, timeout=None):
        return self._poller.poll(timeout)

    def close(self):
        self._poller.close()
        super().close()


class _NoPoller:
    """The poller attributes of a loop whose __init__ failed: a closed loop."""

    loop_closed = True
    debug = False
    task_factory = None


class ErlangEventLoop(_unix_events._UnixSelectorEventLoop):
    """An asyncio event loop on libuv.

    Everything asyncio's Unix selector loop offers works (TCP, UDP and Unix
    sockets, TLS and ``start_tls``, ``sock_*``, ``getaddrinfo``,
    ``run_in_executor``, subprocesses, signal handlers, the exception
    handler, debug mode), because it is that loop; only the waiting differs.
    A new loop has a libuv loop of its own; the worker's loop (see
    ``erlang.get_worker_loop()``) shares the worker's."""

    def __init__(self, *, _worker: bool = False) -> None:
        poller = _pyport_loop.Poller(worker=_worker)
        self._pyport_poller = poller
        self._pyport_may_stop = not _worker
        super().__init__(_UvSelector(poller))
        # The ready queue and the timer heap are C++ (the poller's); asyncio's
        # code uses them as it uses its deque and heap list.
        self._ready = poller.ready
        self._scheduled = poller.scheduled
        poller.bind(self)
        # The hot entry points, without a Python frame (tasks and futures
        # schedule every step and callback through call_soon), unless a
        # subclass overrides them.
        cls = type(self)
        if cls.call_soon is ErlangEventLoop.call_soon:
            self.call_soon = poller.call_soon
        if cls.call_at is ErlangEventLoop.call_at:
            self.call_at = poller.call_at
            if cls.call_later is _base_events.BaseEventLoop.call_later and cls.time is _base_events.BaseEventLoop.time:
                self.call_later = poller.call_later
        if cls.create_task is ErlangEventLoop.create_task:
            self.create_task = poller.create_task
        if cls._run_once is ErlangEventLoop._run_once:
            self._run_once = poller.run_once
        if cls._timer_handle_cancelled is ErlangEventLoop._timer_handle_cancelled:
            self._timer_handle_cancelled = poller.scheduled.note_cancelled
        # Every Future and Task asks get_debug() when made; futures are made
        # for every await of I/O.
        if cls.get_debug is _base_events.BaseEventLoop.get_debug:
            self.get_debug = poller.get_debug
        if cls.create_future is _base_events.BaseEventLoop.create_future:
            self.create_future = poller.create_future
        if cls.time is _base_events.BaseEventLoop.time:
            self.time = poller.time

    # What a loop whose __init__ failed reads (its __del__ asks is_closed()).
    _pyport_poller = _NoPoller()

    # The loop's flags live in the poller, where C++ reads them.
    _closed = property(operator.attrgetter("_pyport_poller.loop_closed"),
                       lambda self, value: setattr(self._pyport_poller, "loop_closed", value))
    _debug = property(operator.attrgetter("_pyport_poller.debug"),
                      lambda self, value: setattr(self._pyport_poller, "debug", value))
    _timer_cancelled_count = property(
        operator.attrgetter("_pyport_poller.scheduled.cancelled_count"),
        lambda self, value: setattr(self._pyport_poller.scheduled, "cancelled_count", value))

    _task_factory = property(operator.attrgetter("_pyport_poller.task_factory"),
                             lambda self, value: setattr(self._pyport_poller, "task_factory", value))

    def create_task(self, coro, *, name=None, context=None):
        return self._pyport_poller.create_task(coro, name=name, context=context)

    def call_soon(self, callback, *args, context=None):
        return self._pyport_poller.call_soon(callback, *args, context=context)

    def call_at(self, when, callback, *args, context=None):
        return self._pyport_poller.call_at(when, callback, *args, context=context)

    def _timer_handle_cancelled(self, handle) -> None:
        self._pyport_poller.scheduled.note_cancelled(handle)

    def _pyport_call_at(self, when, callback, args, context):
        """asyncio's call_at onto the C++ heap: debug mode (its checks and
        the creation traceback) and ``when``s that are not int or float."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = _events.TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]  # this method
        self._pyport_poller.scheduled.push(timer)
        return timer

    def _pyport_call_later(self, delay, callback, args, context):
        """asyncio's call_later, for the cases of ``_pyport_call_at``."""
        if delay is None:
            raise TypeError("delay must not be None")
        timer = self._pyport_call_at(self.time() + delay, callback, args, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]  # this method
        return timer

    def stop(self) -> None:
        # The worker's loop runs until the worker shuts down: Python code
        # that stops it (as it might stop a loop of its own) is told so.
        if not self._pyport_may_stop:
            warnings.warn("the worker's event loop runs until the worker shuts down; stop() ignored",
                          RuntimeWarning, stacklevel=2)
            return
        super().stop()

    # The transports asyncio's loop would make, with their hot paths in C++
    # (erlang/_transports.py): create_connection, create_server,
    # connect_accepted_socket, the Unix variants, TLS (ssl= and start_tls
    # wrap them) and create_datagram_endpoint all come through here.
    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *, server_side=False,
                            server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=_constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=_constants.SSL_SHUTDOWN_TIMEOUT):
        ssl_protocol = _sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side, server_hostname,
                                             ssl_handshake_timeout=ssl_handshake_timeout,
                                             ssl_shutdown_timeout=ssl_shutdown_timeout)
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    @property
    def is_worker_loop(self) -> bool:
        """True for the worker's own loop, the one Erlang's requests run on."""
        return self._pyport_poller.worker

    # One iteration (asyncio's BaseEventLoop._run_once) is done in C++ by
    # the poller on its ready queue and timer heap: drop cancelled timers,
    # wait for I/O until the next timer (not at all if callbacks are ready),
    # queue the handles of ready descriptors and due timers, run what was
    # ready. It may be re-entered from a callback it runs (erlang.sleep in
    # synchronous code runs the loop while it sleeps).
    def _run_once(self):
        self._pyport_poller.run_once()

    def _pyport_run_debug(self, handle) -> None:
        """Runs a handle in debug mode, reporting slow callbacks."""
        try:
            self._current_handle = handle
            started = self.time()
            handle._run()
            took = self.time() - started
            if took >= self.slow_callback_duration:
                _logger.warning("Executing %s took %.3f seconds", _base_events._format_handle(handle), took)
        finally:
            self._current_handle = None

    def _pyport_run_for(self, seconds: float) -> None:
        """Runs this loop for ``seconds`` from inside one of its own callbacks
        (synchronous code that Erlang called): tasks, I/O and requests go on
        meanwhile. Runs at least one iteration; ends early if the loop is
        asked to stop."""
        if not self.is_running() or self._thread_id != threading.get_ident():
            time.sleep(seconds)
            return
        deadline = self.time() + max(0.0, seconds)
        wake = self.call_at(deadline, _noop)  # the wait ends at the deadline
        previous = _events._get_running_loop()
        _events._set_running_loop(self)
        try:
            # At least one iteration: erlang.sleep(0) lets the loop run once,
            # as asyncio.sleep(0) does.
            self._run_once()
            while not self._stopping and self.time() < deadline:
                self._run_once()
        finally:
            wake.cancel()
            _events._set_running_loop(previous)


def _noop() -> None:
    pass


def _callback_failed(handle, exc: BaseException) -> None:
    """What asyncio's Handle._run does with an exception from a callback:
    report it to the loop's exception handler."""
    source = _format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {source}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


class _WorkerEventLoopPolicy(_unix_events.DefaultEventLoopPolicy):
    """asyncio's default policy, except that in the worker's main thread the
    current event loop stays the worker's: ``asyncio.run()`` in synchronous
    code sets it to None when it ends, which would leave
    ``asyncio.get_event_loop()`` without a loop for the next request."""

    def set_event_loop(self, loop) -> None:
        if loop is None and threading.current_thread() is threading.main_thread():
            loop = _started_worker_loop()
        super().set_event_loop(loop)


class ErlangEventLoopPolicy(_WorkerEventLoopPolicy):
    """An event loop policy whose new loops are ``ErlangEventLoop``s. In a
    worker's main thread the current loop is the worker's loop."""

    def new_event_loop(self) -> ErlangEventLoop:
        return ErlangEventLoop()


# erlang_python's alias.
EventLoopPolicy = ErlangEventLoopPolicy


def get_event_loop_policy() -> ErlangEventLoopPolicy:
    """A new ``ErlangEventLoopPolicy`` (as erlang_python's does; asyncio's
    current policy is ``asyncio.get_event_loop_policy()``)."""
    return ErlangEventLoopPolicy()


def install_worker_policy() -> None:
    """Makes ``ErlangEventLoopPolicy`` asyncio's policy in a worker, as
    erlang_python does at start, unless code already chose one: then
    ``asyncio.run()`` and ``asyncio.new_event_loop()`` make
    ``ErlangEventLoop``s. Called when asyncio is first imported in a worker
    (erlang._policy), so a worker that never uses asyncio never loads it."""
    policy = _events._event_loop_policy
    if policy is None or type(policy) in (_unix_events.DefaultEventLoopPolicy,
                                          _WorkerEventLoopPolicy):
        asyncio.set_event_loop_policy(ErlangEventLoopPolicy())


def new_event_loop() -> ErlangEventLoop:
    """A new ``ErlangEventLoop`` (for ``asyncio.Runner(loop_factory=...)``,
    or to manage by hand)."""
    return ErlangEventLoop()


def run(main: Coroutine[Any, Any, _T], *, debug: Optional[bool] = None) -> _T:
    """Runs a coroutine to completion on a new ``ErlangEventLoop`` and closes
    the loop, like ``asyncio.run()``: leftover tasks are cancelled, async
    generators and the default executor shut down. It may be called from
    synchronous code that Erlang called (``py:call``), not from a coroutine."""
    if _events._get_running_loop() is not None:
        raise RuntimeError("erlang.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


def install() -> None:
    """Makes ``ErlangEventLoop`` the loop asyncio creates (``asyncio.run()``,
    ``asyncio.new_event_loop()``) by setting ``ErlangEventLoopPolicy``. In
    the worker's main thread the current event loop stays the worker's."""
    policy = ErlangEventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    loop = _started_worker_loop()
    if loop is not None and threading.current_thread() is threading.main_thread():
        policy.set_event_loop(loop)


def get_worker_loop() -> Optional[ErlangEventLoop]:
    """The worker's own event loop: where coroutines called from Erlang run
    and where ``spawn_task`` puts tasks from synchronous code. None outside a
    worker. A worker starts it on first use: in another thread than the
    worker's main thread, the first call waits until the main thread has
    started it (as soon as it is idle or waits for Erlang)."""
    loop = _worker_loop
    if loop is None and _pyport_loop.in_worker():
        from . import _worker
        loop = _worker.ensure_loop()
    return None if loop is None or loop.is_closed() else loop


def _started_worker_loop() -> Optional[ErlangEventLoop]:
    """The worker's loop if it has started (never starts it)."""
    loop = _worker_loop
    return None if loop is None or loop.is_closed() else loop


def sleep(seconds: float) -> Optional[Awaitable[None]]:
    """Sleeps ``seconds``.

    In a coroutine it returns an awaitable (``await erlang.sleep(0.1)``),
    like ``asyncio.sleep``. In synchronous code it blocks the caller but not
    the worker: on the worker's main thread the worker's loop keeps running
    meanwhile, so other requests, tasks and I/O are served; in other threads
    it is ``time.sleep``."""
    if _events._get_running_loop() is not None:
        return asyncio.sleep(seconds)
    loop = get_worker_loop() if threading.current_thread() is threading.main_thread() else None
    if loop is not None:
        loop._pyport_run_for(seconds)
    else:
        time.sleep(seconds)
    return None


def spawn_task(coro: Coroutine[Any, Any, _T], *, name: Optional[str] = None):
    """Starts ``coro`` as a task without waiting for it, from async or sync code.

    In a coroutine (or a callback) the task goes on the running loop. In
    synchronous code on the worker's main thread (what ``py:call`` runs) it
    goes on the worker's loop and starts as soon as the current call
    returns; both return the ``asyncio.Task``. From another thread it is
    handed to the worker's loop thread-safely and a
    ``concurrent.futures.Future`` of its result is returned."""
    if not asyncio.iscoroutine(coro):
        raise TypeError(f"a coroutine was expected, got {coro!r}")
    loop = _events._get_running_loop()
    if loop is not None:
        return loop.create_task(coro, name=name)
    if threading.current_thread() is threading.main_thread():
        worker = get_worker_loop()
        if worker is None:
            raise RuntimeError("spawn_task() outside a coroutine needs the worker's event loop")
        return worker.create_task(coro, name=name)
    if not _pyport_loop.in_worker():
        raise RuntimeError("spawn_task() from a thread needs the worker's event loop running")
    # Never waits for the loop to start (the main thread may be waiting
    # for this thread).
    from . import _worker
    return _worker.spawn_from_thread(coro, name)


class ExecutionMode(enum.Enum):
    """How Python runs in this worker (see ``detect_mode``)."""

    FREE_THREADED = "free_threaded"
    SUBINTERP = "subinterp"
    SHARED_GIL = "shared_gil"


def detect_mode() -> ExecutionMode:
    """``FREE_THREADED`` on a Python built without the GIL, ``SUBINTERP`` in
    a sub-interpreter, else ``SHARED_GIL``. A pyport worker runs the main
    interpreter of its own process, so its GIL is shared only by its own
    threads."""
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return ExecutionMode.FREE_THREADED
    try:
        import _interpreters as interpreters  # 3.13+
    except ImportError:
        try:
            import _xxsubinterpreters as interpreters  # 3.8 - 3.12
        except ImportError:
            interpreters = None
    if interpreters is not None:
        try:
            if interpreters.get_current() != interpreters.get_main():
                return ExecutionMode.SUBINTERP
        except Exception:
            pass
    return ExecutionMode.SHARED_GIL


if _pyport_loop.in_worker():
    install_worker_policy()
