"""What the C++ worker asks Python to do for it: compiling an expression
that sees its locals from nested scopes, and the CONTROL operations of
proto/PROTOCOL.md (gc, memory statistics, reloading a module).

Not a public API: the worker imports this module on first use."""
from __future__ import annotations

import ast
import gc
import importlib
import importlib.machinery
import resource
import sys
import types
from typing import Any, Sequence

_PAGE = resource.getpagesize()


def compile_with_locals(source: str, names: Sequence[str]) -> types.CodeType:
    """Compiles ``lambda <names>: (<source>)`` for eval mode.

    Called with the Locals of an EVAL as keyword arguments, the expression
    sees them as ordinary local variables, so comprehensions, generator
    expressions and lambdas inside it see them too (a locals dict passed to
    eval() would be invisible to those nested scopes), and they never touch
    the namespace's globals. The caller has already compiled ``source``
    alone, so syntax errors are reported against the user's text."""
    tree = ast.parse(source, "<eval>", "eval")
    params = ast.arguments(posonlyargs=[], args=[], vararg=None,
                           kwonlyargs=[ast.arg(arg=n) for n in names],
                           kw_defaults=[None] * len(names), kwarg=None, defaults=[])
    wrapper = ast.Expression(body=ast.copy_location(ast.Lambda(args=params, body=tree.body),
                                                    tree.body))
    ast.fix_missing_locations(wrapper)
    return compile(wrapper, "<eval>", "eval")


def collect(generation: int | None) -> int:
    """gc.collect() for one generation (0-2) or all of them."""
    if generation is None:
        return gc.collect()
    if not isinstance(generation, int) or not 0 <= generation <= 2:
        raise ValueError(f"gc generation must be 0, 1 or 2, not {generation!r}")
    return gc.collect(generation)


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def memory_stats(_arg: Any = None) -> dict:
    """The worker's memory as the OS and Python's collector see it."""
    stats = {
        "rss_bytes": _rss_bytes(),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gc_count": list(gc.get_count()),
        "gc_threshold": list(gc.get_threshold()),
        "gc_stats": gc.get_stats(),
        "gc_enabled": gc.isenabled(),
    }
    tracemalloc = sys.modules.get("tracemalloc")
    if tracemalloc is not None and tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        stats["traced_memory_current"] = current
        stats["traced_memory_peak"] = peak
    return stats


def reload(name: str) -> str:
    """Reloads module ``name`` if this worker has imported it.

    Returns ``"reloaded"``, ``"not_loaded"`` (nothing to do: the next import
    reads the new code), or ``"needs_restart"`` for a module whose code
    cannot be run again in the same process (a C extension or a builtin
    module): only a fresh worker sees a new version of those."""
    module = sys.modules.get(name)
    if module is None:
        return "not_loaded"
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None)
    if (isinstance(loader, importlib.machinery.ExtensionFileLoader)
            or loader is importlib.machinery.BuiltinImporter
            or isinstance(loader, type) and issubclass(loader, importlib.machinery.BuiltinImporter)
            or name in sys.builtin_module_names):
        return "needs_restart"
    importlib.invalidate_caches()
    importlib.reload(module)
    return "reloaded"
