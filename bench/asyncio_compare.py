"""Runs bench/asyncio_bench.py on the three loops in one go (the stock
asyncio loop and uvloop under /usr/bin/python3, ErlangEventLoop inside a
pyport worker through tools/pyport-run) and prints every figure, then the
ratios of ErlangEventLoop to each peer for the rates (above 1: faster).

    /usr/bin/python3 bench/asyncio_compare.py [FIGURE...]
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH = os.path.join(HERE, "asyncio_bench.py")
LINE = re.compile(r"^asyncio_(\w+)_(stock|uvloop|erlang) (\S+) (\S+)$")


def run(kind, figures):
    if kind == "erlang":
        cmd = [os.path.join(REPO, "tools", "pyport-run"), "--exec", BENCH, kind, *figures]
    else:
        cmd = ["/usr/bin/python3", BENCH, kind, *figures]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    results = {}
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if m:
            print(line.strip(), flush=True)
            results[m.group(1)] = (float(m.group(3)), m.group(4))
    return results


def main(figures):
    by_loop = {kind: run(kind, figures) for kind in ("stock", "uvloop", "erlang")}
    for name, (value, unit) in by_loop["erlang"].items():
        if unit in ("us", "ms", "iterations"):
            continue  # latencies and costs: compare the raw figures
        for peer in ("uvloop", "stock"):
            other = by_loop[peer].get(name)
            if other and other[0]:
                print(f"asyncio_{name}_erlang_vs_{peer} {value / other[0]:.2f} ratio", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
