"""The worker polls its channel before it sleeps only while frames follow
each other closely, and an idle worker uses no CPU (port_worker/
input_reader.hpp, SpinBudget; docs/performance.md, "Where a sequential
round trip waits (worker side)").

CPU time is the worker's own (every thread's schedstat run time), so load
from other processes does not count; bounds are generous, and each is far
from what the failure it catches would cost."""
import os
import time


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU so far, all threads of process pid."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that just ended
            pass
    return total


def main_sleeps(pid: int) -> int:
    """How often the main thread has blocked so far (voluntary context
    switches): a wait that polls until its frame comes does not count,
    however loaded the machine."""
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc status")


def cpu_over(pid: int, seconds: float) -> int:
    before = cpu_ns(pid)
    time.sleep(seconds)
    return cpu_ns(pid) - before


def polls_then_stops(w, who: str) -> None:
    """Calls 2 ms apart find worker w (spinning forced, 5 ms a wait)
    polling, and once they stop it sleeps."""
    pid = w.hello.os_pid
    before = main_sleeps(pid)
    for i in range(150):
        assert w.call("harness_worker", "identity", [i]) == i
        time.sleep(0.002)
    # Blocking between calls, it would sleep at least once a call.
    sleeps = main_sleeps(pid) - before
    assert sleeps < 75, f"{who} slept {sleeps} times in 150 calls: it did not poll"
    # The last wait polls 5 ms at most, then sleeps.
    used = cpu_over(pid, 2)
    assert used < 30_000_000, f"{who} used {used / 1e6:.1f} ms of CPU in 2 s after traffic stopped"


def test_an_idle_worker_uses_no_cpu(worker):
    # Busy first, so that whatever adapts to traffic has seen some.
    for i in range(500):
        assert worker.call("harness_worker", "identity", [i]) == i
    time.sleep(0.5)
    # A worker that kept polling would use about 3 s.
    used = cpu_over(worker.hello.os_pid, 3)
    assert used < 30_000_000, f"an idle worker used {used / 1e6:.1f} ms of CPU in 3 s"


def test_spinning_stops_once_traffic_stops(spawn):
    # Made to spin whenever frames follow closely (no measuring first), for
    # up to 5 ms a wait: calls 2 ms apart find it polling.
    w = spawn(args=["--spin-test-always", "--spin-us", "5000"])
    w.call("harness_worker", "identity", [0])
    polls_then_stops(w, "the worker")


def test_sparse_traffic_stops_the_spinning(spawn):
    # Calls 50 ms apart: a poll of 10 ms never bridges the gap. After two
    # such gaps the worker sleeps at once (20 polls in vain would be 200 ms).
    w = spawn(args=["--spin-test-always", "--spin-us", "10000"])
    pid = w.hello.os_pid
    for i in range(20):  # traffic flows: the worker polls between calls
        w.call("harness_worker", "identity", [i])
    before = cpu_ns(pid)
    for i in range(20):
        time.sleep(0.05)
        assert w.call("harness_worker", "identity", [i]) == i
    used = cpu_ns(pid) - before
    assert used < 100_000_000, f"20 calls 50 ms apart used {used / 1e6:.1f} ms of CPU"


def test_callbacks_answer_with_spinning_forced(spawn):
    # Python waiting for Erlang polls too: replies, requests arriving
    # meanwhile and interrupts all still get through.
    import pyport_proto as P

    def on_request(frame):
        if frame.kind == P.REQUEST:
            op, args = frame.fields[0], frame.fields[1]
            w.send_frame(P.REPLY, frame.id, "ok", args[1][0] if op == "call" else None)

    w = spawn(args=["--spin-test-always"], on_request=on_request)
    code = "sum(__import__('erlang').call('f', i) for i in range(2000))"
    assert w.eval(code) == sum(range(2000))


def test_the_event_loop_polls_and_stops_polling_too(spawn):
    # Once the worker's asyncio loop runs, its waits poll the same way.
    w = spawn(args=["--spin-test-always", "--spin-us", "5000"])
    w.exec("async def triple(x):\n    return 3 * x")
    assert w.eval("triple(5)") == 15
    assert w.eval("__import__('asyncio').get_event_loop().is_running()") is True
    polls_then_stops(w, "the loop")
