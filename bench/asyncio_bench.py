"""asyncio event loop benchmark: the same program for every loop.

    python3 bench/asyncio_bench.py stock|uvloop     # under /usr/bin/python3
    tools/pyport-run --exec bench/asyncio_bench.py erlang   # inside a worker

Prints one ``asyncio_<figure>_<loop> VALUE UNIT`` line per figure (see
bench/asyncio_compare.py, which runs all three and adds the ratios).
"""
import asyncio
import contextvars
import gc
import os
import random
import socket
import statistics
import sys
import time

SECONDS = 1.5  # per timed figure
HERE = os.path.dirname(os.path.abspath(__file__))


def new_loop(kind):
    if kind == "stock":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if kind == "erlang":
        import erlang
        return erlang.new_event_loop()
    raise SystemExit(f"unknown loop {kind!r}: stock, uvloop or erlang")


async def call_soon_rate():
    """Callbacks that each schedule the next one, 10 chains at once."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0
    stop_at = time.perf_counter() + SECONDS

    def tick():
        nonlocal count
        count += 1
        if count & 1023 == 0 and time.perf_counter() >= stop_at:
            if not done.done():
                done.set_result(None)
            return
        if not done.done():
            loop.call_soon(tick)

    start = time.perf_counter()
    for _ in range(10):
        loop.call_soon(tick)
    await done
    return count / (time.perf_counter() - start)


async def timers_rate():
    """100,000 timers with delays spread over 0-20 ms."""
    loop = asyncio.get_running_loop()
    n = 100_000
    done = loop.create_future()
    fired = 0

    def fire():
        nonlocal fired
        fired += 1
        if fired == n:
            done.set_result(None)

    rnd = random.Random(1)
    start = time.perf_counter()
    for _ in range(n):
        loop.call_later(rnd.random() * 0.02, fire)
    await done
    return n / (time.perf_counter() - start)


async def timer_latency():
    """How late a 1 ms call_later fires, measured 1,000 times in a row."""
    loop = asyncio.get_running_loop()
    late = []
    for _ in range(1000):
        fut = loop.create_future()
        when = loop.time() + 0.001
        loop.call_at(when, lambda f=fut: f.set_result(loop.time()))
        late.append(await fut - when)
    late.sort()
    return late[len(late) // 2] * 1e6, late[int(len(late) * 0.99)] * 1e6


async def sleep_cost():
    """500 sleeps of 1 ms in a row: the loop's CPU time (this thread) and its
    iterations, the cost of being punctual."""
    loop = asyncio.get_running_loop()
    count = 0
    original = getattr(loop, "_run_once", None)  # uvloop's is not Python's

    def counting_run_once():
        nonlocal count
        count += 1
        original()

    if original:
        loop._run_once = counting_run_once
    try:
        cpu = time.thread_time()
        for _ in range(500):
            await asyncio.sleep(0.001)
        cpu = time.thread_time() - cpu
    finally:
        if original:
            del loop._run_once
    return cpu * 1e3, count if original else None


class EchoServer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class PingClient(asyncio.Protocol):
    def __init__(self, size, stop_at, done):
        self.payload = b"x" * size
        self.size = size
        self.stop_at = stop_at
        self.done = done
        self.got = 0
        self.trips = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.payload)

    def data_received(self, data):
        self.got += len(data)
        if self.got < self.size:
            return
        self.got = 0
        self.trips += 1
        if self.trips & 255 == 0 and time.perf_counter() >= self.stop_at:
            self.transport.close()
            self.done.set_result(self.trips)
            return
        self.transport.write(self.payload)


async def tcp_echo(connections):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop_at = time.perf_counter() + SECONDS
    dones = []
    start = time.perf_counter()
    for _ in range(connections):
        done = loop.create_future()
        dones.append(done)
        transport, _ = await loop.create_connection(
            lambda d=done: PingClient(64, stop_at, d), "127.0.0.1", port)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trips = sum(await asyncio.gather(*dones))
    elapsed = time.perf_counter() - start
    server.close()
    await server.wait_closed()
    return trips / elapsed


class Sink(asyncio.Protocol):
    def __init__(self, total, done):
        self.total = total
        self.left = total
        self.done = done

    def data_received(self, data):
        self.left -= len(data)
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


class Source(asyncio.Protocol):
    def __init__(self, total):
        self.left = total
        self.chunk = b"b" * (256 * 1024)
        self.resume = None

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        self.pump()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self.pump()

    def pump(self):
        self.paused = False
        while self.left > 0 and not self.paused:
            self.transport.write(self.chunk)
            self.left -= len(self.chunk)


async def tcp_bulk():
    loop = asyncio.get_running_loop()
    total = 2 * 1024 ** 3
    done = loop.create_future()
    server = await loop.create_server(lambda: Sink(total, done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    start = time.perf_counter()
    transport, _ = await loop.create_connection(lambda: Source(total), "127.0.0.1", port)
    await done
    elapsed = time.perf_counter() - start
    transport.close()
    server.close()
    await server.wait_closed()
    return total / elapsed / 1024 ** 2


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UdpPinger(asyncio.DatagramProtocol):
    """Keeps 32 datagrams in flight; counts the echoes."""

    def __init__(self, stop_at, done):
        self.stop_at = stop_at
        self.done = done
        self.echoes = 0

    def connection_made(self, transport):
        self.transport = transport
        for _ in range(32):
            transport.sendto(b"u" * 64)

    def datagram_received(self, data, addr):
        self.echoes += 1
        if self.echoes & 255 == 0 and time.perf_counter() >= self.stop_at:
            if not self.done.done():
                self.done.set_result(self.echoes)
            return
        if not self.done.done():
            self.transport.sendto(data)


async def udp_rate():
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    done = loop.create_future()
    start = time.perf_counter()
    client, _ = await loop.create_datagram_endpoint(
        lambda: UdpPinger(start + SECONDS, done), remote_addr=server.get_extra_info("sockname"))
    echoes = await done
    elapsed = time.perf_counter() - start
    client.close()
    server.close()
    return echoes / elapsed


async def gather_tasks():
    async def noop():
        await asyncio.sleep(0)

    n = 100_000
    start = time.perf_counter()
    await asyncio.gather(*(noop() for _ in range(n)))
    return n / (time.perf_counter() - start)


# ---------------------------------------------------------------- hot paths
#
# Each of these returns the number of operations it did; main() times it
# (wall and this thread's CPU) and prints ops per second of each.

N_HOT = 200_000


async def trivial():
    return 1


async def task_await():
    """create_task of a coroutine that returns at once, then await it."""
    loop = asyncio.get_running_loop()
    n = N_HOT // 4
    for _ in range(n):
        await loop.create_task(trivial())
    return n


async def future_wake():
    """A task awaits a future; a callback sets its result (the wake-up of
    every I/O-bound await)."""
    loop = asyncio.get_running_loop()
    n = N_HOT // 4
    for _ in range(n):
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut
    return n


async def sleep0():
    n = N_HOT // 2
    for _ in range(n):
        await asyncio.sleep(0)
    return n


async def queue_pingpong():
    """Two tasks pass a token through two asyncio.Queues."""
    n = N_HOT // 8
    ping, pong = asyncio.Queue(), asyncio.Queue()

    async def echo():
        for _ in range(n):
            pong.put_nowait(await ping.get())

    echoer = asyncio.get_running_loop().create_task(echo())
    for i in range(n):
        await ping.put(i)
        await pong.get()
    await echoer
    return n


_VARS = [contextvars.ContextVar(f"v{i}") for i in range(16)]


async def context_copies():
    """call_soon with 16 context variables set: each handle copies the
    context, each callback runs in its copy and reads a variable."""
    loop = asyncio.get_running_loop()
    for i, var in enumerate(_VARS):
        var.set(i)
    n = N_HOT
    done = loop.create_future()
    left = n

    def tick():
        nonlocal left
        left -= 1
        _VARS[3].get()
        if left <= 0:
            if not done.done():
                done.set_result(None)
        else:
            loop.call_soon(tick)

    for _ in range(10):
        loop.call_soon(tick)
    await done
    return n


async def tcp_streams_echo():
    """asyncio streams (StreamReader/StreamWriter) echo of 64 bytes over
    loopback, one connection, one round trip at a time."""
    async def serve(reader, writer):
        while data := await reader.read(4096):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 20_000
    payload = b"s" * 64
    for _ in range(n):
        writer.write(payload)
        await reader.readexactly(64)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return n


async def tcp_echo_count():
    """tcp_echo(1) (protocols, 64 bytes) counted in round trips."""
    rate_stop = SECONDS
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    done = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: PingClient(64, time.perf_counter() + rate_stop, done), "127.0.0.1", port)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trips = await done
    server.close()
    await server.wait_closed()
    return trips


def _fastapi_app():
    sys.path.insert(0, HERE)
    from http_fastapi_app import app
    return app


async def fastapi_asgi(concurrency):
    """The FastAPI JSON endpoint of bench/http_fastapi_app.py driven with
    synthetic ASGI calls, no sockets: the framework's machinery (Starlette's
    middleware, routing, FastAPI's validation and JSON) on this loop.
    `concurrency` requests in flight at once, each a task."""
    app = _fastapi_app()
    body_msg = {"type": "http.request", "body": b"", "more_body": False}

    def scope(i):
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": f"/items/{i}", "raw_path": f"/items/{i}".encode(), "root_path": "",
            "query_string": b"q=x", "headers": [(b"host", b"bench"), (b"accept", b"*/*")],
            "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000),
        }

    async def receive():
        return body_msg

    async def one(i):
        status = []

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope(i), receive, send)
        if status != [200]:
            raise RuntimeError(f"status {status}")

    for i in range(200):  # warm up (route compilation, pydantic)
        await one(i)
    n = 20_000
    loop = asyncio.get_running_loop()
    if concurrency == 1:
        for i in range(n):
            await one(i)
    else:
        async def worker(k):
            for i in range(k, n, concurrency):
                await one(i)
        await asyncio.gather(*(loop.create_task(worker(k)) for k in range(concurrency)))
    return n


async def anyio_task_group():
    """anyio's machinery as Starlette uses it around streaming responses and
    BaseHTTPMiddleware: a task group with one child, a cancel scope, a
    memory object stream hand-over."""
    import anyio
    n = N_HOT // 20
    send, receive = anyio.create_memory_object_stream(1)

    async def child():
        await send.send(1)

    for _ in range(n):
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
            with anyio.CancelScope():
                await receive.receive()
    return n


async def call_soon_count():
    """call_soon_rate's chains, N_HOT callbacks in all."""
    loop = asyncio.get_running_loop()
    n = N_HOT
    done = loop.create_future()
    left = n

    def tick():
        nonlocal left
        left -= 1
        if left <= 0:
            if not done.done():
                done.set_result(None)
        else:
            loop.call_soon(tick)

    for _ in range(10):
        loop.call_soon(tick)
    await done
    return n


HOT = [
    ("call_soon_hot", call_soon_count, "callbacks/s"),
    ("task_await", task_await, "tasks/s"),
    ("future_wake", future_wake, "wakes/s"),
    ("sleep0", sleep0, "sleeps/s"),
    ("queue_pingpong", queue_pingpong, "roundtrips/s"),
    ("context_copies", context_copies, "callbacks/s"),
    ("tcp_protocol_echo", tcp_echo_count, "roundtrips/s"),
    ("tcp_streams_echo", tcp_streams_echo, "roundtrips/s"),
    ("anyio_task_group", anyio_task_group, "groups/s"),
    ("fastapi_asgi_seq", lambda: fastapi_asgi(1), "requests/s"),
    ("fastapi_asgi_16", lambda: fastapi_asgi(16), "requests/s"),
]


def run_hot(loop, kind, only):
    """Each hot-path figure: ops per second of wall time and ops per second
    of this thread's CPU time (the second is what a loaded machine changes
    least)."""
    for name, fn, unit in HOT:
        if only and name not in only and "hot" not in only:
            continue
        gc.collect()
        wall, cpu = time.perf_counter(), time.thread_time()
        ops = loop.run_until_complete(fn())
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        print(f"asyncio_{name}_{kind} {ops / wall:.0f} {unit}", flush=True)
        print(f"asyncio_{name}_cpu_{kind} {ops / cpu:.0f} {unit.replace('/s', '/cpu_s')}", flush=True)


def main(kind):
    figures = [
        ("call_soon", call_soon_rate, "callbacks/s"),
        ("timers", timers_rate, "timers/s"),
        ("timer_latency", timer_latency, "us"),
        ("sleep_1ms_x500", sleep_cost, "ms"),
        ("tcp_echo_1conn", lambda: tcp_echo(1), "roundtrips/s"),
        ("tcp_echo_16conn", lambda: tcp_echo(16), "roundtrips/s"),
        ("tcp_bulk", tcp_bulk, "MiB/s"),
        ("udp_echo", udp_rate, "datagrams/s"),
        ("gather_100k", gather_tasks, "tasks/s"),
    ]
    only = set(sys.argv[2:])
    loop = new_loop(kind)
    try:
        run_hot(loop, kind, only)
        for name, fn, unit in figures:
            if only and name not in only:
                continue
            value = loop.run_until_complete(fn())
            if name == "timer_latency":
                p50, p99 = value
                print(f"asyncio_timer_latency_p50_{kind} {p50:.0f} {unit}", flush=True)
                print(f"asyncio_timer_latency_p99_{kind} {p99:.0f} {unit}", flush=True)
            elif name == "sleep_1ms_x500":
                cpu_ms, iterations = value
                print(f"asyncio_sleep_1ms_x500_cpu_{kind} {cpu_ms:.1f} ms", flush=True)
                if iterations is not None:
                    print(f"asyncio_sleep_1ms_x500_iterations_{kind} {iterations} iterations", flush=True)
            else:
                print(f"asyncio_{name}_{kind} {value:.0f} {unit}", flush=True)
    finally:
        loop.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
