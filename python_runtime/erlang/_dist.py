"""Erlang distribution: this node, the nodes it is connected to, and calls
to functions on them."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

from . import _link
from ._types import Atom

DEFAULT_RPC_TIMEOUT_MS = 5000


def node() -> Atom:
    """The name of the Erlang node this worker belongs to."""
    return _link.request("node", [])


def nodes() -> list[Atom]:
    """The nodes this node is connected to (not itself)."""
    return _link.request("nodes", [])


def rpc_call(node: str, module: str, function: str, args: Iterable[Any] = (),
             timeout_ms: int = DEFAULT_RPC_TIMEOUT_MS) -> Any:
    """Calls ``module:function(*args)`` on ``node`` and returns its result.

    Raises RpcTimeoutError (a TimeoutError) when no answer comes within
    ``timeout_ms``, NodeDownError (a ConnectionError) when the node cannot be
    reached or is not known here, ErlangError with the reason when the
    function raises."""
    return _link.request("rpc_call", [node, module, function, list(args), timeout_ms])


def rpc_cast(node: str, module: str, function: str, args: Iterable[Any] = ()) -> None:
    """Runs ``module:function(*args)`` on ``node`` without waiting."""
    _link.notify("rpc_cast", [node, module, function, list(args)])
