"""The example application's own Python module (priv/python)."""


def hello(name: str) -> str:
    return f"Hello, {name}, from Python"
