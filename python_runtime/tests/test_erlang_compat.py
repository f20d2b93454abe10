"""erlang_python's names and behaviours of the ``erlang`` module (issue 13,
docs/migration.md "Objects, conversions and the Python erlang module"), in
a worker with no Erlang node behind it (pyport-run answers every request
to Erlang with ConnectionError)."""
import asyncio
import os
import socket

import pytest

import erlang
from erlang import _errors


def test_failures_of_erlang_calls_are_runtime_errors():
    # erlang_python code catches RuntimeError; pyport's classes stay.
    failures = [lambda: erlang.call("anything", 1), lambda: erlang.state_get("k"),
                lambda: erlang.state_set("k", 1), lambda: erlang.state_incr("k"),
                lambda: erlang.state_keys(), lambda: erlang.rpc_call("n@h", "m", "f", [])]
    for fail in failures:
        with pytest.raises(RuntimeError) as e:
            fail()
        assert isinstance(e.value, erlang.NodeDownError)

    async def main():
        with pytest.raises(RuntimeError):
            await erlang.async_call("anything")
        return True

    assert asyncio.run(main())


def test_every_error_reply_is_a_runtime_error_and_keeps_its_class():
    for name, also in [("ErlangError", erlang.ErlangError), ("UnknownFunctionError", NameError),
                       ("ProcessError", erlang.ProcessError), ("TimeoutError", TimeoutError),
                       ("ConnectionError", ConnectionError), ("StateFullError", erlang.StateFullError),
                       ("TypeError", TypeError), ("ValueError", ValueError),
                       ("PermissionError", PermissionError), ("SomethingNew", erlang.ErlangError)]:
        exc = _errors.from_reply(name, "msg", ("why", 1))
        assert isinstance(exc, RuntimeError) and isinstance(exc, also), name
        assert isinstance(exc, erlang.ErlangError) and exc.reason == ("why", 1)
        assert str(exc) == "msg"
    # The builtin-named ones keep the name Erlang matches on.
    assert type(_errors.from_reply("TypeError", "m", None)).__name__ == "TypeError"
    assert erlang.ErlangPermissionError.__name__ == "PermissionError"


def test_atom():
    a = erlang.atom("ok")
    assert isinstance(a, erlang.Atom) and a == "ok" and erlang.atom(a) is a
    assert erlang.atom("x" * 255) == "x" * 255
    with pytest.raises(ValueError, match="255"):
        erlang.atom("x" * 256)
    with pytest.raises(TypeError):
        erlang.atom(b"ok")


def test_event_loop_policy_names():
    assert erlang.EventLoopPolicy is erlang.ErlangEventLoopPolicy
    p1, p2 = erlang.get_event_loop_policy(), erlang.get_event_loop_policy()
    assert isinstance(p1, erlang.ErlangEventLoopPolicy) and p1 is not p2


def test_policy_is_installed_in_the_worker():
    # Installed when asyncio was first imported in this worker.
    assert isinstance(asyncio.get_event_loop_policy(), erlang.ErlangEventLoopPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, erlang.ErlangEventLoop)
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()


def test_inline_schedule_marker():
    m = erlang.schedule_inline("math", "sqrt", [4])
    assert type(m) is erlang.InlineScheduleMarker
    assert isinstance(m, erlang.ScheduleMarker) and m.how == "inline"
    assert type(erlang.schedule_py("math", "sqrt", [4])) is erlang.ScheduleMarker


def test_span_event():
    with erlang.Span("s") as span:
        span.event("loaded", rows=3)
        span.add_event("more")
    assert [e["name"] for e in span.events] == ["loaded", "more"]
    assert span.events[0]["attributes"] == {"rows": 3}


def test_create_unix_server_replaces_a_stale_socket_file(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays: a socket nobody listens on

    async def main():
        server = await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path)
        async with server:
            r, w = await asyncio.open_unix_connection(path)
            w.close()
            return True

    assert erlang.run(main())


def test_create_unix_server_never_removes_another_kind_of_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")

    async def main():
        await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, str(path))

    with pytest.raises(OSError):
        erlang.run(main())
    assert path.read_text() == "keep me"
    assert not os.path.islink(path)
