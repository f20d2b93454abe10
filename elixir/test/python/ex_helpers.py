"""Python side of the ExUnit tests (elixir/test): what a value looks like
once it has crossed into Python."""
import os
import time


def describe(value):
    """The Python type of a value and, for a dict, its keys (as text)."""
    if isinstance(value, dict):
        return [type(value).__name__, sorted(str(k) for k in value)]
    return [type(value).__name__, value]


def echo(*args, **kwargs):
    return [list(args), kwargs]


def getpid():
    return os.getpid()


def slow(seconds, value):
    time.sleep(seconds)
    return value


class AppError(Exception):
    pass


def fail(message):
    raise AppError(message)


_recorded = []


def record(value):
    _recorded.append(value)


def recorded():
    return list(_recorded)
