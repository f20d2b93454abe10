"""The HTTP/1.1 server of an HTTP pool's workers: ASGI apps served on the
worker's own event loop (docs/http.md).

Every worker of the pool runs ``start()`` from its init code: it imports
the app, binds its own listening socket on the pool's address with
SO_REUSEPORT (the kernel spreads connections over the workers' sockets),
and serves on the worker's ``ErlangEventLoop``, whose socket transports are
C++ over the worker's libuv loop. Requests are parsed in C++ by
``_pyport_http.Parser`` (libhttp-parser); each request is an asyncio task
running the app with an ASGI 3.0 ``http`` scope. A request never crosses
the port.

This module is the server's entry points (start, stop, wait_serving,
server_info; hold and park for reloads); the parts, one job each:
_http_conn (a connection), _http_request (a request's receive/send),
_http_server (a worker's listener), _http_lifespan, _http_mounts (apps
and prefixes), _http_handoff (reload hand-off), _http_bind, _http_tls,
_http_response (the server's own responses), _http_access (access log).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

# The server's parts, one job each; their names stay importable from here.
from ._http_access import _enable_access_log  # noqa: F401
from ._http_bind import bind_socket, parse_bind  # noqa: F401
from ._http_conn import PIPELINE_MAX, READ_HIGH, WRITE_HIGH, WRITE_LOW, HttpConnection  # noqa: F401
from ._http_handoff import _adopt, hold, park  # noqa: F401
from ._http_lifespan import _Lifespan  # noqa: F401
from ._http_mounts import _load_mount, _Mount, _Mounts, load_app  # noqa: F401
from ._http_request import ASGI_VERSION, ASGIApp, _Request  # noqa: F401
from ._http_response import _date, _error_response  # noqa: F401
from ._http_server import HttpServer, _servers  # noqa: F401
from ._http_tls import tls_context  # noqa: F401
from ._write_flow import ClientDisconnected

__all__ = ["start", "stop", "wait_serving", "hold", "park", "server_info", "tls_context",
           "load_app", "parse_bind", "bind_socket", "ClientDisconnected"]

log = logging.getLogger("pyport.http")

# Defaults; every one can be set per pool (docs/http.md, pyport_http.erl).
DEFAULTS: dict[str, Any] = {
    "max_request_line": 8190,       # bytes of the request target (414 above)
    "max_headers": 100,             # header fields (431 above)
    "max_header_bytes": 65536,      # bytes of all header fields (431 above)
    "max_body": 16 * 1024 * 1024,   # bytes of a request body (413 above); 0: no limit
    "header_timeout": 10.0,         # s to read a request head once it started (408)
    "body_timeout": 30.0,           # s the app waits for the next piece of body (408)
    "keepalive_timeout": 5.0,       # s an idle keep-alive connection stays open
    "write_timeout": 30.0,          # s send() may wait for a client that does not read
    "request_timeout": 30.0,        # s until the response starts (504 after); 0: none
    "backlog": 1024,
    "root_path": "",
    "lifespan": "auto",             # auto | on | off
    "access_log": False,            # one INFO record per response (logger pyport.http.access)
    "interface": "auto",            # asgi | wsgi | auto (erlang._wsgi.is_wsgi)
    "wsgi_threads": 8,              # threads running a WSGI app's requests
    "mounts": [],                   # [[prefix, "module:attr", interface], ...] (_Mounts)
    "hooks": [],                    # the Erlang hooks the pool has (pyport_http_hooks)
    "hook_pool": "",                # the pool's name, for pyport_http_hooks:dispatch/1
    "hook_timeout": 5.0,            # s Erlang gives a hook (then 500)
    "handoff": "",                  # the pool's private directory for listener hand-off (reload)
    "pool": "",                     # the pool's name
    "max_requests": 0,              # HTTP requests, then a graceful recycle (0: none)
    "websocket_max_message_size": 16 * 1024 * 1024,  # bytes (close 1009 above); 0: no limit
    "certfile": "",                 # TLS: PEM certificate chain ("" : plain HTTP)
    "keyfile": "",                  # TLS: PEM private key of certfile
    "cacertfile": "",               # TLS: CAs client certificates are checked against
    "verify": "",                   # verify_none | verify_peer ("": verify_peer with cacertfile)
}


def start(app_spec: str, bind: str, options: Optional[dict] = None) -> None:
    """Loads the app, binds the socket and serves on the worker's loop.
    Raises (so the worker's start fails naming it) when the app cannot be
    loaded or the address cannot be bound."""
    cfg = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown HTTP option {key!r}")
        cfg[key] = value
    interface = cfg["interface"]
    if interface not in ("asgi", "wsgi", "auto"):
        raise ValueError(f"interface {interface!r}: expected asgi, wsgi or auto")
    if cfg["mounts"]:
        mounts = [_load_mount("" if prefix == "/" else prefix, spec, iface or interface, cfg)
                  for prefix, spec, iface in cfg["mounts"]]
        if app_spec:
            mounts.append(_load_mount("", app_spec, interface, cfg))
        app: ASGIApp = _Mounts(mounts)
        if cfg["lifespan"] == "on" and all(m.wsgi for m in mounts):
            raise ValueError("lifespan => on needs an ASGI app (every mount is WSGI)")
    else:
        mount = _load_mount("", app_spec, interface, cfg)
        app = mount.app
        if mount.wsgi:
            if cfg["lifespan"] == "on":
                raise ValueError(f"app {app_spec!r}: lifespan => on needs an ASGI app "
                                 "(this is WSGI)")
            cfg["lifespan"] = "off"
    if cfg["access_log"]:
        _enable_access_log()
    tls = tls_context(cfg)  # before binding: a bad file fails the start, no socket held
    sock = _adopt(cfg["handoff"], bind) or bind_socket(bind, cfg["backlog"])
    from . import _worker
    loop = _worker.ensure_loop()
    server = HttpServer(app, sock, cfg, loop, tls)
    _servers.append(server)
    task = server.serving = loop.create_task(server.serve())

    def started(t: asyncio.Task) -> None:
        if t.cancelled() or t.exception() is not None:
            if not t.cancelled():
                log.error("HTTP server on %s did not start: %r", bind, t.exception())
            sock.close()

    task.add_done_callback(started)


async def wait_serving() -> bool:
    """Waits until this worker's servers listen (lifespan startup done);
    raises the reason one did not start (the app's startup.failed message)."""
    for server in _servers:
        if server.serving is not None:
            await asyncio.shield(server.serving)
    return True


async def stop(grace: float = 5.0) -> bool:
    """Stops this worker's servers (pyport_http:stop/1, before the pool)."""
    servers = list(_servers)
    _servers.clear()
    await asyncio.gather(*(s.stop(grace) for s in servers), return_exceptions=True)
    return True


def server_info() -> list[dict]:
    """What this worker serves (for pyport_http:http_info/1)."""
    return [{"connections": len(s.connections), "serving": s.server is not None,
             "fd": s.sock.fileno()} for s in _servers]
