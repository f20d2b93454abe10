"""The term mapping through a real worker: every shared vector in and out,
byte for byte where vectors.py says so, and identity round trips."""
import os

import pytest

import pyport_proto as P
from conftest import VECTORS_DIR
from harness_worker import same
from pyport_proto import Atom, Pid, Ref, Term
from vectors import VECTORS
from wire import array, frame, raw_call, raw_value


def vectors(*directions):
    chosen = [v for v in VECTORS if v[1] in directions]
    return pytest.mark.parametrize("name,direction,value", chosen, ids=[v[0] for v in chosen])


def vector_bytes(name):
    with open(os.path.join(VECTORS_DIR, name + ".msgpack"), "rb") as f:
        return f.read()


@vectors("both", "decode")
def test_worker_decodes_vector(worker, name, direction, value):
    worker.send_bytes(frame(raw_call(1, "harness_worker", "check_vector", P.encode(name), vector_bytes(name))))
    ok, got = P.value_of(worker.read_frame())
    assert ok, f"worker decoded {name} as {got}"


@vectors("both", "encode")
def test_worker_encodes_vector(worker, name, direction, value):
    id = worker.request(P.CALL, "harness_worker", "vector_value", [name], {})
    f = worker.wait(id)
    assert f.kind == P.RESULT, f
    assert raw_value(f) == vector_bytes(name)


@vectors("both")
def test_identity_round_trip(worker, name, direction, value):
    back = worker.call("harness_worker", "identity", [value])
    assert same(back, value), f"sent {value!r}, got back {back!r}"


ROUND_TRIPS = [
    {Atom("k"): (Atom("v"), [Pid(dict((n, v) for n, _, v in VECTORS)["pid"].etf)])},
    [Atom("ok"), "ok", b"\xff", ("ok",)],
    (1 << 64, -(1 << 63) - 1, (1 << 63) - 1, -(1 << 63), 1 << 1000, -(1 << 1000)),
    {1: 2.5, "s": None, Atom("a"): True, (1, 2): False},
    "é" * 1000,
    b"\xff" * 100_000,
    list(range(70_000)),
    {str(i): i for i in range(70_000)},
    Term(bytes([131, 89, 100, 0, 9]) + b"vecgen@vm" + bytes(8)),
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=range(len(ROUND_TRIPS)))
def test_more_round_trips(worker, value):
    back = worker.call("harness_worker", "identity", [value])
    assert same(back, value)


def test_bytes_arrive_as_bytes_and_come_back_as_binary(worker):
    # ext 4 ({bytes, Bin} from Erlang) is bytes inside the worker.
    ext4 = b"\xd5\x04\x00\x01"
    locals_ = b"\x81" + P.encode("b") + ext4
    worker.send_bytes(frame(array(P.encode(P.EVAL), P.encode(5), P.encode("type(b).__name__"), locals_,
                                  P.encode(0))))
    assert P.value_of(worker.read_frame()) == "bytes"
    worker.send_bytes(frame(raw_call(6, "harness_worker", "check_vector", P.encode("bytes_marked"), ext4)))
    assert P.value_of(worker.read_frame())[0] is True
    worker.send_bytes(frame(raw_call(7, "harness_worker", "identity", ext4)))
    assert raw_value(worker.read_frame()) == b"\xc4\x02\x00\x01"


def test_python_types_with_no_erlang_twin(worker):
    assert worker.eval("{3}") == [3]
    assert worker.eval("frozenset()") == []
    assert worker.eval("bytearray(b'\\xffa')") == b"\xffa"
    assert worker.eval("memoryview(b'\\xffb')") == b"\xffb"
    nan = worker.eval("float('nan')")
    assert type(nan) is float and nan != nan


def test_atoms_are_atoms_inside_the_worker(worker):
    assert worker.eval("type(a).__module__ + '.' + type(a).__name__", {"a": Atom("ok")}) == "erlang._types.Atom"
    assert worker.eval("a == 'ok' and hash(a) == hash('ok')", {"a": Atom("ok")}) is True
    assert worker.eval("type(p).__name__", {"p": dict((n, v) for n, _, v in VECTORS)["pid"]}) == "Pid"
    assert worker.eval("type(r).__name__", {"r": dict((n, v) for n, _, v in VECTORS)["ref"]}) == "Ref"
