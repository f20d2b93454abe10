"""What a hostile or careless worker sends to make the node build atoms or
huge terms (erl/test/pyport_atoms_SUITE.erl)."""
from __future__ import annotations

from typing import Any

import erlang


def atoms(prefix: str, n: int) -> list[Any]:
    """n distinct atoms, none of which exists in the node."""
    return [erlang.Atom(f"{prefix}{i}") for i in range(n)]


def atom_keys(prefix: str, n: int) -> dict[Any, int]:
    """A dict of n distinct atom keys."""
    return {erlang.Atom(f"{prefix}{i}"): i for i in range(n)}


def raise_new_class(name: str) -> None:
    """Raises an exception of a class made for this call."""
    raise type(name, (Exception,), {})("boom")


def rpc_new_names(prefix: str, n: int) -> dict[str, Any]:
    """n rpc_calls to this node, each naming a module and a function that
    do not exist: how many failed for lack of an atom budget, and how."""
    node = erlang.node()
    limited = 0
    other = 0
    first: list[Any] = []
    for i in range(n):
        try:
            erlang.rpc_call(node, f"{prefix}_m{i}", f"{prefix}_f{i}", [])
        except erlang.ErlangError as e:
            reason = getattr(e, "reason", None)
            if isinstance(reason, tuple) and reason and reason[0] == "atom_limit":
                limited += 1
                if not first:
                    first = [type(e).__name__, str(e), reason]
            else:
                other += 1
    return {"limited": limited, "other": other, "first": first}


def small_values(n: int) -> list[int]:
    """n fixints: n bytes of msgpack, n list cells in Erlang."""
    return [1] * n


def nested_small(n: int) -> list[list[int]]:
    """n one-element lists: the budget adds up across containers."""
    return [[1]] * n


def short_strings(n: int) -> list[str]:
    """n one-character strings: 2 bytes each on the wire, 5 words each."""
    return ["a"] * n


def atoms_named(names: list[str]) -> list[Any]:
    """The atoms of these names."""
    return [erlang.Atom(n) for n in names]


def existing_keys() -> dict[Any, int]:
    """A dict whose atom keys exist in every node."""
    return {erlang.Atom("ok"): 1, erlang.Atom("error"): 2}


def rpc_undef() -> str:
    """An rpc_call of a function that does not exist, named by atoms that
    do: the exception's type name."""
    try:
        erlang.rpc_call(erlang.node(), "lists", "ok", [])
    except erlang.ErlangError as e:
        return type(e).__name__
    return "no error"
