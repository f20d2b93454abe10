"""Cooperative scheduling in a port worker.

A worker runs one synchronous call at a time, so a long call delays every
request queued behind it. These let a call give way:

- ``schedule(name, *args)``: the call's result becomes the result of the
  Erlang function registered as ``name``. The worker answers at once and is
  free; the Erlang side runs the function in the caller's process.
- ``schedule_inline(module, func, args, kwargs)``: the call continues as
  ``func(*args, **kwargs)`` after every request already waiting for this
  worker (queued, or readable on its input) has had its turn. No round trip.
- ``schedule_py(...)``: the same, but the continuation goes through the
  worker's owner in Erlang, behind everything the owner has already sent.
- ``consume_time_slice(percent)``: counts ``percent`` of the current call's
  slice as used; True when the slice is used up *and* requests are waiting,
  i.e. when giving way would let someone else run.

The markers take effect only when a function called by ``py:call`` (or
``py:cast``) returns them; the caller sees the final result as usual.
"""
from __future__ import annotations

import functools
import importlib
import itertools
import sys

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from . import _link

__all__ = ["ScheduleMarker", "InlineScheduleMarker", "schedule", "schedule_py", "schedule_inline", "consume_time_slice"]


class ScheduleMarker:
    """What a handler returns to continue elsewhere. ``how`` is "erlang"
    (``target`` = [name, args]), "py" or "inline" (``target`` = the
    continuation, a callable taking no arguments)."""

    __slots__ = ("how", "target")

    def __init__(self, how: str, target: Any) -> None:
        self.how = how
        self.target = target

    def __repr__(self) -> str:
        return f"ScheduleMarker({self.how!r})"


class InlineScheduleMarker(ScheduleMarker):
    """What ``schedule_inline`` returns (erlang_python has a class of its
    own for it); a ``ScheduleMarker`` with ``how`` "inline"."""

    __slots__ = ()

    def __init__(self, target: Any) -> None:
        super().__init__("inline", target)


def schedule(name: str, *args: Any) -> ScheduleMarker:
    """Return this from a handler: its caller gets the result of the Erlang
    function registered as ``name``, called with ``args``."""
    return ScheduleMarker("erlang", [name, list(args)])


def _resolve(module: str, func: str, caller_globals: dict) -> Callable[..., Any]:
    # The caller's own namespace first: code run with py:exec lives in a
    # namespace, not in a module, and erlang_python code names it __main__.
    if module in (caller_globals.get("__name__"), "__main__") and func in caller_globals:
        return caller_globals[func]
    obj: Any = importlib.import_module(module)
    for part in func.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{module}.{func} is not callable")
    return obj


def _continuation(how: str, module: str, func: str, args: Any, kwargs: Any) -> ScheduleMarker:
    fn = _resolve(module, func, sys._getframe(2).f_globals)
    target = functools.partial(fn, *(args or ()), **(kwargs or {}))
    return InlineScheduleMarker(target) if how == "inline" else ScheduleMarker(how, target)


def schedule_py(module: str, func: str, args: Any = None, kwargs: Any = None) -> ScheduleMarker:
    """Return this from a handler: it continues as ``module.func(*args,
    **kwargs)`` once the requests Erlang has already sent this worker have
    run."""
    return _continuation("py", module, func, args, kwargs)


def schedule_inline(module: str, func: str, args: Any = None,
                    kwargs: Any = None) -> InlineScheduleMarker:
    """Return this from a handler: it continues as ``module.func(*args,
    **kwargs)`` once the requests already waiting in this worker have run."""
    return _continuation("inline", module, func, args, kwargs)


def consume_time_slice(percent: int) -> bool:
    """Counts ``percent`` (1-100) of the current call's time slice as used.
    True when the slice is used up and other requests are waiting for this
    worker; the count then starts over."""
    return _link.consume_time_slice(percent)


# Continuations waiting for their turn, by id (the worker parks a marker
# here and sends itself a CALL to resume(id)).
_parked: dict[int, Callable[[], Any]] = {}
_ids = itertools.count(1)


def park(marker: ScheduleMarker) -> int:
    cid = next(_ids)
    _parked[cid] = marker.target
    return cid


def resume(cid: int) -> Any:
    return _parked.pop(cid)()
