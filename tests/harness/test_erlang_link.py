"""Python asking Erlang, seen from the worker's pipes (PROTOCOL.md, "Python
asks Erlang"): the harness plays the Erlang side, answering REQUEST frames
with REPLY, delivering MESSAGE frames and following SCHEDULE frames."""
import struct

import pytest

import pyport_proto as P
import wire


def call(worker, function, *args):
    return worker.request(P.CALL, "harness_link", function, list(args), {})


def next_request(worker, op=None):
    frame = worker.read_frame()
    assert frame.kind == P.REQUEST, frame
    if op is not None:
        assert frame.fields[0] == op, frame
    return frame


def reply(worker, request, value):
    worker.send_frame(P.REPLY, request.id, "ok", value)


def reply_error(worker, request, type, message, reason=None):
    worker.send_frame(P.REPLY, request.id, "error", [type, message, reason])


def test_call_sends_a_request_and_returns_the_reply(worker):
    id = call(worker, "call", "add", 1, 2)
    req = next_request(worker, "call")
    assert req.fields[1] == ["add", [1, 2]]
    assert req.id != 0
    reply(worker, req, 3)
    assert worker.result(id) == 3


@pytest.mark.parametrize("type,cls,checks", [
    ("UnknownFunctionError", "UnknownFunctionError", [True, True, False, False]),
    ("ErlangError", "ErlangError", [True, False, False, False]),
    ("TimeoutError", "RpcTimeoutError", [True, False, True, False]),
    ("ConnectionError", "NodeDownError", [True, False, False, True]),
    ("SomethingElse", "ErlangError", [True, False, False, False]),
])
def test_error_replies_raise_the_named_exception_with_the_reason(worker, type, cls, checks):
    id = call(worker, "call_error_type", "f")
    req = next_request(worker, "call")
    reply_error(worker, req, type, "it went wrong", ("error", P.Atom("badarith")))
    got = worker.result(id)
    assert got[:3] == [cls, "it went wrong", ("error", P.Atom("badarith"))]
    assert got[3:] == checks


def test_callback_chain_of_depth_10_reenters_the_worker(worker):
    # chain(n) asks Erlang for 'down'(n - 1); "Erlang" answers by calling
    # chain(n - 1) in the same worker, which the worker handles while the
    # outer call waits: ten levels deep, then everything unwinds.
    top = call(worker, "chain", 10)
    waiting = []  # (REQUEST awaiting its reply, the CALL made to answer it)
    depth = 0
    while True:
        frame = worker.read_frame()
        if frame.kind == P.REQUEST:
            name, args = frame.fields[1]
            assert name == "down"
            waiting.append((frame, call(worker, "chain", *args)))
            depth = max(depth, len(waiting))
        else:
            assert frame.kind == P.RESULT, frame
            if frame.id == top:
                break
            request, made = waiting.pop()
            assert made == frame.id  # innermost first
            reply(worker, request, frame.fields[0])
    assert frame.fields[0] == 10
    assert depth == 10
    wire.assert_in_sync(worker)


def test_threads_waiting_at_once_each_get_their_own_reply(worker):
    n = 8
    id = call(worker, "threads", n)
    requests = [next_request(worker, "call") for _ in range(n)]
    assert len({r.id for r in requests}) == n
    for r in reversed(requests):  # in the opposite order
        _name, [i] = r.fields[1]
        reply(worker, r, i * i)
    assert worker.result(id) == [i * i for i in range(n)]


def test_async_call_does_not_block_the_event_loop(worker):
    n = 5
    id = call(worker, "async_calls", n)
    requests = [next_request(worker, "call") for _ in range(n)]
    for r in requests:
        _name, [i] = r.fields[1]
        reply(worker, r, i * i)
    results, ticks = worker.result(id)
    assert results == [i * i for i in range(n)]
    # All five were in flight at once (read before any reply was sent), so
    # the loop ran while they waited; the ticker proves it kept turning.
    assert ticks >= 1


def test_async_call_raises_the_error_reply(worker):
    id = call(worker, "async_error")
    reply_error(worker, next_request(worker, "call"), "UnknownFunctionError", "no 'missing'")
    assert worker.result(id) == ["UnknownFunctionError", "no 'missing'"]


def test_async_call_on_the_worker_loop_needs_no_thread(worker):
    n = 5
    id = call(worker, "async_calls_on_the_worker_loop", n)
    requests = [next_request(worker, "call") for _ in range(n)]
    # Answered in reverse order: each reply reaches its own waiter.
    for r in reversed(requests):
        _name, [i] = r.fields[1]
        reply(worker, r, i * i)
    results, router = worker.result(id)
    assert results == [i * i for i in range(n)]
    assert router is False


def test_async_call_on_the_worker_loop_raises_the_error_reply(worker):
    id = call(worker, "async_error_on_the_worker_loop")
    reply_error(worker, next_request(worker, "call"), "UnknownFunctionError", "no 'missing'")
    assert worker.result(id) == ["UnknownFunctionError", "no 'missing'"]


def next_cancel(worker, request):
    """The notice that Python gave up on request (Erlang ends what serves it)."""
    frame = worker.read_frame()
    assert (frame.kind, frame.id, frame.fields) == (P.NOTIFY, 0, ["cancel", [request.id]]), frame


def test_a_reply_after_the_worker_loop_waiter_gave_up_is_dropped(worker):
    id = call(worker, "async_call_given_up", "slow")
    r = next_request(worker, "call")
    assert worker.result(id) == "gave up"
    next_cancel(worker, r)
    reply(worker, r, "too late")
    wire.assert_in_sync(worker)


def test_a_reply_nobody_waits_for_is_dropped(worker):
    worker.send_frame(P.REPLY, 987654, "ok", "late")
    worker.send_frame(P.MESSAGE, 987655, "for nobody")
    wire.assert_in_sync(worker)


@pytest.mark.parametrize("frame,what", [
    ([P.REPLY, 5, "ok"], "REPLY frame for id 5 has 3 elements, expected 4"),
    ([P.REPLY, 0, "ok", 1], "its id must not be 0"),
    ([P.MESSAGE, 3], "MESSAGE frame for id 3 has 2 elements, expected 3"),
])
def test_malformed_replies_are_frame_errors(worker, frame, what):
    worker.send_bytes(wire.frame(P.encode(frame)))
    err = wire.expect_error(worker.read_frame(), "FrameError", 0)
    assert what in err.fields[1]
    wire.assert_in_sync(worker)


def test_messages_reach_the_subscribing_mailbox(worker):
    id = call(worker, "subscribe_and_receive", "news", 30)
    req = next_request(worker, "subscribe")
    topic, mailbox = req.fields[1]
    assert topic == "news" and mailbox > 0
    reply(worker, req, None)
    worker.send_frame(P.MESSAGE, mailbox, ("news", {"n": 1}))
    assert worker.result(id) == ("news", {"n": 1})
    # The subscription (the main thread's mailbox) stays: a later call receives too.
    worker.send_frame(P.MESSAGE, mailbox, ("news", 2))
    assert worker.result(call(worker, "receive", 30)) == ("news", 2)
    assert worker.result(call(worker, "receive", 0)) is None


def test_two_threads_each_receive_only_their_own_topic(worker):
    id = call(worker, "two_threads", "a", "b")
    subs = {}
    for _ in range(2):
        req = next_request(worker, "subscribe")
        topic, mailbox = req.fields[1]
        subs[topic] = mailbox
        reply(worker, req, None)
    assert subs["a"] != subs["b"]
    ready = next_request(worker, "call")
    for topic in ("b", "a"):
        worker.send_frame(P.MESSAGE, subs[topic], (topic, f"for {topic}"))
    reply(worker, ready, None)
    assert worker.result(id) == [("a", "for a"), ("b", "for b")]
    # Both threads ended: their subscriptions end with them.
    ends = sorted(worker.read_frame().fields[1][0] for _ in range(2))
    assert ends == sorted(subs.values())


def test_schedule_answers_with_a_schedule_frame(worker):
    id = call(worker, "schedule_erlang", "add", 1, 2)
    frame = worker.read_frame()
    assert (frame.kind, frame.id, frame.fields) == (P.SCHEDULE, id, ["erlang", ["add", [1, 2]]])
    wire.assert_in_sync(worker)


def test_schedule_py_continues_through_the_owner(worker):
    id = call(worker, "schedule_py", 2, 3)
    frame = worker.read_frame()
    assert (frame.kind, frame.id, frame.fields[0]) == (P.SCHEDULE, id, "py")
    continuation = frame.fields[1]
    assert P.decode(continuation)[:2] == [P.CALL, id]
    # The owner writes it back unchanged.
    worker.send_bytes(struct.pack(">I", len(continuation)) + continuation)
    assert worker.result(id) == 5


def test_schedule_inline_lets_waiting_requests_go_first(worker):
    first = worker.new_id()
    second = worker.new_id()
    worker.send_bytes(P.encode_frame(P.CALL, first, "harness_link", "schedule_inline", [2, 3], {})
                      + P.encode_frame(P.EVAL, second, "'second'", None, 0))
    answers = [worker.read_frame() for _ in range(2)]
    assert [(f.kind, f.id) for f in answers] == [(P.RESULT, second), (P.RESULT, first)]
    assert answers[1].fields[0] == 5


def test_consume_time_slice_is_true_only_when_others_wait(worker):
    # Nobody else waits: a used-up slice is no reason to give way.
    assert worker.result(call(worker, "time_slices", 50, 4)) == [False] * 4
    # A request queued behind: the slice is used up every second call.
    first = worker.new_id()
    behind = worker.new_id()
    worker.send_bytes(P.encode_frame(P.CALL, first, "harness_link", "time_slices", [50, 4], {})
                      + P.encode_frame(P.EVAL, behind, "1", None, 0))
    assert worker.result(first) == [False, True, False, True]
    assert worker.result(behind) == 1


def test_time_slice_percent_must_be_1_to_100(worker):
    with pytest.raises(P.RemoteError) as e:
        worker.result(call(worker, "time_slices", 0, 1))
    assert e.value.type == "ValueError"


def test_logging_and_spans_are_notices(worker):
    id = call(worker, "log_and_span")
    notes = [worker.read_frame() for _ in range(3)]
    assert all((f.kind, f.id) == (P.NOTIFY, 0) for f in notes)
    log, inner, outer = notes
    assert log.fields[0] == "log"
    level, message, meta = log.fields[1]
    assert (level, message) == ("warning", "careful now")
    assert meta["logger"] == "harness.logger" and meta["module"] == "harness_link"
    assert inner.fields[0] == outer.fields[0] == "span"
    inner, outer = inner.fields[1][0], outer.fields[1][0]
    assert (inner["name"], outer["name"]) == ("inner", "outer")
    assert inner["parent_id"] == outer["span_id"] and inner["trace_id"] == outer["trace_id"]
    assert outer["parent_id"] is None and outer["attributes"] == {"user": 7}
    assert outer["status"] == "ok" and outer["duration_us"] >= inner["duration_us"]
    assert worker.result(id) is True


def test_end_of_input_while_python_waits_for_erlang(worker):
    call(worker, "call", "never_answered")
    next_request(worker, "call")
    # The owner is gone: no reply can come, the worker must not hang.
    assert worker.close() == 0


def test_waits_beyond_100_levels_leave_requests_for_the_levels_above(worker):
    # Each call asks Erlang for 'echo'; the next call is sent only once the
    # previous one waits, so call k runs k levels deep. At 100 levels (the
    # worker's limit) a waiting call takes no new requests: those wait until
    # the levels above them return.
    limit, extra = 100, 20
    calls = {}  # CALL id -> index
    pending = []  # REQUESTs not answered yet, with their index
    for k in range(limit):
        calls[call(worker, "call", "echo", k)] = k
        req = next_request(worker, "call")
        pending.append(req)
    assert [r.fields[1][1][0] for r in pending] == list(range(limit))
    for k in range(limit, limit + extra):
        calls[call(worker, "call", "echo", k)] = k
    for req in pending:  # every level may now return
        reply(worker, req, req.fields[1][1][0])
    order = []
    while len(order) < limit + extra:
        frame = worker.read_frame()
        if frame.kind == P.REQUEST:
            reply(worker, frame, frame.fields[1][1][0])
        else:
            assert frame.kind == P.RESULT and frame.fields[0] == calls[frame.id]
            order.append(frame.fields[0])
    # The deepest level returned first; the extra calls ran only after it.
    assert order[0] == limit - 1
    assert sorted(order) == list(range(limit + extra))
    wire.assert_in_sync(worker)


def test_end_of_input_while_waits_are_100_levels_deep(worker):
    # The deepest wait takes no requests, so it must learn of the end of
    # input by itself; every level then fails with ConnectionError.
    for k in range(100):
        call(worker, "call", "echo", k)
        next_request(worker, "call")
    assert worker.close() == 0


def test_interrupt_reaches_a_request_waiting_for_erlang(worker):
    id = call(worker, "call", "never_answered")
    req = next_request(worker, "call")
    worker.send_frame(P.INTERRUPT, id)
    frame = worker.wait(id)
    assert (frame.kind, frame.fields[0]) == (P.ERROR, "KeyboardInterrupt")
    next_cancel(worker, req)
    # The reply that comes too late finds nobody and changes nothing.
    reply(worker, req, "too late")
    wire.assert_in_sync(worker)
