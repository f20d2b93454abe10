"""The worker reads its input while Python runs (port_worker/input_reader.hpp):
requests pile up in the worker, not in the pipe, and end of input is seen
while a call is still running (and interrupts it: the owner is gone)."""
import signal
import threading
import time

import pyport_proto as P

# Far more than a pipe holds (64 KiB on Linux): the writer finishes only if
# the worker reads while its main thread is busy.
FRAMES = 256
PAYLOAD = "x" * 16384
HANG_GUARD = 60


def _busy_call(worker, gate):
    """Starts a call that keeps Python busy until ``gate`` exists, once the
    worker has printed that it started."""
    started = f"busy {gate}"
    id = worker.request(P.CALL, "harness_worker", "print_then_wait", [started, str(gate), HANG_GUARD], {})
    worker.wait_for_log(lambda level, line: line == started)
    return id


def test_requests_are_read_while_python_runs(worker, tmp_path):
    gate = tmp_path / "gate"
    busy = _busy_call(worker, gate)
    ids = [worker.new_id() for _ in range(FRAMES)]
    data = b"".join(P.encode_frame(P.CALL, id, "harness_worker", "identity", [PAYLOAD], {}) for id in ids)
    writer = threading.Thread(target=worker.send_bytes, args=(data,), daemon=True)
    writer.start()
    writer.join(HANG_GUARD)
    wrote_all = not writer.is_alive()
    gate.touch()  # lets Python go on either way, so a failure does not hang
    assert wrote_all, "the worker stopped reading while Python ran"
    assert P.value_of(worker.wait(busy)) is True
    # Answered in order, each with its own value.
    for id in ids:
        frame = worker.read_frame()
        assert (frame.kind, frame.id, frame.fields[0]) == (P.RESULT, id, PAYLOAD)


def test_end_of_input_while_python_runs_interrupts_the_call(worker, tmp_path):
    # The owner is gone: the call running is interrupted, not waited for.
    gate = tmp_path / "gate"
    busy = _busy_call(worker, gate)
    later = worker.request(P.EVAL, "6 * 7", None, 0)
    worker.process.stdin.close()
    frame = worker.wait(busy, timeout=HANG_GUARD)
    gate.touch()
    assert (frame.kind, frame.fields[0]) == (P.ERROR, "KeyboardInterrupt")
    # Frames read before end of input are answered too.
    assert worker.result(later) == 42
    assert worker.wait_exit() == 0


def test_end_of_input_kills_python_that_ignores_its_interrupt(worker):
    # Only a kill ends it: the input thread does that after its grace period.
    code = "while True:\n    try:\n        time.sleep(100)\n    except KeyboardInterrupt:\n        pass"
    worker.request(P.EXEC, "import time\nprint('stubborn', flush=True)\n" + code, 0)
    worker.wait_for_log(lambda level, line: line == "stubborn")
    start = time.monotonic()
    worker.process.stdin.close()
    assert worker.wait_exit() == -signal.SIGKILL
    assert time.monotonic() - start < 5


def test_shutdown_read_while_python_runs_exits_after_the_call(worker, tmp_path):
    gate = tmp_path / "gate"
    busy = _busy_call(worker, gate)
    worker.send_frame(P.SHUTDOWN, 0)
    gate.touch()
    assert P.value_of(worker.wait(busy)) is True
    assert worker.wait_exit() == 0
