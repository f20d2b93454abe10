"""Python side of pyport_erlang_SUITE: code that reaches Erlang through the
erlang and hornbeam_erlang modules."""
import asyncio
import inspect
import logging
import os
import threading
import time

import erlang
import hornbeam_erlang


def call(name, *args):
    return erlang.call(name, *args)


def call_attr(name, *args):
    return getattr(erlang, name)(*args)


def call_imported(name, *args):
    # `from erlang import <name>`, for a name only known at run time.
    namespace = {}
    exec(f"from erlang import {name} as fn", namespace)
    return namespace["fn"](*args)


def error_of(fn, *args, **kwargs):
    """[exception type, message, reason] of what fn(*args, **kwargs)
    raises, or None."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        return [type(e).__name__, str(e), getattr(e, "reason", None)]
    return None


def call_error(name, *args):
    return error_of(erlang.call, name, *args)


def attr_error(name):
    return error_of(getattr, erlang, name)


def introspection():
    """Probes libraries make on modules, and how many requests to Erlang
    they cost (none may)."""
    sent = []
    real = erlang._link.request

    def counting(op, args):
        sent.append(op)
        return real(op, args)

    erlang._link.request = counting
    try:
        probes = {
            "__wrapped__": hasattr(erlang, "__wrapped__"),
            "__path__": hasattr(erlang, "__path__"),
            "__file__": hasattr(erlang, "__file__"),
            "_private": hasattr(erlang, "_pytestfixturefunction"),
        }
        members = dict(inspect.getmembers(erlang))
        unwrapped = inspect.unwrap(erlang.call) is erlang.call
        doc = inspect.getdoc(erlang) is not None
        is_module = inspect.ismodule(erlang)
    finally:
        erlang._link.request = real
    return {"probes": probes, "requests": len(sent), "has_call": "call" in members,
            "unwrapped": unwrapped, "doc": doc, "is_module": is_module}


def has(name):
    return hasattr(erlang, name)


def chain(n):
    """n + the chain Erlang continues with n - 1 (Erlang calls chain again)."""
    if n == 0:
        return 0
    return 1 + erlang.call("down", n - 1)


def threads(n):
    results = [None] * n

    def one(i):
        results[i] = erlang.call("square", i)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def tagged(caller, n):
    """n callbacks, each answered with its own arguments."""
    return [erlang.call("tag", caller, i) for i in range(n)]


def async_gather(n):
    async def main():
        return await asyncio.gather(*(erlang.async_call("barrier", i) for i in range(n)))
    return asyncio.run(main())


def os_pid():
    return os.getpid()


# ---- messages

def send(dest, message):
    erlang.send(dest, message)
    return True


def send_error(dest):
    return error_of(erlang.send, dest, "hello")


def whereis(name):
    return erlang.whereis(name)


_seen = {}


def remember(term):
    """Keeps term in a dict and a set; True when it was there already (so
    it hashes and compares equal to its earlier self)."""
    key = (type(term).__name__, term)
    again = key in _seen
    _seen[key] = _seen.get(key, 0) + 1
    return [again, _seen[key], len({term, term})]


def pid_identity(pid, rounds):
    """Sends pid to Erlang and back `rounds` times through a callback; the
    result must equal and hash like the original each time."""
    seen = {pid}
    current = pid
    for _ in range(rounds):
        current = erlang.call("identity", current)
        if current != pid or hash(current) != hash(pid) or current not in seen:
            return False
    return isinstance(current, erlang.Pid)


# ---- state

def state_ops():
    erlang.state_clear()
    erlang.state_set("user:1", {"name": "Ann"})
    erlang.state_set("user:2", [1, 2])
    erlang.state_set("other", 3)
    out = {
        "get": erlang.state_get("user:1"),
        "missing": erlang.state_get("nope"),
        "multi": erlang.state_get_multi(["user:1", "nope", "other"]),
        "keys": erlang.state_keys("user:"),
        "all_keys": erlang.state_keys(),
        "incr": [erlang.state_incr("n"), erlang.state_incr("n", 10), erlang.state_decr("n"),
                 erlang.state_decr("n", 5)],
    }
    erlang.state_delete("other")
    out["after_delete"] = erlang.state_get("other")
    out["incr_error"] = error_of(erlang.state_incr, "user:1")
    return out


def hornbeam_state():
    hb = hornbeam_erlang
    hb.state_set("hb:x", {"a": 1})
    return [hb.state_get("hb:x"), hb.state_incr("hb:n"), hb.state_incr("hb:n", 4),
            hb.state_decr("hb:n", 2), hb.state_get_multi(["hb:x", "hb:none"]),
            hb.state_keys("hb:"), hb.state_delete("hb:x"), hb.state_get("hb:x")]


def incr_many(key, n):
    for _ in range(n):
        erlang.state_incr(key)
    return n


def state_set(key, value):
    erlang.state_set(key, value)
    return True


def state_get(key):
    return erlang.state_get(key)


def state_set_error(key, value):
    return error_of(erlang.state_set, key, value)


def state_incr_error(key):
    return error_of(erlang.state_incr, key)


# ---- pub/sub

def publish(topic, message):
    return erlang.publish(topic, message)


def subscribe(topic):
    erlang.subscribe(topic)
    return True


def unsubscribe(topic):
    erlang.unsubscribe(topic)
    return True


def receive_pubsub(timeout):
    return erlang.receive_pubsub(timeout)


def two_handlers(topic_a, topic_b, ready):
    """Two threads subscribe to different topics, tell Erlang (`ready`),
    and each returns what it receives: only its own topic's messages."""
    got = {topic_a: [], topic_b: []}
    subscribed = threading.Barrier(3)

    def handler(topic):
        erlang.subscribe(topic)
        subscribed.wait()
        while True:
            msg = erlang.receive_pubsub(30)
            got[topic].append(msg)
            if msg is None or msg[1] == "last":
                return

    ts = [threading.Thread(target=handler, args=(t,)) for t in (topic_a, topic_b)]
    for t in ts:
        t.start()
    subscribed.wait()
    erlang.send(ready, "subscribed")
    for t in ts:
        t.join()
    return [got[topic_a], got[topic_b]]


def two_tasks(topic_a, topic_b, ready):
    """The same with two asyncio tasks and the async receive."""
    async def handler(topic, subscribed):
        erlang.subscribe(topic)
        subscribed.set()
        out = []
        while True:
            msg = await erlang.async_receive_pubsub(30)
            out.append(msg)
            if msg is None or msg[1] == "last":
                return out

    async def main():
        events = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(handler(t, e)) for t, e in zip((topic_a, topic_b), events)]
        for e in events:
            await e.wait()
        erlang.send(ready, "subscribed")
        return await asyncio.gather(*tasks)

    return asyncio.run(main())


def hornbeam_pubsub(topic):
    hb = hornbeam_erlang
    hb.subscribe(topic)
    count = hb.publish(topic, {"type": "alert"})
    msg = hb.receive_pubsub(timeout=30)
    hb.unsubscribe(topic)
    after = hb.publish(topic, "nobody here")
    return [count, msg, after, hb.receive_pubsub(timeout=0)]


# ---- hornbeam call/cast

def hornbeam_call(name, *args):
    return hornbeam_erlang.call(name, *args)


def hornbeam_cast(name, *args):
    hornbeam_erlang.cast(name, *args)
    return True


# ---- logging and tracing

def log_records(token):
    log = logging.getLogger("erl_funcs.audit")
    log.debug("debug %s", token)
    log.info("info %s", token)
    log.warning("warning %s", token)
    log.error("error %s", token)
    log.critical("critical %s", token)
    return True


def setup_logging(level):
    erlang.setup_logging(level)
    return True


@erlang.trace()
def traced_work(x):
    with erlang.Span("inner", x=x) as span:
        span.set_attribute("double", 2 * x)
    return x + 1


def traced_failure():
    try:
        with erlang.Span("failing"):
            raise ValueError("boom")
    except ValueError:
        return True


def traced_async():
    @erlang.trace("async_op")
    async def op():
        await asyncio.sleep(0)
        return 7
    return asyncio.run(op())


# ---- scheduling

def schedule(name, *args):
    return erlang.schedule(name, *args)


def add(a, b=0):
    return a + b


def schedule_py(a, b):
    return erlang.schedule_py("erl_funcs", "add", [a], {"b": b})


def process_chunk(data, offset=0, total=0):
    """Sums data 10 items per turn, continuing inline between turns."""
    end = min(offset + 10, len(data))
    total += sum(data[offset:end])
    if end < len(data):
        return erlang.schedule_inline("erl_funcs", "process_chunk", [data], {"offset": end, "total": total})
    return total


def yield_when_others_wait(limit):
    """Says it runs (casting 'started': no waiting, so no request is handled
    meanwhile), spins until a request waits behind it (or `limit` seconds
    pass), then gives way with schedule_inline."""
    erlang.cast("started")
    deadline = time.monotonic() + limit
    while not erlang.consume_time_slice(100):
        if time.monotonic() > deadline:
            return "nobody came"
        time.sleep(0.001)
    return erlang.schedule_inline("erl_funcs", "add", ["yielded"], {"b": ""})
