"""The transports of ``ErlangEventLoop``: asyncio's selector transports with
their per-event work done in C++ (the ``_pyport_transports`` module).

``SocketTransport`` (TCP and Unix stream sockets, with or without TLS on
top) reads with ``recv`` straight into the protocol's ``data_received`` (or
``get_buffer``/``buffer_updated`` for a ``BufferedProtocol``), writes with
``send`` and keeps what the socket did not take as the caller's bytes
objects, flushed with ``writev``. ``DatagramTransport`` receives with
``recvfrom`` and sends with ``sendto``, reusing the socket address of the
last peer. Everything else (closing, aborting, ``write_eof``, flow-control
callbacks, ``sendfile``, datagram backlogs, non-IP datagram sockets,
addresses to resolve) is asyncio's own code, so the semantics are the
standard library's.
"""
from __future__ import annotations

import asyncio
import socket
from asyncio import constants as _constants
from asyncio import protocols as _protocols
from asyncio import selector_events as _selector_events
from asyncio.log import logger as _logger
from typing import Any, Optional

import _pyport_transports

__all__ = ["SocketTransport", "DatagramTransport"]


class SocketTransport(_pyport_transports.StreamBase, _selector_events._SelectorSocketTransport):
    """A stream socket transport (TCP or Unix) whose ``_read_ready``,
    ``write`` and ``_write_ready`` are C++."""

    _buffer_factory = _pyport_transports.WriteBuffer

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.BaseProtocol,
                 waiter: Optional[asyncio.Future] = None, extra: Optional[dict] = None,
                 server: Optional[asyncio.AbstractServer] = None) -> None:
        self._pyport_buffered = False
        self._pyport_max_size = self.max_size  # what one recv may read
        super().__init__(loop, sock, protocol, waiter, extra, server)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        super().set_protocol(protocol)
        # Which read path the C++ _read_ready takes.
        self._pyport_buffered = isinstance(protocol, _protocols.BufferedProtocol)

    def _pyport_write_lost(self) -> None:
        """write() after the connection was lost: counted, and logged once it
        goes on (asyncio's behaviour)."""
        if self._conn_lost >= _constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            _logger.warning("socket.send() raised exception.")
        self._conn_lost += 1

    def _pyport_write_drained(self) -> None:
        """Everything buffered was sent (the writer is already removed)."""
        if self._empty_waiter is not None:
            self._empty_waiter.set_result(None)
        if self._closing:
            self._call_connection_lost(None)
        elif self._eof:
            self._sock.shutdown(socket.SHUT_WR)


class DatagramTransport(_pyport_transports.DatagramBase, _selector_events._SelectorDatagramTransport):
    """A datagram transport whose ``_read_ready`` and ``sendto`` are C++ for
    IPv4 and IPv6 sockets."""

    # asyncio's code, for what the C++ methods hand over.
    _pyport_slow_sendto = _selector_events._SelectorDatagramTransport.sendto
    _pyport_slow_read_ready = _selector_events._SelectorDatagramTransport._read_ready

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.BaseProtocol,
                 address: Any = None, waiter: Optional[asyncio.Future] = None,
                 extra: Optional[dict] = None) -> None:
        self._pyport_max_size = self.max_size  # the largest datagram received whole
        super().__init__(loop, sock, protocol, address, waiter, extra)
        family = sock.family
        self._pyport_family = int(family) if family in (socket.AF_INET, socket.AF_INET6) else 0
        self._pyport_connected = bool(self._extra.get("peername"))

    def _pyport_backlog(self, data: Any, addr: Any) -> None:
        """The socket would block: keep the datagram (and those after it) for
        when it is writable, as asyncio does."""
        self._loop._add_writer(self._sock_fd, self._sendto_ready)
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data)
        self._maybe_pause_protocol()
