"""Runs a Python file as ``__main__`` inside a pyport worker, for
``tools/pyport-run --exec``."""
import os
import runpy
import sys


def run_main(path, argv=()):
    """Runs the script at ``path`` like ``python3 path argv...`` would and
    returns its exit status: 0 when it ends, the ``sys.exit`` status when it
    exits. Any other exception propagates (the caller gets an ERROR)."""
    path = os.path.abspath(path)
    saved_argv = getattr(sys, "argv", None)
    sys.argv = [path, *argv]
    # As the python3 command does: the script's directory comes first.
    sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name="__main__")
        return 0
    except SystemExit as e:
        return _exit_status(e.code)
    finally:
        if sys.path and sys.path[0] == os.path.dirname(path):
            del sys.path[0]
        if saved_argv is None:
            del sys.argv
        else:
            sys.argv = saved_argv
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()


def _exit_status(code):
    # sys.exit semantics: None is success, an int is the status, anything
    # else is printed to stderr and means 1.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
