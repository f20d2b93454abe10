"""Python functions the benchmarks call."""


def identity(value):
    return value
