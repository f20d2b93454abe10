"""Runs bench/asyncio_bench.py on the three loops in one go (the stock
asyncio loop and uvloop under /usr/bin/python3, ErlangEventLoop inside a
pyport worker through tools/pyport-run), in interleaved rounds, and prints
the median of every figure, then the ratios of ErlangEventLoop to each peer
for the rates (above 1: faster).

    /usr/bin/python3 bench/asyncio_compare.py [--rounds N] [--cost-rounds N] [--before DIR]
                                              [--no-in-worker] [FIGURE...]

FIGURE names a figure of asyncio_bench.py (`hot` for every hot-path one).
The stock loop and uvloop also run inside a pyport worker
(`stock_w`, `uvloop_w`): the same interpreter as ErlangEventLoop, so those
ratios are the loops' alone. The worker's CPython (Debian's
libpython3.11.a) runs pure Python code 10-13% slower than /usr/bin/python3;
a five-line C program embedding the same library is as slow, so that part
of the ratios to the /usr/bin/python3 peers is the library's build.
--before DIR adds another loop, `before`: ErlangEventLoop of another
checkout (DIR/tools/pyport-run with DIR/build/pyport_worker), so a change is
measured against the code it replaces in the same run. The hot-path figures
come in two lines: ops per second of wall time, and ops per second of the
loop thread's CPU time (`_cpu_`), which a loaded machine disturbs least.
The timer figures (`timer_latency`, `sleep_1ms_x500`: one sample of each
per round, whose CPU time on a virtual machine swings by a third with the
host's wake-up costs) take the median of at least --cost-rounds rounds
(default 5), the rounds beyond --rounds running those figures alone.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH = os.path.join(HERE, "asyncio_bench.py")
LINE = re.compile(r"^asyncio_(\w+)_(stock|uvloop|erlang) (\S+) (\S+)$")
COSTS = ["timer_latency", "sleep_1ms_x500"]


def run(kind, figures, before):
    if kind in ("erlang", "before", "stock_w", "uvloop_w"):
        root = before if kind == "before" else REPO
        env = dict(os.environ)
        if kind == "before":
            env["PYPORT_WORKER"] = os.path.join(before, "build", "pyport_worker")
        loop = {"stock_w": "stock", "uvloop_w": "uvloop"}.get(kind, "erlang")
        cmd = [os.path.join(root, "tools", "pyport-run"), "--exec", BENCH, loop, *figures]
    else:
        env = None
        cmd = ["/usr/bin/python3", BENCH, kind, *figures]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env).stdout
    results = {}
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if m:
            results[m.group(1)] = (float(m.group(3)), m.group(4))
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cost-rounds", type=int, default=5,
                   help="rounds for the timer figures (at least --rounds)")
    p.add_argument("--before", metavar="DIR")
    p.add_argument("--no-in-worker", dest="in_worker", action="store_false",
                   help="skip the stock loop and uvloop inside a worker (stock_w, uvloop_w)")
    p.add_argument("figures", nargs="*")
    args = p.parse_args()
    kinds = ["stock", "uvloop", "erlang"] + (["stock_w", "uvloop_w"] if args.in_worker else []) + (
        ["before"] if args.before else [])
    samples = {kind: {} for kind in kinds}
    costs = [f for f in COSTS if not args.figures or f in args.figures]
    rounds = [args.figures] * args.rounds
    if costs:
        rounds += [costs] * max(0, args.cost_rounds - args.rounds)
    for figures in rounds:
        for kind in kinds:
            for name, (value, unit) in run(kind, figures, args.before).items():
                samples[kind].setdefault(name, ([], unit))[0].append(value)
    medians = {kind: {name: (statistics.median(values), unit)
                      for name, (values, unit) in by_name.items()}
               for kind, by_name in samples.items()}
    for kind in kinds:
        for name, (value, unit) in medians[kind].items():
            print(f"asyncio_{name}_{kind} {value:.1f} {unit}" if value < 100 else
                  f"asyncio_{name}_{kind} {value:.0f} {unit}", flush=True)
    for name, (value, unit) in medians["erlang"].items():
        if unit in ("us", "ms", "iterations"):
            continue  # latencies and costs: compare the raw figures
        for peer in kinds[:2] + kinds[3:]:
            other = medians[peer].get(name)
            if other and other[0]:
                print(f"asyncio_{name}_erlang_vs_{peer} {value / other[0]:.2f} ratio", flush=True)


if __name__ == "__main__":
    main()
