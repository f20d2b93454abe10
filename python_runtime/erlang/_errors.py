"""Exceptions for what goes wrong on the Erlang side, and how error replies
from Erlang (proto/PROTOCOL.md, REPLY) become them."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ErlangError", "UnknownFunctionError", "ProcessError", "RpcTimeoutError",
    "NodeDownError", "StateFullError", "from_reply",
]


class ErlangError(Exception):
    """Erlang refused a request or an Erlang function failed. ``reason``
    holds the Erlang reason (a term), e.g. ``('error', Atom('badarith'))``."""

    def __init__(self, message: str, reason: Any = None) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownFunctionError(ErlangError, NameError):
    """No Erlang function is registered under that name
    (``py:register_function/2,3``)."""


class ProcessError(ErlangError):
    """The process a message was sent to is not alive (or the name is not
    registered)."""


class RpcTimeoutError(ErlangError, TimeoutError):
    """A remote call did not answer in time."""


class NodeDownError(ErlangError, ConnectionError):
    """The node could not be reached."""


class StateFullError(ErlangError):
    """The shared state table holds ``max_state_entries`` keys already."""


_BY_NAME: dict[str, type[Exception]] = {
    "ErlangError": ErlangError,
    "UnknownFunctionError": UnknownFunctionError,
    "ProcessError": ProcessError,
    "TimeoutError": RpcTimeoutError,
    "ConnectionError": NodeDownError,
    "StateFullError": StateFullError,
}
# Argument errors found on the Erlang side are the ordinary Python ones.
# PermissionError: the pool's grants refused the request (docs/security.md).
_BUILTIN: dict[str, type[Exception]] = {"TypeError": TypeError, "ValueError": ValueError,
                                        "PermissionError": PermissionError}


def from_reply(type_name: str, message: str, reason: Any) -> Exception:
    """The exception for an error REPLY ``[Type, Message, Reason]`` (called
    by the worker when Erlang answers a request with an error)."""
    cls = _BY_NAME.get(type_name)
    if cls is not None:
        return cls(message, reason)
    builtin = _BUILTIN.get(type_name)
    if builtin is not None:
        exc = builtin(message)
        exc.reason = reason
        return exc
    return ErlangError(message, reason)
