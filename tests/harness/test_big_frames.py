"""Big frames: values around the pipe's 64 KiB and above 1 MiB cross whole,
and the worker grows its frame pipes only once big frames cross them
(port_worker/frame_writer.hpp, grow_pipe)."""
import fcntl

DEFAULT_PIPE = 64 * 1024
BIG_PIPE = 1 << 20


def pipe_size(f) -> int:
    # Our end of the pipe: F_GETPIPE_SZ reports the pipe's own capacity,
    # whichever end asks.
    return fcntl.fcntl(f.fileno(), fcntl.F_GETPIPE_SZ)


def payload(n: int) -> bytes:
    # Not UTF-8 (0xff never is), so it stays bytes both ways.
    return (bytes(range(255, -1, -1)) * (n // 256 + 1))[:n]


def test_small_traffic_leaves_the_pipes_alone(worker):
    before = (pipe_size(worker.process.stdin), pipe_size(worker.process.stdout))
    for n in (1, 4096, 60_000):
        assert worker.call("harness_worker", "identity", [payload(n)]) == payload(n)
    assert (pipe_size(worker.process.stdin), pipe_size(worker.process.stdout)) == before


def test_values_around_the_pipe_size_and_above_cross_whole(worker):
    sizes = [DEFAULT_PIPE - 1, DEFAULT_PIPE, DEFAULT_PIPE + 1, 3 * DEFAULT_PIPE + 17,
             BIG_PIPE - 1, BIG_PIPE, BIG_PIPE + 1, 5 * BIG_PIPE + 3]
    for n in sizes:
        assert worker.call("harness_worker", "identity", [payload(n)]) == payload(n), n
    # Both directions carried frames above 64 KiB: both pipes were grown
    # (unless the kernel refused, which a root or default-limits test
    # machine does not).
    with open("/proc/sys/fs/pipe-max-size") as f:
        if int(f.read()) >= BIG_PIPE:
            assert pipe_size(worker.process.stdin) == BIG_PIPE
            assert pipe_size(worker.process.stdout) == BIG_PIPE
    # Small frames after big ones still arrive in order.
    ids = [worker.request(1, "harness_worker", "identity", [i], {}) for i in range(50)]
    assert [worker.result(i) for i in ids] == list(range(50))
