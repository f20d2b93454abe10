"""Requests/s, p99 latency and server CPU per request with wrk: pyport
workers serving bench/http_*_app.py (erlang._http, as an HTTP pool's
workers do) against uvicorn + uvloop + httptools, gunicorn with uvicorn's
worker class (ASGI figures) and gunicorn's sync worker (WSGI figure), each
at 1 and 2 workers, same run, same wrk settings. One `NAME VALUE UNIT` line
per figure, beside its peers, then one ratio line per peer.

    /usr/bin/python3 bench/http_bench.py [SECONDS] [CONNECTIONS] [ROUNDS]

HTTP_BENCH_ONLY=hello,post,wsgi,fastapi,ws,idle runs only those figures.
Skips (with a message) when wrk or uvicorn is missing, and leaves out a
peer (saying why) that is not installed.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# wrk's script for the POST figure: a 1 KiB JSON body.
POST_LUA = os.path.join(HERE, "http_post_1k.lua")


def wrk(port: int, seconds: int, connections: int, pids: list[int], path: str = "/",
        post: bool = False) -> tuple[float, float, float]:
    """(requests/s, p99 ms, servers' CPU µs per request)."""
    cpu0 = cpu_seconds(pids)
    script = ["-s", POST_LUA] if post else []
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          *script, f"http://127.0.0.1:{port}{path}"], check=True,
                         capture_output=True, text=True).stdout
    cpu = cpu_seconds(pids) - cpu0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"# wrk reported errors:\n{out}", file=sys.stderr)
    return rps, p99, cpu / total * 1e6


class Pyport:
    """`workers` pyport workers serving one port, as an HTTP pool's do."""

    def __init__(self, workers: int, app: str = "http_hello_app:app") -> None:
        import pyport_proto
        self.port = free_port()
        self.ws = []
        for _ in range(workers):
            w = pyport_proto.Worker(None, paths=[HERE])
            self.ws.append(w)
            w.exec("import erlang._http\n"
                   f"erlang._http.start({app!r}, '127.0.0.1:{self.port}', {{}})")
            w.call("erlang._http", "wait_serving")
        self.pids = [w.hello.os_pid for w in self.ws]

    def close(self) -> None:
        for w in self.ws:
            w.kill()


class Uvicorn:
    def __init__(self, workers: int, app: str = "http_hello_app:app",
                 interface: str = "asgi3", extra: tuple = ()) -> None:
        self.port = free_port()
        more = ["--workers", str(workers)] if workers > 1 else []
        more += ["--interface", interface, *extra]
        self.p = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "--loop", "uvloop",
                                   "--http", "httptools", "--no-access-log", "--log-level",
                                   "warning", "--port", str(self.port), *more,
                                   app], cwd=HERE)
        wait_listening(self.port)
        self.pids = [self.p.pid]
        if workers > 1:  # the serving processes are the supervisor's children
            deadline = time.monotonic() + 20
            while True:
                with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                if len(kids) >= workers or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.pids += kids

    def close(self) -> None:
        self.p.kill()
        self.p.wait()
        # --workers: the children die with their parent's pipe; reap them.
        for pid in self.pids[1:]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


class Gunicorn(Uvicorn):
    """gunicorn's sync worker (WSGI)."""

    def __init__(self, workers: int, app: str, worker_class: str = "sync") -> None:
        self.port = free_port()
        self.p = subprocess.Popen(["/usr/bin/python3", "-m", "gunicorn", "-k", worker_class, "-w",
                                   str(workers), "-b", f"127.0.0.1:{self.port}",
                                   "--log-level", "warning", app], cwd=HERE)
        wait_listening(self.port)
        deadline = time.monotonic() + 20
        while True:  # the workers are the arbiter's children
            with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
            if len(kids) >= workers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.pids = [self.p.pid, *kids]


class GunicornUvicorn(Gunicorn):
    """gunicorn's arbiter with uvicorn's worker class (ASGI):
    `-k uvicorn.workers.UvicornWorker` (uvloop and httptools: its `auto')."""

    def __init__(self, workers: int, app: str) -> None:
        Gunicorn.__init__(self, workers, app, "uvicorn.workers.UvicornWorker")


def _importable(code: str) -> bool:
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True).returncode == 0


# Why a peer is left out, once: None when it runs.
_MISSING: dict[str, str] = {}


def missing(peer: str) -> str:
    if peer not in _MISSING:
        if peer == "gunicorn_sync":
            ok = _importable("import gunicorn")
            why = "gunicorn not installed (apt-get install gunicorn)"
        else:  # gunicorn_uvicorn
            ok = _importable("import gunicorn, uvloop, httptools\n"
                             "from uvicorn.workers import UvicornWorker")
            why = ("gunicorn + uvicorn.workers.UvicornWorker not importable "
                   "(apt-get install gunicorn python3-uvicorn)")
        _MISSING[peer] = "" if ok else why
    return _MISSING[peer]


def measure(workers: int, seconds: int, connections: int, rounds: int,
            figure: str = "hello", app: str = "http_hello_app:app", path: str = "/",
            post: bool = False, wsgi: bool = False) -> None:
    servers = {"pyport": Pyport(workers, app)}
    if wsgi:
        servers["uvicorn_uvloop"] = Uvicorn(workers, app, "wsgi")
        peers = [("gunicorn_sync", Gunicorn)]
    else:
        servers["uvicorn_uvloop"] = Uvicorn(workers, app)
        peers = [("gunicorn_uvicorn", GunicornUvicorn)]
    for name, cls in peers:
        why = missing(name)
        if why:
            print(f"# http_bench: http_{figure}_{workers}w_{name} skipped: {why}", flush=True)
        else:
            servers[name] = cls(workers, app)
    try:
        for s in servers.values():
            status = urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{s.port}{path}",
                                       data=b"{}" if post else None)).status
            assert status == 200, (figure, status)
            wrk(s.port, 1, connections, s.pids, path, post)  # warm up
        # Alternating rounds, best of each: the machine is shared, and a
        # round that another load slowed says nothing about the server.
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(rounds):
            for name, s in servers.items():
                r = wrk(s.port, seconds, connections, s.pids, path, post)
                b = best.get(name)
                best[name] = r if b is None else (max(b[0], r[0]), min(b[1], r[1]),
                                                   min(b[2], r[2]))
    finally:
        for s in servers.values():
            s.close()
    tag = f"http_{figure}_{workers}w"
    for name in servers:
        print(f"{tag}_{name} {best[name][0]:.0f} req/s", flush=True)
    for name in servers:
        print(f"{tag}_{name}_p99 {best[name][1]:.2f} ms", flush=True)
    for name in servers:
        print(f"{tag}_{name}_cpu {best[name][2]:.1f} us/request", flush=True)
    ours = best["pyport"]
    for name, peer in (("uvicorn_uvloop", "uvicorn"), ("gunicorn_uvicorn", "gunicorn_uvicorn"),
                       ("gunicorn_sync", "gunicorn")):
        if name in best:
            theirs = best[name]
            print(f"{tag}_pyport_vs_{peer} {ours[0] / theirs[0]:.2f} ratio", flush=True)
            print(f"{tag}_pyport_vs_{peer}_cpu {theirs[2] / ours[2]:.2f} ratio", flush=True)


def ws_echo(seconds: int, connections: int, rounds: int, workers: int = 1) -> None:
    """WebSocket echo, 64 B messages, `connections` connections, `workers`
    workers: pyport against uvicorn + websockets (bench/ws_load.py drives
    both)."""
    if subprocess.run(["/usr/bin/python3", "-c", "import websockets"],
                      capture_output=True).returncode != 0:
        print("# http_bench: WebSocket figure skipped (apt-get install python3-websockets)")
        return
    servers = {"pyport": Pyport(workers, "http_ws_app:app"),
               "uvicorn_websockets": Uvicorn(workers, "http_ws_app:app", "asgi3",
                                             ("--ws", "websockets"))}
    load = os.path.join(HERE, "ws_load.py")

    def one(s, secs: float) -> tuple[float, float]:
        cpu0 = cpu_seconds(s.pids)
        out = subprocess.run(["/usr/bin/python3", load, str(s.port), str(secs), str(connections)],
                             capture_output=True, text=True, timeout=secs + 60)
        if out.returncode != 0:
            raise RuntimeError(f"ws_load failed: {out.stderr[-2000:]}")
        rate = float(out.stdout.strip())
        cpu = cpu_seconds(s.pids) - cpu0
        return rate, cpu / max(1.0, rate * secs) * 1e6

    best: dict[str, tuple[float, float]] = {}
    try:
        for s in servers.values():
            one(s, 1)  # warm up
        for _ in range(rounds):
            for name, s in servers.items():
                r = one(s, seconds)
                b = best.get(name)
                best[name] = r if b is None else (max(b[0], r[0]), min(b[1], r[1]))
    finally:
        for s in servers.values():
            s.close()
    tag = f"http_ws_echo_64b_{workers}w"
    for name in servers:
        print(f"{tag}_{name} {best[name][0]:.0f} msg/s", flush=True)
    for name in servers:
        print(f"{tag}_{name}_cpu {best[name][1]:.1f} us/message", flush=True)
    ours, theirs = best["pyport"], best["uvicorn_websockets"]
    print(f"{tag}_pyport_vs_uvicorn {ours[0] / theirs[0]:.2f} ratio", flush=True)
    print(f"{tag}_pyport_vs_uvicorn_cpu {theirs[1] / ours[1]:.2f} ratio", flush=True)


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024
    return total


def idle_memory(n: int) -> None:
    """Bytes of server RSS per idle keep-alive connection (n connections,
    one request each, then left open), pyport vs uvicorn, 1 worker."""
    for name, cls in (("pyport", Pyport), ("uvicorn_uvloop", Uvicorn)):
        s = cls(1)
        socks = []
        try:
            # Warm: one connection and request first, so the first
            # connection's one-off allocations are not counted.
            warm = socket.create_connection(("127.0.0.1", s.port))
            warm.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            warm.recv(65536)
            before = rss(s.pids)
            for _ in range(n):
                c = socket.create_connection(("127.0.0.1", s.port))
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(c)
            for c in socks:
                c.recv(65536)
            time.sleep(0.5)
            per = (rss(s.pids) - before) / n
            print(f"http_idle_keepalive_{name} {per:.0f} bytes/connection", flush=True)
        finally:
            for c in socks:
                c.close()
            s.close()


def idle_ws_memory(n: int) -> None:
    """Bytes of server RSS per idle WebSocket (n accepted, then left open),
    pyport vs uvicorn + websockets, 1 worker."""
    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for name, s in (("pyport", lambda: Pyport(1, "http_ws_app:app")),
                    ("uvicorn_websockets", lambda: Uvicorn(1, "http_ws_app:app", "asgi3",
                                                           ("--ws", "websockets")))):
        s = s()
        socks = []
        try:
            warm = socket.create_connection(("127.0.0.1", s.port))
            warm.sendall(upgrade)
            assert warm.recv(65536).startswith(b"HTTP/1.1 101"), name
            before = rss(s.pids)
            for _ in range(n):
                c = socket.create_connection(("127.0.0.1", s.port))
                c.sendall(upgrade)
                socks.append(c)
            for c in socks:
                c.recv(65536)
            time.sleep(0.5)
            per = (rss(s.pids) - before) / n
            print(f"http_idle_websocket_{name} {per:.0f} bytes/connection", flush=True)
        finally:
            for c in socks:
                c.close()
            s.close()


def main(argv: list[str]) -> None:
    seconds = int(argv[0]) if argv else 3
    connections = int(argv[1]) if len(argv) > 1 else 50
    rounds = int(argv[2]) if len(argv) > 2 else 3
    if shutil.which("wrk") is None:
        print("# http_bench: skipped, wrk not installed (apt-get install wrk)")
        return
    probe = subprocess.run(["/usr/bin/python3", "-c", "import uvicorn, uvloop, httptools"],
                           capture_output=True)
    if probe.returncode != 0:
        print("# http_bench: skipped, uvicorn/uvloop/httptools missing "
              "(apt-get install python3-uvicorn python3-uvloop python3-httptools)")
        return
    only = set(filter(None, os.environ.get("HTTP_BENCH_ONLY", "").split(",")))

    def want(figure: str) -> bool:
        return not only or figure in only

    has_fastapi = _importable("import fastapi")
    if want("fastapi") and not has_fastapi:
        print("# http_bench: FastAPI figure skipped (apt-get install python3-fastapi)")
    # Every figure at 1 and 2 workers, each beside its peers.
    for workers in (1, 2):
        if want("hello"):
            measure(workers, seconds, connections, rounds)
        if want("post"):
            measure(workers, seconds, connections, rounds, "post_1k_echo", "http_hello_app:echo",
                    "/", True)
        if want("wsgi"):
            measure(workers, seconds, connections, rounds, "wsgi_hello", "http_hello_app:wsgi",
                    wsgi=True)
        if want("fastapi") and has_fastapi:
            measure(workers, seconds, connections, rounds, "fastapi_json", "http_fastapi_app:app",
                    "/items/42?q=x")
        if want("ws"):
            ws_echo(seconds, connections, rounds, workers)
    if want("idle"):
        idle_memory(2000)
        idle_ws_memory(1000)


if __name__ == "__main__":
    if sys.argv[1:2] == ["ws"]:  # the WebSocket figures alone
        ws_echo(3, 50, 3)
        idle_ws_memory(1000)
    else:
        main(sys.argv[1:])
