"""Tracing spans, kept in an ETS table of the Erlang VM
(``py:enable_tracing/0``, ``py:get_traces/0``)."""
from __future__ import annotations

import contextvars
import functools
import os
import time

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from . import _link

__all__ = ["Span", "trace"]

_current: contextvars.ContextVar["Span | None"] = contextvars.ContextVar("erlang_span", default=None)


def _new_id() -> int:
    return int.from_bytes(os.urandom(8), "big")


class Span:
    """A timed operation: ``with erlang.Span("load", user=7): ...``. Spans
    opened inside it (in the same thread or task) are its children. On exit
    it is sent to Erlang with its name, trace, span and parent ids, start and
    end (microseconds since the epoch), duration, status ("ok" or "error",
    with the exception) and attributes."""

    def __init__(self, name: str, **attributes: Any) -> None:
        self.name = name
        self.attributes = dict(attributes)
        self.events: list[dict[str, Any]] = []
        self.trace_id = self.span_id = self.parent_id = None
        self.start_us = self.end_us = None
        self._token: contextvars.Token | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, **attributes: Any) -> None:
        self.events.append({"name": name, "time_us": time.time_ns() // 1000,
                            "attributes": attributes})

    def event(self, name: str, **attributes: Any) -> None:
        """erlang_python's name for ``add_event``: records a point in time
        (with attributes) inside the span."""
        self.add_event(name, **attributes)

    def __enter__(self) -> "Span":
        parent = _current.get()
        self.trace_id = parent.trace_id if parent else _new_id()
        self.parent_id = parent.span_id if parent else None
        self.span_id = _new_id()
        self._token = _current.set(self)
        self.start_us = time.time_ns() // 1000
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.end_us = time.time_ns() // 1000
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        span = {
            "name": self.name, "trace_id": self.trace_id, "span_id": self.span_id,
            "parent_id": self.parent_id, "start_us": self.start_us, "end_us": self.end_us,
            "duration_us": self.end_us - self.start_us,
            "status": "error" if exc_type else "ok", "attributes": self.attributes,
            "events": self.events,
        }
        if exc_type is not None:
            span["error"] = f"{exc_type.__name__}: {exc}"
        try:
            _link.notify("span", [span])
        except Exception:  # tracing must never break the traced code
            pass

    async def __aenter__(self) -> "Span":
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def trace(name: str | None = None, **attributes: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: each call of the function (sync or async) is a Span named
    ``name`` (default: the function's qualified name)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        import inspect  # here, not at import: it is slow to import
        span_name = name or fn.__qualname__
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                with Span(span_name, **attributes):
                    return await fn(*args, **kwargs)
            return traced_async

        @functools.wraps(fn)
        def traced(*args: Any, **kwargs: Any) -> Any:
            with Span(span_name, **attributes):
                return fn(*args, **kwargs)
        return traced

    return decorate
