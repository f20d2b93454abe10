"""What the test_kernel_* attacks share: sandboxed workers started by a
"node" that is root or an unprivileged user (a test user this module
creates), other tenants to aim at, and a stand-in for the node itself.

Each attack file imports the fixtures it uses from here (``from
kernel_fixtures import *``); the workers are driven directly, as in
tests/harness/test_sandbox.py. Jobs run with the defaults pools get
unless a test says otherwise."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.dirname(HERE)
if HARNESS not in sys.path:
    sys.path.insert(0, HARNESS)

import pyport_proto as P  # noqa: E402
from pyport_proto import Atom  # noqa: E402

TEST_USER = "pyport-hostile"
MODES = ["warm", "fresh"]
NODES = ["root", "user"]
MIB = 1 << 20
COOKIE = "pyport-hostile-cookie-5e1f"

# An address-space limit cannot hold an ASan build (it reserves terabytes).
needs_no_asan = pytest.mark.skipif(os.environ.get("PYPORT_SANITIZED") == "1",
                                   reason="an address-space limit cannot hold an ASan build")


def hostile_user() -> pwd.struct_passwd:
    """The unprivileged node's user, created on first use."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        TEST_USER], check=True, capture_output=True)
        return pwd.getpwnam(TEST_USER)


class Node:
    """Who starts the workers: root, or the test user (through setpriv)."""

    def __init__(self, kind: str, tmp: str):
        self.kind = kind
        self.prefix: list[str] = []
        self.uid = os.geteuid()
        if kind == "user":
            user = hostile_user()
            self.uid = user.pw_uid
            setpriv = shutil.which("setpriv")
            self.prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                           "--clear-groups", "--inh-caps=-all", "--"]
        self.tmp = tmp
        self.wrapper = None
        if self.prefix:
            # The worker, run as the user: Worker() takes one executable.
            self.wrapper = os.path.join(tmp, "as-user")
            with open(self.wrapper, "w") as f:
                f.write("#!/bin/sh\nexec " + " ".join(self.prefix) + " "
                        + P.locate_worker(None) + ' "$@"\n')
            os.chmod(self.wrapper, 0o755)

    def popen(self, argv, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.prefix + argv, **kwargs)


@pytest.fixture
def world_tmp():
    """A directory every uid may enter (pytest's tmp_path is root's own)."""
    path = tempfile.mkdtemp(prefix="pyport-hostile-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unreadable_for(user: pwd.struct_passwd) -> str | None:
    """A file the worker needs that the test user cannot reach (a checkout
    below a private home directory), or None."""
    needs = [P.locate_worker(None), os.path.join(P.RUNTIME_DIR, "erlang", "__init__.py"),
             os.path.join(HARNESS, "worker_side")]
    for path in needs:
        r = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                            "--clear-groups", "test", "-r", path])
        if r.returncode != 0:
            return path
    return None


@pytest.fixture(params=NODES)
def node(request, world_tmp):
    if os.geteuid() != 0:
        if request.param == "root":
            pytest.skip("the tests run unprivileged: no root node")
        return Node("root", world_tmp)  # the tests' own user is the unprivileged node
    if request.param == "user":
        blocked = unreadable_for(hostile_user())
        if blocked:
            pytest.skip(f"the test user {TEST_USER} cannot read {blocked} (a private checkout)")
    return Node(request.param, world_tmp)


@pytest.fixture
def start(spawn, node):
    """start(mode, *args, **kwargs) -> a sandboxed worker of the node."""
    def run(mode, *args, **kwargs):
        flag = "--zygote" if mode == "fresh" else "--sandbox"
        w = spawn(executable=node.wrapper, args=[flag, *args], **kwargs)
        # The worker really is the node's: root's gets an id of its own.
        uid = sandbox_of(w)["uid"]
        assert uid == (0x7F000000 + w.pid if node.uid == 0 and "privileges" not in args else node.uid)
        return w
    return run


@pytest.fixture
def node_process(node):
    """The node's stand-in: a process of the node's uid whose command line
    holds a cookie, as `erl -setcookie` does."""
    p = node.popen([sys.executable, "-c", "import time; time.sleep(120)", "-setcookie", COOKIE])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            if COOKIE.encode() in f.read():
                break
        time.sleep(0.01)
    yield p
    p.kill()
    p.wait()


def job(w, mode, code, input=None, **options):
    opts = {Atom(k): v for k, v in options.items()}
    if mode == "fresh":
        opts[Atom("fresh")] = True
    return w.call("erlang._jobs", "run_job", [code, input, opts])


def forbidden(name):
    return ("error", (Atom("forbidden"), name))


def assert_healthy(w, mode):
    """The worker (and a zygote) still runs jobs."""
    assert job(w, mode, "6 * 7")[:2] == ("ok", 42)


def sandbox_of(w):
    return w.hello.capabilities[Atom("sandbox")]


def state_of(pid: int) -> dict:
    """What a job could change in another process: its limits, nice value
    and scheduling (policy, affinity)."""
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    return {"limits": limits, "nice": os.getpriority(os.PRIO_PROCESS, pid),
            "policy": os.sched_getscheduler(pid), "affinity": os.sched_getaffinity(pid)}


def tenants(w) -> list[int]:
    """Host pids of a worker's processes: its keeper and the worker."""
    return [w.pid, w.hello.os_pid]


def in_namespace_of(pid: int) -> list[int]:
    """Host pids in the same pid namespace as `pid`."""
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def assert_oom_killed(w, mode, code, input):
    """The job goes past its worker's memory cgroup: the kernel's OOM
    killer ends whichever process of the cgroup it picks, the job's runner
    or the worker (pages of a memfd or of a detached SysV segment count to
    no process's size)."""
    try:
        outcome = job(w, mode, code, input)
    except P.WorkerExited as exited:
        assert exited.returncode == -signal.SIGKILL
        return
    assert outcome[:2] == ("error", (Atom("crashed"), {Atom("signal"): Atom("sigkill")}))


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


__all__ = ["os", "time", "P", "Atom", "needs_no_asan", "MODES", "NODES", "MIB", "COOKIE", "Node", "world_tmp", "node", "start",
           "node_process", "job", "forbidden", "assert_healthy", "sandbox_of", "state_of",
           "tenants", "in_namespace_of", "wait_for", "assert_oom_killed", "hostile_user", "signal", "stat"]
