"""Job runners: the processes where untrusted job code runs.

A sandboxed worker holds the port's descriptors, so it runs no job's code.
Once confined, and before it reads its first frame, it forks a *template*
(Sandbox::start_template in port_worker/sandbox.cpp): a copy of the worker
with the pool's imports loaded that holds none of the port's descriptors
and never sees a job's code or input. The template forks one *runner* per
job on request, through a middle process that exits at once, so that the
worker adopts the runner (it is a subreaper): the worker reaps it, reads
its rusage and kills it. A runner confines itself further
(_pyport_sandbox.enter_job: its own directory, IPC namespace, rlimits,
Landlock and seccomp layers), waits for its one job, runs it, writes the
outcome and exits. The worker keeps one runner ready, so no fork is on a
job's path, and since every runner is a fresh copy of the template,
nothing a job leaves (threads, timers, children, locks, descriptors,
changed modules) reaches another job.

A runner's pipes, as the worker sees them:

- job (runner's fd 4, written by the worker): a 4-byte big-endian length,
  then msgpack ``(code, input)``;
- result (runner's fd 3, untrusted): the runner's pid (4 bytes, native
  order, written before any job code runs), then a 4-byte big-endian length
  and that many bytes of msgpack ``(ok, Value)`` or ``(error, Reason)``;
- stdout and stderr (runner's fds 1 and 2), untrusted, counted against the
  job's output budget.
"""
from __future__ import annotations

import errno
import itertools
import os
import signal
import stat
import struct
import time
from typing import Any, NoReturn

import _pyport_sandbox

RUNNER_FAILED = 70  # exit status of a runner that could not confine itself
# Why the worker ended a runner (Runner.why), besides ("output_limit", Bytes).
TIMEOUT, CANCELLED, RESULT_TOO_LARGE = "timeout", "cancelled", "result_too_large"
_PID = struct.Struct("=I")
_LEN = struct.Struct(">I")

# ---- in the template ----


def template(sock: int, worker: int) -> NoReturn:
    """The template's loop (called by the worker's C++ in the forked
    template): one runner per request, until the worker is gone."""
    # Loaded once here, inherited by every runner.
    import ast  # noqa: F401
    import faulthandler  # noqa: F401
    import traceback  # noqa: F401

    from . import _jobs  # noqa: F401

    # What the template holds is never collected in a runner: a collection
    # there would write to every object's header, copying each page.
    import gc

    gc.freeze()
    while True:
        request = _pyport_sandbox.next_runner_request(sock)
        if request is None:
            os._exit(0)
        name, fds = request
        try:
            _fork_runner(name, fds, worker)
        finally:
            for fd in fds:
                os.close(fd)


def _fork_runner(name: str, fds: tuple[int, int, int, int], worker: int) -> None:
    try:
        pid = _pyport_sandbox.fork_sibling()
    except OSError:
        return  # no runner: the worker sees its pipes close
    if pid == 0:
        _run(name, fds, worker)
    if pid is not None:
        return
    # Without a sibling fork: a middle process that forks the runner and
    # exits, so the worker (a subreaper) adopts it.
    try:
        middle = os.fork()
    except OSError:
        return
    if middle == 0:
        status = 0
        try:
            if os.fork() == 0:
                _run(name, fds, worker)
        except BaseException:  # noqa: BLE001 - the middle process only exits
            status = 1
        os._exit(status)
    while True:
        try:
            os.waitpid(middle, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


# ---- in a runner ----


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        data = os.read(fd, min(left, 1 << 20))
        if not data:
            return None
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _run(name: str, fds: tuple[int, int, int, int], worker: int) -> NoReturn:
    """The runner: confine, wait for the job, run it, answer, exit."""
    status = RUNNER_FAILED
    try:
        _write_all(fds[1], _PID.pack(os.getpid()))
        job_dir = _pyport_sandbox.enter_job(*fds, worker, name)
        import faulthandler

        # The worker's crash reports went to the owner's stderr: a job's go
        # to its own.
        faulthandler.enable(2, all_threads=True)
        for var in ("TMPDIR", "HOME", "PWD"):
            os.environ[var] = job_dir
        from . import _jobs

        # Copy-on-write faults of what a job touches, taken before it comes.
        _jobs.warm_up()
        head = _read_exactly(4, _LEN.size)
        data = _read_exactly(4, _LEN.unpack(head)[0]) if head else None
        os.close(4)
        if data is None:
            status = 0  # the worker gave up on it before its job came
            return
        outcome = _jobs.run_here(data)
        _write_all(3, _LEN.pack(len(outcome)) + outcome)
        status = 0
    except BaseException:  # noqa: BLE001 - a runner never returns into the template
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(status)


# ---- in the worker ----


class Runner:
    """The worker's handle on one runner: its pipes, what it said, how it
    ended. Driven by events (``wants``/``on_event``), so that a blocking
    poll (a warm job) and the asyncio loop (fresh jobs) share it."""

    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.job_w, self.result_r, self.out_r, self.err_r = _pyport_sandbox.start_runner(name)
        for fd in (self.job_w, self.result_r, self.out_r, self.err_r):
            os.set_blocking(fd, False)
        self.pid: int | None = None
        self.pidfd = -1
        self._result = bytearray()
        self.outcome: bytes | None = None  # the runner's encoded answer
        self.out = bytearray()
        self.err = bytearray()
        self._output = 0
        self._budget = 0
        self._max_result = 0
        self._pending = memoryview(b"")
        self._open = {self.result_r, self.out_r, self.err_r}
        self.why: Any = None  # what the worker did to it, if anything
        self.exited = False
        self.no_runner = False  # its pipes closed before it said its pid
        self.status = 0
        self.rusage: Any = None
        self.wall_ms = 0
        self._t0 = 0.0
        self._closed = False

    # -- the job --

    def send(self, job: bytes, budget: int, max_result: int) -> None:
        self._pending = memoryview(_LEN.pack(len(job)) + job)
        self._budget = budget
        self._max_result = max_result
        self._t0 = time.monotonic()

    @property
    def done(self) -> bool:
        return (self.outcome is not None or self.exited or self.why is not None
                or self.no_runner)

    def wants(self) -> list[tuple[int, bool]]:
        """(fd, writable?) the driver should watch."""
        found = [(fd, False) for fd in self._open]
        if self._pending:
            found.append((self.job_w, True))
        if self.pidfd >= 0 and not self.exited:
            found.append((self.pidfd, False))
        return found

    def on_event(self, fd: int) -> None:
        if fd == self.job_w:
            self._write()
        elif fd == self.pidfd:
            self.exited = True
            self.drain()
        else:
            self._read(fd)

    def stop(self, why: Any) -> None:
        """The worker ends the job (timeout, output, cancelled...)."""
        if self.why is None and self.outcome is None:
            self.why = why
        self._kill()

    def drain(self) -> None:
        for fd in list(self._open):
            self._read(fd)

    # -- plumbing --

    def _write(self) -> None:
        try:
            while self._pending:
                self._pending = self._pending[os.write(self.job_w, self._pending):]
        except BlockingIOError:
            pass
        except OSError:
            self._pending = memoryview(b"")  # the runner is gone: its exit tells

    def _read(self, fd: int) -> None:
        while fd in self._open:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._open.discard(fd)
                if fd == self.result_r and self.pid is None:
                    self.no_runner = True
                return
            if fd == self.result_r:
                self._on_result(data)
            else:
                self._on_output(fd, data)

    def _on_result(self, data: bytes) -> None:
        if self.outcome is not None or self.why is not None:
            return
        self._result += data
        if self.pid is None and len(self._result) >= _PID.size:
            # Written by the runner before its job's code ran: trusted.
            self.pid = _PID.unpack_from(self._result)[0]
            del self._result[:_PID.size]
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except OSError:
                self.exited = True
        if self.pid is None or len(self._result) < _LEN.size:
            return
        size = _LEN.unpack_from(self._result)[0]
        if size > self._max_result:
            self.stop(RESULT_TOO_LARGE)
        elif len(self._result) >= _LEN.size + size:
            self.outcome = bytes(self._result[_LEN.size:_LEN.size + size])
            self._result.clear()

    def _on_output(self, fd: int, data: bytes) -> None:
        keep = max(0, min(len(data), self._budget - self._output))
        (self.out if fd == self.out_r else self.err).extend(data[:keep])
        self._output += len(data)
        if self.output_over:
            self.stop(("output_limit", self._budget))

    @property
    def output_over(self) -> bool:
        return self._output > self._budget

    def _kill(self) -> None:
        if self.pid is None or self.rusage is not None:
            return
        # Its group: whatever the job forked (fork allowed) goes too.
        for kill in (os.killpg, os.kill):
            try:
                kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def finish(self, fork_allowed: bool) -> None:
        """Ends the runner and what it left, reaps it, removes its directory
        and closes its pipes. Blocking, but short: the runner is dead or
        dying."""
        if self._closed:
            return
        self._closed = True
        self.wall_ms = int((time.monotonic() - self._t0) * 1000) if self._t0 else 0
        deadline = time.monotonic() + 10
        # A runner still starting says its pid first; then it can be ended.
        while self.pid is None and not self.no_runner and time.monotonic() < deadline:
            self._wait_readable(self.result_r, deadline)
            self._read(self.result_r)
        if self.pid is not None and self.rusage is None:
            self._kill()
            while True:
                try:
                    _, self.status, self.rusage = os.wait4(self.pid, 0)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    # Not adopted yet: its middle process is exiting.
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.0005)
            if fork_allowed:
                end_group(self.pid)
        self.drain()
        for fd in (self.job_w, self.result_r, self.out_r, self.err_r, self.pidfd):
            if fd >= 0:
                os.close(fd)
        self._open.clear()
        remove_tree(self.dir)

    @staticmethod
    def _wait_readable(fd: int, deadline: float) -> None:
        import select

        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))


class Runners:
    """The worker's runners: a few kept ready (started, confined, warmed
    up, waiting for a job), so that starting one is never on a job's path
    while jobs come one after another."""

    SPARES = 2

    def __init__(self, workdir: str) -> None:
        self._workdir = workdir
        self._names = itertools.count(1)
        self._spares: list[Runner] = []

    def _start(self) -> Runner:
        return Runner(f"job-{next(self._names)}", self._workdir)

    def take(self) -> Runner:
        """A runner for a job: a spare, else a new one."""
        return self._spares.pop(0) if self._spares else self._start()

    def replenish(self) -> None:
        """Starts spares (after a job: not while it runs, competing with it
        for the machine)."""
        while len(self._spares) < self.SPARES:
            try:
                self._spares.append(self._start())
            except OSError:
                return  # out of descriptors: the next job asks again


_runners: Runners | None = None


def runners() -> Runners:
    """The worker's runners."""
    global _runners
    if _runners is None:
        _runners = Runners(_pyport_sandbox.settings()["workdir"])
    return _runners


def prestart() -> None:
    """Called by the worker once its template is forked, before HELLO: the
    first job finds runners ready."""
    runners().replenish()


def run_blocking(runner: Runner, timeout_ms: int | None) -> None:
    """Drives a runner until its job is done, in the calling thread (a warm
    job: the worker runs one at a time). KeyboardInterrupt (the request was
    interrupted) goes through, the runner ended."""
    import select

    deadline = None if timeout_ms is None else runner._t0 + timeout_ms / 1000
    poller = select.poll()
    watched: dict[int, int] = {}
    try:
        while not runner.done:
            wanted = {fd: (select.POLLOUT if w else select.POLLIN) for fd, w in runner.wants()}
            for fd in set(watched) - set(wanted):
                poller.unregister(fd)
            for fd, ev in wanted.items():
                if watched.get(fd) != ev:
                    poller.register(fd, ev)
            watched = wanted
            if deadline is None:
                wait = None
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    runner.stop(TIMEOUT)
                    break
                wait = max(1, int(wait * 1000 + 0.999))
            for fd, _ in poller.poll(wait):
                runner.on_event(fd)
    except BaseException:
        runner.stop(CANCELLED)
        raise


async def run_async(runner: Runner, timeout_ms: int | None) -> None:
    """Drives a runner on the worker's asyncio loop (fresh jobs: many at
    once in one zygote). Cancelled: the runner goes too."""
    import asyncio

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    watched: dict[int, bool] = {}

    def update() -> None:
        if runner.done:
            wanted: dict[int, bool] = {}
            if not done.done():
                done.set_result(None)
        else:
            wanted = dict(runner.wants())
        for fd, writable in list(watched.items()):
            if wanted.get(fd) != writable:
                (loop.remove_writer if writable else loop.remove_reader)(fd)
                del watched[fd]
        for fd, writable in wanted.items():
            if fd not in watched:
                if writable:
                    loop.add_writer(fd, event, fd)
                else:
                    loop.add_reader(fd, event, fd)
                watched[fd] = writable

    def event(fd: int) -> None:
        runner.on_event(fd)
        update()

    def timed_out() -> None:
        runner.stop(TIMEOUT)
        update()

    timer = loop.call_later(timeout_ms / 1000, timed_out) if timeout_ms else None
    update()
    try:
        await done
    except BaseException:
        runner.stop(CANCELLED)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        for fd, writable in watched.items():
            (loop.remove_writer if writable else loop.remove_reader)(fd)
    # Its end, awaited here rather than in finish()'s wait4: other jobs'
    # tasks go on meanwhile.
    runner._kill()
    if runner.pidfd >= 0 and not runner.exited:
        exited = loop.create_future()
        loop.add_reader(runner.pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(runner.pidfd)


# ---- leftovers ----


def end_group(pgid: int) -> None:
    """Kills and reaps what a job forked (fork allowed): its group, which
    its processes cannot leave (the job's filter refuses setsid and
    setpgid). Orphans among them come to the worker (a subreaper, or the
    init of a zygote's pid namespace). Done when no process, not even a
    zombie, is left in the group."""
    for _ in range(2000):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except OSError:
            return
        while True:
            try:
                pid, _ = os.waitpid(-pgid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        time.sleep(0.0005)


def remove_tree(path: str) -> None:
    """Removes what a job made in its directory, whatever the modes it set
    (the worker owns it all: the same uid), without following links. One
    directory open at a time, so depth costs no descriptors."""
    parent, name = os.path.split(path)
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(path)
        return
    names = [name]  # the path from `parent` to `fd`
    try:
        fd = _open_dir(parent, name)
    except OSError:
        return
    try:
        while True:
            child = _next_subdir(fd)
            if child is not None:
                try:
                    sub = _open_dir(fd, child)
                except OSError:
                    return  # not removable: leave it (never seen)
                os.close(fd)
                fd = sub
                names.append(child)
                continue
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            done = names.pop()
            if not names:
                os.rmdir(path)
                return
            os.rmdir(done, dir_fd=fd)
    except OSError:
        return
    finally:
        os.close(fd)


def _open_dir(parent: Any, name: str) -> int:
    kwargs = {} if isinstance(parent, str) else {"dir_fd": parent}
    target = os.path.join(parent, name) if isinstance(parent, str) else name
    st = os.lstat(target, **kwargs)
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        os.chmod(target, 0o700, **kwargs)
    return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, **kwargs)


def _next_subdir(fd: int) -> str | None:
    """Unlinks every non-directory in fd; returns a subdirectory, if any."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            try:
                os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                pass
    return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
