"""Which app serves a request (erlang._http): an app loaded from
"module:attr", WSGI ones wrapped in erlang._wsgi.WsgiAdapter, and several
apps on one server by path prefix (`mounts`)."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

from ._http_request import ASGIApp


def load_app(spec: str) -> ASGIApp:
    """The callable named by "module:attr" (attr may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app {spec!r}: expected \"module:attr\"")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"app {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"app {spec!r}: module {module_name!r} has no attribute {attr!r}") \
                from None
    if not callable(obj):
        raise TypeError(f"app {spec!r}: {attr!r} is not callable")
    return obj


class _Mount:
    __slots__ = ("prefix", "app", "wsgi", "state")

    def __init__(self, prefix: str, app: ASGIApp, wsgi: bool) -> None:
        self.prefix = prefix  # "" for "/"
        self.app = app
        self.wsgi = wsgi
        self.state: Optional[dict] = None


class _Mounts:
    """Several apps on one server (`mounts`): the longest prefix that
    matches whole path segments wins. As the ASGI spec says (its WSGI
    compatibility section), `root_path` gets the prefix and `path` stays
    whole; a WSGI mount's SCRIPT_NAME is the prefix, PATH_INFO the rest.
    No match: 404."""

    def __init__(self, mounts: list[_Mount]) -> None:
        self.mounts = sorted(mounts, key=lambda m: len(m.prefix), reverse=True)

    def find(self, path: str) -> Optional[_Mount]:
        for m in self.mounts:
            p = m.prefix
            if not p or (path.startswith(p) and (len(path) == len(p) or path[len(p)] == "/")):
                return m
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        mount = self.find(scope["path"])
        if mount is None:
            body = b"404 Not Found: no application is mounted at this path\n"
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": body})
            return
        scope["root_path"] = scope.get("root_path", "") + mount.prefix
        if mount.state is not None:
            scope["state"] = mount.state.copy()
        await mount.app(scope, receive, send)

    def shutdown(self) -> None:
        for m in self.mounts:
            stop = getattr(m.app, "shutdown", None)  # a WSGI adapter's threads
            if stop is not None:
                stop()


def _load_mount(prefix: str, spec: str, interface: str, cfg: dict) -> _Mount:
    """The app named by `spec`, a WSGI one wrapped in the adapter."""
    from . import _wsgi
    app = load_app(spec)
    if interface not in ("asgi", "wsgi", "auto"):
        raise ValueError(f"app {spec!r}: interface {interface!r}: expected asgi, wsgi or auto")
    if interface == "wsgi" or (interface == "auto" and _wsgi.is_wsgi(app)):
        return _Mount(prefix, _wsgi.WsgiAdapter(app, int(cfg["wsgi_threads"]), prefix), True)
    return _Mount(prefix, app, False)
