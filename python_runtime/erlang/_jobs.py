"""Untrusted jobs in a sandboxed worker: ``run_job(code, input, options)``.

A job is a notebook cell: its source runs in a fresh ``__main__``-like
namespace with ``input`` bound; its result is the value of its last
statement when that is an expression, else its variable ``result``, else
None. It runs either in the worker itself (warm: the worker is confined
already, see port_worker/sandbox.hpp) or, with ``fresh=True`` in a worker
started with ``--zygote``, in a child forked for it alone, which confines
itself further before the job's code runs (its own directory, rlimits, a
nested Landlock layer, no process creation).

Returns ``(ok, Result, Stats)`` or ``(error, Reason, Stats)``; the reasons
are those of docs/pyport-run.md ("Jobs").
"""
from __future__ import annotations

import ast
import builtins
import errno
import io
import itertools
import os
import signal
import sys
import time
import traceback
from typing import Any

import _pyport_sandbox

from ._types import Atom

__all__ = ["run_job"]

OK, ERROR = Atom("ok"), Atom("error")
_CHILD_FAILED = 70  # exit status of a child that could not confine itself


class _OutputLimit(BaseException):
    """Raised in a warm job that printed more than its share; a
    BaseException, so ``except Exception`` in the job does not swallow it."""


class _Capture(io.TextIOBase):
    """sys.stdout/sys.stderr of a warm job: keeps what fits in the job's
    budget (shared by both streams), then raises _OutputLimit."""

    def __init__(self, budget: list[int]) -> None:
        self._budget = budget
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        data = s.encode("utf-8", "surrogateescape")
        if len(data) > self._budget[0]:
            self._parts.append(data[: self._budget[0]])
            self._budget[0] = 0
            raise _OutputLimit()
        self._budget[0] -= len(data)
        self._parts.append(data)
        return len(s)

    def value(self) -> bytes:
        return b"".join(self._parts)


# ---- naming refusals that cannot trap ----
#
# Process creation runs with every signal blocked in libc and CPython
# (posix_spawn, vfork, subprocess's fork), where SIGSYS would kill the
# process: the filter fails it with EPERM instead of trapping, and the audit
# events of the calls that create processes name the refusal. (Through
# ctypes, process creation just fails with EPERM, unnamed.)

_FORK_EVENTS = ("os.fork", "os.forkpty")
_EXEC_EVENTS = ("os.system", "os.posix_spawn", "os.spawn", "subprocess.Popen", "pty.spawn")
_SPAWN_EVENTS = frozenset(_FORK_EVENTS + _EXEC_EVENTS)

_audit: dict[str, Any] = {"armed": False, "names": {}, "seen": None, "spawned": False,
                          "installed": False}


def _audit_hook(event: str, args: tuple) -> None:
    if _audit["armed"] and event in _SPAWN_EVENTS:
        _audit["spawned"] = True
        if _audit["seen"] is None:
            _audit["seen"] = _audit["names"].get(event)


def _install_audit(report: dict) -> None:
    if _audit["installed"] or report is None:
        return
    _audit["installed"] = True
    _audit["fork_allowed"] = "fork" in report.get("allowed", ())
    # Also how a refused fork under --max-processes is told from other
    # EAGAIN errors.
    sys.addaudithook(_audit_hook)
    allowed = set(report.get("allowed", ()))
    if not report.get("seccomp"):
        return
    names = {}
    if "exec" not in allowed:
        # With fork allowed, exec runs in a vfork child that SIGSYS kills.
        names.update((e, "execve") for e in _EXEC_EVENTS)
    if "fork" not in allowed:
        names.update((e, "clone") for e in _FORK_EVENTS + _EXEC_EVENTS)
    _audit["names"] = names


def _arm() -> None:
    _pyport_sandbox.take_forbidden()
    _audit["seen"] = None
    _audit["spawned"] = False
    _audit["armed"] = True


def _disarm() -> str | None:
    _audit["armed"] = False
    return _pyport_sandbox.take_forbidden() or _audit["seen"]


# ---- running the code (in the worker, or in a fresh child) ----

def _exception_reason(exc: BaseException) -> tuple:
    tb = exc.__traceback__
    # The runner's own frames are not the job's business.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    return (Atom("exception"), {Atom("type"): type(exc).__name__, Atom("message"): str(exc),
                                Atom("traceback"): text})


def _execute(code: Any, input: Any, settings: dict) -> tuple[Atom, Any]:
    """Runs the job's code; (ok, Result) or (error, Reason). KeyboardInterrupt
    (the Erlang side gave up on a warm job) goes through."""
    if isinstance(code, (bytes, bytearray, memoryview)):
        try:
            code = bytes(code).decode("utf-8")
        except UnicodeDecodeError as exc:
            return ERROR, (Atom("bad_job"), f"the code is not UTF-8: {exc}")
    if not isinstance(code, str):
        return ERROR, (Atom("bad_job"), f"the code must be a binary, not {type(code).__name__}")
    try:
        tree = ast.parse(code, "<job>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = compile(ast.Expression(tree.body.pop().value), "<job>", "eval")
        body = compile(tree, "<job>", "exec")
    except (SyntaxError, ValueError) as exc:
        return ERROR, _exception_reason(exc)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "input": input}
    owner = os.getpid()
    try:
        return _run_code(body, last, ns, settings)
    finally:
        if os.getpid() != owner:
            # A process the job forked (fork allowed), back from the job's
            # code: it must not go on as the worker or the job's child.
            os._exit(0)


def _run_code(body: Any, last: Any, ns: dict, settings: dict) -> tuple[Atom, Any]:
    try:
        exec(body, ns)
        value = eval(last, ns) if last is not None else ns.get("result")
    except KeyboardInterrupt:
        raise
    except _OutputLimit:
        return ERROR, (Atom("output_limit"), settings["max_output"])
    except MemoryError as exc:
        if settings["max_memory"]:
            return ERROR, (Atom("memory_limit"), settings["max_memory"])
        return ERROR, _exception_reason(exc)
    except BaseException as exc:  # noqa: BLE001 - every failure of the job is its result
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG and settings["max_file_size"]:
            return ERROR, (Atom("file_size_limit"), settings["max_file_size"])
        if settings["max_processes"] and (
                (isinstance(exc, BlockingIOError) and _audit["spawned"])
                or (isinstance(exc, RuntimeError) and str(exc) == "can't start new thread")):
            return ERROR, (Atom("process_limit"), settings["max_processes"])
        return ERROR, _exception_reason(exc)
    return OK, value


def _stats(stdout: bytes, stderr: bytes, cpu_ms: int, max_rss: int, wall_ms: int) -> dict:
    return {Atom("stdout"): stdout, Atom("stderr"): stderr, Atom("cpu_ms"): cpu_ms,
            Atom("max_rss"): max_rss, Atom("wall_ms"): wall_ms}


def _max_rss(ru: Any) -> int:
    return int(ru.ru_maxrss) * 1024


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != b"Z" and int(fields[2]) == pgid:
                found.append(int(entry))
    return found


def _end_strays() -> None:
    """Ends what a warm job forked (fork allowed): every other process of
    the worker's group, which a job's processes cannot leave (the filter
    refuses setsid and setpgid), and reaps them, since zombies count
    against --max-processes. Orphans among them go to the keeper, which
    reaps them."""
    me = os.getpid()
    for _ in range(1000):
        strays = [pid for pid in _group_members(os.getpgid(0)) if pid != me]
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not strays:
            return


def _run_warm(code: Any, input: Any, settings: dict) -> tuple:
    import resource

    budget = [settings["max_output"]]
    out, err = _Capture(budget), _Capture(budget)
    saved = sys.stdout, sys.stderr
    wall0, cpu0 = time.monotonic(), time.thread_time()
    _arm()
    sys.stdout, sys.stderr = out, err
    try:
        status, value = _execute(code, input, settings)
    finally:
        sys.stdout, sys.stderr = saved
        forbidden = _disarm()
        if _audit.get("fork_allowed"):
            _end_strays()
    if forbidden is not None:
        status, value = ERROR, (Atom("forbidden"), forbidden)
    elif status == OK:
        # A result with no Erlang form is the job's error, not the request's
        # (a fresh job's is found the same way, by encoding it).
        try:
            _pyport_sandbox.encode(value)
        except Exception as exc:  # noqa: BLE001
            status, value = ERROR, _exception_reason(exc)
    stats = _stats(out.value(), err.value(), int((time.thread_time() - cpu0) * 1000),
                   _max_rss(resource.getrusage(resource.RUSAGE_SELF)),
                   int((time.monotonic() - wall0) * 1000))
    return status, value, stats


# ---- fresh jobs: a child of the zygote ----

def _child(code: Any, input: Any, settings: dict, fds: tuple[int, int, int], zygote: int,
           name: str) -> None:
    """In the forked child: confine, run, send the outcome on fd 3, exit."""
    import asyncio  # already loaded: the zygote's loop forked this child

    status = _CHILD_FAILED
    try:
        job_dir = _pyport_sandbox.enter_job(fds[0], fds[1], fds[2], zygote, name)
        for name in ("TMPDIR", "HOME", "PWD"):
            os.environ[name] = job_dir
        # The zygote's event loop is not the job's (its descriptors are closed).
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop_policy(None)
        _arm()
        outcome = _execute(code, input, settings)
        forbidden = _disarm()
        if forbidden is not None:
            outcome = ERROR, (Atom("forbidden"), forbidden)
        try:
            data = _pyport_sandbox.encode(outcome)
        except Exception as exc:  # noqa: BLE001 - an unencodable result is the job's error
            data = _pyport_sandbox.encode((ERROR, _exception_reason(exc)))
        view = memoryview(data)
        while view:
            view = view[os.write(3, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the child must never return into the zygote
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(status)


class _Pipe:
    """The zygote's end of one of a child's pipes, read as data comes."""

    def __init__(self, fd: int, cap: int, on_over: Any) -> None:
        self.fd = fd
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False
        self._on_over = on_over
        os.set_blocking(fd, False)

    def read(self) -> bool:
        """Reads what is there; False at end of file."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            keep = max(0, min(len(data), self.cap - self.size))
            if keep:
                self.parts.append(data[:keep])
            self.size += len(data)
            if self.size > self.cap and not self.over:
                self.over = True
                self._on_over()

    def value(self) -> bytes:
        return b"".join(self.parts)


_job_numbers = itertools.count(1)
_SIGNAL_NAMES = {s.value: s.name.lower() for s in signal.Signals}


async def _run_fresh(code: Any, input: Any, settings: dict, timeout: int | None) -> tuple:
    # Imported here, not at the top: a warm worker never needs asyncio, and
    # importing it costs a new sandboxed worker tens of ms before its first job.
    import asyncio
    import shutil

    loop = asyncio.get_running_loop()
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]  # result, stdout, stderr
    zygote = os.getpid()
    # The job's directory in the working directory (its pid is the child's
    # in the jobs' pid namespace, not the zygote's view of it).
    name = f"job-{next(_job_numbers)}"
    wall0 = time.monotonic()
    try:
        pid = os.fork()
    except OSError:
        # The zygote cannot start the job (out of memory or processes): the
        # request fails, not the job.
        for fd in (fd for pair in pipes for fd in pair):
            os.close(fd)
        raise
    if pid == 0:
        _child(code, input, settings, tuple(w for _, w in pipes), zygote, name)
    for _, w in pipes:
        os.close(w)
    why: list[Any] = []  # what the zygote did to the child, if anything

    def stop(reason: Any) -> None:
        if not why:
            why.append(reason)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    budget = settings["max_output"]
    result = _Pipe(pipes[0][0], settings["max_frame_size"], lambda: stop(Atom("result_too_large")))
    out = _Pipe(pipes[1][0], budget, lambda: None)
    err = _Pipe(pipes[2][0], budget, lambda: None)

    def check_output() -> None:
        if out.size + err.size > budget:
            stop((Atom("output_limit"), budget))

    exited = loop.create_future()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for r, _ in pipes:
            os.close(r)
        raise

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        if not exited.done():
            exited.set_result(None)

    def reader(p: _Pipe):
        def on_readable() -> None:
            if not p.read():
                loop.remove_reader(p.fd)
            check_output()
        return on_readable

    open_pipes = [result, out, err]
    for p in open_pipes:
        loop.add_reader(p.fd, reader(p))
    loop.add_reader(pidfd, on_exit)
    timer = loop.call_later(timeout / 1000, stop, Atom("timeout")) if timeout else None
    try:
        await exited
    except BaseException:
        # The caller gave up (cancelled): the child goes too.
        stop(Atom("cancelled"))
        raise
    finally:
        if timer is not None:
            timer.cancel()
        # Whatever the job started (fork allowed) goes with it: its group,
        # while the unreaped child still holds the group's id.
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, wstatus, ru = os.wait4(pid, 0)
        # The group's orphans came to the zygote (the init of the jobs' pid
        # namespace): reaped here, so they do not pile up as zombies.
        while True:
            try:
                os.waitid(os.P_PGID, pid, os.WEXITED)
            except ChildProcessError:
                break
        wall_ms = int((time.monotonic() - wall0) * 1000)
        for p in open_pipes:
            loop.remove_reader(p.fd)
            p.read()  # what the child wrote before it died
            os.close(p.fd)
        loop.remove_reader(pidfd)
        os.close(pidfd)
        shutil.rmtree(os.path.join(settings["workdir"], name), ignore_errors=True)
    check_output()
    stats = _stats(out.value(), err.value(), int((ru.ru_utime + ru.ru_stime) * 1000),
                   _max_rss(ru), wall_ms)
    return (*_fresh_outcome(why, wstatus, ru, result, settings), stats)


def _fresh_outcome(why: list, wstatus: int, ru: Any, result: _Pipe, settings: dict) -> tuple:
    if why and why[0] != Atom("result_too_large"):
        return ERROR, why[0]
    if why:
        return ERROR, _exception_reason(
            ValueError(f"the job's result passes {settings['max_frame_size']} bytes"))
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        cpu = settings["cpu_seconds"]
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu
                                     and ru.ru_utime + ru.ru_stime >= cpu):
            return ERROR, (Atom("cpu_limit"), cpu)
        if sig == signal.SIGXFSZ and settings["max_file_size"]:
            return ERROR, (Atom("file_size_limit"), settings["max_file_size"])
        if sig == signal.SIGSYS:
            # Refused while SIGSYS was blocked: the kernel killed the child
            # without the handler naming the syscall.
            return ERROR, (Atom("forbidden"), "unknown")
        return ERROR, (Atom("crashed"), {Atom("signal"): Atom(_SIGNAL_NAMES.get(sig, f"signal{sig}"))})
    code = os.WEXITSTATUS(wstatus)
    data = result.value()
    if code == 0 and data:
        try:
            outcome = _pyport_sandbox.decode(data)
        except Exception:  # noqa: BLE001 - the child's bytes are untrusted
            outcome = None
        if isinstance(outcome, tuple) and len(outcome) == 2 and outcome[0] in (OK, ERROR):
            return Atom(outcome[0]), outcome[1]
    return ERROR, (Atom("crashed"), {Atom("exit_status"): code})


# ---- the entry point ----

def _bad_job(text: str) -> tuple:
    return ERROR, (Atom("bad_job"), text), _stats(b"", b"", 0, 0, 0)


def run_job(code: Any, input: Any = None, options: dict | None = None) -> Any:
    """Runs untrusted ``code`` with ``input`` bound; see the module's doc.
    ``options``: ``timeout`` (ms; enforced here for fresh jobs, by the
    Erlang side for warm ones), ``fresh`` (bool), ``max_output`` (bytes).
    A fresh job returns a coroutine, so the worker runs it as a task and
    goes on answering meanwhile."""
    settings = _pyport_sandbox.settings()
    if settings is None:
        return _bad_job("this worker is not sandboxed (start it with --sandbox or --zygote)")
    options = dict(options or {})
    unknown = set(options) - {"timeout", "fresh", "max_output"}
    if unknown:
        return _bad_job(f"unknown options: {sorted(str(k) for k in unknown)}")
    timeout = options.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                or timeout <= 0):
        return _bad_job(f"timeout must be a positive integer of milliseconds, not {timeout!r}")
    if "max_output" in options:
        m = options["max_output"]
        if not isinstance(m, int) or isinstance(m, bool) or m < 0:
            return _bad_job(f"max_output must be a number of bytes, not {m!r}")
        settings["max_output"] = min(m, settings["max_output"])
    _install_audit(_pyport_sandbox.report())
    if options.get("fresh", False):
        if not settings["zygote"]:
            return _bad_job("fresh jobs need a worker started with --zygote")
        return _run_fresh(code, input, settings, timeout)
    return _run_warm(code, input, settings)
