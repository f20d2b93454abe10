"""CALL, CAST, EVAL and EXEC: the requests an owner sends and their answers."""
import pytest

import pyport_proto as P
from pyport_proto import Atom, RemoteError
from wire import assert_in_sync


def test_call(worker):
    assert worker.call("math", "sqrt", [16]) == 4.0
    assert worker.call("builtins", "len", ["abc"]) == 3


def test_call_with_kwargs(worker):
    assert worker.call("builtins", "int", ["ff"], {"base": 16}) == 255
    assert worker.call("harness_worker", "kwargs_echo", [1, 2], {"a": 1, "b": [2]}) == \
        [[1, 2], {"a": 1, "b": [2]}]


def test_kwargs_with_atom_keys(worker):
    # Erlang sends #{base => 16} with an atom key; an atom is a str in Python.
    assert worker.call("builtins", "int", ["ff"], {Atom("base"): 16}) == 255


def test_dotted_module(worker):
    assert worker.call("os.path", "join", ["a", "b"]) == "a/b"


def test_dotted_function(worker):
    assert worker.call("harness_worker", "Nested.Inner.twice", [21]) == 42
    assert worker.call("builtins", "str.upper", ["abc"]) == "ABC"


def test_unknown_module_is_named(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("no_such_module_xyz", "f")
    assert e.value.type == "ModuleNotFoundError"
    assert "no_such_module_xyz" in e.value.message
    assert_in_sync(worker)


def test_unknown_function_is_named(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("math", "no_such_function_xyz")
    assert e.value.type == "AttributeError"
    assert "no_such_function_xyz" in e.value.message
    with pytest.raises(RemoteError) as e:
        worker.call("harness_worker", "Nested.Missing.twice", [1])
    assert e.value.type == "AttributeError" and "Missing" in e.value.message


def test_eval_with_locals(worker):
    assert worker.eval("x + y", {"x": 1, "y": 2}) == 3
    assert worker.eval("[1, 2][-1]") == 2


def test_eval_locals_do_not_stay(worker):
    assert worker.eval("x", {"x": 1}, ns=9) == 1
    with pytest.raises(RemoteError) as e:
        worker.eval("x", None, ns=9)
    assert e.value.type == "NameError"


def test_exec_answers_nil(worker):
    id = worker.request(P.EXEC, "y = 1", 0)
    frame = worker.wait(id)
    assert frame.kind == P.RESULT and frame.fields == [None]


def test_namespaces(worker):
    worker.exec("import math\nname = 41", ns=7)
    assert worker.eval("name + 1", ns=7) == 42
    assert worker.eval("math.floor(2.5)", ns=7) == 2
    with pytest.raises(RemoteError) as e:
        worker.eval("name", ns=8)
    assert e.value.type == "NameError"
    with pytest.raises(RemoteError):
        worker.eval("name", ns=0)
    worker.exec("name = 'shared'", ns=0)
    assert worker.eval("name", ns=0) == "shared"
    assert worker.eval("name", ns=7) == 41


def test_large_namespace_number(worker):
    worker.exec("v = 5", ns=P.UINT_MAX)
    assert worker.eval("v", ns=P.UINT_MAX) == 5


def test_exec_syntax_error(worker):
    with pytest.raises(RemoteError) as e:
        worker.exec("def (:")
    assert e.value.type == "SyntaxError"
    with pytest.raises(RemoteError) as e:
        worker.eval("x = 1")  # a statement is not an expression
    assert e.value.type == "SyntaxError"
    assert_in_sync(worker)


def test_code_as_bin(worker):
    # Code, Module and Function may come as msgpack bin (Erlang binaries).
    id = worker.request(P.EVAL, b"6 * 7", None, 0)
    assert worker.result(id) == 42
    id = worker.request(P.CALL, b"math", b"sqrt", [4.0], {})
    assert worker.result(id) == 2.0


def test_many_requests_pipelined_are_each_answered_once(worker):
    sent = {}
    for i in range(1000):
        if i % 3 == 0:
            sent[worker.request(P.CALL, "harness_worker", "identity", [i], {})] = i
        elif i % 3 == 1:
            sent[worker.request(P.EVAL, "n", {"n": i}, 0)] = i
        else:
            sent[worker.request(P.EXEC, f"n{i} = {i}", 3)] = None
    got = {}
    for _ in range(len(sent)):
        frame = worker.read_frame()
        assert frame.kind == P.RESULT, frame
        assert frame.id not in got, f"id {frame.id} answered twice"
        got[frame.id] = frame.fields[0]
    assert got == sent
    assert_in_sync(worker)


def test_ids_up_to_64_bits(worker):
    for id in (P.UINT_MAX, 1 << 32, 255):
        worker.send_frame(P.EVAL, id, "7", None, 0)
        frame = worker.read_frame()
        assert (frame.kind, frame.id, frame.fields) == (P.RESULT, id, [7])


def test_exception_fields(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("harness_worker", "raise_value_error", ["boom"])
    err = e.value
    assert (err.type, err.message) == ("ValueError", "boom")
    assert "raise_value_error" in err.traceback and "inner" in err.traceback
    assert "harness_worker.py" in err.traceback
    assert_in_sync(worker)


def test_exception_types_keep_their_names(worker):
    with pytest.raises(RemoteError) as e:
        worker.eval("1 / 0")
    assert e.value.type == "ZeroDivisionError" and "division" in e.value.message
    with pytest.raises(RemoteError) as e:
        worker.exec("class MyError(Exception): pass\nraise MyError('mine')")
    assert (e.value.type, e.value.message) == ("MyError", "mine")


def test_unconvertible_result_names_the_type(worker):
    with pytest.raises(RemoteError) as e:
        worker.call("harness_worker", "unconvertible")
    assert e.value.type == "TypeError"
    assert e.value.message == "cannot convert Unconvertible to an Erlang term"
    with pytest.raises(RemoteError) as e:
        worker.eval("object()")
    assert e.value.message == "cannot convert object to an Erlang term"
    assert_in_sync(worker)


def test_nesting_limit_on_results(worker):
    from harness_worker import nested_list
    assert worker.call("harness_worker", "nested_list", [100]) == nested_list(100)
    with pytest.raises(RemoteError) as e:
        worker.call("harness_worker", "nested_list", [600])
    assert e.value.type == "TypeError"
    assert_in_sync(worker)


def test_cast_is_not_answered(worker):
    worker.cast("builtins", "print", ["cast ran"])
    worker.wait_for_log(lambda level, line: line == "cast ran")
    # The next frame is the answer to the next call, not something for the cast.
    assert_in_sync(worker)


def test_cast_exception_goes_to_stderr(worker):
    worker.cast("harness_worker", "raise_value_error", ["cast failure 1234"])
    level, line = worker.wait_for_log(lambda level, line: "cast failure 1234" in line)
    assert level == "warning"
    assert_in_sync(worker)


def test_frames_split_into_single_bytes(worker):
    # Pipes deliver frames in arbitrary pieces, down to single bytes.
    data = b"".join(P.encode_frame(P.EVAL, id, "n", {"n": id}, 0) for id in (1, 2, 3))
    for i in range(len(data)):
        worker.send_bytes(data[i:i + 1])
    assert [worker.read_frame().fields[0] for _ in range(3)] == [1, 2, 3]
    assert_in_sync(worker)


def test_thousand_requests_in_one_write(worker):
    ids = range(10_000, 11_000)
    worker.send_bytes(b"".join(P.encode_frame(P.EVAL, id, "n + 1", {"n": id}, 0) for id in ids))
    got = {}
    for _ in ids:
        f = worker.read_frame()
        assert f.id not in got
        got[f.id] = f.fields[0]
    assert got == {id: id + 1 for id in ids}
    assert_in_sync(worker)
