"""The HTTP server's own bytes (erlang._http): status reasons, the Date
header's value (cached per second) and the error responses the server
answers itself (400/408/413/431/500/504...), which end their connection."""
from __future__ import annotations

import http
import time

_reasons = {s.value: s.phrase.encode("latin-1") for s in http.HTTPStatus}
_date_cache = [0, b""]


def _date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _date_cache[1]


def _error_response(status: int, text: str) -> bytes:
    body = f"{status} {_reasons.get(status, b'').decode()}: {text}\n".encode("utf-8", "replace")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\ndate: %s\r\n\r\n"
            % (status, _reasons.get(status, b"Error"), len(body), _date())) + body
