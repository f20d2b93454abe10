"""Payloads off the pipe, the worker's side (PROTOCOL.md, "Payloads"): the
worker opens the owner's file and forgets its name, reads a LENT request's
placeholders from the region named, writes big results to an answer
region, and refuses what does not fit the layout it was given."""
import os
import pathlib
import struct
import tempfile

import msgpack
import pytest
import pyport_proto as P
from wire import array, expect_error, frame, raw_call, raw_value

HEADER = 4096
SLOT = 1 << 20
SLOTS = 8
THRESHOLD = 4096
TOKEN = 0x1234_5678_9ABC


def placeholder(form: int, offset: int, length: int) -> bytes:
    return b"\xc7\x11\x07" + bytes([form]) + struct.pack(">QQ", offset, length)


def lent(id: int, token: int, base: int, inner: bytes) -> bytes:
    return frame(array(P.encode(14), P.encode(id), P.encode(token), P.encode(base),
                       msgpack.packb(inner, use_bin_type=True)))


def payload(n: int) -> bytes:
    return (bytes(range(255, -1, -1)) * (n // 256 + 1))[:n]


def open_file(worker, tmp_path, slot: int = SLOT):
    """The owner's part: a private directory, the sparse file, CONTROL."""
    d = tmp_path / "pyport-test"
    d.mkdir(mode=0o700)
    path = d / "payloads"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, HEADER + 2 * SLOTS * slot)
    assert worker.control("payloads", [str(path), TOKEN, slot, SLOTS, SLOTS, THRESHOLD]) is True
    return fd, d, path


def test_the_worker_forgets_the_files_name(worker, tmp_path):
    fd, d, path = open_file(worker, tmp_path)
    assert not path.exists() and not d.exists()
    os.close(fd)


def test_a_lent_request_reads_its_region_and_answers_through_the_file(worker, tmp_path):
    fd, _, _ = open_file(worker, tmp_path)
    data = payload(300_000)
    base = HEADER + 3 * SLOT
    os.pwrite(fd, b"x" * 10 + data, base)
    id = 7001
    worker.send_bytes(lent(id, TOKEN, base,
                           raw_call(id, "harness_worker", "identity", placeholder(1, 10, len(data)))))
    answer = worker.wait(id)
    assert answer.kind == P.RESULT, answer
    ph = answer.fields[0]
    assert isinstance(ph, P.Payload) and ph.length == len(data), ph
    out_lo = HEADER + SLOTS * SLOT
    assert out_lo <= ph.offset and ph.offset + ph.length <= out_lo + SLOTS * SLOT
    assert os.pread(fd, ph.length, ph.offset) == data
    k = (ph.offset - out_lo) // SLOT
    (mark,) = struct.unpack("<Q", os.pread(fd, 8, 64 + 8 * k))
    assert mark != 0, "an answer region in use is marked"
    # Small values stay in the frame.
    assert worker.call("harness_worker", "identity", [payload(100)]) == payload(100)
    os.close(fd)


def test_a_copied_payload_leaves_an_earlier_zero_copy_view_intact(worker, tmp_path):
    # Past the region's warm 2 MiB, the worker gives back the pages of a
    # payload it copied (form 0 always is): only that payload's, not those
    # of a memoryview handed out before it in the same request.
    slot = 4 << 20
    fd, _, _ = open_file(worker, tmp_path, slot)
    warm = 2 << 20
    a, b = payload(300_000), bytes(reversed(payload(700_000)))
    os.pwrite(fd, a + b, HEADER + warm)
    worker.exec("import erlang.payloads\nerlang.payloads.zero_copy(True)")
    try:
        id = 7008
        both = array(placeholder(1, warm, len(a)), placeholder(0, warm + len(a), len(b)))
        worker.send_bytes(lent(id, TOKEN, HEADER, raw_call(id, "builtins", "list", both)))
        answer = worker.wait(id)
    finally:
        worker.exec("import erlang.payloads\nerlang.payloads.zero_copy(False)")
    assert answer.kind == P.RESULT, answer
    got = [os.pread(fd, ph.length, ph.offset) for ph in answer.fields[0]]
    assert got[1] == b
    assert got[0] == a, "the view's bytes were given back while it was in use"
    os.close(fd)


def test_lies_about_regions_are_refused(worker, tmp_path):
    fd, _, _ = open_file(worker, tmp_path)
    call = raw_call(7002, "harness_worker", "identity", placeholder(1, 0, 10))
    worker.send_bytes(lent(7002, TOKEN + 1, HEADER, call))
    assert "another payload file" in expect_error(worker.wait(7002), "PayloadError", 7002).fields[1]
    call = raw_call(7003, "harness_worker", "identity", placeholder(1, 0, 10))
    worker.send_bytes(lent(7003, TOKEN, HEADER + 5, call))
    expect_error(worker.wait(7003), "PayloadError", 7003)
    call = raw_call(7004, "harness_worker", "identity", placeholder(1, 0, 10))
    worker.send_bytes(lent(7004, TOKEN, HEADER + SLOTS * SLOT, call))  # an answer region
    expect_error(worker.wait(7004), "PayloadError", 7004)
    call = raw_call(7005, "harness_worker", "identity", placeholder(1, SLOT - 5, 10))
    worker.send_bytes(lent(7005, TOKEN, HEADER, call))
    assert "past its region" in expect_error(worker.wait(7005), "FrameError", 7005).fields[1]
    # A placeholder outside a LENT frame.
    worker.send_bytes(frame(raw_call(7006, "harness_worker", "identity", placeholder(1, 0, 10))))
    assert "outside a LENT" in expect_error(worker.wait(7006), "FrameError", 7006).fields[1]
    os.close(fd)


def test_lent_without_a_file_is_refused(worker):
    call = raw_call(7007, "harness_worker", "identity", placeholder(1, 0, 10))
    worker.send_bytes(lent(7007, TOKEN, HEADER, call))
    assert "no payload file" in expect_error(worker.wait(7007), "PayloadError", 7007).fields[1]
    assert worker.call("harness_worker", "identity", [1]) == 1


def test_a_file_that_is_not_one_is_refused(worker, tmp_path):
    link = tmp_path / "link"
    target = tmp_path / "target"
    target.write_bytes(b"")
    link.symlink_to(target)
    reply = worker.request(P.CONTROL, "payloads", [str(link), TOKEN, SLOT, SLOTS, SLOTS, THRESHOLD])
    expect_error(worker.wait(reply), "OSError", reply)
    small = tmp_path / "small"
    small.write_bytes(b"\0" * HEADER)
    reply = worker.request(P.CONTROL, "payloads", [str(small), TOKEN, SLOT, SLOTS, SLOTS, THRESHOLD])
    assert "is not a payload file" in expect_error(worker.wait(reply), "OSError", reply).fields[1]


def marks(fd) -> list[int]:
    return list(struct.unpack(f"<{SLOTS}Q", os.pread(fd, 8 * SLOTS, 64)))


def test_a_file_the_node_shrank_is_an_error_not_a_crash(worker, tmp_path):
    # The worker copies small payloads through a mapping of the region:
    # a mapped page past the end of the file would be SIGBUS. The node
    # never shrinks the file; if it did, the request is an error and the
    # worker goes on.
    fd, _, _ = open_file(worker, tmp_path)
    data = payload(300_000)
    base = HEADER + 3 * SLOT
    os.pwrite(fd, data, base)
    worker.send_bytes(lent(7010, TOKEN, base,
                           raw_call(7010, "harness_worker", "identity", placeholder(1, 0, len(data)))))
    first = worker.wait(7010)
    assert first.kind == P.RESULT and os.pread(fd, len(data), first.fields[0].offset) == data
    os.ftruncate(fd, HEADER)
    worker.send_bytes(lent(7011, TOKEN, base,
                           raw_call(7011, "harness_worker", "identity", placeholder(1, 0, len(data)))))
    assert "past the end" in expect_error(worker.wait(7011), "FrameError", 7011).fields[1]
    # An answer after the shrink: written with pwrite, not through the mapping.
    answer = worker.wait(worker.request(P.CALL, "harness_worker", "identity", [data], {}))
    assert answer.kind == P.RESULT, answer
    ph = answer.fields[0]
    got = os.pread(fd, ph.length, ph.offset) if isinstance(ph, P.Payload) else ph
    assert got == data
    assert worker.call("harness_worker", "identity", [1]) == 1
    os.close(fd)


def test_a_hole_in_a_region_reads_as_zeros(worker):
    # A placeholder naming bytes the node never wrote: zeros, as pread
    # gives, and no page allocated by a fault (mincore, then pread): the
    # file's allocated blocks stay as they were. On tmpfs, as the owner
    # makes it (a disk filesystem maps a hole's read fault to no block).
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        fd, _, _ = open_file(worker, pathlib.Path(shm))
        try:
            base = HEADER + 6 * SLOT
            blocks = os.fstat(fd).st_blocks
            worker.send_bytes(lent(7012, TOKEN, base,
                                   raw_call(7012, "builtins", "len", placeholder(1, 4096, 300_000))))
            answer = worker.wait(7012)
            assert answer.kind == P.RESULT and answer.fields[0] == 300_000, answer
            worker.send_bytes(lent(7013, TOKEN, base,
                                   raw_call(7013, "builtins", "sum", placeholder(1, 4096, 300_000))))
            assert worker.wait(7013).fields[0] == 0
            assert os.fstat(fd).st_blocks == blocks, "reading the hole allocated pages"
        finally:
            os.close(fd)


def in_a_small_tmpfs(tmp_path, size: str) -> tuple[str, str]:
    """A wrapper that starts the worker in a mount namespace of its own
    with a tmpfs of `size` at a fresh directory; (wrapper, directory)."""
    import shutil
    import subprocess
    mnt = tmp_path / "small-tmpfs"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {mnt}"],
                           capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("no unshare -rm with a tmpfs mount here")
    real = P.locate_worker()
    wrapper = tmp_path / "worker-in-small-tmpfs"
    wrapper.write_text("#!/bin/sh\n"
                       f"exec unshare -rm sh -c 'mount -t tmpfs -o size={size} tmpfs {mnt} && "
                       f"exec {real} \"$@\"' sh \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper), str(mnt)


def test_a_full_tmpfs_sends_the_answer_in_the_frame(spawn, tmp_path):
    # Writing a hole of a mapping on a full tmpfs is SIGBUS: the worker
    # allocates the answer's pages first (fallocate), and a full tmpfs
    # makes that an error, the value then going in the frame; the answer
    # region it took is not left marked.
    wrapper, mnt = in_a_small_tmpfs(tmp_path, "2m")
    worker = spawn(executable=wrapper)
    seen = f"/proc/{worker.pid}/root{mnt}"
    d = os.path.join(seen, "pyport-test")
    os.mkdir(d, 0o700)
    path = os.path.join(d, "payloads")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, HEADER + 2 * SLOTS * SLOT)
    assert worker.control("payloads", [f"{mnt}/pyport-test/payloads", TOKEN, SLOT, SLOTS, SLOTS,
                                       THRESHOLD]) is True
    data = payload(300_000)
    os.pwrite(fd, data, HEADER)
    filler = os.open(os.path.join(seen, "filler"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            for _ in range(64):
                os.write(filler, b"\0" * 65536)
        worker.send_bytes(lent(7014, TOKEN, HEADER,
                               raw_call(7014, "harness_worker", "identity", placeholder(1, 0, len(data)))))
        answer = worker.wait(7014)
        assert answer.kind == P.RESULT and answer.fields[0] == data, answer
        assert marks(fd) == [0] * SLOTS
        # Room again: answers go through the file.
        os.close(filler)
        filler = -1
        os.unlink(os.path.join(seen, "filler"))
        answer = worker.wait(worker.request(P.CALL, "harness_worker", "identity", [data], {}))
        ph = answer.fields[0]
        assert isinstance(ph, P.Payload) and os.pread(fd, ph.length, ph.offset) == data
    finally:
        if filler >= 0:
            os.close(filler)
    os.close(fd)
