"""Python types for Erlang terms that have no native Python equivalent.

The worker's codec builds these when frames arrive and recognises them when
it encodes results (see proto/PROTOCOL.md, "Values").
"""
from __future__ import annotations

__all__ = ["Atom", "Term", "Pid", "Ref"]


class Atom(str):
    """An Erlang atom. A ``str`` subclass: ``Atom('ok') == 'ok'`` and both
    hash alike, so atoms work as dict keys next to strings. Returned to
    Erlang it becomes the atom again, where a plain ``str`` becomes a binary."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


# Erlang's limit on an atom's name, in characters.
MAX_ATOM_CHARS = 255


def atom(name: str) -> Atom:
    """``erlang.atom('ok')``: the ``Atom`` named ``name`` (erlang_python's
    constructor; ``Atom('ok')`` is the same). ValueError for a name longer
    than Erlang allows (255 characters); TypeError for a non-str. Making
    one costs the node nothing: an atom is created only if it is sent to
    Erlang, within the atom budget (docs/type-mapping.md)."""
    if isinstance(name, Atom):
        return name
    if not isinstance(name, str):
        raise TypeError(f"erlang.atom() needs a str, not {type(name).__name__}")
    if len(name) > MAX_ATOM_CHARS:
        raise ValueError(f"an atom name has at most {MAX_ATOM_CHARS} characters, "
                         f"this one has {len(name)}")
    return Atom(name)


class Term:
    """An opaque Erlang term (port, fun, ...) held in external term format.

    Hashable and comparable by its bytes; returned to Erlang it becomes the
    exact same term."""

    __slots__ = ("etf",)

    def __init__(self, etf: bytes) -> None:
        if not isinstance(etf, bytes) or not etf.startswith(b"\x83"):
            raise TypeError("an Erlang term needs external term format bytes")
        object.__setattr__(self, "etf", etf)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Term):
            return self.etf == other.etf
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.etf)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.etf!r})"

    def __reduce__(self):
        return (type(self), (self.etf,))


class Pid(Term):
    """An Erlang process identifier."""

    __slots__ = ()


class Ref(Term):
    """An Erlang reference."""

    __slots__ = ()
