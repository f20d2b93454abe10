"""Hello-world ASGI requests/s, p99 latency and server CPU per request with wrk: a pyport worker
serving bench/http_hello_app.py (erlang._http, as an HTTP pool's worker
does) against uvicorn + uvloop + httptools, 1 worker each, same run, same
wrk settings. One `NAME VALUE UNIT` line per figure, then the ratio.

    /usr/bin/python3 bench/http_bench.py [SECONDS] [CONNECTIONS] [ROUNDS]

Skips (with a message) when wrk or uvicorn is missing.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

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


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: int, connections: int, pid: int) -> tuple[float, float, float]:
    """(requests/s, p99 ms, server CPU µs per request)."""
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/"], check=True, capture_output=True,
                         text=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"# wrk reported errors:\n{out}", file=sys.stderr)
    return rps, p99, cpu / total * 1e6


class Pyport:
    def __init__(self) -> None:
        import pyport_proto
        self.port = free_port()
        self.w = pyport_proto.Worker(None, paths=[HERE])
        self.w.exec("import erlang._http\n"
                    f"erlang._http.start('http_hello_app:app', '127.0.0.1:{self.port}', {{}})")
        self.w.call("erlang._http", "wait_serving")
        self.pid = self.w.hello.os_pid

    def close(self) -> None:
        self.w.kill()


class Uvicorn:
    def __init__(self) -> None:
        self.port = free_port()
        self.p = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "--loop", "uvloop",
                                   "--http", "httptools", "--no-access-log", "--log-level",
                                   "warning", "--port", str(self.port), "http_hello_app:app"],
                                  cwd=HERE)
        self.pid = self.p.pid
        wait_listening(self.port)

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


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
    servers = {"pyport": Pyport(), "uvicorn_uvloop": Uvicorn()}
    try:
        for s in servers.values():
            wrk(s.port, 1, connections, s.pid)  # warm up
        # Alternating rounds, best of each: the machine is shared, and a
        # round that another load slowed says nothing about the server.
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(rounds):
            for name, s in servers.items():
                r = wrk(s.port, seconds, connections, s.pid)
                b = best.get(name)
                best[name] = r if b is None else (max(b[0], r[0]), min(b[1], r[1]),
                                                   min(b[2], r[2]))
    finally:
        for s in servers.values():
            s.close()
    for name in servers:
        print(f"http_hello_1w_{name} {best[name][0]:.0f} req/s", flush=True)
    for name in servers:
        print(f"http_hello_1w_{name}_p99 {best[name][1]:.2f} ms", flush=True)
    for name in servers:
        print(f"http_hello_1w_{name}_cpu {best[name][2]:.1f} us/request", flush=True)
    ours, theirs = best["pyport"], best["uvicorn_uvloop"]
    print(f"http_hello_1w_pyport_vs_uvicorn {ours[0] / theirs[0]:.2f} ratio", flush=True)
    print(f"http_hello_1w_pyport_vs_uvicorn_cpu {theirs[2] / ours[2]:.2f} ratio", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
