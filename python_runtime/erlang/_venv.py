"""Virtualenvs in a worker: the pool option ``venv`` and
``py:activate_venv/1`` (docs/channels.md). A venv is activated as its
``site`` module would do it (``site.addsitedir``: ``.pth`` files and
editable installs work), and refused when it was made for another Python."""
from __future__ import annotations

import os
import site
import sys

__all__ = ["activate", "deactivate", "info"]

_active: dict | None = None


class VenvError(ImportError):
    """The directory is not a venv this worker's Python can use."""


def _cfg_version(path: str) -> str | None:
    try:
        with open(os.path.join(path, "pyvenv.cfg"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise VenvError(f"{path} is not a venv (no readable pyvenv.cfg: {e.strerror})") from None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("version", "version_info"):
            return value.strip()
    return None


def site_packages(path: str) -> str:
    """The venv's site-packages for this Python; ``VenvError`` if it was
    made for another one."""
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    version = _cfg_version(path)
    if version is not None and ".".join(version.split(".")[:2]) != ours:
        raise VenvError(f"the venv {path} was made for Python {version}; this worker runs "
                        f"Python {ours} (make the venv with this Python, e.g. /usr/bin/python3 -m venv)")
    sp = os.path.join(path, "lib", f"python{ours}", "site-packages")
    if not os.path.isdir(sp):
        lib = os.path.join(path, "lib")
        others = sorted(d for d in os.listdir(lib)) if os.path.isdir(lib) else []
        raise VenvError(f"the venv {path} has no lib/python{ours}/site-packages "
                        f"(it has {others or 'no lib/python*'}): it was made for another Python")
    return sp


def activate(path: str) -> dict:
    """Puts the venv's site-packages, and what its ``.pth`` files add, at
    the front of ``sys.path`` (deactivating a venv activated before)."""
    global _active
    path = os.path.abspath(path)
    sp = site_packages(path)
    if _active is not None:
        deactivate()
    before = list(sys.path)
    site.addsitedir(sp)
    added = [p for p in sys.path if p not in before]
    front = [sp] + [p for p in added if p != sp]
    sys.path[:] = front + [p for p in before if p != sp]
    _active = {"venv_path": path, "site_packages": sp, "added": front}
    return info()


def deactivate() -> None:
    """Takes the active venv's entries off ``sys.path`` (modules already
    imported from it stay imported)."""
    global _active
    if _active is not None:
        added = set(_active["added"])
        sys.path[:] = [p for p in sys.path if p not in added]
        _active = None


def info() -> dict:
    if _active is None:
        return {"active": False}
    return {"active": True, "venv_path": _active["venv_path"],
            "site_packages": _active["site_packages"], "sys_path": list(sys.path)}
