"""Python functions the benchmarks call."""


def identity(value):
    return value


async def anoop(value):
    """A coroutine that returns at once: the cost of running a task."""
    return value
