"""Helpers of hornbeam_hooks_SUITE: hooks registered and used from a
worker through hornbeam_erlang."""
import asyncio
import os

import erlang
import hornbeam_erlang as hb


def os_pid():
    return os.getpid()


class Counter:
    """A class handler: one instance per registration."""

    def __init__(self):
        self.n = 0
        self.closed = 0

    def closed_count(self):
        return self.closed

    def bump(self, by=1):
        self.n += by
        return self.n

    def whoami(self):
        return os.getpid()

    def fail(self, text):
        raise ValueError(text)

    def chunks(self, n):
        try:
            for i in range(n):
                yield i
        finally:
            self.closed += 1

    def broken_chunks(self):
        yield 1
        raise KeyError("midway")


def func_handler(action, *args, **kwargs):
    if action == "echo":
        return [action, list(args), kwargs]
    if action == "pid":
        return os.getpid()
    raise ValueError(f"unknown action {action}")


def register(path, kind="class"):
    handler = {"class": Counter, "func": func_handler, "instance": Counter()}[kind]
    hb.register_hook(path, handler)
    return True


def unregister(path):
    hb.unhook(path)
    return True


def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return None
    except BaseException as e:  # noqa: BLE001 (the test looks at it)
        return [type(e).__name__, str(e), isinstance(e, RuntimeError)]


def register_error(path):
    return error_of(hb.register_hook, path, func_handler)


def execute(path, action, *args, **kwargs):
    return hb.execute(path, action, *args, **kwargs)


def execute_error(path, action, *args):
    return error_of(hb.execute, path, action, *args)


def execute_async(path, action, *args):
    return hb.execute_async(path, action, *args)


def execute_async_error(path, action, *args):
    return error_of(hb.execute_async, path, action, *args)


def await_result(task_id, timeout_ms=30000):
    return hb.await_result(task_id, timeout_ms)


def await_error(task_id, timeout_ms=30000):
    return error_of(hb.await_result, task_id, timeout_ms)


def stream(path, action, *args):
    return list(hb.stream(path, action, *args))


def stream_error(path, action, *args):
    got = []

    def run():
        for chunk in hb.stream(path, action, *args):
            got.append(chunk)

    return [got, error_of(run)]


def stream_first(path, action, *args):
    """Reads one chunk and drops the stream (it must be closed)."""
    gen = hb.stream(path, action, *args)
    first = next(gen)
    gen.close()
    return first


def stream_open_and_keep(path, action, *args):
    """Opens a stream and keeps it open (read one chunk)."""
    gen = hb.stream(path, action, *args)
    _kept.append(gen)
    return next(gen)


_kept = []


def stream_async(path, action, *args):
    async def main():
        return [c async for c in hb.stream_async(path, action, *args)]

    return asyncio.run(main())


def many_names(names):
    """Registers each name; the outcome per name."""
    out = []
    for name in names:
        e = register_error(name)
        out.append("ok" if e is None else e[0])
    return out
