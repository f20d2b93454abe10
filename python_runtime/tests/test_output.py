"""erlang._output: what a call prints, attributed to its request (the
``output => caller`` option); NOTIFY frames recorded instead of sent."""
import asyncio
import io
import sys

import pytest

from erlang import _output


@pytest.fixture
def sent(monkeypatch):
    frames = []
    monkeypatch.setattr(_output._link, "notify", lambda op, args: frames.append((op, args)))
    return frames


def test_lines_of_a_marked_call_are_sent_and_the_rest_passes(sent, monkeypatch):
    original = io.StringIO()
    stream = _output._AttributedStream(original)
    monkeypatch.setattr(sys, "stdout", stream)
    print("before")
    token = _output._request.set(7)
    try:
        print("one", "two")
        print("partial", end="")
        print(" line")
        print("tail", end="")
    finally:
        _output._request.reset(token)
        _output._flush(7)
    print("after")
    assert original.getvalue() == "before\nafter\n"
    assert sent == [("output", [7, "one two", True]), ("output", [7, "partial line", True]),
                    ("output", [7, "tail", False])]


def test_long_lines_are_cut_into_frames(sent):
    _output._add(3, "x" * (_output._MAX_LINE * 2 + 5) + "\n")
    assert [len(a[1]) for _, a in sent] == [_output._MAX_LINE, _output._MAX_LINE, 5]
    assert [a[2] for _, a in sent] == [False, False, True]


def test_interleaved_tasks_keep_their_own_request(sent, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _output._AttributedStream(io.StringIO()))

    async def printer(tag):
        for i in range(3):
            print(f"{tag}{i}")
            await asyncio.sleep(0)
        return tag

    async def main():
        return await asyncio.gather(_output._marked(1, printer("a")),
                                    _output._marked(2, printer("b")))

    assert asyncio.run(main()) == ["a", "b"]
    assert [a for _, a in sent if a[0] == 1] == [[1, f"a{i}", True] for i in range(3)]
    assert [a for _, a in sent if a[0] == 2] == [[2, f"b{i}", True] for i in range(3)]
    # They did interleave.
    assert [a[0] for _, a in sent] != [1, 1, 1, 2, 2, 2]


def test_call_looks_up_dotted_names_and_passes_kwargs(sent, monkeypatch):
    monkeypatch.setattr(_output, "_installed", True)  # leave the runner's streams alone
    assert _output.call(5, "os.path", "join", ["a", "b"]) == "a/b"
    assert _output.call(5, "builtins", "int.from_bytes", [b"\x01\x00"], byteorder="big") == 256
    with pytest.raises(ModuleNotFoundError):
        _output.call(5, "no_such_module_here", "f", [])
    with pytest.raises(AttributeError):
        _output.call(5, "os", "no_such_function", [])
