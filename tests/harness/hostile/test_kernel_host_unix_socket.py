"""Attack: connect() to a host UNIX path socket (Landlock does not cover
AF_UNIX connect before ABI 9; a job talked to a root-owned 0777 socket).
The job's root holds no host /tmp, /run or /var/run: the path is not
there."""
from kernel_fixtures import *  # noqa: F401,F403
import socket
import threading
import pytest


@pytest.fixture
def host_socket(world_tmp):
    path = os.path.join(world_tmp, "host.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen(4)
    srv.settimeout(0.1)
    accepted = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield path, accepted
    stop.set()
    t.join()
    srv.close()


@pytest.mark.parametrize("mode", MODES)
def test_host_unix_sockets_are_unreachable(start, mode, host_socket):
    path, accepted = host_socket
    # The socket works from the host.
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)
    assert wait_for(lambda: len(accepted) == 1)
    w = start(mode)
    code = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(input)"
    for target in [path, "/run/systemd/private", "/var/run/docker.sock", "/tmp/.X11-unix/X0"]:
        status, (reason, info), _ = job(w, mode, code, target)
        assert (status, reason, info["type"]) == ("error", "exception", "FileNotFoundError"), target
    code = "import os\n[os.path.exists(p) for p in ('/run', '/var/run', input)]"
    assert job(w, mode, code, os.path.dirname(path))[:2] == ("ok", [False, False, False])
    assert len(accepted) == 1
    assert_healthy(w, mode)
