"""Publish/subscribe on Erlang's ``pg`` (scope ``pyport``): topics are
shared with Erlang processes (``py:subscribe/1``, ``{pubsub, Topic, Msg}``)
and span the cluster.

Subscriptions belong to the asyncio task, else the thread, that made them:
each has a mailbox of its own in the worker, so two handlers subscribed to
different topics each receive only their own messages. A task's
subscriptions end when the task does, a thread's when the thread does."""
from __future__ import annotations

import sys
import threading
import weakref

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Awaitable

from . import _async, _link


class _Subscriber:
    """The mailbox of one task or thread, and its topics."""

    __slots__ = ("mailbox", "topics", "__weakref__")

    def __init__(self) -> None:
        self.mailbox = _link.open_mailbox()
        self.topics: set[Any] = set()

    def end(self) -> None:
        if self.mailbox is None:
            return
        mailbox, self.mailbox = self.mailbox, None
        try:
            if self.topics:
                _link.notify("unsubscribe_all", [mailbox])
            _link.close_mailbox(mailbox)
        except Exception:  # the worker is going away: nothing to clean
            pass

    def __del__(self) -> None:
        self.end()


_thread = threading.local()
_tasks: weakref.WeakKeyDictionary[asyncio.Task, _Subscriber] = weakref.WeakKeyDictionary()


def _current_task() -> asyncio.Task | None:
    # Without asyncio imported there is no task; not importing it here keeps
    # synchronous code from paying for it.
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None


def _subscriber(create: bool) -> _Subscriber | None:
    task = _current_task()
    if task is not None:
        sub = _tasks.get(task)
        if sub is None and create:
            sub = _tasks[task] = _Subscriber()
            task.add_done_callback(lambda _t, ref=weakref.ref(sub): ref() and ref().end())
        return sub
    sub = getattr(_thread, "subscriber", None)
    if sub is None and create:
        sub = _thread.subscriber = _Subscriber()  # ends with the thread's locals
    return sub


def subscribe(topic: Any) -> None:
    """Subscribes the current task (or thread) to ``topic``."""
    sub = _subscriber(create=True)
    _link.request("subscribe", [topic, sub.mailbox])
    sub.topics.add(topic)


def unsubscribe(topic: Any) -> None:
    """Ends the current task's (or thread's) subscription to ``topic``."""
    sub = _subscriber(create=False)
    if sub is None or topic not in sub.topics:
        return
    _link.request("unsubscribe", [topic, sub.mailbox])
    sub.topics.discard(topic)


def publish(topic: Any, message: Any) -> int:
    """Sends ``message`` to every subscriber of ``topic`` in the cluster
    (Erlang processes get ``{pubsub, Topic, Message}``); returns how many
    subscriptions it reached."""
    return _link.request("publish", [topic, message])


def receive_pubsub(timeout: float | None = None) -> tuple[Any, Any] | None:
    """The next ``(topic, message)`` for the current task or thread, waiting
    up to ``timeout`` seconds (None: until one comes; 0: only what is there
    already). None when nothing came, or when it subscribed to nothing."""
    sub = _subscriber(create=False)
    if sub is None:
        return None
    got, message = _link.receive(sub.mailbox, timeout)
    return tuple(message) if got else None


def async_receive_pubsub(timeout: float | None = None) -> Awaitable[tuple[Any, Any] | None]:
    """``receive_pubsub`` for coroutines: waits without blocking the loop.

    The subscriber is the caller's, taken when this is called (not when the
    awaitable first runs), so the awaitable can be wrapped in a task of its
    own and raced with something else (``asyncio.wait``, e.g. a WebSocket's
    ``receive()``); cancelling it loses no message."""
    return _receive_of(_subscriber(create=False), timeout)


async def _receive_of(sub: _Subscriber | None, timeout: float | None) -> tuple[Any, Any] | None:
    if sub is None or sub.mailbox is None:
        return None
    got, message = await _async.receive(sub.mailbox, timeout)
    return tuple(message) if got else None
