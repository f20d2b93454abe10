"""Python side of pyport_lifetime_SUITE: processes that outlive their
worker, and requests that never end on their own."""
import os
import time


def _publish_pid(path: str) -> None:
    # Renamed into place, so the reader never sees a half-written pid.
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)


def _wait_for_pid(path: str) -> int:
    for _ in range(5000):
        if os.path.exists(path):
            with open(path) as f:
                return int(f.read())
        time.sleep(0.001)
    raise TimeoutError(path)


def fork_sleeper(path: str) -> int:
    """A child that sleeps forever, holding every descriptor of the worker
    (the frame channel included: fork keeps close-on-exec descriptors)."""
    if os.fork() == 0:
        try:
            _publish_pid(path)
            time.sleep(1_000_000)
        finally:
            os._exit(0)
    return _wait_for_pid(path)


def fork_daemon(path: str) -> int:
    """A double-forked setsid daemon: its parent exits at once, so it is
    nobody's child in the worker's tree any more."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                _publish_pid(path)
                time.sleep(1_000_000)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return _wait_for_pid(path)


def os_pid() -> int:
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def spin(path: str) -> None:
    """Creates path, then keeps the CPU busy forever."""
    open(path, "w").close()
    while True:
        pass


def sleep_forever(path: str) -> None:
    open(path, "w").close()
    time.sleep(1_000_000)


def stubborn(path: str) -> None:
    """Ignores every KeyboardInterrupt: only a kill ends it."""
    open(path, "w").close()
    while True:
        try:
            time.sleep(1_000_000)
        except KeyboardInterrupt:
            pass


def terminals() -> tuple:
    """The worker's descriptors that are terminals, and whether it can open
    a controlling terminal."""
    ttys = [fd for fd in range(1024) if os.isatty(fd)]
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        ctty = True
    except OSError:
        ctty = False
    return ttys, ctty
