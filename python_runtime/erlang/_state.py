"""The shared state table: an ETS table in the Erlang VM, so it is shared
by every worker and survives worker crashes. Keys are strings (binaries on
the Erlang side); values are any term."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

from . import _link


def state_get(key: str) -> Any:
    """The value stored under ``key``, or None."""
    return _link.request("state_get", [key])


def state_set(key: str, value: Any) -> None:
    """Stores ``value`` under ``key``. Raises StateFullError when the table
    holds ``max_state_entries`` keys and ``key`` is new."""
    _link.request("state_set", [key, value])


def state_delete(key: str) -> None:
    """Removes ``key`` (nothing happens if it is not there)."""
    _link.request("state_delete", [key])


def state_incr(key: str, amount: int = 1) -> int:
    """Adds ``amount`` to the integer under ``key`` (missing counts as 0)
    atomically across all workers; returns the new value. TypeError if the
    value there is not an integer."""
    return _link.request("state_incr", [key, amount])


def state_decr(key: str, amount: int = 1) -> int:
    """``state_incr(key, -amount)``."""
    return _link.request("state_incr", [key, -amount])


def state_get_multi(keys: Iterable[str]) -> dict[str, Any]:
    """``{key: value or None}`` for every key, in one round trip."""
    keys = list(keys)
    values = _link.request("state_get_multi", [keys])
    return dict(zip(keys, values))


def state_keys(prefix: str = "") -> list[str]:
    """The keys that start with ``prefix`` (all keys when empty), sorted."""
    return _link.request("state_keys", [prefix])


def state_clear() -> None:
    """Removes every key."""
    _link.request("state_clear", [])
