"""Output of Python, C code and child processes arrives as LOG lines and
never mixes with frames."""
import re
import subprocess
import time

import pyport_proto as P
from wire import assert_in_sync


def lines(worker, level=None):
    return [msg for lvl, msg in worker.logs if level is None or lvl == level]


def test_print_a_megabyte(worker):
    assert worker.call("harness_worker", "print_bytes", [1_000_000]) == 1_000_000
    worker.wait_for_log(lambda level, msg: msg == "end of print_bytes")
    assert lines(worker).count("x" * 99) == 10_000
    assert {lvl for lvl, _ in worker.logs} == {"info"}
    assert_in_sync(worker)


def test_print_while_requests_are_pipelined(worker):
    ids = [worker.request(P.CALL, "harness_worker", "print_bytes", [20_000], {}) for _ in range(20)]
    for id in ids:
        assert worker.result(id) == 20_000
    worker.wait_for_log(lambda level, msg: lines(worker).count("end of print_bytes") == 20)
    assert_in_sync(worker)


def test_output_arrives_while_the_call_is_still_running(worker, tmp_path):
    # A long call's output must stream out, not wait in the worker until the
    # call returns (pyport-run's test output, a job's progress in the logger).
    go = tmp_path / "go"
    id = worker.request(P.CALL, "harness_worker", "print_then_wait", ["still running", str(go), 60], {})
    try:
        worker.wait_for_log(lambda level, msg: msg == "still running", timeout=30)
    finally:
        go.touch()
    assert worker.result(id) is True
    assert_in_sync(worker)


def test_c_level_write_to_fd_1_and_2(worker):
    worker.call("harness_worker", "write_fd", [1, "straight to fd 1\n"])
    worker.call("harness_worker", "write_fd", [2, "straight to fd 2\n"])
    assert worker.wait_for_log(lambda level, msg: msg == "straight to fd 1")[0] == "info"
    assert worker.wait_for_log(lambda level, msg: msg == "straight to fd 2")[0] == "warning"
    assert_in_sync(worker)


def test_child_process_output(worker):
    assert worker.call("harness_worker", "run_child", [["echo", "hi"]]) == 0
    assert worker.call("harness_worker", "run_child", [["sh", "-c", "echo child err >&2"]]) == 0
    assert worker.wait_for_log(lambda level, msg: msg == "hi")[0] == "info"
    assert worker.wait_for_log(lambda level, msg: msg == "child err")[0] == "warning"
    assert_in_sync(worker)


def test_child_process_writing_a_megabyte(worker):
    script = "for i in $(seq 1 20000); do echo child-line-$i; done"
    assert worker.call("harness_worker", "run_child", [["sh", "-c", script]]) == 0
    worker.wait_for_log(lambda level, msg: msg == "child-line-20000")
    assert [m for m in lines(worker) if m.startswith("child-line-")] == \
        [f"child-line-{i}" for i in range(1, 20001)]
    assert_in_sync(worker)


def test_frame_shaped_bytes_on_stdout_are_text(worker):
    # What a HELLO or RESULT frame looks like, written to fd 1.
    fake = b"\x00\x00\x00\x03\x93\x10\x05\xc0 tail\n"
    worker.call("harness_worker", "write_fd", [1, fake])
    worker.wait_for_log(lambda level, msg: msg.endswith(" tail"))
    assert_in_sync(worker)


def test_output_that_is_not_utf8_still_arrives(worker):
    worker.call("harness_worker", "write_fd", [1, b"bad \xff\xfe bytes\n"])
    level, msg = worker.wait_for_log(lambda level, msg: msg.startswith("bad ") and msg.endswith(" bytes"))
    assert level == "info"
    assert_in_sync(worker)


def test_output_of_the_last_request_is_not_lost_at_exit(worker):
    worker.call("harness_worker", "print_bytes", [200_000])
    assert worker.close() == 0
    assert "end of print_bytes" in lines(worker)
    assert lines(worker).count("x" * 99) == 2000


def _passed(worker, line="x" * 99):
    return lines(worker).count(line) + lines(worker).count("end of print_bytes")


def _accounted(worker, line="x" * 99):
    """Lines that arrived plus those the notes say were dropped."""
    return _passed(worker, line) + sum(n for n, _ in _dropped_notes(worker))


def _dropped_notes(worker):
    """(lines, bytes) of each "N lines (B bytes) of output dropped" note."""
    notes = []
    for level, msg in worker.logs:
        m = re.match(r"pyport: (\d+) lines \((\d+) bytes\) of output dropped", msg)
        if m:
            assert level == "warning", (level, msg)
            notes.append((int(m.group(1)), int(m.group(2))))
    return notes


def test_output_above_the_log_rate_is_dropped_and_counted(spawn):
    # 10,000 lines at once, 100 lines a second allowed: the first second's
    # worth passes, the rest is dropped, and a note counts every line.
    worker = spawn(args=["--log-lines", "100"])
    start = time.monotonic()
    assert worker.call("harness_worker", "print_bytes", [1_000_000]) == 1_000_000
    worker.wait_for_log(lambda level, msg: _accounted(worker) == 10_001, timeout=10)
    seconds = time.monotonic() - start
    passed = _passed(worker)
    notes = _dropped_notes(worker)
    # The burst (one second's worth), then the rate; notes count against it,
    # and come at most once a second.
    assert passed + len(notes) <= 100 + 100 * seconds, (passed, notes, seconds)
    assert len(notes) <= 1 + seconds
    assert_in_sync(worker)


def test_log_bytes_rate(spawn):
    # 100 lines of 10,000 bytes, 50,000 bytes a second allowed: five lines.
    worker = spawn(args=["--log-bytes", "50000"])
    start = time.monotonic()
    worker.call("harness_worker", "print_bytes", [100 * 10_000, 9_999])
    worker.wait_for_log(lambda level, msg: _accounted(worker, "x" * 9_999) == 101, timeout=10)
    seconds = time.monotonic() - start
    passed = lines(worker).count("x" * 9_999)
    assert 4 <= passed <= 5 + 5 * seconds, (passed, seconds)
    assert sum(b for _, b in _dropped_notes(worker)) >= (100 - passed - 1) * 9_999
    assert_in_sync(worker)


def test_dropped_output_is_noted_at_exit(spawn):
    # Output dropped just before the worker exits is still counted.
    worker = spawn(args=["--log-lines", "10"])
    worker.call("harness_worker", "print_bytes", [100_000])
    assert worker.close() == 0
    assert _accounted(worker) == 1_001
    assert _dropped_notes(worker)


def test_log_rate_options_are_checked():
    exe = P.locate_worker(None)
    for flag, value in (("--log-lines", "0"), ("--log-bytes", "x")):
        r = subprocess.run([exe, flag, value], capture_output=True, timeout=30)
        assert r.returncode == 2
        assert f"{flag} must be a positive number, not '{value}'" in r.stderr.decode(errors="replace")
        # The StartError frame on stdout names the option at fault.
        size = int.from_bytes(r.stdout[:4], "big")
        frame = P.parse_frame(r.stdout[4:4 + size])
        assert (frame.kind, frame.id, frame.fields[0], frame.fields[2]) == (P.ERROR, 0, "StartError", flag)
