"""Channels from Erlang (``py_channel``, ``py_byte_channel``): Python's
side. The queue lives in the Erlang node (docs/channels.md); a receive is a
request the channel answers when an item is there."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from . import _async, _link

__all__ = ["Channel", "ChannelClosed", "ByteChannel", "ByteChannelClosed", "reply"]


class ChannelClosed(Exception):
    """The channel is closed and everything queued has been received."""


class ByteChannelClosed(Exception):
    """The byte channel is closed and everything queued has been received."""


def handle_token(handle: Any, tag: str, what: str) -> str:
    """The token of an Erlang handle ``(tag, pid, token)`` (or of an
    object that wraps one)."""
    token = getattr(handle, "_token", None)
    if isinstance(token, str):
        return token
    if (isinstance(handle, tuple) and len(handle) >= 3 and handle[0] == tag
            and isinstance(handle[-1], str)):
        return handle[-1]
    raise TypeError(f"expected a {what} handle from Erlang, got {type(handle).__name__}")


def _request(token: str, verb: str, args: list) -> Any:
    try:
        return _link.request("handle", [verb, token, args])
    except ValueError as e:
        if getattr(e, "reason", None) == "unknown_handle":
            return "closed"
        raise


async def _async_request(token: str, verb: str, args: list) -> Any:
    try:
        return await _async.request("handle", [verb, token, args])
    except ValueError as e:
        if getattr(e, "reason", None) == "unknown_handle":
            return "closed"
        raise


def _timeout_ms(timeout_ms: int | None) -> int:
    if timeout_ms is None or timeout_ms < 0:
        return -1
    return int(timeout_ms)


class _Receiver:
    _tag = "py_channel"
    _what = "py_channel"
    _closed_error: type[Exception] = ChannelClosed

    def __init__(self, handle: Any) -> None:
        self._token = handle_token(handle, self._tag, self._what)

    def _answer(self, answer: Any, timeout: bool = False) -> Any:
        if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "data":
            return answer[1]
        if answer == "closed":
            raise self._closed_error(f"the {self._what} is closed")
        if answer == "timeout":
            raise TimeoutError(f"nothing arrived on the {self._what} in time")
        if answer == "waiter_exists":
            raise RuntimeError(f"another receive on this {self._what} is waiting")
        if answer == "empty":
            return None
        raise RuntimeError(f"unexpected answer from the {self._what}: {answer!r}")

    def _receive(self, timeout_ms: int | None = -1) -> Any:
        return self._answer(_request(self._token, "recv", [_timeout_ms(timeout_ms)]))

    def _try_receive(self) -> Any:
        return self._answer(_request(self._token, "recv", [0]))

    async def _async_receive(self) -> Any:
        return self._answer(await _async_request(self._token, "recv", [-1]))

    def close(self) -> None:
        """Closes the channel (for Erlang's senders too)."""
        _request(self._token, "close", [])

    def info(self) -> dict:
        """``{'size': queued bytes, 'max_size': cap, 'closed': bool}``."""
        return _request(self._token, "info", [])

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self):
        return self

    def __aiter__(self):
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._token[:6]}...>"


class Channel(_Receiver):
    """A channel made by ``py_channel:new/0,1`` and passed to Python: terms
    from Erlang, in order. Answer the sender with ``reply(pid, term)``."""

    def receive(self, timeout_ms: int | None = -1) -> Any:
        """The next term; waits (``-1``: without limit). Raises
        ``ChannelClosed`` once closed and drained, ``TimeoutError``."""
        return self._receive(timeout_ms)

    def try_receive(self) -> Any:
        """The next term, or ``None`` if nothing is queued."""
        return self._try_receive()

    async def async_receive(self) -> Any:
        """``receive()`` without blocking the event loop."""
        return await self._async_receive()

    def __next__(self) -> Any:
        try:
            return self._receive()
        except ChannelClosed:
            raise StopIteration from None

    async def __anext__(self) -> Any:
        try:
            return await self._async_receive()
        except ChannelClosed:
            raise StopAsyncIteration from None


class ByteChannel(_Receiver):
    """Raw bytes between Erlang and Python (``py_byte_channel``)."""
    _tag = "py_byte_channel"
    _what = "py_byte_channel"
    _closed_error = ByteChannelClosed

    def send_bytes(self, data: bytes | bytearray | memoryview) -> bool:
        """Queues ``data`` for Erlang (``py_byte_channel:recv/1,2``).
        Raises ``RuntimeError`` when the channel is closed or full."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes needs a bytes-like object, not {type(data).__name__}")
        answer = _request(self._token, "send", [bytes(data)])
        if answer == "ok":
            return True
        if answer == "busy":
            raise RuntimeError("the byte channel is full (max_size): Erlang has not read yet")
        raise RuntimeError("the byte channel is closed")

    def receive_bytes(self, timeout_ms: int | None = -1) -> bytes:
        """The next chunk from Erlang; waits (``-1``: without limit)."""
        return self._receive(timeout_ms)

    def try_receive_bytes(self) -> bytes | None:
        """The next chunk, or ``None``."""
        return self._try_receive()

    async def async_receive_bytes(self) -> bytes:
        """``receive_bytes()`` without blocking the event loop."""
        return await self._async_receive()

    def __next__(self) -> bytes:
        try:
            return self._receive()
        except ByteChannelClosed:
            raise StopIteration from None

    async def __anext__(self) -> bytes:
        try:
            return await self._async_receive()
        except ByteChannelClosed:
            raise StopAsyncIteration from None


def reply(pid: Any, term: Any) -> bool:
    """Sends ``term`` to the Erlang process ``pid`` (``erlang.send``);
    ``True``. A dead process raises ``ProcessError``."""
    from ._messages import send
    send(pid, term)
    return True
