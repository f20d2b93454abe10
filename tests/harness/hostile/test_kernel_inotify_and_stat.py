"""Attack: watching the host's /tmp with inotify (it revealed other users'
file names) and stat() on any path (the size of /etc/shadow). The job's
/tmp is its own root's (only its working directory is there), host files
outside the view do not exist for it, and /etc's secrets are covered by
empty stand-ins."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

WATCH = """import ctypes, os, select, struct, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
wd = libc.inotify_add_watch(fd, b'/tmp', 0x100 | 0x200)  # IN_CREATE | IN_DELETE
assert wd >= 0, ctypes.get_errno()
os.write(1, b'watching\\n')
names = []
end = time.monotonic() + 1.0
while time.monotonic() < end:
    if select.select([fd], [], [], 0.05)[0]:
        buf = os.read(fd, 4096)
        while buf:
            _, _, _, n = struct.unpack_from('iIII', buf)
            names.append(buf[16:16 + n].rstrip(b'\\0').decode())
            buf = buf[16 + n:]
names"""


@pytest.mark.parametrize("mode", MODES)
def test_the_hosts_tmp_cannot_be_watched(start, mode, world_tmp):
    w = start(mode)
    box = []

    def make_files():
        for i in range(10):
            p = f"/tmp/pyport-hostile-secret-name-{os.getpid()}-{i}"
            open(p, "w").close()
            os.unlink(p)
            time.sleep(0.05)

    import threading
    t = threading.Thread(target=make_files)
    t.start()
    status, names, _ = job(w, mode, WATCH)
    t.join()
    assert status == "ok" and names == []


@pytest.mark.parametrize("mode", MODES)
def test_stat_shows_nothing_outside_the_view(start, mode, world_tmp):
    secret = os.path.join(world_tmp, "private")
    with open(secret, "w") as f:
        f.write("x" * 12345)
    w = start(mode)
    status, (reason, info), _ = job(w, mode, "__import__('os').stat(input).st_size", secret)
    assert (status, reason, info["type"]) == ("error", "exception", "FileNotFoundError")
    for path in ["/etc/shadow", "/etc/gshadow"]:
        if os.path.exists(path):
            assert job(w, mode, "__import__('os').stat(input).st_size", path)[:2] == ("ok", 0), path
    for path in ["/root", "/home", "/var", "/srv", "/opt", "/mnt"]:
        assert job(w, mode, "__import__('os').path.exists(input)", path)[:2] == ("ok", False), path
