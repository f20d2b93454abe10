"""``erlang.PyBuffer``: a byte stream written by Erlang (``py_buffer``)
read as a file. The unread bytes wait in the Erlang node (bounded there,
docs/channels.md); reads fetch them on demand and block until data or end
of file. What has been read is kept, so ``seek``/``find`` work on it."""
from __future__ import annotations

# Annotations only: typing is not imported at run time (worker start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

from . import _link
from ._channels import handle_token

__all__ = ["PyBuffer"]

_CHUNK = 65536


class PyBuffer:
    """A readable, seekable (within what was read) binary file over a
    ``py_buffer`` handle passed from Erlang: ``PyBuffer(handle)``."""

    def __init__(self, handle: Any) -> None:
        self._token = handle_token(handle, "py_buffer", "py_buffer")
        self._data = bytearray()
        self._pos = 0
        self._eof = False
        self._closed = False

    # -- fetching -------------------------------------------------------
    def _fill(self, want: int, wait: bool) -> int:
        """Fetches up to ``want`` bytes (-1: what Erlang holds); returns how
        many came."""
        if self._eof:
            return 0
        data, eof = _link.request("handle", ["read", self._token, [want, wait]])
        self._data += data
        self._eof = bool(eof)
        return len(data)

    def _check(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed PyBuffer")

    def _available(self) -> int:
        return len(self._data) - self._pos

    # -- file API -------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all, to end of file, when negative),
        waiting until that many came or the writer closed."""
        self._check()
        if size is None or size < 0:
            while not self._eof:
                self._fill(-1, True)
            size = self._available()
        else:
            while self._available() < size and not self._eof:
                self._fill(max(size - self._available(), 1), True)
        out = bytes(self._data[self._pos:self._pos + size])
        self._pos += len(out)
        return out

    def read_nonblock(self, size: int = -1) -> bytes:
        """What is there now, up to ``size`` bytes, without waiting."""
        self._check()
        if size is None or size < 0 or self._available() < size:
            self._fill(-1 if size is None or size < 0 else size - self._available(), False)
        end = len(self._data) if size is None or size < 0 else self._pos + size
        out = bytes(self._data[self._pos:end])
        self._pos += len(out)
        return out

    def readline(self, size: int | None = -1) -> bytes:
        """One line (with its ``\\n``), at most ``size`` bytes."""
        self._check()
        while True:
            nl = self._data.find(b"\n", self._pos)
            if nl >= 0:
                end = nl + 1
                break
            if self._eof:
                end = len(self._data)
                break
            if size is not None and 0 <= size <= self._available():
                end = self._pos + size
                break
            self._fill(_CHUNK, True)
        if size is not None and size >= 0:
            end = min(end, self._pos + size)
        out = bytes(self._data[self._pos:end])
        self._pos = end
        return out

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The remaining lines (stopping once ``hint`` bytes were read)."""
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = 0) -> int:
        """Moves within what has been received (``whence`` 2 reads to the
        end first)."""
        self._check()
        if whence == 0:
            target = offset
        elif whence == 1:
            target = self._pos + offset
        elif whence == 2:
            while not self._eof:
                self._fill(-1, True)
            target = len(self._data) + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        while target > len(self._data) and not self._eof:
            self._fill(target - len(self._data), True)
        self._pos = min(target, len(self._data))
        return self._pos

    def tell(self) -> int:
        self._check()
        return self._pos

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        """``bytes.find`` over what has been received so far."""
        self._check()
        return self._data.find(sub, start, len(self._data) if end is None else end)

    def readable_amount(self) -> int:
        """Bytes readable now without waiting."""
        self._check()
        self._fill(-1, False)
        return self._available()

    def at_eof(self) -> bool:
        """Whether the writer closed and everything was read."""
        return self._eof and self._available() == 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Done reading: Erlang's later writes fail (``write_failed``)."""
        if not self._closed:
            self._closed = True
            try:
                _link.request("handle", ["close", self._token, []])
            except (ValueError, ConnectionError):  # already gone
                pass

    def __len__(self) -> int:
        return len(self._data)

    def __enter__(self) -> "PyBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PyBuffer {len(self._data)} bytes read, pos {self._pos}, eof {self._eof}>"
