"""The ``erlang`` module of a pyport worker: Erlang's side of the world as
seen from Python (docs/erlang-integration.md). See docs/type-mapping.md for
how values cross over, and docs/asyncio.md for the event loop.

Functions registered in Erlang with ``py:register_function/2,3`` are also
attributes: ``erlang.my_func(1, 2)`` and ``from erlang import my_func``.
Only registered names resolve; names starting with an underscore never do
(so probes such as ``hasattr(erlang, '__wrapped__')`` are answered here, with
no round trip to Erlang)."""
from ._callbacks import ErlangFunction, async_call, call, cast
from ._dist import node, nodes, rpc_call, rpc_cast
from ._errors import (ErlangError, NodeDownError, ProcessError, RpcTimeoutError,
                      StateFullError, UnknownFunctionError)
from ._messages import send, whereis
from ._pubsub import async_receive_pubsub, publish, receive_pubsub, subscribe, unsubscribe
from ._schedule import (ScheduleMarker, consume_time_slice, schedule, schedule_inline,
                        schedule_py)
from ._state import (state_clear, state_decr, state_delete, state_get, state_get_multi,
                     state_incr, state_keys, state_set)
from ._tracing import Span, trace
from ._types import Atom, Pid, Ref, Term
from . import _callbacks, _link

# The event loop's names load on first use: they need the worker's
# _pyport_loop module (and asyncio), while the term types also serve tools
# outside a worker.
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


def setup_logging(level: int | str = "INFO", format: str | None = None) -> None:
    """Routes the root logger's records at ``level`` and above to the Erlang
    ``logger`` (see erlang._logging; ``py:configure_logging/1`` calls this in
    every worker)."""
    from ._logging import setup_logging as setup
    setup(level, format)


__all__ = [
    "Atom", "Pid", "Ref", "Term",
    "call", "async_call", "cast", "ErlangFunction",
    "send", "whereis",
    "state_get", "state_set", "state_delete", "state_incr", "state_decr",
    "state_get_multi", "state_keys", "state_clear",
    "publish", "subscribe", "unsubscribe", "receive_pubsub", "async_receive_pubsub",
    "rpc_call", "rpc_cast", "nodes", "node",
    "setup_logging", "ErlangHandler", "Span", "trace",
    "schedule", "schedule_py", "schedule_inline", "consume_time_slice", "ScheduleMarker",
    "ErlangError", "UnknownFunctionError", "ProcessError", "RpcTimeoutError",
    "NodeDownError", "StateFullError",
    *sorted(_LOOP_NAMES),
]


def __getattr__(name: str):
    # Only for names not defined above: the event loop's and ErlangHandler
    # (loaded on first use: asyncio and logging are slow to import), or a
    # registered Erlang function.
    name = str.__str__(name)
    if name in _LOOP_NAMES:
        from . import _loop

        value = getattr(_loop, name)
        globals()[name] = value
        return value
    if name == "ErlangHandler":
        from ._logging import ErlangHandler
        return ErlangHandler
    if name.startswith("_") or not _link.connected():
        raise AttributeError(f"module 'erlang' has no attribute {name!r}")
    try:
        found = _callbacks.registered(name)
    except Exception as e:  # Erlang cannot be asked: still an attribute lookup
        raise AttributeError(f"module 'erlang' has no attribute {name!r} "
                             f"(cannot ask Erlang: {e})") from e
    if found:
        return ErlangFunction(name)
    raise AttributeError(f"module 'erlang' has no attribute {name!r} "
                         f"(and no Erlang function is registered as {name!r})")


def __dir__():
    return sorted(set(globals()) | _LOOP_NAMES)
