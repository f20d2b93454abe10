"""Proof that these tests run inside a real pyport worker started by
tools/pyport-run, not in a plain Python: run with plain pytest, they fail."""
import fcntl
import os

import erlang
from pyport_runtime import testrunner


def _runner():
    info = testrunner.runner_info()
    assert info is not None, "not running under tools/pyport-run"
    return info


def _pipe_id(fd):
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def test_parent_is_the_runner():
    # pyport-run starts the worker itself: the worker is the child of its
    # keeper, the runner's child.
    with open(f"/proc/{os.getppid()}/stat") as stat:
        keeper_parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    assert keeper_parent == _runner()["pid"]


def test_worker_holds_the_frame_channel_close_on_exec():
    channel = {tuple(pipe) for pipe in _runner()["channel"]}
    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if _pipe_id(int(name)) in channel:
                held.append(int(name))
        except OSError:  # the descriptor listdir itself used, now closed
            pass
    # One for requests in, one for answers out, at least.
    assert {_pipe_id(fd) for fd in held} == channel
    # A child process (subprocess, fork+exec) must not inherit the channel.
    for fd in held:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, f"fd {fd} is inheritable"


def test_stdout_and_stderr_are_not_the_frame_channel(capfd):
    channel = {tuple(pipe) for pipe in _runner()["channel"]}
    # pytest captures fds 1 and 2 while a test runs: look at the worker's own.
    with capfd.disabled():
        assert _pipe_id(1) not in channel
        assert _pipe_id(2) not in channel
        assert 0 not in (1, 2) and _pipe_id(0) not in channel
        # If fd 1 were the channel this would be taken for a frame header
        # and break the run; as the worker sets it up, it is a line of text.
        os.write(1, b"\n\x00\x00\x00\x03 (a frame-shaped line of test output)\n")


def test_erlang_package_is_the_worker_runtime():
    runtime = os.path.dirname(os.path.dirname(os.path.abspath(testrunner.__file__)))
    assert os.path.dirname(os.path.abspath(erlang.__file__)) == os.path.join(runtime, "erlang")
