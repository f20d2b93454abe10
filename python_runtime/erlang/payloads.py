"""Big payloads off the pipe (docs/performance.md, "Payloads off the pipe").

In a pool with ``payload_threshold`` set (docs/configuration.md), binaries
of at least that many bytes travel between Erlang and the worker through a
file on tmpfs that only the worker and its owner hold, instead of through
the pipe. Python code sees no difference: such an argument arrives as
``bytes`` (or ``str`` for an Erlang binary that is valid UTF-8, as on the
pipe) and a returned ``bytes``, ``bytearray``, ``str`` or contiguous buffer
leaves the same way.

``zero_copy(True)`` makes arguments sent as ``{bytes, Bin}`` arrive as a
read-only ``memoryview`` of the file itself instead of a ``bytes`` copy.
Such a view is valid only until the request that received it returns:
the region is then lent to another request and its bytes change. Copy
what you keep (``bytes(view)``).
"""

_zero_copy = False


def zero_copy(enabled: bool = True) -> bool:
    """Receive ``{bytes, Bin}`` payloads as memoryviews (see the module
    doc); returns the previous setting."""
    global _zero_copy
    previous, _zero_copy = _zero_copy, bool(enabled)
    return previous


def zero_copy_enabled() -> bool:
    """Whether payloads arrive as memoryviews."""
    return _zero_copy
