"""How a worker ends: end of input, SHUTDOWN, and crashes seen from its pipes."""
import os
import signal
import time

import pytest

import pyport_proto as P


def test_exits_0_when_stdin_closes(worker):
    assert worker.close() == 0


def test_exits_0_when_stdin_closes_before_anything_was_sent(spawn):
    assert spawn().close() == 0


def test_shutdown_exits_0(worker):
    assert worker.shutdown() == 0


def test_shutdown_finishes_the_frames_already_read(worker):
    ids = [worker.new_id() for _ in range(10)]
    worker.send_bytes(b"".join(P.encode_frame(P.EVAL, id, "n * 2", {"n": id}, 0) for id in ids)
                      + P.encode_frame(P.SHUTDOWN, 0))
    answers = {}
    for _ in ids:
        f = worker.read_frame()
        answers[f.id] = f.fields[0]
    assert answers == {id: id * 2 for id in ids}
    assert worker.wait_exit() == 0
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == 0


def test_os_exit_status_is_seen(worker):
    worker.request(P.CALL, "harness_worker", "exit_now", [3], {})
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == 3
    assert "exited with status 3" in str(e.value)


def test_os_exit_from_exec(worker):
    worker.request(P.EXEC, "import os\nos._exit(4)", 0)
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == 4


def test_segfault_kills_with_sigsegv_and_reports_on_original_stderr(spawn, tmp_path):
    err = tmp_path / "stderr"
    with open(err, "wb") as stderr:
        worker = spawn(stderr=stderr)
    worker.request(P.CALL, "harness_worker", "segfault", [], {})
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == -signal.SIGSEGV
    assert "killed by signal SIGSEGV" in str(e.value)
    # faulthandler writes to the stderr the worker inherited, so the report
    # survives the process (the LOG relay dies with it).
    assert "Segmentation fault" in err.read_text(errors="replace")


def test_abort_kills_with_sigabrt(worker):
    worker.request(P.EXEC, "import os\nos.abort()", 0)
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == -signal.SIGABRT


def test_killed_worker_is_seen_as_eof(worker):
    worker.process.send_signal(signal.SIGKILL)
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == -signal.SIGKILL


def test_pending_requests_are_not_answered_by_a_dead_worker(worker):
    # The harness side of "every caller learns of the exit": requests after
    # the crash get no answer, only end of file.
    worker.send_bytes(P.encode_frame(P.EXEC, 1, "import os\nos._exit(9)", 0)
                      + b"".join(P.encode_frame(P.EVAL, id, "1", None, 0) for id in range(2, 6)))
    with pytest.raises(P.WorkerExited) as e:
        worker.read_frame()
    assert e.value.returncode == 9


def test_a_child_that_outlives_the_worker_does_not_hold_its_pipes(worker, tmp_path):
    # The child holds the frame channel (fork keeps close-on-exec fds); the
    # keeper kills it once the worker exits, so end of file comes at once.
    pidfile = tmp_path / "child"
    # Written whole, then renamed: the worker exits only once it is there.
    worker.request(P.EXEC, "import os, time\n"
                           "if os.fork() == 0:\n"
                           f"    open({str(pidfile) + '.tmp'!r}, 'w').write(str(os.getpid()))\n"
                           f"    os.rename({str(pidfile) + '.tmp'!r}, {str(pidfile)!r})\n"
                           "    time.sleep(1000)\n"
                           "    os._exit(0)\n"
                           "while not os.path.exists(" + repr(str(pidfile)) + "):\n"
                           "    time.sleep(0.001)\n"
                           "os._exit(5)", 0)
    start = time.monotonic()
    assert worker.wait_exit() == 5
    assert time.monotonic() - start < 2
    child = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{child}")  # killed and reaped


def test_sigterm_to_the_keeper_ends_the_worker_and_its_children(worker, tmp_path):
    pidfile = tmp_path / "child"
    worker.request(P.EXEC, "import os, time\n"
                           "if os.fork() == 0:\n"
                           "    os.setsid()\n"
                           f"    open({str(pidfile) + '.tmp'!r}, 'w').write(str(os.getpid()))\n"
                           f"    os.rename({str(pidfile) + '.tmp'!r}, {str(pidfile)!r})\n"
                           "    time.sleep(1000)\n"
                           "    os._exit(0)\n", 0)
    for _ in range(5000):
        if pidfile.exists():
            break
        time.sleep(0.001)
    child = int(pidfile.read_text())
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == -signal.SIGKILL  # the worker's own status
    assert not os.path.exists(f"/proc/{child}")
