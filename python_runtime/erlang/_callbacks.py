"""Calling Erlang functions registered with ``py:register_function/2,3``."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from . import _async, _link


def call(name: str, *args: Any) -> Any:
    """Calls the Erlang function registered as ``name`` with ``args`` (it
    receives them as one list) and returns its result. Blocks until Erlang
    answers; on the worker's main thread, requests from Erlang that arrive
    meanwhile are handled, so the function may call back into this worker.

    Raises UnknownFunctionError when nothing is registered under ``name``,
    ErlangError (with the Erlang ``reason``) when the function fails."""
    return _link.request("call", [name, list(args)])


async def async_call(name: str, *args: Any) -> Any:
    """``call`` for coroutines: awaits the answer without blocking the loop."""
    return await _async.request("call", [name, list(args)])


def cast(name: str, *args: Any) -> None:
    """Runs the registered Erlang function without waiting for it; its result
    and any failure are dropped (a failure is logged by Erlang)."""
    _link.notify("cast", [name, list(args)])


def registered(name: str) -> bool:
    """Whether an Erlang function is registered under ``name`` right now."""
    return bool(_link.request("registered", [name]))


class ErlangFunction:
    """A registered Erlang function, as ``erlang.<name>`` or ``from erlang
    import <name>`` gives it: calling it is ``erlang.call(name, *args)``."""

    def __init__(self, name: str) -> None:
        self.__name__ = name
        self.__qualname__ = name

    def __call__(self, *args: Any) -> Any:
        return _link.request("call", [self.__name__, list(args)])

    def __repr__(self) -> str:
        return f"<Erlang function {self.__name__!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErlangFunction) and other.__name__ == self.__name__

    def __hash__(self) -> int:
        return hash(("erlang", self.__name__))
