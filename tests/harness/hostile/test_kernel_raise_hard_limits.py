"""Attack: a job raises its own limits (only soft limits were set, so a
job lifted RLIMIT_AS and RLIMIT_FSIZE to infinity and went past them).
Hard limits equal soft limits: raising either fails with EPERM."""
from kernel_fixtures import *  # noqa: F401,F403
import pytest

RAISE = """import resource
out = {}
for name in ('RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CPU', 'RLIMIT_NPROC'):
    r = getattr(resource, name)
    soft, hard = resource.getrlimit(r)
    try:
        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        out[name] = ('raised', soft, hard)
    except ValueError as e:
        out[name] = (str(e), soft, hard)
out"""


@needs_no_asan
@pytest.mark.parametrize("mode", MODES)
def test_a_job_cannot_raise_its_hard_limits(start, mode):
    w = start(mode, "--max-memory", str(256 * MIB), "--max-file-size", str(MIB),
              "--max-open-files", "64", "--cpu-seconds", "30", "--max-processes", "64")
    status, seen, _ = job(w, mode, RAISE)
    assert status == "ok"
    expected = {"RLIMIT_AS": 256 * MIB, "RLIMIT_FSIZE": MIB, "RLIMIT_NOFILE": 64,
                "RLIMIT_CPU": 30, "RLIMIT_NPROC": 64}
    for name, limit in expected.items():
        error, soft, hard = seen[name]
        assert error == "not allowed to raise maximum limit", name
        assert soft == limit, name
        # CPU: SIGKILL one second after SIGXCPU; every other hard = soft.
        assert hard == (limit + 1 if name == "RLIMIT_CPU" else limit), name
    # And the limits hold after the attempt.
    code = "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_AS, (2**40, 2**40))\nexcept ValueError:\n    pass\nb'x' * (512 << 20)"
    assert job(w, mode, code)[:2] == ("error", (Atom("memory_limit"), 256 * MIB))
    code = "open('big', 'wb').write(b'x' * (2 << 20))"
    assert job(w, mode, code)[:2] == ("error", (Atom("file_size_limit"), MIB))
    assert_healthy(w, mode)
