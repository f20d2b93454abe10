"""Python side of the pyport demo: plain functions the Erlang demo calls."""
from __future__ import annotations

import time


def greet(name: str, punctuation: str = "!") -> str:
    return f"Hello, {name}{punctuation}"


def identity(value: object) -> object:
    return value


def python_type(value: object) -> str:
    """What the value became on the Python side."""
    return type(value).__name__


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


def withdraw(balance: int, amount: int) -> int:
    if amount > balance:
        raise ValueError(f"cannot withdraw {amount} from a balance of {balance}")
    return balance - amount


def square(n: int) -> int:
    return n * n
