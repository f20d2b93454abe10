"""BATCH frames: several frames in one, each handled as if it had come on
its own (the owner sends requests that arrive together this way)."""
import time

import msgpack

import pyport_proto as P
from wire import array, assert_in_sync, expect_error, frame


def payload(kind, id, *fields):
    return P.encode([kind, id, *fields])


def batch(*payloads):
    return frame(array(P.encode(P.BATCH), P.encode(0), array(*(P.encode(p) for p in payloads))))


def test_the_frames_of_a_batch_are_handled_in_order(worker):
    ids = [worker.new_id() for _ in range(4)]
    worker.send_bytes(batch(payload(P.CALL, ids[0], "builtins", "abs", [-1], {}),
                            payload(P.EXEC, ids[1], "seen = [1]", 0),
                            payload(P.EVAL, ids[2], "seen + [2]", None, 0),
                            payload(P.CAST, ids[3], "builtins", "print", ["cast in a batch"], {})))
    assert worker.result(ids[0]) == 1
    assert worker.result(ids[1]) is None
    assert worker.result(ids[2]) == [1, 2]
    worker.wait_for_log(lambda level, line: line == "cast in a batch")
    assert_in_sync(worker)


def test_a_batch_of_one_and_a_batch_of_none(worker):
    worker.send_bytes(batch())
    id = worker.new_id()
    worker.send_bytes(batch(payload(P.EVAL, id, "6 * 7", None, 0)))
    assert worker.result(id) == 42
    assert_in_sync(worker)


def test_an_interrupt_in_a_batch_reaches_the_running_request(worker):
    # INTERRUPT and the requests around it are routed one by one: the
    # interrupt acts at once on the request that runs, the EVAL after it runs.
    a = worker.request(P.EXEC, "print('a')\nimport time\ntime.sleep(60)", 0)
    worker.wait_for_log(lambda level, line: line == "a")
    b = worker.new_id()
    worker.send_bytes(batch(payload(P.INTERRUPT, a), payload(P.EVAL, b, "'b'", None, 0)))
    assert worker.wait(a, timeout=30).fields[0] == "KeyboardInterrupt"
    assert worker.result(b) == "b"


def test_coroutine_requests_and_cancel_in_one_batch(worker):
    ids = [worker.new_id() for _ in range(3)]
    worker.send_bytes(batch(payload(P.CALL, ids[0], "harness_async", "double", [1], {}),
                            payload(P.CALL, ids[1], "harness_async", "wait_forever", ["x"], {}),
                            payload(P.CANCEL, ids[1]),
                            payload(P.CALL, ids[2], "harness_async", "double", [2], {})))
    assert worker.result(ids[0]) == 2
    frame_ = worker.wait(ids[1])
    assert (frame_.kind, frame_.fields[0]) == (P.ERROR, "CancelledError")
    assert worker.result(ids[2]) == 4


def test_a_bad_frame_inside_a_batch_is_answered_like_one_on_its_own(worker):
    id = worker.new_id()
    worker.send_bytes(batch(payload(P.CALL, id, "builtins", "abs"),  # too few fields
                            payload(P.EVAL, id + 1, "1", None, 0)))
    expect_error(worker.read_frame(), "FrameError", id)
    assert worker.result(id + 1) == 1


def test_malformed_batches_are_frame_errors(worker):
    inner = payload(P.EVAL, 99, "'never'", None, 0)
    bad = [
        frame(array(P.encode(P.BATCH), P.encode(0), P.encode([1, 2]))),       # not bins
        frame(array(P.encode(P.BATCH), P.encode(7), array(P.encode(inner)))),  # id not 0
        frame(array(P.encode(P.BATCH), P.encode(0))),                          # no Frames
        batch(msgpack.packb([P.BATCH, 0, []]), inner),                         # nested
        frame(array(P.encode(P.BATCH), P.encode(0), array(P.encode(inner)), P.encode(1))),
    ]
    for raw in bad:
        worker.send_bytes(raw)
        got = expect_error(worker.read_frame(), "FrameError", 0)
        assert "BATCH" in got.fields[1]
    # Nothing of a malformed batch ran.
    assert_in_sync(worker)
