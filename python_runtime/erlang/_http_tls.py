"""The TLS context of an HTTP pool's workers (erlang._http): certfile,
keyfile, client certificates; a file that does not load is named."""
from __future__ import annotations

import ssl
from typing import Optional


def tls_context(cfg: dict) -> Optional[ssl.SSLContext]:
    """The server's TLS context from ``certfile``/``keyfile`` (and
    ``cacertfile``/``verify`` for client certificates), or None for plain
    HTTP. TLS 1.2 at least, ALPN ``http/1.1``. A file that does not load
    raises ``ValueError("TLS: ...")`` naming it (pyport_http's tls_error)."""
    certfile, keyfile = cfg["certfile"], cfg["keyfile"]
    if not certfile and not keyfile:
        return None
    if not certfile or not keyfile:
        raise ValueError("TLS: certfile and keyfile go together")
    verify = cfg["verify"] or ("verify_peer" if cfg["cacertfile"] else "verify_none")
    if verify not in ("verify_none", "verify_peer"):
        raise ValueError(f"TLS: verify {verify!r}: expected verify_none or verify_peer")
    if verify == "verify_peer" and not cfg["cacertfile"]:
        raise ValueError("TLS: verify_peer needs cacertfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: {_which_file(certfile, keyfile)}: {exc}") from None
    if cfg["cacertfile"]:
        try:
            ctx.load_verify_locations(cafile=cfg["cacertfile"])
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS: cacertfile {cfg['cacertfile']}: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if verify == "verify_peer" else ssl.CERT_NONE
    return ctx


def _which_file(certfile: str, keyfile: str) -> str:
    """Which of the two files load_cert_chain refused: the certificate if
    it does not load alone, else the key (or both: a key of another cert)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except (ssl.SSLError, OSError):
        return f"certfile {certfile}"
    try:
        with open(keyfile, "rb") as f:
            pem = f.read(1 << 20)
    except OSError:
        return f"keyfile {keyfile}"
    if b"PRIVATE KEY-----" not in pem:
        return f"keyfile {keyfile}"
    return f"certfile {certfile} with keyfile {keyfile}"
