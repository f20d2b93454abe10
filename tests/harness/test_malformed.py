"""Frames that are not valid requests: each gets one ERROR FrameError (for
its id when the id can be read, else id 0) and the stream stays in sync."""
import random

import pytest

import pyport_proto as P
from pyport_proto import encode
from wire import assert_in_sync, expect_error, frame, raw_call

CALL, NIL = encode(P.CALL), encode(None)


def deep(n, leaf=b"\xc0"):
    return b"\x91" * (n - 1) + leaf


def deep_tuple(n):
    v = b"\x90"
    for _ in range(n - 1):
        v = encode_ext(2, b"\x91" + v)
    return v


def encode_ext(code, payload):
    """Any ext type, also the negative ones msgpack reserves."""
    fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
    n = len(payload)
    if n in fixed:
        head = bytes([fixed[n]])
    else:
        head = b"\xc7" + n.to_bytes(1, "big") if n < 256 else b"\xc8" + n.to_bytes(2, "big")
    return head + (code & 0xff).to_bytes(1, "big") + payload


# (case id, payload, id the answer must carry)
CASES = [
    # Not an array, or no usable [Kind, Id].
    ("map", encode({"kind": 1}), 0),
    ("int", encode(5), 0),
    ("str", encode("hello"), 0),
    ("nil", NIL, 0),
    ("empty array", encode([]), 0),
    ("kind only", encode([1]), 0),
    ("empty payload", b"", 0),
    ("reserved byte c1", b"\xc1", 0),
    ("id is a string", encode([1, "x", "m", "f", [], {}]), 0),
    ("id is negative", encode([1, -5, "m", "f", [], {}]), 0),
    ("id is a float", encode([1, 5.0, "m", "f", [], {}]), 0),
    ("id beyond 64 bits", encode([1, 1 << 64, "m", "f", [], {}]), 0),
    # Readable id, bad kind.
    ("unknown kind 99", encode([99, 21]), 21),
    ("unknown kind 200", encode([200, 22, "m"]), 22),
    ("worker-to-owner kind RESULT", encode([P.RESULT, 23, 1]), 23),
    ("worker-to-owner kind HELLO", encode([P.HELLO, 24, 1, "3.11", 1, {}]), 24),
    ("kind is a string", encode(["call", 25, "m", "f", [], {}]), 25),
    ("kind is negative", encode([-1, 26]), 26),
    # Wrong field types.
    ("call module is an int", encode([P.CALL, 31, 5, "f", [], {}]), 31),
    ("call function is nil", encode([P.CALL, 32, "math", None, [], {}]), 32),
    ("call args is a map", encode([P.CALL, 33, "math", "sqrt", {}, {}]), 33),
    ("call kwargs is an array", encode([P.CALL, 34, "math", "sqrt", [4], []]), 34),
    ("call kwargs has int keys", encode([P.CALL, 35, "math", "sqrt", [4], {1: 2}]), 35),
    ("eval code is an int", encode([P.EVAL, 36, 5, None, 0]), 36),
    ("eval locals is an array", encode([P.EVAL, 37, "1", [], 0]), 37),
    ("eval namespace is a string", encode([P.EVAL, 38, "1", None, "ns"]), 38),
    ("eval namespace is negative", encode([P.EVAL, 39, "1", None, -1]), 39),
    ("exec namespace is nil", encode([P.EXEC, 40, "x = 1", None]), 40),
    # Missing and extra fields.
    ("call without kwargs", encode([P.CALL, 41, "math", "sqrt", [4]]), 41),
    ("call without anything", encode([P.CALL, 42]), 42),
    ("eval without namespace", encode([P.EVAL, 43, "1", None]), 43),
    ("exec without code", encode([P.EXEC, 44]), 44),
    ("call with an extra field", encode([P.CALL, 45, "math", "sqrt", [4], {}, "extra"]), 45),
    # Undecodable values after a readable id.
    ("truncated array", encode([P.CALL, 51, "math", "sqrt", [4], {}])[:-3], 51),
    ("truncated str", b"\x96" + CALL + encode(52) + b"\xa5ab", 52),
    ("str claims 4 GiB", b"\x96" + CALL + encode(53) + b"\xdb\xff\xff\xff\xffab", 53),
    ("array claims 4G items", raw_call(54, "m", "f")[:-2] + b"\xdd\xff\xff\xff\xff\x01", 54),
    ("map claims 4G pairs", raw_call(55, "m", "f")[:-1] + b"\xdf\xff\xff\xff\xff", 55),
    ("reserved byte in args", raw_call(56, "harness_worker", "identity", b"\xc1"), 56),
    ("trailing bytes", encode([P.CALL, 57, "math", "sqrt", [4], {}]) + b"\xc0", 57),
    ("unknown ext 9", raw_call(59, "harness_worker", "identity", encode_ext(9, b"x")), 59),
    ("negative ext -1", raw_call(60, "harness_worker", "identity", encode_ext(-1, b"\0\0\0\0")), 60),
    ("atom ext not UTF-8", raw_call(61, "harness_worker", "identity", encode_ext(1, b"\xff")), 61),
    ("tuple ext not an array", raw_call(62, "harness_worker", "identity", encode_ext(2, b"\x01")), 62),
    ("tuple ext trailing bytes", raw_call(63, "harness_worker", "identity", encode_ext(2, b"\x90\x90")), 63),
    ("tuple ext truncated", raw_call(64, "harness_worker", "identity", encode_ext(2, b"\x92\x01")), 64),
    ("bigint ext bad sign", raw_call(65, "harness_worker", "identity", encode_ext(3, b"\x02\x01")), 65),
    ("bigint ext empty", raw_call(66, "harness_worker", "identity", encode_ext(3, b"")), 66),
    ("term ext not ETF", raw_call(67, "harness_worker", "identity", encode_ext(5, b"\x00\x01")), 67),
    ("term ext empty", raw_call(68, "harness_worker", "identity", encode_ext(5, b"")), 68),
    ("args nested 600 deep", raw_call(69, "harness_worker", "identity", deep(600)), 69),
    ("tuples nested 600 deep", raw_call(70, "harness_worker", "identity", deep_tuple(600)), 70),
    ("map key nested 600 deep", raw_call(71, "harness_worker", "identity", b"\x81" + deep(600) + b"\x01"), 71),
]


@pytest.mark.parametrize("payload,id", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_frame(worker, payload, id):
    worker.send_bytes(frame(payload))
    expect_error(worker.read_frame(), "FrameError", id)
    assert_in_sync(worker)


def test_bad_frames_back_to_back(worker):
    # All the bad frames in one write, then a good one: one answer each, in order.
    worker.send_bytes(b"".join(frame(payload) for _, payload, _ in CASES))
    for name, _, id in CASES:
        frame_ = worker.read_frame()
        assert frame_.kind == P.ERROR and frame_.fields[0] == "FrameError", (name, frame_)
        assert frame_.id == id, (name, frame_)
    assert_in_sync(worker)


REQUEST_KINDS = (P.CALL, P.CAST, P.EVAL, P.EXEC, P.INTERRUPT, P.CONTROL, P.SHUTDOWN)
# Kinds that answer nothing (or stop the worker): a mutated frame that
# turns into one of these is left out.
SILENT_KINDS = (P.CAST, P.INTERRUPT, P.SHUTDOWN)


def test_mutated_requests(worker):
    # Valid requests with random bytes changed, a fake owner sending them
    # back to back: one answer each (an error naming the problem, or a
    # result when the mutation left a valid request), in order, no crash.
    rng = random.Random(20251122)
    bases = [P.encode_frame(P.CALL, 7, "harness_worker", "identity", [[1, "two", {"three": 3.0}]], {})[4:],
             P.encode_frame(P.EVAL, 8, "x + 1", {"x": 41}, 0)[4:],
             P.encode_frame(P.EXEC, 9, "y = [1, 2]", 3)[4:],
             P.encode_frame(P.CONTROL, 10, "gc", None)[4:]]
    payloads = []
    while len(payloads) < 400:
        payload = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        try:
            value = P.decode(bytes(payload))
        except Exception:
            value = None
        if isinstance(value, list) and value and value[0] in SILENT_KINDS:
            continue
        payloads.append(bytes(payload))
    worker.send_bytes(b"".join(frame(p) for p in payloads))
    for payload in payloads:
        f = worker.read_frame()
        assert f.kind in (P.RESULT, P.ERROR), (payload, f)
        if f.kind == P.ERROR:
            assert f.fields[0] and f.fields[1], (payload, f)
    assert_in_sync(worker)


def test_random_garbage(worker):
    rng = random.Random(20240601)  # fixed: a failure can be replayed
    payloads = []
    for _ in range(200):
        payload = rng.randbytes(rng.randint(1, 300))
        try:
            value = P.decode(payload)
        except Exception:
            value = None
        # Keep only payloads that cannot be a valid request by accident.
        if not (isinstance(value, list) and len(value) >= 2 and value[0] in REQUEST_KINDS):
            payloads.append(payload)
    worker.send_bytes(b"".join(frame(p) for p in payloads))
    for _ in payloads:
        f = worker.read_frame()
        assert f.kind == P.ERROR and f.fields[0] == "FrameError", f
    assert_in_sync(worker)


def test_shallow_nesting_is_fine(worker):
    from harness_worker import nested_list
    id = 80
    worker.send_bytes(frame(raw_call(id, "harness_worker", "identity", deep(100, b"\x90"))))
    f = worker.read_frame()
    assert (f.kind, f.id) == (P.RESULT, id) and f.fields[0] == nested_list(100)
