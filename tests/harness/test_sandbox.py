"""Sandboxed workers (--sandbox, --zygote) and erlang._jobs.run_job: every
hostile job of issue 6, warm (in the confined worker) and fresh (in a child
of the zygote), each stopped with its reason while the next job in the same
worker still works; what HELLO reports; what each --sandbox-allow relaxes."""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import pyport_proto as P
from pyport_proto import Atom

MODES = ["warm", "fresh"]
GIB = 1 << 30

needs_no_asan = pytest.mark.skipif(os.environ.get("PYPORT_SANITIZED") == "1",
                                   reason="an address-space limit cannot hold an ASan build")


# ---- what this kernel offers, probed from the test process ----

def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    v = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint(1))  # landlock_create_ruleset
    return max(0, v)


def user_namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if not unshare:
        return False
    r = subprocess.run([unshare, "-U", "-n", "true"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return r.returncode == 0


def seccomp_works() -> bool:
    with open("/proc/self/status") as f:
        return any(line.startswith("Seccomp:") for line in f)


# ---- helpers ----

def start(spawn, mode, *args, **kwargs):
    flag = "--zygote" if mode == "fresh" else "--sandbox"
    return spawn(args=[flag, *args], **kwargs)


def job(w, mode, code, input=None, **options):
    opts = {Atom(k): v for k, v in options.items()}
    if mode == "fresh":
        opts[Atom("fresh")] = True
    status, value, stats = w.call("erlang._jobs", "run_job", [code, input, opts])
    return status, value, stats


def assert_healthy(w, mode):
    """The worker (and the zygote) still runs jobs."""
    status, value, stats = job(w, mode, "print('fine'); 6 * 7")
    assert (status, value) == ("ok", 42)
    assert stats["stdout"] in ("fine\n", b"fine\n")


def forbidden(name):
    return ("error", (Atom("forbidden"), name))


def sandbox_of(w):
    return w.hello.capabilities[Atom("sandbox")]


def processes():
    """(pid, state, ppid, pgid) of every process, from /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield int(entry), fields[0], int(fields[1]), int(fields[2])


def children_of(pid):
    return [p for p, _, ppid, _ in processes() if ppid == pid]


def _start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def job_runners(w):
    """The worker's children that run (or ran) a job: not its job template
    (its first child) nor a spare runner waiting for a job, which holds its
    job pipe (fd 4) until the job comes."""
    kids = children_of(w.hello.os_pid)
    if not kids:
        return []
    template = min(kids, key=_start_time)
    return [p for p in kids if p != template and not os.path.exists(f"/proc/{p}/fd/4")]


def assert_no_job_runners(w, timeout=10):
    """Nothing of a finished job is left (new spares may still be starting)."""
    deadline = time.monotonic() + timeout
    while job_runners(w):
        assert time.monotonic() < deadline, f"left running: {job_runners(w)}"
        time.sleep(0.01)


@pytest.fixture
def shared_dir():
    """A directory the sandbox's uid (nobody, when the tests run as root)
    may use: pytest's tmp_path lies below a directory only its owner enters."""
    import tempfile
    path = tempfile.mkdtemp(prefix="pyport-sandbox-test-", dir="/tmp")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                accepted.append(c)
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join()
    srv.close()
    for c in accepted:
        c.close()


# ---- HELLO's report ----

@pytest.mark.parametrize("mode", MODES)
def test_hello_reports_what_is_in_force(spawn, mode):
    asan = os.environ.get("PYPORT_SANITIZED") == "1"  # no RLIMIT_AS under ASan
    memory = [] if asan else ["--max-memory", str(2 * GIB)]
    w = start(spawn, mode, *memory, "--max-file-size", "1000000", "--max-processes", "64")
    s = sandbox_of(w)
    assert s["mode"] == ("zygote" if mode == "fresh" else "worker")
    unavailable = dict(s["unavailable"])
    abi = landlock_abi()
    assert s["landlock"] == (abi if abi else False)
    assert ("landlock" in unavailable) == (not abi)
    assert s["seccomp"] is seccomp_works()
    assert s["no_new_privs"] is True
    userns = user_namespaces_work()
    for ns in ("user_ns", "net_ns", "ipc_ns", "mount_ns"):
        if ns == "user_ns" or os.geteuid() != 0:
            assert s[ns] is userns, ns
        assert s[ns] or ns in unavailable, ns
    # Every worker has a pid namespace (a warm one is pid 2 under an init).
    assert s["pid_ns"] is (userns or os.geteuid() == 0 and s["mount_ns"])
    assert s["pid_ns"] or "pid_ns" in unavailable
    assert s["mount_view"] is s["mount_ns"]
    assert s["cgroup"] in ("v1", "v2", False) and (s["cgroup"] or "cgroup" in unavailable)
    assert s["allowed"] == []
    assert s["rlimits"] == {"as": Atom("infinity") if asan else 2 * GIB, "cpu": Atom("infinity"), "nofile": Atom("infinity"),
                            "fsize": 1000000, "nproc": 64}
    # What the job itself sees agrees.
    status, seen, _ = job(w, mode, "import os, resource\n"
                                   "(os.getuid(), os.getcwd(), open('/proc/self/status').read(),"
                                   " resource.getrlimit(resource.RLIMIT_FSIZE)[0])")
    assert status == "ok"
    uid, cwd, status_text, fsize = seen
    # Root gives each worker a uid of its own: a base plus the keeper's pid.
    assert s["uid"] == (0x7F000000 + w.pid if os.geteuid() == 0 else os.geteuid())
    # A job's own user namespace maps no uid: it sees the overflow uid.
    assert uid == (65534 if s["user_ns"] else s["uid"])
    assert cwd.startswith(s["workdir"]) and os.path.basename(s["workdir"]).startswith("pyport-job-")
    assert "NoNewPrivs:\t1" in status_text
    assert ("Seccomp:\t2" in status_text) is s["seccomp"]
    assert fsize == 1000000
    if mode == "fresh":
        assert cwd.startswith(f"{s['workdir']}/job-")


def test_a_plain_worker_reports_no_sandbox_and_refuses_jobs(worker):
    assert Atom("sandbox") not in worker.hello.capabilities
    status, (reason, text), _ = worker.call("erlang._jobs", "run_job", ["1", None, {}])
    assert (status, reason) == ("error", "bad_job") and "not sandboxed" in text


def test_fresh_jobs_need_a_zygote(spawn):
    w = spawn(args=["--sandbox"])
    status, (reason, text), _ = job(w, "fresh", "1")
    assert (status, reason) == ("error", "bad_job") and "--zygote" in text


def test_a_kernel_without_landlock_is_reported(spawn):
    w = spawn(args=["--sandbox", "--sandbox-test-unavailable", "landlock"])
    s = sandbox_of(w)
    assert s["landlock"] is False
    assert "simulated" in dict(s["unavailable"])["landlock"]
    # The other layers still hold.
    assert job(w, "warm", "import socket; socket.socket()")[:2] == forbidden("socket")


@pytest.mark.parametrize("flag,value", [("--preload", "m"), ("--env", "A=b"),
                                        ("--sandbox-allow", "exec"), ("--workdir-parent", "/tmp")])
def test_sandbox_flags_need_sandbox(flag, value):
    r = subprocess.run([P.locate_worker(), flag, value], capture_output=True, text=True,
                       errors="replace")
    assert r.returncode == 2 and "need --sandbox or --zygote" in r.stderr


def test_bad_allow_is_named():
    r = subprocess.run([P.locate_worker(), "--sandbox", "--sandbox-allow", "everything"],
                       capture_output=True, text=True, errors="replace")
    assert r.returncode == 2
    assert "--sandbox-allow takes network, exec, fork" in r.stderr and "'everything'" in r.stderr


# ---- job semantics ----

@pytest.mark.parametrize("mode", MODES)
def test_a_job_is_a_notebook_cell(spawn, mode):
    w = start(spawn, mode)
    assert job(w, mode, "x = input['n'] * 2\nx + 1", {"n": 20})[:2] == ("ok", 41)
    assert job(w, mode, "result = [input, 'done']\nx = 1", 7)[:2] == ("ok", [7, "done"])
    assert job(w, mode, "x = 1")[:2] == ("ok", None)
    assert job(w, mode, b"(1, 'a')")[:2] == ("ok", (1, "a"))
    # Each job has a namespace of its own.
    assert job(w, mode, "'x' in globals()")[:2] == ("ok", False)
    status, (reason, info), stats = job(w, mode, "print('before')\nraise KeyError('k')")
    assert (status, reason, info["type"], info["message"]) == ("error", "exception", "KeyError",
                                                               "'k'")
    assert 'File "<job>", line 2' in info["traceback"] and "_jobs.py" not in info["traceback"]
    assert stats["stdout"] == "before\n"
    assert set(stats) == {"stdout", "stderr", "cpu_ms", "max_rss", "wall_ms"}
    status, (reason, info), _ = job(w, mode, "1 +")
    assert (status, reason, info["type"]) == ("error", "exception", "SyntaxError")
    status, (reason, info), _ = job(w, mode, "len")
    assert (status, reason, info["type"]) == ("error", "exception", "TypeError")
    assert "cannot convert" in info["message"]
    status, (reason, text), _ = job(w, mode, "1", timeout=0)
    assert (status, reason) == ("error", "bad_job") and "timeout" in text


# ---- hostile jobs ----

@pytest.mark.parametrize("mode", MODES)
def test_network_is_forbidden(spawn, mode, listener):
    port, accepted = listener
    w = start(spawn, mode)
    code = f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))"
    assert job(w, mode, code)[:2] == forbidden("socket")
    # Catching the PermissionError does not hide the refusal.
    code = ("import socket\ntry:\n    socket.socket(socket.AF_INET6)\nexcept OSError:\n"
            "    pass\n'caught'")
    assert job(w, mode, code)[:2] == forbidden("socket")
    code = "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\ns.listen()"
    assert job(w, mode, code)[:2] == forbidden("socket")
    # AF_UNIX stays.
    assert job(w, mode, "import socket\na, b = socket.socketpair()\na.send(b'x')\nb.recv(1)")[
        :2] == ("ok", "x")
    assert accepted == []
    assert_healthy(w, mode)


@pytest.mark.parametrize("mode", MODES)
def test_ctypes_syscall_is_forbidden_and_named(spawn, mode):
    w = start(spawn, mode)
    code = ("import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.syscall(41, socket.AF_INET, socket.SOCK_STREAM, 0)")  # SYS_socket
    assert job(w, mode, code)[:2] == forbidden("socket")
    code = "import ctypes\nctypes.CDLL(None).syscall(101, 16, 1, 0, 0)"  # ptrace(PTRACE_ATTACH)
    assert job(w, mode, code)[:2] == forbidden("ptrace")
    code = "import ctypes\nctypes.CDLL(None).syscall(425, 8, 0)"  # io_uring_setup
    assert job(w, mode, code)[:2] == forbidden("io_uring_setup")
    assert_healthy(w, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code,name", [
    ("import os\nos.system('/bin/sh -c true')", "clone"),
    ("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'true'])", "clone"),
    ("import os\nos.execv('/bin/sh', ['sh', '-c', 'true'])", "execve"),
    ("import os\nwhile True:\n    os.fork()", "clone"),
])
def test_exec_and_fork_are_forbidden(spawn, mode, code, name):
    w = start(spawn, mode)
    assert job(w, mode, code)[:2] == forbidden(name)
    assert_healthy(w, mode)


@needs_no_asan
@pytest.mark.parametrize("mode", MODES)
def test_ten_gigabytes_is_a_memory_limit(spawn, mode):
    w = start(spawn, mode, "--max-memory", str(GIB))
    assert job(w, mode, "a = bytearray(10 * 2**30)")[:2] == ("error",
                                                              (Atom("memory_limit"), GIB))
    code = "hog = []\nwhile True:\n    hog.append(bytearray(2**20))"
    assert job(w, mode, code)[:2] == ("error", (Atom("memory_limit"), GIB))
    assert_healthy(w, mode)


def test_spinning_fresh_job_times_out_and_the_zygote_goes_on(spawn):
    w = start(spawn, "fresh")
    status, reason, stats = job(w, "fresh", "while True:\n    pass", timeout=500)
    assert (status, reason) == ("error", "timeout")
    assert stats["wall_ms"] >= 500
    assert_no_job_runners(w)
    assert_healthy(w, "fresh")


def test_spinning_fresh_job_hits_its_cpu_limit(spawn):
    w = start(spawn, "fresh", "--cpu-seconds", "1")
    status, reason, stats = job(w, "fresh", "while True:\n    pass", timeout=60000)
    assert (status, reason) == ("error", (Atom("cpu_limit"), 1))
    assert stats["cpu_ms"] > 0
    # The zygote's own CPU is not limited: only each job's.
    assert_healthy(w, "fresh")


def test_spinning_warm_job_is_interrupted_and_the_worker_goes_on(spawn):
    w = start(spawn, "warm")
    id = w.request(P.CALL, "erlang._jobs", "run_job", ["while True:\n    pass", None, {}], {})
    w.interrupt(id)
    with pytest.raises(P.RemoteError) as e:
        w.result(id)
    assert e.value.type == "KeyboardInterrupt"
    assert_healthy(w, "warm")


def test_spinning_warm_job_times_out_and_the_worker_stays(spawn):
    w = start(spawn, "warm")
    status, reason, stats = job(w, "warm", "print('spinning')\nwhile True:\n    pass", timeout=500)
    assert (status, reason, stats["stdout"]) == ("error", "timeout", "spinning\n")
    assert stats["wall_ms"] >= 500
    assert_no_job_runners(w)
    assert_healthy(w, "warm")


def test_warm_cpu_limit_is_the_jobs_not_the_workers(spawn):
    w = start(spawn, "warm", "--cpu-seconds", "1")
    status, reason, stats = job(w, "warm", "while True:\n    pass", timeout=60000)
    assert (status, reason) == ("error", (Atom("cpu_limit"), 1))
    assert stats["cpu_ms"] > 0
    assert_healthy(w, "warm")


@pytest.mark.parametrize("mode", MODES)
def test_ten_gigabyte_file_is_a_file_size_limit(spawn, mode):
    w = start(spawn, mode, "--max-file-size", str(10 << 20))
    code = ("f = open('big', 'wb')\nchunk = b'x' * 2**20\n"
            "for _ in range(10 * 1024):\n    f.write(chunk)\n    f.flush()")
    assert job(w, mode, code)[:2] == ("error", (Atom("file_size_limit"), 10 << 20))
    assert_healthy(w, mode)


@pytest.mark.parametrize("mode", MODES)
def test_writes_outside_the_working_directory_fail(spawn, mode, tmp_path):
    w = start(spawn, mode)
    repo_file = os.path.join(P.REPO, "pyport-sandbox-test-file")
    targets = [repo_file, str(tmp_path / "x")]
    # /tmp is open to every uid: only Landlock keeps the job out of it.
    if sandbox_of(w)["landlock"]:
        targets.append("/tmp/pyport-sandbox-test-file")
    for target in targets:
        status, (reason, info), _ = job(w, mode, f"open({target!r}, 'w').write('x')")
        # Outside the job's own root (not there) or read-only there, or Landlock.
        assert (status, reason) == ("error", "exception"), target
        assert info["type"] in ("PermissionError", "FileNotFoundError", "OSError"), target
        assert not os.path.exists(target)
    # Inside it, files come and go.
    assert job(w, mode, "open('mine', 'w').write('data')\nopen('mine').read()")[:2] == ("ok",
                                                                                       "data")
    assert_healthy(w, mode)


@needs_no_asan  # ASan's write() checks the buffer itself: no EFAULT probing
@pytest.mark.parametrize("mode", MODES)
def test_the_environment_is_wiped_from_memory(spawn, mode):
    env = dict(os.environ, PYPORT_SECRET="hunter2", PYPORT_KEPT="kept")
    w = start(spawn, mode, "--env", "GREETING=hello", "--env-keep", "PYPORT_KEPT", env=env)
    # The initial stack's strings are wiped, and --env values are blanked
    # in the command line there.
    status, stack, _ = job(w, mode, STACK_STRINGS)
    assert status == "ok"
    stack = stack.encode("utf-8", "surrogateescape") if isinstance(stack, str) else stack
    assert b"hunter2" not in stack and b"PYPORT_KEPT=kept" not in stack
    assert b"GREETING=" in stack and b"GREETING=hello" not in stack
    assert_healthy(w, mode)


# The bytes of the initial stack, from its last string (AT_EXECFN) down to
# where the mapping ends (write() to a pipe finds that: EFAULT, no crash).
STACK_STRINGS = """
import ctypes, os
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
end = libc.getauxval(31)
r, w = os.pipe()
start = end
for _ in range(256):
    base = (start - 4096) & ~4095
    if libc.write(w, ctypes.c_void_p(base), 4096) != 4096:
        break
    os.read(r, 4096)
    start = base
ctypes.string_at(start, end + len(ctypes.string_at(end)) - start)
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_parents_environment_is_out_of_reach(spawn, mode):
    env = dict(os.environ, PYPORT_SECRET="hunter2", PYPORT_KEPT="kept")
    w = start(spawn, mode, "--env", "GREETING=hello", "--env-keep", "PYPORT_KEPT", env=env)
    status, environ, _ = job(w, mode, "import os\ndict(os.environ)")
    assert status == "ok"
    assert environ["GREETING"] == "hello" and environ["PYPORT_KEPT"] == "kept"
    assert "PYPORT_SECRET" not in environ
    # Nor in /proc/self/environ, which only root could read anyway.
    status, (reason, info), _ = job(w, mode, "open('/proc/self/environ', 'rb').read()")
    assert (status, reason, info["type"]) == ("error", "exception", "PermissionError")
    for pid in ["os.getppid()", str(os.getpid())]:
        status, (reason, info), _ = job(w, mode, f"import os\nopen(f'/proc/{{{pid}}}/environ').read()")
        # The node's pid is not in the job's /proc at all.
        assert (status, reason) == ("error", "exception"), pid
        assert info["type"] in ("PermissionError", "FileNotFoundError"), pid
    assert_healthy(w, mode)


@pytest.mark.parametrize("mode", MODES)
def test_killing_the_parent_fails(spawn, mode):
    w = start(spawn, mode)
    worker, keeper = w.hello.os_pid, w.pid
    # Processes outside the job's reach: the keeper, this test, and for a
    # fresh job the zygote (by its pid outside the job's pid namespace).
    for target in [keeper, os.getpid()] + ([worker] if mode == "fresh" else []):
        status, (reason, info), _ = job(w, mode, f"import os, signal\nos.kill({target}, signal.SIGKILL)")
        assert status == "error", target
        if reason == "forbidden":  # the filter, on kernels without Landlock signal scoping
            assert info == "kill" and sandbox_of(w)["landlock"] in (False, 1, 2, 3, 4, 5)
        else:
            assert reason == "exception", target
            assert info["type"] in ("PermissionError", "ProcessLookupError"), target
    status, (reason, info), _ = job(w, mode, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert status == "error" or mode == "fresh"
    # In a fresh job's namespace, pid 1 is its init, which ignores the signal.
    job(w, mode, "import os, signal\nos.kill(1, signal.SIGKILL)")
    assert os.path.exists(f"/proc/{keeper}")
    assert_healthy(w, mode)


@pytest.mark.parametrize("mode", MODES)
def test_printing_a_hundred_megabytes_is_an_output_limit(spawn, mode):
    w = start(spawn, mode, "--max-output", "65536")
    status, reason, stats = job(w, mode, "for _ in range(100):\n    print('x' * 2**20)")
    assert (status, reason) == ("error", (Atom("output_limit"), 65536))
    assert 0 < len(stats["stdout"]) <= 65536
    # A job may ask for less, never for more.
    status, reason, _ = job(w, mode, "print('y' * 2000)", max_output=1000)
    assert (status, reason) == ("error", (Atom("output_limit"), 1000))
    assert_healthy(w, mode)


def test_fresh_output_from_c_is_captured(spawn):
    w = start(spawn, "fresh")
    status, _, stats = job(w, "fresh", "import os\nos.write(1, b'from fd 1\\n')\n"
                                       "os.write(2, b'from fd 2\\n')")
    assert status == "ok"
    assert stats["stdout"] == "from fd 1\n" and stats["stderr"] == "from fd 2\n"


# ---- the fresh child ----

def test_a_fresh_child_holds_no_channel_to_erlang(spawn):
    w = start(spawn, "fresh")
    status, fds, _ = job(w, "fresh", "import os\nsorted(int(f) for f in os.listdir('/proc/self/fd'))")
    assert status == "ok"
    # 0-2, the result pipe, and the descriptor listing the directory.
    assert len(fds) == 5 and fds[:4] == [0, 1, 2, 3]
    status, (reason, info), _ = job(w, "fresh", "import erlang\nerlang.call('anything')")
    assert (status, reason, info["type"]) == ("error", "exception", "RuntimeError")
    assert_healthy(w, "fresh")


def test_fresh_jobs_run_concurrently_in_one_zygote(spawn):
    w = start(spawn, "fresh")
    opts = {Atom("fresh"): True}
    slow = [w.request(P.CALL, "erlang._jobs", "run_job",
                      ["import time\ntime.sleep(1)\ninput", i, opts], {}) for i in range(4)]
    quick = w.request(P.CALL, "erlang._jobs", "run_job", ["'quick'", None, opts], {})
    first = w.read_frame()
    assert first.id == quick
    assert P.value_of(first)[:2] == ("ok", "quick")
    assert [w.result(id)[:2] for id in slow] == [("ok", i) for i in range(4)]


def test_a_cancelled_fresh_job_takes_its_child_along(spawn):
    w = start(spawn, "fresh")
    id = w.request(P.CALL, "erlang._jobs", "run_job",
                   ["while True:\n    pass", None, {Atom("fresh"): True}], {})
    deadline = time.monotonic() + 60
    while not job_runners(w):
        assert time.monotonic() < deadline, "the job's runner never started"
        time.sleep(0.01)
    w.send_frame(P.CANCEL, id)
    with pytest.raises(P.RemoteError) as e:
        w.result(id)
    assert e.value.type == "CancelledError"
    assert_no_job_runners(w)
    assert_healthy(w, "fresh")


# ---- the working directory ----

@pytest.mark.parametrize("how", ["close", "kill"])
def test_the_working_directory_goes_with_the_worker(spawn, how, shared_dir):
    w = spawn(args=["--zygote", "--workdir-parent", shared_dir])
    workdir = sandbox_of(w)["workdir"]
    assert os.path.dirname(workdir) == shared_dir
    assert job(w, "fresh", "open('f', 'w').write('x')\nimport os\nos.makedirs('a/b')")[0] == "ok"
    assert job(w, "warm", "open('g', 'w').write('x')\nos = __import__('os')\nos.symlink('/etc', 'l')")[0] == "ok"
    # The jobs' directories went with them: what is left are the spare
    # runners' (empty) ones, in the worker's own tmpfs: the host's
    # directory never holds a job's file.
    assert os.listdir(workdir) == []
    if how == "close":
        assert w.close() == 0
    else:
        os.kill(w.hello.os_pid, signal.SIGKILL)
        assert w.wait_exit() == -signal.SIGKILL
    assert os.listdir(shared_dir) == []
    assert os.path.isdir("/etc/ssl")  # the link was removed, not followed


# ---- each --sandbox-allow relaxes its one restriction ----

@pytest.mark.parametrize("mode", MODES)
def test_allow_network(spawn, mode, listener):
    port, accepted = listener
    w = start(spawn, mode, "--sandbox-allow", "network")
    s = sandbox_of(w)
    assert s["allowed"] == ["network"] and s["net_ns"] is False
    code = f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\n'connected'"
    assert job(w, mode, code)[:2] == ("ok", "connected")
    # The rest holds.
    assert job(w, mode, "import os\nos.execv('/bin/true', ['true'])")[:2] == forbidden("execve")


def test_allow_fork_and_exec(spawn):
    w = start(spawn, "warm", "--sandbox-allow", "fork", "--sandbox-allow", "exec")
    code = "import subprocess\nsubprocess.run(['/bin/echo', 'hi'], capture_output=True).stdout"
    assert job(w, "warm", code)[:2] == ("ok", "hi\n")
    assert job(w, "warm", "import socket\nsocket.socket()")[:2] == forbidden("socket")


def test_allow_fork_only(spawn):
    w = start(spawn, "fresh", "--sandbox-allow", "fork")
    code = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(7)\nos.waitpid(pid, 0)[1] >> 8"
    assert job(w, "fresh", code)[:2] == ("ok", 7)
    # exec stays forbidden, in the forked grandchild too: named by the audit hook.
    code = "import subprocess\nsubprocess.run(['/bin/true'])"
    assert job(w, "fresh", code)[:2] == forbidden("execve")


def test_allow_filesystem(spawn, shared_dir):
    import pathlib
    target = pathlib.Path(shared_dir) / "written"
    w = start(spawn, "warm", "--sandbox-allow", "filesystem")
    assert sandbox_of(w)["landlock"] is False
    assert "landlock" not in dict(sandbox_of(w)["unavailable"])
    assert job(w, "warm", f"open({str(target)!r}, 'w').write('x')")[:2] == ("ok", 1)
    assert target.read_text() == "x"


def test_allow_namespaces(spawn):
    w = start(spawn, "warm", "--sandbox-allow", "namespaces")
    s = sandbox_of(w)
    assert not any(s[ns] for ns in ("user_ns", "net_ns", "ipc_ns", "mount_ns"))
    assert s["pid_ns"] is False
    assert not set(dict(s["unavailable"])) & {"user_ns", "net_ns", "ipc_ns", "mount_ns", "pid_ns"}


def test_allow_seccomp(spawn):
    w = start(spawn, "warm", "--sandbox-allow", "seccomp")
    assert sandbox_of(w)["seccomp"] is False
    assert job(w, "warm", "import socket\nsocket.socket().family.name")[:2] == ("ok", "AF_INET")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has a uid to keep")
def test_allow_privileges(spawn):
    w = start(spawn, "warm", "--sandbox-allow", "privileges")
    assert sandbox_of(w)["uid"] == 0
    assert job(w, "warm", "__import__('os').getuid()")[:2] == ("ok", 0)


def test_preload_runs_before_confinement(spawn, shared_dir):
    with open(os.path.join(shared_dir, "preloaded.py"), "w") as f:
        f.write("import socket\nFAMILY = socket.socket().family.name\n")
    os.chmod(os.path.join(shared_dir, "preloaded.py"), 0o644)
    w = spawn(args=["--sandbox", "--preload", "preloaded", "--path", shared_dir])
    assert job(w, "warm", "import preloaded\npreloaded.FAMILY")[:2] == ("ok", "AF_INET")


def test_the_sigsys_handler_cannot_be_removed(spawn):
    w = start(spawn, "warm")
    status, (reason, info), _ = job(w, "warm", "import signal\nsignal.signal(signal.SIGSYS, signal.SIG_IGN)")
    assert (status, reason, info["type"]) == ("error", "exception", "PermissionError")
    assert job(w, "warm", "import socket\nsocket.socket()")[:2] == forbidden("socket")


def test_a_refusal_with_sigsys_blocked_kills_only_the_fresh_child(spawn):
    w = start(spawn, "fresh")
    code = ("import signal, socket\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGSYS])\n"
            "socket.socket()")
    assert job(w, "fresh", code)[:2] == forbidden("unknown")
    assert_healthy(w, "fresh")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 syscalls exist on x86_64 only")
def test_x32_syscalls_kill_the_fresh_child(spawn):
    w = start(spawn, "fresh")
    code = "import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 41, 2, 1, 0)"  # x32 socket
    assert job(w, "fresh", code)[:2] == forbidden("unknown")
    assert_healthy(w, "fresh")


# ---- with fork allowed, nothing a job starts outlives it ----

FORK_BOMB = "import os\nwhile True:\n    os.fork()"


@pytest.mark.parametrize("mode", MODES)
def test_a_fork_bomb_meets_the_process_limit(spawn, mode):
    w = start(spawn, mode, "--sandbox-allow", "fork", "--max-processes", "24")
    assert job(w, mode, FORK_BOMB, timeout=30000)[:2] == ("error",
                                                          (Atom("process_limit"), 24))
    assert_healthy(w, mode)


def process_group(pgid):
    return [p for p, state, _, group in processes() if group == pgid and state != "Z"]


def test_what_a_fresh_job_forked_goes_with_it(spawn):
    w = start(spawn, "fresh", "--sandbox-allow", "fork")
    code = ("import os, time\nif os.fork() == 0:\n    time.sleep(600)\n"
            "import os\nos.getpid()")
    status, job_pid, _ = job(w, "fresh", code)
    assert status == "ok"
    assert process_group(job_pid) == []
    # It cannot leave its group to survive.
    assert job(w, "fresh", "import os\nos.setsid()")[:2] == forbidden("setsid")
    assert_healthy(w, "fresh")


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_what_a_warm_job_forked_goes_with_it(spawn):
    w = start(spawn, "warm", "--sandbox-allow", "fork")
    # A grandchild, orphaned at once (it goes to the keeper, the subreaper).
    code = ("import os, time\nr, wr = os.pipe()\nif os.fork() == 0:\n"
            "    if os.fork() == 0:\n        os.write(wr, str(os.getpid()).encode())\n"
            "        time.sleep(600)\n    os._exit(0)\n"
            "os.close(wr)\nint(os.read(r, 20))")
    status, orphan, _ = job(w, "warm", code)
    assert status == "ok"
    # No process of the worker has that pid in its namespace any more.
    def in_ns(nspid):
        parents = {p: pp for p, _, pp, _ in processes()}
        found, frontier = [], [w.pid]
        while frontier:
            parent = frontier.pop()
            for child in [p for p, pp in parents.items() if pp == parent]:
                frontier.append(child)
                try:
                    with open(f"/proc/{child}/status") as f:
                        ns = [line.split()[1:] for line in f if line.startswith("NSpid:")][0]
                except (OSError, IndexError):
                    continue
                if len(ns) > 1 and int(ns[-1]) == nspid:
                    found.append(child)
        return found
    deadline = time.monotonic() + 5
    while in_ns(orphan) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert in_ns(orphan) == []
    assert job(w, "warm", "import os\nos.setsid()")[:2] == forbidden("setsid")
    assert_healthy(w, "warm")


def test_fresh_jobs_live_in_the_zygotes_pid_namespace(spawn):
    w = start(spawn, "fresh")
    if not sandbox_of(w)["pid_ns"]:
        pytest.skip("no pid namespace here: " + dict(sandbox_of(w)["unavailable"])["pid_ns"])
    status, (ppid, pids), _ = job(
        w, "fresh", "import os\n(os.getppid(), [int(p) for p in os.listdir('/proc') if p.isdigit()])")
    assert status == "ok"
    # The zygote is the namespace's init; the job's /proc shows the namespace only.
    assert ppid == 1 and 1 in pids and max(pids) < 64 and len(pids) <= 8
    assert os.getpid() not in pids or os.getpid() <= 3
    assert_healthy(w, "fresh")


def test_allow_exec_only(spawn):
    w = start(spawn, "fresh", "--sandbox-allow", "exec")
    # The child becomes echo: its output arrives, but no result.
    status, reason, stats = job(w, "fresh", "import os\nos.execv('/bin/echo', ['echo', 'hi'])")
    assert (status, reason) == ("error", (Atom("crashed"), {"exit_status": 0}))
    assert stats["stdout"] == "hi\n"
    # Creating a process stays forbidden.
    assert job(w, "fresh", "import subprocess\nsubprocess.run(['/bin/true'])")[:2] == forbidden("clone")
    assert_healthy(w, "fresh")


def test_a_module_that_cannot_be_preloaded_is_named():
    r = subprocess.run([P.locate_worker(), "--sandbox", "--preload", "no_such_module_here"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=60)
    assert r.returncode == 1
    assert "cannot preload no_such_module_here: ModuleNotFoundError" in r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_without_landlock_scoping_a_job_signals_only_itself(spawn, mode):
    # Landlock's signal scoping (ABI >= 6) is what keeps a job from other
    # processes of its uid; without it the filter does.
    w = start(spawn, mode, "--sandbox-test-unavailable", "landlock")
    for target in [w.pid, os.getpid()]:
        code = f"import os, signal\nos.kill({target}, signal.SIGCONT)"
        result = job(w, mode, code)[:2]
        if mode == "fresh" and sandbox_of(w)["pid_ns"]:
            # Outside its pid namespace: no such process, or refused.
            assert result[0] == "error", target
        else:
            assert result == forbidden("kill"), target
    assert job(w, mode, "import os, signal\nos.kill(os.getpid(), 0)\n'self'")[:2] == ("ok", "self")
    assert_healthy(w, mode)
