"""Python side of bench/wake_ab.erl."""
import time
import erlang

def identity(v):
    return v

def state_get_loop(key, n):
    get = erlang.state_get
    t = time.perf_counter()
    for _ in range(n):
        get(key)
    return n / (time.perf_counter() - t)
