"""The HTTP server's access log (`access_log` option): one INFO record
per response to the logger pyport.http.access."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._http_conn import HttpConnection
    from ._http_request import _Request

access_log = logging.getLogger("pyport.http.access")


def _enable_access_log() -> None:
    # Straight to the Erlang logger at INFO, whatever the root logger's
    # level (py:configure_logging sets that one for everything).
    from ._logging import ErlangHandler
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    if not any(isinstance(h, ErlangHandler) for h in access_log.handlers):
        access_log.addHandler(ErlangHandler())


def _access_log(conn: HttpConnection, req: _Request) -> None:
    scope = req.scope
    client = f"{conn.client[0]}:{conn.client[1]}" if conn.client else "-"
    status = req.status if req.complete else 0  # 0: cut before the response ended
    path = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("latin-1")
    access_log.info('%s "%s %s HTTP/%s" %d %d %.1fms', client, scope["method"], path,
                    scope["http_version"], status, req.sent_bytes,
                    (conn._time() - req.started_at) * 1000)
