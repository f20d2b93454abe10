"""max_frame_size: frames over the limit in either direction."""
import pyport_proto as P
from wire import assert_in_sync, expect_error, frame

MAX = 4096


def identity_payload(id, text):
    return P.encode([P.CALL, id, "harness_worker", "identity", [text], {}])


def sized_identity_payload(id, size):
    """An identity CALL payload of exactly ``size`` bytes."""
    text = ""
    while len(identity_payload(id, text)) < size:
        text += "a" * max(1, size - len(identity_payload(id, text)))
    payload = identity_payload(id, text)
    while len(payload) > size:  # a str header grew: trim back
        text = text[:-1]
        payload = identity_payload(id, text)
    assert len(payload) == size
    return payload


def test_oversized_request_is_refused_for_its_id(spawn):
    worker = spawn(max_frame_size=MAX)
    worker.send_bytes(frame(identity_payload(11, "b" * 1_000_000)))
    error = expect_error(worker.read_frame(), "FrameTooLarge", 11)
    assert str(MAX) in error.fields[1], "the message should name the limit"
    assert_in_sync(worker)


def test_frame_of_exactly_the_maximum_is_taken(spawn):
    worker = spawn(max_frame_size=MAX)
    worker.send_bytes(frame(sized_identity_payload(12, MAX)))
    f = worker.read_frame()
    assert (f.kind, f.id) == (P.RESULT, 12)
    worker.send_bytes(frame(sized_identity_payload(13, MAX + 1)))
    expect_error(worker.read_frame(), "FrameTooLarge", 13)
    assert_in_sync(worker)


def test_oversized_frame_without_a_readable_id_gets_id_0(spawn):
    worker = spawn(max_frame_size=MAX)
    worker.send_bytes(frame(b"\xc1" * 100_000))
    expect_error(worker.read_frame(), "FrameTooLarge", 0)
    assert_in_sync(worker)


def test_oversized_frames_back_to_back(spawn):
    worker = spawn(max_frame_size=MAX)
    worker.send_bytes(b"".join(frame(identity_payload(20 + i, "c" * (MAX * (i + 1)))) for i in range(5)))
    for i in range(5):
        expect_error(worker.read_frame(), "FrameTooLarge", 20 + i)
    assert_in_sync(worker)


def test_oversized_frame_is_not_buffered(spawn):
    # 256 MiB at a worker allowing 4 KiB: it must discard as it reads.
    worker = spawn(max_frame_size=MAX)
    size = 256 << 20
    head = identity_payload(30, "")[:-4]
    chunk = b"\0" * (1 << 20)
    worker.send_bytes(len(head + b"x" * (size - len(head))).to_bytes(4, "big") + head)
    left = size - len(head)
    while left:
        worker.send_bytes(chunk[:min(left, len(chunk))])
        left -= min(left, len(chunk))
    expect_error(worker.read_frame(), "FrameTooLarge", 30)
    with open(f"/proc/{worker.pid}/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    assert peak_kb < 128 * 1024, f"worker peaked at {peak_kb} kB while skipping a 256 MiB frame"
    assert_in_sync(worker)


def test_oversized_result_is_refused(spawn):
    worker = spawn(max_frame_size=MAX)
    id = worker.request(P.CALL, "harness_worker", "big_string", [MAX * 3], {})
    error = expect_error(worker.wait(id), "FrameTooLarge", id)
    assert str(MAX) in error.fields[1]
    assert worker.call("harness_worker", "big_string", [10]) == "z" * 10
    assert_in_sync(worker)


def test_oversized_error_is_refused_too(spawn):
    # An exception whose message alone is bigger than a frame.
    worker = spawn(max_frame_size=MAX)
    id = worker.request(P.CALL, "harness_worker", "raise_value_error", ["m" * (MAX * 2)], {})
    f = worker.wait(id)
    assert f.kind == P.ERROR and len(f.raw) <= MAX
    assert_in_sync(worker)


def test_log_lines_respect_a_small_max_frame_size(spawn):
    # Every frame the worker writes, LOG included, fits its own limit (the
    # client checks each frame against the HELLO's max_frame_size).
    worker = spawn(max_frame_size=MAX)
    make_line = f"''.join(chr(97 + i % 26) for i in range({MAX * 3}))"
    line = eval(make_line)
    worker.exec(f"print({make_line})")  # the line itself is too big for a request
    worker.call("builtins", "print", ["after the long line"])
    worker.wait_for_log(lambda level, msg: msg == "after the long line")
    pieces = [msg for level, msg in worker.logs if msg != "after the long line"]
    assert "".join(pieces) == line
    assert len(pieces) > 1
