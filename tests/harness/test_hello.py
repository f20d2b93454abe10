"""The HELLO frame a worker writes first."""
import re


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_hello_fields(worker):
    hello = worker.hello
    assert hello.version == 1
    assert re.fullmatch(r"3\.\d+\.\d+\S*", hello.python_version), hello.python_version
    # The Python process is the only child of the process we started (its
    # keeper, which reaps whatever the worker leaves behind): no shell.
    assert hello.os_pid != worker.pid
    assert parent_of(hello.os_pid) == worker.pid
    caps = hello.capabilities
    assert caps["max_frame_size"] == 67108864
    assert all(isinstance(f, str) for f in caps["features"])


def test_hello_matches_the_python_inside(worker):
    assert worker.eval("__import__('platform').python_version()") == worker.hello.python_version
    assert worker.eval("__import__('os').getpid()") == worker.hello.os_pid


def test_hello_announces_a_configured_max_frame_size(spawn):
    worker = spawn(max_frame_size=4096)
    assert worker.hello.capabilities["max_frame_size"] == 4096

