"""Hornbeam's ``hornbeam_erlang`` module on pyport: the same names with the
behaviour Hornbeam documents (docs/erlang-integration.md, docs/migration.md
"Hornbeam"), backed by the ``erlang`` package.

- Hooks: ``register_hook``/``hook``, ``unregister_hook``/``unhook``,
  ``execute``, ``execute_async``, ``await_result``, ``stream``,
  ``stream_async``. The registry lives in the Erlang node: a hook this
  worker registers is reachable from every other worker and from Erlang
  (``hornbeam_hooks:execute/4``); calls are routed to this worker.
- Shared state: ``state_*`` and the shortcuts ``get``, ``set``, ``delete``,
  ``incr``, ``decr``.
- Pub/sub: ``publish`` (the topic as given: an ``erlang.Atom`` topic
  reaches Erlang subscribers as the atom), ``get_members``,
  ``get_local_members``; pyport adds ``subscribe``, ``unsubscribe``,
  ``receive_pubsub``.
- Erlang functions (``call`` unwraps ``('ok', V)``), distribution.

Every failure on the Erlang side is a ``RuntimeError`` (pyport's specific
classes such as ``erlang.StateFullError`` are kept as well, so both
``except RuntimeError`` and ``except erlang.StateFullError`` work)."""
from __future__ import annotations

import functools
import importlib
import inspect

import erlang
from erlang import _async, _link
from erlang import node, nodes, receive_pubsub, state_clear, subscribe, unsubscribe

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, AsyncIterator, Callable, Iterable, Iterator

__all__ = [
    "register_hook", "unregister_hook", "hook", "unhook",
    "execute", "execute_async", "await_result", "stream", "stream_async",
    "state_get", "state_set", "state_delete", "state_incr", "state_decr",
    "state_get_multi", "state_keys", "state_clear",
    "get", "set", "delete", "incr", "decr",
    "rpc_call", "rpc_cast", "nodes", "node",
    "publish", "subscribe", "unsubscribe", "receive_pubsub",
    "get_members", "get_local_members",
    "call", "cast", "HookError",
]


class HookError(RuntimeError):
    """A hook failed: ``Execute failed: ...``, ``Execute async failed:
    ...``, ``Await failed: ...``, ``Stream failed: ...`` or ``Stream error:
    ...``. ``reason`` holds the Erlang reason when there is one."""

    def __init__(self, message: str, reason: Any = None) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------
# Errors from Erlang as RuntimeError
# ---------------------------------------------------------------------------

_RUNTIME_CLASSES: dict[type, type | None] = {}


def _runtime(exc: BaseException) -> BaseException:
    """``exc`` as an instance of a RuntimeError subclass of its own class
    (so ``except ConnectionError`` and ``except RuntimeError`` both catch
    it); ``exc`` itself when it is a RuntimeError already."""
    if isinstance(exc, RuntimeError) or not isinstance(exc, Exception):
        return exc
    cls = type(exc)
    if cls not in _RUNTIME_CLASSES:
        try:
            _RUNTIME_CLASSES[cls] = type(cls.__name__, (cls, RuntimeError),
                                         {"__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__})
        except TypeError:  # a builtin layout that cannot be combined
            _RUNTIME_CLASSES[cls] = None
    combined = _RUNTIME_CLASSES[cls]
    if combined is None:
        new: BaseException = RuntimeError(*exc.args)
    else:
        new = combined.__new__(combined, *exc.args)
        new.args = exc.args
    new.__dict__.update(getattr(exc, "__dict__", {}))
    new.__cause__ = exc.__cause__
    return new.with_traceback(exc.__traceback__)


def _erlang_side(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        raise _runtime(e) from None


# ---------------------------------------------------------------------------
# Shared state
# ---------------------------------------------------------------------------

def state_get(key: Any) -> Any:
    """The value under ``key`` (any term), or None."""
    return _erlang_side(_link.request, "state_get", [key])


def state_set(key: Any, value: Any) -> None:
    """Stores ``value`` under ``key``."""
    _erlang_side(_link.request, "state_set", [key, value])


def state_delete(key: Any) -> None:
    """Removes ``key``."""
    _erlang_side(_link.request, "state_delete", [key])


def state_incr(key: Any, delta: int = 1) -> int:
    """Adds ``delta`` to the integer under ``key`` atomically across all
    workers (a missing key counts as 0); returns the new value. A value
    that is not an integer raises RuntimeError."""
    return _erlang_side(_link.request, "state_incr", [key, delta])


def state_decr(key: Any, delta: int = 1) -> int:
    """``state_incr(key, -delta)``."""
    return _erlang_side(_link.request, "state_incr", [key, -delta])


def state_get_multi(keys: Iterable[Any]) -> dict[Any, Any]:
    """``{key: value or None}`` for every key, in one round trip."""
    return _erlang_side(erlang.state_get_multi, keys)


def state_keys(prefix: str | None = None) -> list[Any]:
    """Every key, of any type (``prefix`` None); else the string keys that
    start with ``prefix``."""
    return _erlang_side(_link.request, "state_keys", [prefix])


get = state_get
set = state_set  # noqa: A001 (Hornbeam's name)
delete = state_delete
incr = state_incr
decr = state_decr


# ---------------------------------------------------------------------------
# Pub/sub and distribution
# ---------------------------------------------------------------------------

def publish(topic: Any, message: Any) -> int:
    """Sends ``message`` to every subscriber of ``topic`` in the cluster;
    returns the number of subscriptions. Erlang subscribers
    (``hornbeam_pubsub:subscribe/1``) get ``{pubsub, Topic, Message}`` with
    the topic as given: a ``str`` is a binary, an ``erlang.Atom`` the atom."""
    return _erlang_side(_link.request, "publish", [topic, message, "as_given"])


def get_members(topic: Any) -> list[erlang.Pid]:
    """The processes subscribed to ``topic`` (as given), on every node."""
    return rpc_call(node(), "hornbeam_pubsub", "get_members", [topic])


def get_local_members(topic: Any) -> list[erlang.Pid]:
    """The processes of this node subscribed to ``topic`` (as given)."""
    return rpc_call(node(), "hornbeam_pubsub", "get_local_members", [topic])


def rpc_call(node: str, module: str, function: str, args: Iterable[Any] = (),
             timeout_ms: int = 5000) -> Any:
    """``module:function(*args)`` on ``node``. Failures are RuntimeErrors
    (also ``TimeoutError`` when it did not answer in time,
    ``ConnectionError`` when the node cannot be reached)."""
    return _erlang_side(erlang.rpc_call, node, module, function, args, timeout_ms)


def rpc_cast(node: str, module: str, function: str, args: Iterable[Any] = ()) -> None:
    """Runs ``module:function(*args)`` on ``node`` without waiting."""
    _erlang_side(erlang.rpc_cast, node, module, function, args)


# ---------------------------------------------------------------------------
# Registered Erlang functions
# ---------------------------------------------------------------------------

def call(name: str, *args: Any) -> Any:
    """Calls the function registered with ``hornbeam:register_function``.
    Its result ``('ok', V)`` is ``V``; ``('error', R)`` raises
    ``RuntimeError("Call failed: R")``; any other value is returned as is."""
    result = _erlang_side(erlang.call, name, *args)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str):
        if result[0] == "ok":
            return result[1]
        if result[0] == "error":
            error = RuntimeError(f"Call failed: {result[1]}")
            error.reason = result[1]
            raise error
    return result


def cast(name: str, *args: Any) -> None:
    """Runs the registered function without waiting for it."""
    _erlang_side(erlang.cast, name, *args)


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------

# app path -> handler (a class is instantiated once, when registered)
_hooks: dict[str, Any] = {}
_MISSING = object()


def _path(app_path: Any) -> str:
    if not isinstance(app_path, str):
        raise TypeError(f"a hook's app path is a str, not {type(app_path).__name__}")
    return str.__str__(app_path)


def register_hook(app_path: str, handler: Any) -> None:
    """Registers ``handler`` under ``app_path`` for every caller: other
    workers, Erlang, this worker. ``handler`` is a function called as
    ``handler(action, *args, **kwargs)``, a class (instantiated once, now)
    or an instance, whose method named ``action`` is called with
    ``(*args, **kwargs)``. The registration ends with this worker's
    process; a worker holds at most ``max_per_worker`` hooks (100)."""
    path = _path(app_path)
    if inspect.isclass(handler):
        handler = handler()
    previous = _hooks.get(path, _MISSING)
    _hooks[path] = handler  # before Erlang routes the first call here
    try:
        _erlang_side(_link.request, "hook", ["register", [path]])
    except BaseException:
        if previous is _MISSING:
            _hooks.pop(path, None)
        else:
            _hooks[path] = previous
        raise


def unregister_hook(app_path: str) -> None:
    """Removes this worker's hook ``app_path``."""
    path = _path(app_path)
    _hooks.pop(path, None)
    _erlang_side(_link.request, "hook", ["unregister", [path]])


hook = register_hook
unhook = unregister_hook


def _hook_call(what: str, sub: str, args: list[Any]) -> Any:
    try:
        return _link.request("hook", [sub, args])
    except Exception as e:
        raise _hook_error(what, e) from e


async def _hook_call_async(what: str, sub: str, args: list[Any]) -> Any:
    try:
        return await _async.request("hook", [sub, args])
    except Exception as e:
        raise _hook_error(what, e) from e


def _hook_error(what: str, e: BaseException) -> HookError:
    text = str(e)
    message = text if text.startswith(what + ":") else f"{what}: {type(e).__name__}: {text}"
    return HookError(message, getattr(e, "reason", None))


def _find(path: str) -> Any:
    """This worker's handler of ``path``; else ``"module:name"`` imported
    (a class there is instantiated for the call)."""
    handler = _hooks.get(path, _MISSING)
    if handler is not _MISSING:
        return handler
    module_name, sep, name = path.rpartition(":")
    if not sep or not module_name or not name.isidentifier() or name.startswith("_"):
        raise LookupError(f"no hook is registered as {path!r}")
    obj = getattr(importlib.import_module(module_name), name)
    return obj() if inspect.isclass(obj) else obj


def _invoke(path: str, action: Any, args: Iterable[Any], kwargs: dict[str, Any]) -> Any:
    handler = _find(path)
    action = str(action)
    if inspect.isroutine(handler) or isinstance(handler, functools.partial):
        return handler(action, *args, **kwargs)
    # An instance: its method named by the action. Private and special
    # names are never actions (a caller must not reach __class__ & co).
    method = None if action.startswith("_") else getattr(handler, action, None)
    if callable(method):
        return method(*args, **kwargs)
    if callable(handler):
        return handler(action, *args, **kwargs)
    raise AttributeError(f"hook {path!r} has no action {action!r}")


def _run_hook(path: str, action: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Runs a hook in this worker for a caller elsewhere (Erlang's
    pyport_hooks calls it)."""
    return _invoke(path, action, args, kwargs)


def _hook_stream(path: str, action: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The chunks of a hook for a caller elsewhere: a generator (or async
    generator) as returned, any other value as one chunk."""
    result = _invoke(path, action, args, kwargs)
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return result
    return [result]


def execute(app_path: str, action: str, *args: Any, **kwargs: Any) -> Any:
    """Runs ``action`` of the hook ``app_path`` (a Python hook in the
    worker that registered it, an Erlang one in the node; a path nobody
    registered is ``"module:name"`` imported here) and returns the
    handler's value. Failure: ``HookError("Execute failed: ...")``."""
    path = _path(app_path)
    reply = _hook_call("Execute failed", "execute", [path, action, list(args), kwargs])
    if reply[0] == "local":
        try:
            return _invoke(path, action, args, kwargs)
        except Exception as e:
            raise _hook_error("Execute failed", e) from e
    return reply[1]


def execute_async(app_path: str, action: str, *args: Any, **kwargs: Any) -> str:
    """Starts ``execute`` and returns its task id at once (at most
    ``max_tasks_per_worker`` tasks, 1000, run for this worker at a time)."""
    return _hook_call("Execute async failed", "execute_async",
                      [_path(app_path), action, list(args), kwargs])


def await_result(task_id: str, timeout_ms: int = 30000) -> Any:
    """The value of a task from ``execute_async``, waiting at most
    ``timeout_ms`` (None: no limit). A failure, a timeout (the task is then
    abandoned) or an unknown id: ``HookError("Await failed: ...")``."""
    reply = _hook_call("Await failed", "await", [task_id, timeout_ms])
    return reply[1]


def stream(app_path: str, action: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Yields the chunks of ``action`` of ``app_path``: the items of the
    generator a Python handler returns (any other value is one chunk), or
    of an Erlang handler's ``hornbeam_hooks:stream_from_list/fun``."""
    path = _path(app_path)
    reply = _hook_call("Stream failed", "stream_open", [path, action, list(args), kwargs])
    if reply[0] == "local":
        yield from _local_chunks(path, action, args, kwargs)
        return
    stream_id, finished = reply[1], False
    try:
        while True:
            item = _hook_call("Stream error", "stream_next", [stream_id])
            if item == "done":
                finished = True
                return
            yield item[1]
    finally:
        if not finished:
            _close(stream_id)


def _local_chunks(path: str, action: str, args: Any, kwargs: Any) -> Iterator[Any]:
    try:
        result = _invoke(path, action, args, kwargs)
    except Exception as e:
        raise _hook_error("Stream failed", e) from e
    if inspect.isasyncgen(result):
        raise HookError("Stream failed: the handler returned an async generator "
                        "(use stream_async)")
    if not inspect.isgenerator(result):
        yield result
        return
    while True:
        try:
            chunk = next(result)
        except StopIteration:
            return
        except Exception as e:
            raise _hook_error("Stream error", e) from e
        yield chunk


def _close(stream_id: Any) -> None:
    try:
        _link.notify("hook", ["stream_close", [stream_id]])
    except Exception:  # the worker's link is closing: the stream ends with it
        pass


async def stream_async(app_path: str, action: str, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """``stream`` for coroutines: waits for each chunk without blocking the
    event loop (a local async generator handler is iterated as such)."""
    path = _path(app_path)
    reply = await _hook_call_async("Stream failed", "stream_open",
                                   [path, action, list(args), kwargs])
    if reply[0] == "local":
        try:
            result = _invoke(path, action, args, kwargs)
        except Exception as e:
            raise _hook_error("Stream failed", e) from e
        if inspect.isasyncgen(result):
            async for chunk in result:
                yield chunk
        elif inspect.isgenerator(result):
            for chunk in result:
                yield chunk
        else:
            yield result
        return
    stream_id, finished = reply[1], False
    try:
        while True:
            item = await _hook_call_async("Stream error", "stream_next", [stream_id])
            if item == "done":
                finished = True
                return
            yield item[1]
    finally:
        if not finished:
            _close(stream_id)
