"""The ``erlang`` module of a pyport worker: Erlang's side of the world as
seen from Python (docs/erlang-integration.md). See docs/type-mapping.md for
how values cross over, and docs/asyncio.md for the event loop.

Functions registered in Erlang with ``py:register_function/2,3`` are also
attributes: ``erlang.my_func(1, 2)`` and ``from erlang import my_func``.
Only registered names resolve; names starting with an underscore never do
(so probes such as ``hasattr(erlang, '__wrapped__')`` are answered here, with
no round trip to Erlang).

Every worker imports this package as it starts (for the term types), so the
rest of the API is loaded on first use: a worker that never talks to Erlang
pays nothing for it."""
from importlib import import_module

from ._types import Atom, Pid, Ref, Term, atom

# Public name -> the submodule that defines it.
_API = {
    **dict.fromkeys(["call", "async_call", "cast", "ErlangFunction"], "_callbacks"),
    **dict.fromkeys(["send", "whereis"], "_messages"),
    **dict.fromkeys(["state_get", "state_set", "state_delete", "state_incr", "state_decr",
                     "state_get_multi", "state_keys", "state_clear"], "_state"),
    **dict.fromkeys(["publish", "subscribe", "unsubscribe", "receive_pubsub",
                     "async_receive_pubsub"], "_pubsub"),
    **dict.fromkeys(["rpc_call", "rpc_cast", "nodes", "node"], "_dist"),
    **dict.fromkeys(["setup_logging", "ErlangHandler"], "_logging"),
    **dict.fromkeys(["Span", "trace"], "_tracing"),
    **dict.fromkeys(["schedule", "schedule_py", "schedule_inline", "consume_time_slice",
                     "ScheduleMarker", "InlineScheduleMarker"], "_schedule"),
    **dict.fromkeys(["ErlangError", "UnknownFunctionError", "ProcessError", "RpcTimeoutError",
                     "NodeDownError", "StateFullError", "ErlangTypeError", "ErlangValueError",
                     "ErlangPermissionError"], "_errors"),
    **dict.fromkeys(["ErlangEventLoop", "ErlangEventLoopPolicy", "ExecutionMode", "detect_mode",
                     "get_worker_loop", "install", "new_event_loop", "run", "sleep",
                     "spawn_task", "EventLoopPolicy", "get_event_loop_policy"], "_loop"),
    # Channels, buffers and shared dicts (docs/channels.md).
    **dict.fromkeys(["Channel", "ChannelClosed", "ByteChannel", "ByteChannelClosed",
                     "reply"], "_channels"),
    "PyBuffer": "_buffers",
    "SharedDict": "_shared_dict",
}
# erlang_python's importable submodules, also reachable as attributes.
_SUBMODULES = frozenset(["channel", "byte_channel"])

__all__ = ["Atom", "Pid", "Ref", "Term", "atom", *_API]

# In a worker, asyncio's policy becomes ErlangEventLoopPolicy as asyncio is
# imported (erlang_python installs it at start; see erlang._policy).
try:
    import _pyport_loop as _in_worker_probe
except ImportError:  # plain Python (tests, tools)
    pass
else:
    if _in_worker_probe.in_worker():
        from ._policy import watch as _watch_asyncio
        _watch_asyncio()
    del _in_worker_probe


def __getattr__(name):
    name = str.__str__(name)
    module = _API.get(name)
    if module is not None:
        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # found directly from now on
        return value
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    return _registered_function(name)


def __dir__():
    return sorted({*globals(), *_API})


def _registered_function(name):
    # Any other name: an Erlang function, if one is registered under it.
    # Underscore names (private, dunders, submodules being imported) first,
    # without importing anything.
    if name.startswith("_"):
        raise AttributeError(f"module 'erlang' has no attribute {name!r}")
    _link = import_module(f"{__name__}._link")
    _callbacks = import_module(f"{__name__}._callbacks")
    if not _link.connected():
        raise AttributeError(f"module 'erlang' has no attribute {name!r}")
    try:
        found = _callbacks.registered(name)
    except Exception as e:  # Erlang cannot be asked: still an attribute lookup
        raise AttributeError(f"module 'erlang' has no attribute {name!r} "
                             f"(cannot ask Erlang: {e})") from e
    if found:
        return _callbacks.ErlangFunction(name)
    raise AttributeError(f"module 'erlang' has no attribute {name!r} "
                         f"(and no Erlang function is registered as {name!r})")
