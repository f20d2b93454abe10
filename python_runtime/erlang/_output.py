"""What a call prints, sent to its caller's group leader (the Erlang shell,
IEx, Livebook) instead of the worker's log: the ``output => caller``
option (docs/configuration.md, "Output").

Such a call comes as a call of ``call(request_id, module, function, args,
**kwargs)`` here. It marks the code it runs as that request's in a context
variable, so output is attributed per request even when asyncio tasks of
several requests interleave: each task runs in its own copy of the
context. ``sys.stdout`` and ``sys.stderr`` are replaced, on the first such
call, by streams that send the lines written under a mark to Erlang
(``NOTIFY output``, one line a frame) and pass everything else on to the
stream they replace (the worker's log relay), unchanged.

Threads a call starts do not inherit its context: their output goes to the
log, as before. The node keeps its limits on this path too (the pool's
``log_rate``, lines cut to it): a worker cannot flood a group leader.
"""
from __future__ import annotations

import contextvars
import sys
from importlib import import_module

from . import _link

# Annotations only: typing is not imported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The request whose caller takes what the code running now prints.
_request: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "pyport_output_request", default=None)
# Unfinished lines, by request.
_partial: dict[int, str] = {}
# Longest line sent as one frame; longer ones are cut (the node cuts
# further, to its log_rate).
_MAX_LINE = 64 * 1024


class _AttributedStream:
    """Stands in for ``sys.stdout``/``sys.stderr``: text written under a
    request's mark goes to its caller, the rest to ``original``."""

    def __init__(self, original: Any) -> None:
        self._original = original

    def write(self, text: str) -> int:
        request = _request.get()
        if request is None:
            return self._original.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        _add(request, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        request = _request.get()
        if request is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _add(request: int, text: str) -> None:
    pending = _partial.pop(request, "") + text
    *lines, rest = pending.split("\n")
    for line in lines:
        _send(request, line, True)
    while len(rest) > _MAX_LINE:
        _send(request, rest[:_MAX_LINE], False)
        rest = rest[_MAX_LINE:]
    if rest:
        _partial[request] = rest


def _send(request: int, line: str, newline: bool) -> None:
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: shown, as stdout would
            line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        while len(line) > _MAX_LINE:
            _link.notify("output", [request, line[:_MAX_LINE], False])
            line = line[_MAX_LINE:]
        _link.notify("output", [request, line, newline])
    except ConnectionError:
        # The link is closing (the worker shuts down): the log relay may
        # still take it.
        stream = sys.__stdout__
        if stream is not None:
            stream.write(line + "\n" if newline else line)


def _flush(request: int) -> None:
    """The request ends: its unfinished line goes too."""
    rest = _partial.pop(request, None)
    if rest:
        _send(request, rest, False)


_installed = False


def _install() -> None:
    global _installed
    if not _installed:
        _installed = True
        sys.stdout = _AttributedStream(sys.stdout)
        sys.stderr = _AttributedStream(sys.stderr)


def _lookup(module: str, function: str) -> Any:
    target = sys.modules.get(module)
    if target is None:
        target = import_module(module)
    for name in function.split("."):
        target = getattr(target, name)
    return target


def call(request_id: int, module: str, function: str, args: list, /, **kwargs: Any) -> Any:
    """Runs ``module.function(*args, **kwargs)`` with what it prints sent to
    the caller of ``request_id``; a coroutine it returns runs as a task
    with the same mark."""
    _install()
    token = _request.set(request_id)
    try:
        value = _lookup(module, function)(*args, **kwargs)
    finally:
        _request.reset(token)
        _flush(request_id)
    from ._worker import is_awaitable_result
    if is_awaitable_result(value):
        return _marked(request_id, value)
    return value


async def _marked(request_id: int, awaitable: Any) -> Any:
    # A task runs in a copy of the context: the mark stays with this task.
    _request.set(request_id)
    try:
        return await awaitable
    finally:
        _flush(request_id)
