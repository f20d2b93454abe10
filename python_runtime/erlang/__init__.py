"""The ``erlang`` module of a pyport worker: Erlang's side of the world as
seen from Python. See docs/type-mapping.md for how values cross over."""
from ._types import Atom, Pid, Ref, Term

__all__ = ["Atom", "Pid", "Ref", "Term"]
