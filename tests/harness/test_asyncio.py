"""The worker's event loop seen from its pipes: coroutine requests as tasks,
CANCEL, streams with credit, and what a shutdown does to tasks in flight."""
import time

import pytest

import pyport_proto as P
from pyport_proto import RemoteError
from wire import assert_in_sync


def test_coroutine_function_call_is_answered_with_its_result(worker):
    assert worker.call("harness_async", "double", [21]) == 42
    assert worker.call("harness_async", "returns_coroutine", [5]) == 10
    assert worker.call("harness_async", "returns_future", ["fut"]) == "fut"
    assert worker.call("asyncio", "sleep", [0, "slept"]) == "slept"


def test_coroutine_exception_is_an_error(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("harness_async", "fail", ["bad input"])
    assert e.value.type == "ValueError" and e.value.message == "bad input"
    assert "harness_async.py" in e.value.traceback


def test_eval_of_a_coroutine_runs_it(worker):
    worker.exec("import harness_async")
    assert worker.eval("harness_async.double(x)", {"x": 4}) == 8


def test_a_thousand_coroutines_wait_concurrently(worker):
    # Each call returns only once all 1000 are waiting at the same time.
    ids = [worker.request(P.CALL, "harness_async", "barrier", [1000], {}) for _ in range(1000)]
    assert [worker.result(i) for i in ids] == [1000] * 1000


def test_sync_requests_are_answered_while_tasks_wait(worker):
    waiting = worker.request(P.CALL, "harness_async", "wait_forever", ["w"], {})
    for i in range(20):
        assert worker.call("builtins", "abs", [-i]) == i
    worker.send_frame(P.CANCEL, waiting)
    with pytest.raises(RemoteError) as e:
        worker.result(waiting)
    assert e.value.type == "CancelledError"


def test_cancel_runs_the_coroutines_cleanup(worker):
    ids = [worker.request(P.CALL, "harness_async", "wait_forever", [t], {}) for t in ("a", "b")]
    # A synchronous erlang.sleep(0) lets the loop run once: both start.
    worker.call("erlang", "sleep", [0])
    assert sorted(worker.call("harness_async", "taken_events")) == [["started", "a"], ["started", "b"]]
    worker.send_frame(P.CANCEL, ids[0])
    with pytest.raises(RemoteError) as e:
        worker.result(ids[0])
    assert e.value.type == "CancelledError"
    assert worker.call("harness_async", "taken_events") == [["cancelled", "a"]]
    worker.send_frame(P.CANCEL, ids[1])
    with pytest.raises(RemoteError):
        worker.result(ids[1])


def test_cancel_of_an_unknown_or_finished_request_is_ignored(worker):
    done = worker.request(P.CALL, "harness_async", "double", [1], {})
    assert worker.result(done) == 2
    worker.send_frame(P.CANCEL, done)
    worker.send_frame(P.CANCEL, 987654)
    assert_in_sync(worker)


def test_cancel_needs_an_id(worker):
    worker.send_frame(P.CANCEL, 0)
    frame = worker.read_frame()
    assert (frame.kind, frame.id, frame.fields[0]) == (P.ERROR, 0, "FrameError")
    assert "non-zero Id" in frame.fields[1]


def test_cast_of_a_coroutine_runs_it(worker):
    worker.cast("harness_async", "record_later", ["from cast"])
    for _ in range(200):
        got = worker.call("harness_async", "taken_events")
        if got:
            break
        worker.call("erlang", "sleep", [0.005])
    assert got == [["cast", "from cast"]]


def test_synchronous_erlang_sleep_keeps_serving(worker):
    sleeper = worker.request(P.CALL, "harness_async", "sleep_until_flag", ["go"], {})
    # Answered while the sleeper still sleeps: the worker's loop runs.
    assert worker.call("harness_async", "set_flag", ["go"]) is True
    assert worker.result(sleeper) == "go seen"


def test_sync_code_may_run_its_own_loops(worker):
    worker.exec("import asyncio, erlang, harness_async")
    assert worker.eval("asyncio.run(harness_async.double(3))") == 6
    assert worker.eval("erlang.run(harness_async.double(4))") == 8
    assert worker.call("harness_async", "double", [5]) == 10


# ---------------------------------------------------------------- streams

def test_stream_of_a_generator(worker):
    sid = worker.stream_start("harness_async", "count", [150], credit=16)
    assert worker.stream_collect(sid, credit=16) == list(range(150))


def test_stream_of_an_async_generator_and_of_iterables(worker):
    assert worker.stream_collect(worker.stream_start("harness_async", "acount", [5])) == [0, 1, 2, 3, 4]
    assert worker.stream_collect(worker.stream_start("builtins", "range", [3])) == [0, 1, 2]
    assert worker.stream_collect(worker.stream_start("harness_async", "async_source", [2])) == \
        ["item 0", "item 1"]


def test_stream_eval(worker):
    sid = worker.stream_eval("(x * x for x in range(n))", {"n": 4})
    assert worker.stream_collect(sid) == [0, 1, 4, 9]


def test_stream_error_after_items(worker):
    sid = worker.stream_start("harness_async", "count_then_fail", [3])
    items = [worker.stream_next(sid).fields[0] for _ in range(3)]
    assert items == [0, 1, 2]
    end = worker.stream_next(sid)
    assert end.kind == P.ERROR and end.fields[:2] == ["RuntimeError", "failed after 3"]


def test_stream_of_a_non_iterable_is_a_type_error(worker):
    sid = worker.stream_start("builtins", "abs", [-1])
    end = worker.stream_next(sid)
    assert end.kind == P.ERROR and end.fields[0] == "TypeError"
    assert "iterable" in end.fields[1]


def test_stream_item_that_cannot_convert(worker):
    sid = worker.stream_eval("iter([1, object()])")
    assert worker.stream_next(sid).fields == [1]
    end = worker.stream_next(sid)
    assert end.kind == P.ERROR and end.fields[0] == "TypeError"


def test_stream_waits_for_credit(worker):
    sid = worker.stream_start("harness_async", "tracked", [100], credit=3)
    assert [worker.stream_next(sid).fields[0] for _ in range(3)] == [0, 1, 2]
    # The producer is suspended: at most the item it is holding is made.
    assert worker.call("harness_async", "produced_so_far") == [0, 1, 2, 3]
    worker.send_frame(P.STREAM_CREDIT, sid, 2)
    assert [worker.stream_next(sid).fields[0] for _ in range(2)] == [3, 4]
    assert worker.call("harness_async", "produced_so_far") == [0, 1, 2, 3, 4, 5]


def test_stream_cancel_closes_the_generator(worker):
    sid = worker.stream_start("harness_async", "tracked", [100], credit=2)
    assert [worker.stream_next(sid).fields[0] for _ in range(2)] == [0, 1]
    worker.send_frame(P.CANCEL, sid)
    end = worker.stream_next(sid)
    assert end.kind == P.ERROR and end.fields[0] == "CancelledError"
    assert worker.call("harness_async", "produced_so_far")[-1] == "closed"


@pytest.mark.parametrize("request_fields, message", [
    ([P.CALL, "m", "f", []], "STREAM_START Request must be"),
    ([P.EXEC, "x = 1", 0], "STREAM_START Request must be"),
    ([], "STREAM_START Request is empty"),
])
def test_malformed_stream_start(worker, request_fields, message):
    sid = worker.request(P.STREAM_START, 8, request_fields)
    frame = worker.wait(sid)
    assert frame.kind == P.ERROR and frame.fields[0] == "FrameError"
    assert message in frame.fields[1]
    assert_in_sync(worker)


def test_stream_credit_for_an_ended_stream_is_ignored(worker):
    sid = worker.stream_start("builtins", "range", [1])
    assert worker.stream_collect(sid) == [0]
    worker.send_frame(P.STREAM_CREDIT, sid, 5)
    assert_in_sync(worker)


# ---------------------------------------------------------------- shutdown

def test_shutdown_answers_tasks_in_flight(worker):
    ids = [worker.request(P.CALL, "harness_async", "wait_forever", [i], {}) for i in range(5)]
    sid = worker.stream_start("harness_async", "tracked", [100], credit=1)
    assert worker.stream_next(sid).fields == [0]
    worker.send_frame(P.SHUTDOWN, 0)
    for i in ids:
        with pytest.raises(RemoteError) as e:
            worker.result(i)
        assert e.value.type == "CancelledError"
    assert worker.stream_next(sid).fields[0] == "CancelledError"
    assert worker.wait_exit() == 0


def test_end_of_input_answers_tasks_in_flight(worker):
    ids = [worker.request(P.CALL, "harness_async", "wait_forever", [i], {}) for i in range(3)]
    worker.process.stdin.close()
    for i in ids:
        with pytest.raises(RemoteError) as e:
            worker.result(i)
        assert e.value.type == "CancelledError"
    assert worker.wait_exit() == 0


def test_interrupt_reaches_a_task_step_that_never_returns(worker):
    # Another task waits meanwhile: only the runaway one is interrupted.
    other = worker.request(P.CALL, "harness_async", "wait_forever", ["bystander"], {})
    id = worker.request(P.CALL, "harness_async", "runaway", ["spinning"], {})
    worker.wait_for_log(lambda level, line: line == "spinning")
    time.sleep(0.2)  # well inside its loop
    worker.interrupt(id)
    frame = worker.wait(id, timeout=30)
    assert (frame.kind, frame.fields[0]) == (P.ERROR, "KeyboardInterrupt")
    # The loop goes on: the bystander still waits, and can be cancelled.
    assert worker.call("harness_async", "double", [4]) == 8
    assert not any("reached the worker's event loop" in line for _, line in worker.logs)
    worker.send_frame(P.CANCEL, other)
    with pytest.raises(RemoteError) as e:
        worker.result(other)
    assert e.value.type == "CancelledError"
    assert_in_sync(worker)


def test_interrupt_of_a_task_waiting_on_the_loop_cancels_it(worker):
    id = worker.request(P.CALL, "harness_async", "wait_forever", ["waits"], {})
    worker.call("erlang", "sleep", [0])  # it has started and waits
    worker.interrupt(id)
    frame = worker.wait(id, timeout=30)
    assert (frame.kind, frame.fields[0]) == (P.ERROR, "CancelledError")
    assert_in_sync(worker)
