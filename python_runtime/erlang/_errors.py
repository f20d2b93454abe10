"""Exceptions for what goes wrong on the Erlang side, and how error replies
from Erlang (proto/PROTOCOL.md, REPLY) become them."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ErlangError", "UnknownFunctionError", "ProcessError", "RpcTimeoutError",
    "NodeDownError", "StateFullError", "ErlangTypeError", "ErlangValueError",
    "ErlangPermissionError", "from_reply",
]


class ErlangError(RuntimeError):
    """Erlang refused a request or an Erlang function failed. ``reason``
    holds the Erlang reason (a term), e.g. ``('error', Atom('badarith'))``.

    A ``RuntimeError``, as every failure of ``erlang.call``, ``async_call``,
    ``rpc_call`` and the ``state_*`` functions is in erlang_python: code
    written for it (``except RuntimeError``) catches them all; the
    subclasses below say more."""

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


class ErlangTypeError(ErlangError, TypeError):
    """Erlang refused an argument's type (a ``TypeError`` too), e.g.
    ``state_incr`` of a key whose value is not an integer."""


class ErlangValueError(ErlangError, ValueError):
    """Erlang refused an argument's value (a ``ValueError`` too), e.g. an
    answer too large for a frame."""


class ErlangPermissionError(ErlangError, PermissionError):
    """The pool's grants refused the request (docs/security.md); a
    ``PermissionError`` too."""


# They keep the builtin's name, so an uncaught one still reaches Erlang as
# {error, {'TypeError', Msg}} (or 'ValueError', 'PermissionError'), as
# before they were also RuntimeErrors.
for _cls, _name in ((ErlangTypeError, "TypeError"), (ErlangValueError, "ValueError"),
                    (ErlangPermissionError, "PermissionError")):
    _cls.__name__ = _cls.__qualname__ = _name
del _cls, _name

_BY_NAME: dict[str, type[Exception]] = {
    "ErlangError": ErlangError,
    "UnknownFunctionError": UnknownFunctionError,
    "ProcessError": ProcessError,
    "TimeoutError": RpcTimeoutError,
    "ConnectionError": NodeDownError,
    "StateFullError": StateFullError,
    # Argument errors found on the Erlang side: the ordinary Python class
    # and RuntimeError both catch them.
    "TypeError": ErlangTypeError,
    "ValueError": ErlangValueError,
    "PermissionError": ErlangPermissionError,
}


def from_reply(type_name: str, message: str, reason: Any) -> Exception:
    """The exception for an error REPLY ``[Type, Message, Reason]`` (called
    by the worker when Erlang answers a request with an error)."""
    return _BY_NAME.get(type_name, ErlangError)(message, reason)
