"""Untrusted jobs in a sandboxed worker: ``run_job(code, input, options)``.

A job is a notebook cell: its source runs in a fresh ``__main__``-like
namespace with ``input`` bound; its result is the value of its last
statement when that is an expression, else its variable ``result``, else
None. It never runs in the worker, which holds the port's descriptors: it
runs in a *runner*, a process of its own forked for it alone from the
worker's job template, confined further before the job's code or input
reaches it (see erlang._runner). A warm job (``fresh=False``) runs in the
runner the worker keeps ready, one at a time, the worker waiting for it; a
fresh job (``fresh=True``, in a worker started with ``--zygote``) runs the
same way as a task of the worker's event loop, many at once.

Returns ``(ok, Result, Stats)`` or ``(error, Reason, Stats)``; the reasons
are those of docs/design.md ("Jobs").
"""
from __future__ import annotations

import builtins
import errno
import os
import signal
import sys
from typing import Any

import _pyport_sandbox

from . import _runner
from ._types import Atom

__all__ = ["run_job"]

OK, ERROR = Atom("ok"), Atom("error")


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


# ---- running the code (in a runner) ----

def _exception_reason(exc: BaseException) -> tuple:
    import traceback

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
    """Runs the job's code; (ok, Result) or (error, Reason)."""
    import ast

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
            # code: it must not go on as the job's runner.
            os._exit(0)


def _run_code(body: Any, last: Any, ns: dict, settings: dict) -> tuple[Atom, Any]:
    try:
        exec(body, ns)
        value = eval(last, ns) if last is not None else ns.get("result")
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


# ---- in the runner ----

def warm_up() -> None:
    """Runs a trivial job in a runner waiting for its own: the pages a job
    touches are copied from the template now, not on the job's time."""
    settings = _pyport_sandbox.settings()
    _install_audit(_pyport_sandbox.report())
    _arm()
    outcome = _execute("x = [input]\nx", None, settings)
    _disarm()
    _pyport_sandbox.decode(_pyport_sandbox.encode(outcome))


def run_here(data: bytes) -> bytes:
    """Runs the job the worker sent (msgpack ``(code, input)``) in this
    runner; its outcome, encoded."""
    code, input = _pyport_sandbox.decode(data)
    settings = _pyport_sandbox.settings()
    _install_audit(_pyport_sandbox.report())
    _arm()
    outcome = _execute(code, input, settings)
    forbidden = _disarm()
    if forbidden is not None:
        outcome = ERROR, (Atom("forbidden"), forbidden)
    try:
        return _pyport_sandbox.encode(outcome)
    except Exception as exc:  # noqa: BLE001 - an unencodable result is the job's error
        return _pyport_sandbox.encode((ERROR, _exception_reason(exc)))


# ---- in the worker ----

_SIGNAL_NAMES = {s.value: s.name.lower() for s in signal.Signals}


def _outcome(runner: _runner.Runner, settings: dict, budget: int) -> tuple[Atom, Any]:
    why = runner.why
    if runner.no_runner:
        return ERROR, (Atom("no_runner"), "the worker could not start a process for the job")
    if runner.output_over:
        return ERROR, (Atom("output_limit"), budget)
    if why == _runner.TIMEOUT:
        return ERROR, Atom("timeout")
    if why == _runner.CANCELLED:
        return ERROR, Atom("cancelled")
    if why == _runner.RESULT_TOO_LARGE:
        return ERROR, _exception_reason(
            ValueError(f"the job's result passes {settings['max_frame_size']} bytes"))
    if runner.outcome is not None:
        try:
            outcome = _pyport_sandbox.decode(runner.outcome)
        except Exception:  # noqa: BLE001 - the runner's bytes are untrusted
            outcome = None
        if isinstance(outcome, tuple) and len(outcome) == 2 and outcome[0] in (OK, ERROR):
            return Atom(outcome[0]), outcome[1]
    if runner.rusage is None:
        return ERROR, (Atom("no_runner"), "the job's process could not be reaped")
    wstatus, ru = runner.status, runner.rusage
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        cpu = settings["cpu_seconds"]
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu
                                     and ru.ru_utime + ru.ru_stime >= cpu):
            return ERROR, (Atom("cpu_limit"), cpu)
        if sig == signal.SIGXFSZ and settings["max_file_size"]:
            return ERROR, (Atom("file_size_limit"), settings["max_file_size"])
        if sig == signal.SIGSYS:
            # Refused while SIGSYS was blocked: the kernel killed the runner
            # without the handler naming the syscall.
            return ERROR, (Atom("forbidden"), "unknown")
        # A signal without a name (a real-time one) goes by its number: an
        # atom `signalN` would not exist in the node, which makes none for
        # a sandboxed pool.
        name = _SIGNAL_NAMES.get(sig)
        return ERROR, (Atom("crashed"), {Atom("signal"): sig if name is None else Atom(name)})
    return ERROR, (Atom("crashed"), {Atom("exit_status"): os.WEXITSTATUS(wstatus)})


def _result(runner: _runner.Runner, settings: dict, budget: int) -> tuple:
    ru = runner.rusage
    cpu_ms = int((ru.ru_utime + ru.ru_stime) * 1000) if ru is not None else 0
    max_rss = _max_rss(ru) if ru is not None else 0
    stats = _stats(bytes(runner.out), bytes(runner.err), cpu_ms, max_rss, runner.wall_ms)
    return (*_outcome(runner, settings, budget), stats)


def _fork_allowed() -> bool:
    return "fork" in (_pyport_sandbox.report() or {}).get("allowed", ())


def _run_warm(runners: _runner.Runners, runner: _runner.Runner, settings: dict, budget: int,
              timeout: int | None) -> tuple:
    try:
        _runner.run_blocking(runner, timeout)
    finally:
        runner.finish(_fork_allowed())
        runners.replenish()
    return _result(runner, settings, budget)


async def _run_fresh(runners: _runner.Runners, runner: _runner.Runner, settings: dict,
                     budget: int, timeout: int | None) -> tuple:
    try:
        await _runner.run_async(runner, timeout)
    finally:
        runner.finish(_fork_allowed())
        runners.replenish()
    return _result(runner, settings, budget)


# ---- the entry point ----

def _bad_job(text: str) -> tuple:
    return ERROR, (Atom("bad_job"), text), _stats(b"", b"", 0, 0, 0)


def run_job(code: Any, input: Any = None, options: dict | None = None) -> Any:
    """Runs untrusted ``code`` with ``input`` bound; see the module's doc.
    ``options``: ``timeout`` (ms; the worker kills the job's runner when it
    passes), ``fresh`` (bool), ``max_output`` (bytes). A fresh job returns
    a coroutine, so the worker runs it as a task and goes on answering
    meanwhile."""
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
    budget = settings["max_output"]
    if "max_output" in options:
        m = options["max_output"]
        if not isinstance(m, int) or isinstance(m, bool) or m < 0:
            return _bad_job(f"max_output must be a number of bytes, not {m!r}")
        budget = min(m, budget)
    fresh = bool(options.get("fresh", False))
    if fresh and not settings["zygote"]:
        return _bad_job("fresh jobs need a worker started with --zygote")
    job = _pyport_sandbox.encode((code, input))
    runners = _runner.runners()
    try:
        runner = runners.take()
    except OSError as exc:
        return ERROR, (Atom("no_runner"), f"the worker could not start a process for the job: {exc}"), \
            _stats(b"", b"", 0, 0, 0)
    runner.send(job, budget, settings["max_frame_size"])
    if fresh:
        return _run_fresh(runners, runner, settings, budget, timeout)
    return _run_warm(runners, runner, settings, budget, timeout)
