"""Python ``logging`` records into the Erlang ``logger``."""
from __future__ import annotations

import logging

from . import _link

__all__ = ["ErlangHandler", "setup_logging"]


def _level(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class ErlangHandler(logging.Handler):
    """Sends each record to the Erlang ``logger`` of the worker's node, at
    the matching level (CRITICAL critical, ERROR error, WARNING warning,
    INFO info, lower debug), with the record's logger name, module,
    function and line as metadata (the worker adds pool, slot and OS pid)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            meta = {"logger": record.name, "module": record.module,
                    "function": record.funcName, "line": record.lineno}
            _link.notify("log", [_level(record.levelno), message, meta])
        except Exception:
            self.handleError(record)


def setup_logging(level: int | str = logging.INFO, format: str | None = None) -> None:
    """Routes the root logger's records at ``level`` and above to Erlang,
    replacing an ErlangHandler installed before (``py:configure_logging/1``
    calls this in every worker)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ErlangHandler)]:
        root.removeHandler(handler)
    handler = ErlangHandler()
    handler.setFormatter(logging.Formatter(format or "%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
