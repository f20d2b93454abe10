"""Hello-world ASGI requests/s and p99 latency with wrk: a pyport worker
serving bench/http_hello_app.py (erlang._http, as an HTTP pool's worker
does) against uvicorn + uvloop + httptools, 1 worker each, same run, same
wrk settings. One `NAME VALUE UNIT` line per figure, then the ratio.

    /usr/bin/python3 bench/http_bench.py [SECONDS] [CONNECTIONS]

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


def wrk(port: int, seconds: int, connections: int) -> tuple[float, float]:
    """(requests/s, p99 ms)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/"], check=True, capture_output=True,
                         text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"# wrk reported errors:\n{out}", file=sys.stderr)
    return rps, p99


def bench_pyport(seconds: int, connections: int) -> tuple[float, float]:
    import pyport_proto
    port = free_port()
    w = pyport_proto.Worker(os.path.join(REPO, "build", "pyport_worker")
                            if os.environ.get("PYPORT_WORKER") is None else None,
                            paths=[HERE])
    try:
        w.exec("import erlang._http\n"
               f"erlang._http.start('http_hello_app:app', '127.0.0.1:{port}', {{}})")
        w.call("erlang._http", "wait_serving")
        wrk(port, 1, connections)  # warm up
        return wrk(port, seconds, connections)
    finally:
        w.kill()


def bench_uvicorn(seconds: int, connections: int) -> tuple[float, float]:
    port = free_port()
    p = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "--loop", "uvloop", "--http",
                          "httptools", "--no-access-log", "--log-level", "warning",
                          "--port", str(port), "http_hello_app:app"], cwd=HERE)
    try:
        wait_listening(port)
        wrk(port, 1, connections)
        return wrk(port, seconds, connections)
    finally:
        p.kill()
        p.wait()


def main(argv: list[str]) -> None:
    seconds = int(argv[0]) if argv else 5
    connections = int(argv[1]) if len(argv) > 1 else 50
    if shutil.which("wrk") is None:
        print("# http_bench: skipped, wrk not installed (apt-get install wrk)")
        return
    probe = subprocess.run(["/usr/bin/python3", "-c", "import uvicorn, uvloop, httptools"],
                           capture_output=True)
    if probe.returncode != 0:
        print("# http_bench: skipped, uvicorn/uvloop/httptools missing "
              "(apt-get install python3-uvicorn python3-uvloop python3-httptools)")
        return
    ours = bench_pyport(seconds, connections)
    theirs = bench_uvicorn(seconds, connections)
    print(f"http_hello_1w_pyport {ours[0]:.0f} req/s", flush=True)
    print(f"http_hello_1w_uvicorn_uvloop {theirs[0]:.0f} req/s", flush=True)
    print(f"http_hello_1w_pyport_p99 {ours[1]:.2f} ms", flush=True)
    print(f"http_hello_1w_uvicorn_uvloop_p99 {theirs[1]:.2f} ms", flush=True)
    print(f"http_hello_1w_pyport_vs_uvicorn {ours[0] / theirs[0]:.2f} ratio", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
