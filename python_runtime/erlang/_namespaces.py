"""The globals of ``py:eval``/``py:exec`` (PROTOCOL.md, Namespace).

Each namespace is a real module: registered in ``sys.modules`` under its own
name, so code defined there can be pickled, introspected (``dataclasses``,
``typing.get_type_hints``, ``inspect.getmodule``) and found again by name; and
``erlang`` is bound in it, as in erlang_python, so ``py:eval(<<"erlang.call(
...)">>)`` works without an import. Namespace 0 is the worker's shared one;
the others belong to one Erlang process each (on one worker), start as a
copy of the shared one's names, and are dropped when the process exits. The node bounds how many exist (pool option
``max_namespaces``): this module only keeps them.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import erlang

# Namespace number -> its module.
_spaces: dict[int, types.ModuleType] = {}

SHARED_NAME = "__pyport__"


def module_name(ns: int) -> str:
    """The ``__name__`` (and ``sys.modules`` key) of namespace ``ns``."""
    return SHARED_NAME if ns == 0 else f"__pyport_ns_{ns}__"


def create(ns: int) -> dict[str, Any]:
    """The globals of a new namespace ``ns`` (the worker's dispatcher asks
    once per namespace; one left by an earlier dispatcher is replaced)."""
    drop(ns)
    module = types.ModuleType(module_name(ns))
    module.__dict__["__builtins__"] = __builtins__
    module.__dict__["erlang"] = erlang
    shared = _spaces.get(0)
    if ns != 0 and shared is not None:
        # A process's namespace starts with what the shared one holds (the
        # pool's imports and init code, preloaded code), as erlang_python's
        # per-process environments inherit preload.
        for key, value in shared.__dict__.items():
            if not (key.startswith("__") and key.endswith("__")):
                module.__dict__[key] = value
    _spaces[ns] = module
    sys.modules[module.__name__] = module
    return module.__dict__


def drop(ns: int) -> bool:
    """Forgets namespace ``ns`` (what only it refers to is freed); True if it existed."""
    module = _spaces.pop(ns, None)
    if module is None:
        return False
    if sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]
    return True


def count() -> int:
    """How many namespaces exist, the shared one included once used."""
    return len(_spaces)


def call(ns: int, function: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``py:call(Ctx, '__main__', F, Args)``: ``F`` as the calling process
    defined it with ``py:exec``, else the worker's real ``__main__``."""
    target: Any
    space = _spaces.get(ns)
    head, _, rest = function.partition(".")
    if space is not None and head in space.__dict__:
        target = space.__dict__[head]
    else:
        target = getattr(sys.modules["__main__"], head)
    for part in rest.split(".") if rest else ():
        target = getattr(target, part)
    return target(*args, **kwargs)
