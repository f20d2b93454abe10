"""INTERRUPT against a real worker: KeyboardInterrupt in the running request,
never in another; requests interrupted before they start do not run."""
import time

import pytest

import pyport_proto as P
from wire import assert_in_sync

GUARD = 60   # the interrupted code would run this long


def started(worker, tag):
    """Waits until the worker printed tag: the request is running."""
    worker.wait_for_log(lambda level, line: line == tag)


def test_a_busy_loop_is_interrupted(worker):
    id = worker.request(P.EXEC, f"print('spin')\nwhile True: pass", 0)
    started(worker, "spin")
    worker.interrupt(id)
    frame = worker.wait(id, timeout=GUARD)
    assert frame.kind == P.ERROR and frame.fields[0] == "KeyboardInterrupt"
    assert_in_sync(worker)


def test_a_blocking_sleep_is_interrupted(worker):
    id = worker.request(P.EXEC, f"print('sleep')\nimport time\ntime.sleep(1e9)", 0)
    started(worker, "sleep")
    worker.interrupt(id)
    frame = worker.wait(id, timeout=GUARD)
    assert frame.kind == P.ERROR and frame.fields[0] == "KeyboardInterrupt"
    assert_in_sync(worker)


def test_only_the_named_request_is_interrupted(worker):
    a = worker.request(P.EXEC, f"print('a')\nimport time\ntime.sleep({GUARD})", 0)
    started(worker, "a")
    b = worker.request(P.EVAL, "__import__('time').sleep(0.2) or 'b done'", None, 0)
    c = worker.request(P.EVAL, "'c done'", None, 0)
    worker.interrupt(a)
    assert worker.wait(a, timeout=GUARD).fields[0] == "KeyboardInterrupt"
    assert worker.result(b) == "b done"
    assert worker.result(c) == "c done"


def test_a_queued_request_interrupted_does_not_run(worker):
    a = worker.request(P.EXEC, f"print('a')\nimport time\ntime.sleep(0.3)", 0)
    started(worker, "a")
    b = worker.request(P.EXEC, "b_ran = True", 0)
    worker.interrupt(b)
    assert worker.result(a) is None
    frame = worker.wait(b)
    assert frame.fields[:2] == ["KeyboardInterrupt", f"request {b} was interrupted before it started"]
    with pytest.raises(P.RemoteError) as e:
        worker.eval("b_ran")
    assert e.value.type == "NameError"


def test_an_interrupt_after_the_answer_changes_nothing(worker):
    a = worker.request(P.EVAL, "1", None, 0)
    assert worker.result(a) == 1
    worker.interrupt(a)
    worker.interrupt(987654321)          # never existed
    t0 = time.monotonic()
    assert worker.eval("__import__('time').sleep(0.3) or 2") == 2
    assert time.monotonic() - t0 >= 0.3
    assert_in_sync(worker)


def test_code_that_blocks_sigint_is_not_interrupted(worker):
    # Why the owner kills a worker that does not answer within kill_after.
    id = worker.request(P.EXEC, "import signal, time\nprint('masked')\n"
                        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n"
                        "time.sleep(0.5)\n"
                        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])", 9)
    started(worker, "masked")
    worker.interrupt(id)
    frame = worker.wait(id, timeout=GUARD)
    # Unblocking delivers the pending signal inside the request itself.
    assert frame.kind == P.ERROR and frame.fields[0] == "KeyboardInterrupt"
    assert_in_sync(worker)


def test_malformed_interrupts_are_frame_errors(worker):
    worker.send_frame(P.INTERRUPT, 5, "extra")
    frame = worker.read_frame()
    assert (frame.kind, frame.id, frame.fields[0]) == (P.ERROR, 5, "FrameError")
    worker.send_frame(P.INTERRUPT, 0)
    frame = worker.read_frame()
    assert (frame.kind, frame.id, frame.fields[0]) == (P.ERROR, 0, "FrameError")
    assert_in_sync(worker)


def test_an_interrupt_never_lands_inside_a_module_import(worker):
    """A caller giving up while its request imports the module (here a
    package that, like asyncio, cannot be imported again after a failed
    import) interrupts the request once the import is done: the module
    stays whole for every later request."""
    id = worker.request(P.CALL, "harness_slow_pkg", "value", [], {})
    worker.wait_for_log(lambda level, line: line == "importing harness_slow_pkg")
    worker.interrupt(id)
    frame = worker.wait(id, timeout=GUARD)
    assert frame.kind == P.ERROR and frame.fields[0] == "KeyboardInterrupt"
    again = worker.request(P.CALL, "harness_slow_pkg", "value", [], {})
    assert worker.result(again) == 42
    assert_in_sync(worker)
