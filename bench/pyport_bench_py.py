"""Python functions the benchmarks call."""
import time

import erlang


def identity(value):
    return value


def make_list(n):
    """[1..n]: a big answer for a small request."""
    return list(range(1, n + 1))


def make_list_only(n):
    """What make_list costs in Python alone."""
    list(range(1, n + 1))
    return 0


def callback_loop(name, n):
    """n round trips Python -> Erlang (the registered function `name`);
    returns the rate per second, timed here."""
    call = erlang.call
    started = time.perf_counter()
    for i in range(n):
        call(name, i)
    return n / (time.perf_counter() - started)


def state_incr_loop(key, n):
    incr = erlang.state_incr
    started = time.perf_counter()
    for _ in range(n):
        incr(key)
    return n / (time.perf_counter() - started)


def publish_loop(topic, n):
    publish = erlang.publish
    for i in range(n):
        publish(topic, i)
    return n


async def anoop(value):
    """A coroutine that returns at once: the cost of running a task."""
    return value


def cpu_work(n):
    """Pure-Python CPU work: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def cpu_work_in_threads(threads, calls, n):
    """The in-process peer of pool scaling: `calls` cpu_work(n) spread over
    `threads` Python threads of this one process (one GIL). Seconds taken."""
    import threading
    import time

    per_thread = calls // threads

    def run():
        for _ in range(per_thread):
            cpu_work(n)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def die_later(seconds, path):
    """Returns at once; `seconds` later this worker writes the wall-clock
    time (ns) to path and kills itself with SIGKILL."""
    import os
    import signal
    import threading
    import time

    def die():
        with open(path, "w") as f:
            f.write(str(time.time_ns()))
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Timer(seconds, die).start()
    return True


def sleep(seconds):
    import time
    time.sleep(seconds)
    return seconds


def fork_exit_ms(n):
    """The floor of a fresh job: median ms of fork + _exit + waitpid in
    this (unsandboxed) process."""
    import os
    times = []
    for _ in range(n):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000


def fork_exit_rate(seconds):
    """fork + _exit + waitpid per second, one process, for `seconds`."""
    import os
    count = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        count += 1
    return count / seconds


def state_get_loop(key, n):
    """n erlang.state_get round trips in one call (issue 15's table)."""
    get = erlang.state_get
    for _ in range(n):
        get(key)
    return n
