"""Hornbeam's ``hornbeam_ml`` on pyport: inference results cached in the
shared state (an ETS table in the node), so every worker and every request
shares them (docs/erlang-integration.md, "Cached inference").

The cache is bounded: at most ``MAX_ENTRIES`` results (10000; set it, or
call ``set_max_entries``) are stored; past that a result is computed and
returned but not stored. ``cache_clear`` removes the entries under a
prefix and lets the cache fill again. A full shared state
(``max_state_entries``) is no error here: the result is not stored.

Default keys hash the input: bytes as they are, a string's UTF-8, an array
(anything with ``tobytes`` and ``shape``, e.g. numpy) its type, shape,
dtype and bytes, anything else its ``str()``."""
from __future__ import annotations

import hashlib

import erlang

from hornbeam_erlang import state_delete, state_get, state_incr, state_keys, state_set

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")

__all__ = ["cached_inference", "cache_stats", "cache_clear", "set_max_entries", "MAX_ENTRIES"]

MAX_ENTRIES = 10000
_HITS = "ml_cache_hits"
_MISSES = "ml_cache_misses"
_ENTRIES = "ml_cache_entries"


def set_max_entries(n: int) -> None:
    """Sets the bound on stored results (for this worker's stores)."""
    global MAX_ENTRIES
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"max entries must be a non-negative int, not {n!r}")
    MAX_ENTRIES = n


def _cache_key(prefix: str, input_data: Any) -> str:
    if isinstance(input_data, (bytes, bytearray, memoryview)):
        data = bytes(input_data)
    elif hasattr(input_data, "tobytes") and hasattr(input_data, "shape"):
        # An array's str() elides its middle: hash all of it, with its form.
        form = f"{type(input_data).__name__}{input_data.shape}{getattr(input_data, 'dtype', '')}"
        data = form.encode() + input_data.tobytes()
    else:
        data = (input_data if isinstance(input_data, str) else str(input_data)).encode(
            "utf-8", "surrogatepass")
    return f"{prefix}:{hashlib.sha256(data).hexdigest()[:32]}"


def _storable(value: Any) -> Any:
    # numpy arrays and scalars have tolist(); containers are walked.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    return value


def cached_inference(fn: Callable[[Any], T], input_data: Any, cache_key: str | None = None,
                     cache_prefix: str = "ml") -> T:
    """``fn(input_data)``, computed once for identical inputs across all
    workers: the result is stored under ``cache_key`` (default: the
    prefix and a hash of the input) and returned from there afterwards."""
    key = cache_key if cache_key is not None else _cache_key(cache_prefix, input_data)
    cached = state_get(key)
    if cached is not None:
        state_incr(_HITS)
        return cached
    state_incr(_MISSES)
    result = fn(input_data)
    if result is not None and _reserve():
        try:
            state_set(key, _storable(result))
        except Exception as e:
            state_incr(_ENTRIES, -1)  # not stored: give the room back
            if not isinstance(e, erlang.StateFullError):
                raise
    return result


def _reserve() -> bool:
    # Counted before storing, so concurrent workers never pass the bound.
    if state_incr(_ENTRIES) <= MAX_ENTRIES:
        return True
    state_incr(_ENTRIES, -1)
    return False


def cache_stats() -> dict[str, Any]:
    """``{'hits', 'misses', 'hit_rate'}`` across all workers."""
    hits = state_get(_HITS) or 0
    misses = state_get(_MISSES) or 0
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": hits / total if total else 0.0}


def cache_clear(cache_prefix: str = "ml") -> int:
    """Removes the stored results under ``cache_prefix`` (and resets the
    statistics); returns how many were removed."""
    keys = state_keys(f"{cache_prefix}:")
    for key in keys:
        state_delete(key)
    state_incr(_ENTRIES, -len(keys))
    for key in (_HITS, _MISSES):
        state_delete(key)
    return len(keys)
