"""tools/pyport_proto.py against proto/vectors: the third codec must match
the shared vectors byte for byte, in the directions vectors.py gives."""
import os

import pytest

import pyport_proto
from conftest import VECTORS_DIR
from harness_worker import same
from vectors import VECTORS


def vector_bytes(name):
    with open(os.path.join(VECTORS_DIR, name + ".msgpack"), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name,direction,value", VECTORS, ids=[v[0] for v in VECTORS])
def test_vector(name, direction, value):
    data = vector_bytes(name)
    if direction in ("both", "encode"):
        assert pyport_proto.encode(value) == data
    if direction in ("both", "decode"):
        decoded = pyport_proto.decode(data)
        assert same(decoded, value), f"decoded {decoded!r}"


def test_every_vector_file_is_listed():
    files = {f[:-len(".msgpack")] for f in os.listdir(VECTORS_DIR) if f.endswith(".msgpack")}
    listed = {name for name, _, _ in VECTORS}
    # nil_nil and nil_undefined are Erlang-only encodings of nil.
    assert files - listed == {"nil_nil", "nil_undefined"}
    assert listed <= files


def test_pid_and_ref_classes():
    values = dict((name, value) for name, _, value in VECTORS)
    assert type(pyport_proto.decode(vector_bytes("pid"))) is pyport_proto.Pid
    assert type(pyport_proto.decode(vector_bytes("ref"))) is pyport_proto.Ref
    assert pyport_proto.decode(vector_bytes("pid")) == values["pid"]


def test_other_term_decodes_as_term():
    port_etf = bytes([131, 89, 100, 0, 9]) + b"vecgen@vm" + bytes(8)
    data = pyport_proto.encode(pyport_proto.Term(port_etf))
    value = pyport_proto.decode(data)
    assert type(value) is pyport_proto.Term and value.etf == port_etf


@pytest.mark.parametrize("data,problem", [
    (b"\xd4\x09\x00", "unknown ext type 9"),
    (b"\xd5\x03\x02\x01", "malformed bigint"),
    (b"\xd5\x05\x00\x01", "not external term format"),
    (b"\xd4\x02\x01", "tuple ext payload is not an array"),
])
def test_decoder_refuses_bad_ext(data, problem):
    with pytest.raises(ValueError, match=problem):
        pyport_proto.decode(data)


def test_decoder_accepts_non_shortest_forms():
    assert pyport_proto.decode(b"\xcf" + (5).to_bytes(8, "big")) == 5
    assert pyport_proto.decode(b"\xd9\x02ok") == "ok"
    assert pyport_proto.decode(b"\xc7\x02\x01ok") == pyport_proto.Atom("ok")
    assert pyport_proto.decode(b"\xc7\x03\x03\x00\x00\x07") == 7
    assert pyport_proto.decode(b"\x82\x02\xa1b\x01\xa1a") == {1: "a", 2: "b"}


def test_bin_is_str_when_utf8_at_any_depth():
    data = pyport_proto.encode({b"k": [b"\xff", (b"ok",)]})
    assert same(pyport_proto.decode(data), {"k": [b"\xff", ("ok",)]})


def test_encoder_names_unconvertible_type():
    with pytest.raises(TypeError, match="cannot convert object to an Erlang term"):
        pyport_proto.encode([object()])


def test_encoder_subclasses_take_their_base_form():
    import collections
    import enum

    class Color(enum.IntEnum):
        RED = 1
    Point = collections.namedtuple("Point", "x y")
    assert pyport_proto.encode(Color.RED) == b"\x01"
    assert pyport_proto.encode(Point(1, 2)) == pyport_proto.encode((1, 2))
    assert pyport_proto.encode(collections.OrderedDict(a=1)) == pyport_proto.encode({"a": 1})
    assert pyport_proto.encode(memoryview(b"ab")) == b"\xc4\x02ab"


def test_frame_encoding():
    frame = pyport_proto.encode_frame(pyport_proto.CALL, 7, "m", "f", [], {})
    assert frame == b"\x00\x00\x00\x09\x96\x01\x07\xa1m\xa1f\x90\x80"
