"""Installs ``ErlangEventLoopPolicy`` in a worker when asyncio is first
imported, not before: importing asyncio costs a worker's start-up a few
hundred milliseconds on a loaded machine, and most workers never need it.

A meta path finder watches for the import of ``asyncio``; once the package
has run, ``erlang._loop`` is imported, which installs the policy
(``install_worker_policy``) unless the code chose one of its own."""
from __future__ import annotations

import importlib
import sys

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _AsyncioWatcher:
    """Finds nothing itself: it lets the other finders find asyncio and wraps
    the loader so the policy is installed right after the package ran."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "asyncio":
            return None
        sys.meta_path.remove(self)  # one import of asyncio is all it watches
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_install(module: Any) -> None:
            exec_module(module)
            try:
                _install()
            except Exception as e:  # asyncio itself must still import
                print(f"pyport: ErlangEventLoopPolicy not installed: {e!r}", file=sys.stderr)

        # A per-spec wrapper object: the shared loader itself is untouched.
        spec.loader = _Loader(loader, exec_then_install)
        return spec


class _Loader:
    def __init__(self, loader: Any, exec_module: Any) -> None:
        self._loader = loader
        self.exec_module = exec_module

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _install() -> None:
    # erlang._loop installs the policy as it is imported; it imports asyncio
    # itself, so while it is being imported (it started the import of
    # asyncio) it does so at its own end.
    if "erlang._loop" not in sys.modules:
        importlib.import_module("erlang._loop")


def watch() -> None:
    """In a worker: install the policy now if asyncio is loaded, else when
    it is."""
    if "asyncio" in sys.modules:
        _install()
    elif not any(isinstance(f, _AsyncioWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _AsyncioWatcher())
