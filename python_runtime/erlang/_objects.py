"""Python objects kept in the worker for Erlang (``py:call(..., #{return =>
ref})``, ``py:call_method/3``, ``py:getattr/2``, ``py:to_term/1``), and the
per-request conversion options (``str_fallback``, ``numpy``).

The node chooses every object's id (unique for the node's life) and owns
the handle that names it: a handle is an Erlang term checked in the node
(its owner, its worker) before a request carrying it is sent. Here the
object is only stored under its id, found again when an argument names it
(proto/codec.cpp, ext 6), and dropped when the node releases it (the owner
asked, or exited). An id the worker does not hold raises StaleRefError,
which the node turns into ``{error, {stale_ref, Handle}}``: the worker
restarted, or the object was released.

Code running in this worker can reach these objects anyway (it is the same
process); what the node protects is that an Erlang process cannot use a
handle it does not own.
"""
from __future__ import annotations

import os
import types

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from ._types import Atom, Term

__all__ = ["StaleRefError", "count"]

# Id -> object. proto/codec.cpp reads this dict directly.
_table: dict[int, Any] = {}
# Ids released before their object was stored (the caller gave up while a
# coroutine still ran): the object is then not stored. Bounded: the oldest
# are forgotten first.
_released_early: dict[int, None] = {}
_MAX_RELEASED_EARLY = 4096
# Nesting limit of a converted value (the codec's, PROTOCOL.md).
_MAX_DEPTH = 512


class StaleRefError(LookupError):
    """A request named an object this worker does not hold."""


def count() -> int:
    """How many objects this worker keeps for Erlang."""
    return len(_table)


def release(*ids: int) -> None:
    """Drops the objects (the node's handle was released or its owner
    exited). Unknown ids are remembered for a while: a coroutine still
    running may store one later."""
    for i in ids:
        if _table.pop(i, None) is None and i not in _released_early:
            if len(_released_early) >= _MAX_RELEASED_EARLY:
                del _released_early[next(iter(_released_early))]
            _released_early[i] = None


def call_method(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``obj.name(*args, **kwargs)``: ``py:call_method/3,4``."""
    return getattr(obj, name)(*args, **kwargs)


def identity(obj: Any) -> Any:
    """The object itself, converted as a result: ``py:to_term/1``."""
    return obj


def apply(value: Any, options: dict) -> Any:
    """What a request run with options (a WITH frame) answers: ``value``
    kept (``keep``: the answer is ``[Id, OsPid]``) or converted with
    ``str_fallback``/``numpy``. An awaitable is awaited first."""
    if isinstance(value, types.CoroutineType) or hasattr(type(value), "__await__"):
        return _apply_later(value, options)
    return _apply_now(value, options)


async def _apply_later(awaitable: Any, options: dict) -> Any:
    return _apply_now(await awaitable, options)


def _apply_now(value: Any, options: dict) -> Any:
    oid = options.get("keep")
    if oid is not None:
        if _released_early.pop(oid, 0) is None:
            return [oid, os.getpid()]  # released meanwhile: not kept
        _table[oid] = value
        return [oid, os.getpid()]
    return convert(value, bool(options.get("str_fallback")), options.get("numpy", "bytes"))


# Values the codec converts as they are (docs/type-mapping.md).
_PLAIN = (type(None), bool, int, float, str, bytes, bytearray, memoryview, Atom, Term)


def convert(value: Any, str_fallback: bool = False, numpy: str = "bytes", depth: int = 0) -> Any:
    """``value`` with numpy arrays in the ``numpy`` form ("bytes": the raw
    bytes, C order; "array": ``(ndarray, Shape, Dtype, Bytes)``; "list":
    ``tolist()``), and, with ``str_fallback``, every object the codec
    cannot convert replaced by ``str(obj)``."""
    if isinstance(value, _PLAIN):
        return value
    if depth >= _MAX_DEPTH:
        raise TypeError(f"cannot convert a value nested deeper than {_MAX_DEPTH} levels")
    # Loops rather than comprehensions: one Python frame per level, so the
    # 512 levels fit in the interpreter's recursion limit.
    t = type(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = []
        for v in value:
            items.append(convert(v, str_fallback, numpy, depth + 1))
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[convert(k, str_fallback, numpy, depth + 1)] = convert(v, str_fallback, numpy,
                                                                      depth + 1)
        return out
    if t.__module__ == "numpy" and t.__name__ == "ndarray" or _is_ndarray(value):
        if numpy == "list":
            return convert(value.tolist(), str_fallback, numpy, depth + 1)
        if numpy == "array":
            return (Atom("ndarray"), list(value.shape), value.dtype.str, value.tobytes(order="C"))
        return value.tobytes(order="C")
    if str_fallback and not _convertible(value):
        return str(value)
    return value


def _is_ndarray(value: Any) -> bool:
    np = __import__("sys").modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _convertible(value: Any) -> bool:
    # What proto/codec.cpp converts beyond _PLAIN: Pid/Ref are Terms,
    # numbers by __index__/__float__, bytes by the buffer protocol.
    t = type(value)
    if hasattr(t, "__index__") or hasattr(t, "__float__"):
        return True
    try:
        memoryview(value).release()
        return True
    except TypeError:
        return False
