"""Raw frame building and checks shared by the harness tests."""
import struct

import msgpack

import pyport_proto as P


def frame(payload: bytes) -> bytes:
    """A length prefix for any payload, valid or not."""
    return struct.pack(">I", len(payload)) + payload


def array(*raw_items: bytes) -> bytes:
    """A msgpack array of already-encoded items (which may be bad ones)."""
    n = len(raw_items)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
    return head + b"".join(raw_items)


def raw_call(id: int, module: str, function: str, *raw_args: bytes, raw_kwargs: bytes = b"\x80") -> bytes:
    """A CALL payload whose arguments are spliced in as raw msgpack."""
    return array(P.encode(P.CALL), P.encode(id), P.encode(module), P.encode(function),
                 array(*raw_args), raw_kwargs)


def raw_value(frame: P.Frame) -> bytes:
    """The exact bytes of a RESULT's value, as the worker encoded it."""
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(frame.raw)
    assert unpacker.read_array_header() == 3
    unpacker.unpack()  # kind
    unpacker.unpack()  # id
    return frame.raw[unpacker.tell():]


def expect_error(frame: P.Frame, type: str, id: int) -> P.Frame:
    assert (frame.kind, frame.id, frame.fields[0]) == (P.ERROR, id, type), frame
    assert frame.fields[1], "an ERROR must name the problem"
    return frame


def assert_in_sync(worker: P.Worker) -> None:
    """A normal call on the worker gets its own answer next: the stream is
    in sync and nothing else is pending."""
    marker = ["still", "alive", worker.pid]
    id = worker.request(P.CALL, "harness_worker", "identity", [marker], {})
    frame = worker.read_frame()
    assert (frame.kind, frame.id) == (P.RESULT, id), frame
    assert frame.fields[0] == marker
