"""What every hostile job test needs: a sandboxed worker (warm: --sandbox,
fresh: --zygote), started by root or by an unprivileged user (the node's
two cases), a way to run a job in it, and checks that nothing of a job
outlives it. One attack per test file; each runs warm and fresh, for both
kinds of node.

The attacks are written against the implementation (erlang._runner,
Sandbox::enter_job): a job runs in a runner process forked from the
worker's job template, with fds 0-3 (/dev/null, stdout, stderr, result
pipe), its own directory job-N in the worker's working directory, its own
IPC namespace and a nested Landlock domain."""
import atexit
import os
import shutil
import tempfile
import time

import pyport_proto as P
from pyport_proto import Atom

MODES = ["warm", "fresh"]
NODES = ["root", "unprivileged"]

# What a job returns to say which process ran it: its pid in its worker's
# pid namespace (the job's /proc is that namespace's own); assert_gone
# finds it among the processes of the workers started here.
WHO = "import os\nresult = os.readlink('/proc/self')\n"

# Keepers (the Worker's own pid) of the workers started by start().
_keepers: set[int] = set()


_wrappers: dict[str, str] = {}


def _unprivileged_worker() -> str:
    """A wrapper that starts the worker as uid/gid 65534, as a node run by
    an unprivileged user would."""
    if "path" not in _wrappers:
        d = tempfile.mkdtemp(prefix="pyport-hostile-")
        atexit.register(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        path = os.path.join(d, "unprivileged-worker")
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups "
                    f"{P.locate_worker()} \"$@\"\n")
        os.chmod(path, 0o755)
        _wrappers["path"] = path
    return _wrappers["path"]


def start(spawn, mode, node="root", *args):
    """A sandboxed worker; node "root": started as the test runs (root
    drops to nobody), "unprivileged": started as uid 65534."""
    kwargs = {}
    if node == "unprivileged":
        if os.geteuid() != 0:
            import pytest
            pytest.skip("the tests run unprivileged already: their root case is this one")
        if not shutil.which("setpriv"):
            import pytest
            pytest.skip("setpriv (util-linux) is not installed")
        kwargs["executable"] = _unprivileged_worker()
    w = spawn(args=["--zygote" if mode == "fresh" else "--sandbox", *args], **kwargs)
    _keepers.add(w.pid)
    return w


def options(mode, **extra):
    opts = {Atom(k): v for k, v in extra.items()}
    if mode == "fresh":
        opts[Atom("fresh")] = True
    return opts


def job(w, mode, code, input=None, **extra):
    """Runs a job to its end: (status, value, stats)."""
    return w.call("erlang._jobs", "run_job", [code, input, options(mode, **extra)])


def start_job(w, mode, code, input=None, **extra):
    """Sends a job without waiting: its request id."""
    return w.request(P.CALL, "erlang._jobs", "run_job", [code, input, options(mode, **extra)], {})


def parent_map() -> dict:
    """Every process of the host: pid -> parent pid."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass  # gone meanwhile
    return parents


def host_pids(nspid) -> list:
    """The processes (host pids) of the workers started here whose pid in
    their worker's pid namespace is `nspid` (the innermost NSpid)."""
    parents = parent_map()
    found = []
    frontier = [k for k in _keepers if k in parents]
    while frontier:
        pid = frontier.pop()
        for child in [p for p, pp in parents.items() if pp == pid]:
            frontier.append(child)
            try:
                with open(f"/proc/{child}/status") as f:
                    nspids = [line.split()[1:] for line in f if line.startswith("NSpid:")][0]
            except (OSError, IndexError):
                continue
            if int(nspids[-1]) == int(nspid) and len(nspids) > 1:
                found.append(child)
    return found


def assert_gone(pid, timeout=10):
    """The job's process (its pid in its worker's namespace) is gone, not
    even a zombie."""
    deadline = time.monotonic() + timeout
    while host_pids(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived its job"
        time.sleep(0.01)


def assert_healthy(w, mode):
    status, value, stats = job(w, mode, "print('fine'); 6 * 7")
    assert (status, value, stats["stdout"]) == ("ok", 42, "fine\n")
    # And the worker itself answers a plain call.
    assert w.call("operator", "add", [1, 2]) == 3


def workdir(w):
    return w.hello.capabilities[Atom("sandbox")]["workdir"]


def listdir(w, path):
    """A directory as the worker sees it (its working directory is a tmpfs
    in its own mount namespace: the host's is empty), listed by the worker
    itself, not by a job."""
    return w.call("os", "listdir", [path])


def lexists(w, path):
    return w.call("os.path", "lexists", [path])
