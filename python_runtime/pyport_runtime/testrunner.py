"""Runs pytest inside a pyport worker, for ``tools/pyport-run``.

pyport-run CALLs ``run(targets, options)``. Test output goes to this
process's stdout, which the worker relays as LOG lines; the return value is
a summary the runner prints and turns into its exit status.
"""
import sys
import time

_runner = None


def runner_info():
    """What pyport-run told this worker about itself (a dict with ``pid``
    and ``channel``, the (st_dev, st_ino) pairs of the pipes it talks to the
    worker through), or None outside a pyport-run session."""
    return _runner


class _Tally:
    """A pytest plugin that keeps the counts of pytest's own summary line."""

    def __init__(self):
        self.counts = {}
        self.collected = 0

    def pytest_collection_finish(self, session):
        self.collected = len(session.items)

    def pytest_terminal_summary(self, terminalreporter):
        for key, reports in terminalreporter.stats.items():
            if key:  # pytest files reports of no outcome under ""
                self.counts[key] = len(reports)


def run(targets, options):
    """Runs pytest on ``targets`` (paths, or module names with
    options["pyargs"]) and returns a summary dict: ``exit_code`` (pytest's),
    ``collected``, ``counts`` ({outcome: n} as in pytest's summary line) and
    ``duration`` in seconds.

    options: ``keyword`` (-k expression or None), ``verbose`` (int),
    ``pyargs`` (bool), ``runner`` (see runner_info)."""
    global _runner
    import pytest

    args = [
        # The worker's own faulthandler writes fatal-signal reports to the
        # stderr it inherited; pytest's would move them to the relayed fd 2,
        # which dies with the process.
        "-p", "no:faulthandler",
        # Nothing written into the tree under test.
        "-p", "no:cacheprovider",
    ]
    if options.get("keyword"):
        args += ["-k", options["keyword"]]
    args += ["-v"] * int(options.get("verbose") or 0)
    if options.get("pyargs"):
        args.append("--pyargs")
    args += ["--", *targets]

    _runner = options.get("runner")
    tally = _Tally()
    # Line buffering so each line is relayed when written, not at exit.
    restore = _line_buffered(sys.stdout), _line_buffered(sys.stderr)
    started = time.monotonic()
    try:
        exit_code = int(pytest.main(args, plugins=[tally]))
    finally:
        for stream, was in zip((sys.stdout, sys.stderr), restore):
            if was is not None:
                stream.flush()
                stream.reconfigure(line_buffering=was)
    return {
        "exit_code": exit_code,
        "collected": tally.collected,
        "counts": tally.counts,
        "duration": time.monotonic() - started,
    }


def _line_buffered(stream):
    """Switches a text stream to line buffering; its previous setting, or
    None when it cannot be switched."""
    if stream is None or not hasattr(stream, "reconfigure"):
        return None
    was = stream.line_buffering
    stream.reconfigure(line_buffering=True)
    return was
