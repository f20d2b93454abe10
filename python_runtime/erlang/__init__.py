"""The ``erlang`` module of a pyport worker: Erlang's side of the world as
seen from Python. See docs/type-mapping.md for how values cross over, and
docs/asyncio.md for the event loop."""
from ._types import Atom, Pid, Ref, Term

# The event loop's names load on first use: they need the worker's
# _pyport_loop module, while the term types also serve tools outside a worker.
_LOOP_NAMES = frozenset({
    "ErlangEventLoop",
    "ErlangEventLoopPolicy",
    "ExecutionMode",
    "detect_mode",
    "get_worker_loop",
    "install",
    "new_event_loop",
    "run",
    "sleep",
    "spawn_task",
})

__all__ = ["Atom", "Pid", "Ref", "Term", *sorted(_LOOP_NAMES)]


def __getattr__(name):
    if name in _LOOP_NAMES:
        from . import _loop

        value = getattr(_loop, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'erlang' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LOOP_NAMES)
