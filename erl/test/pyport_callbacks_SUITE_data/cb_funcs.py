"""Python side of pyport_callbacks_SUITE: calls into Erlang whose Erlang
process is slow, killed, or answers too much."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import erlang


def call(name: str, *args: Any) -> Any:
    return erlang.call(name, *args)


def call_caught(name: str, *args: Any) -> list:
    """The call's exception as [type, message, reason, seconds it took]."""
    start = time.monotonic()
    try:
        return ["ok", erlang.call(name, *args), None, time.monotonic() - start]
    except Exception as e:
        return [type(e).__name__, str(e), getattr(e, "reason", None), time.monotonic() - start]


async def async_call_cancelled(name: str, after: float) -> str:
    """Starts erlang.async_call and cancels it after `after` seconds."""
    task = asyncio.ensure_future(erlang.async_call(name))
    await asyncio.sleep(after)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "finished"


async def many_async_calls(name: str, n: int) -> list:
    """n concurrent erlang.async_call: each result or exception type."""
    async def one() -> Any:
        try:
            return await erlang.async_call(name)
        except Exception as e:
            return [type(e).__name__, str(e)]
    return await asyncio.gather(*(one() for _ in range(n)))


def state_get_caught(key: str) -> list:
    try:
        return ["ok", len(erlang.state_get(key))]
    except Exception as e:
        return [type(e).__name__, str(e), getattr(e, "reason", None)]


def local_rpc_timeout(timeout_ms: int) -> list:
    """rpc_call to this node of a function that outlasts the timeout."""
    start = time.monotonic()
    try:
        erlang.rpc_call(erlang.node(), "timer", "sleep", [60000], timeout_ms)
        return ["ok"]
    except Exception as e:
        return [type(e).__name__, str(e), time.monotonic() - start]
