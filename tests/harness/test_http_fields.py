"""The HTTP worker's C state (port_worker/http_fields.cpp: _Request and
HttpConnection fields as C members) and asyncio's task registry with a C
add()/_remove (c_weakset in port_worker/http_connection.cpp): same
behaviour as the Python attributes and the plain WeakSet they replace."""
import pyport_proto
import pytest


@pytest.fixture
def worker():
    w = pyport_proto.Worker(None)
    try:
        yield w
    finally:
        w.kill()


def test_task_registry_behaves_as_a_weakset(worker):
    worker.exec('''
import asyncio, asyncio.tasks, gc, weakref
import erlang._http_conn
from _pyport_http import c_weakset

def trace(ws):
    class O: pass
    objs = [O() for _ in range(5)]
    out = []
    ws.add(objs[0]); ws.add(objs[1]); ws.add(objs[1]); out.append(len(ws))
    objs[0] = None; gc.collect(); out.append(len(ws))
    it = iter(ws); next(it)  # iterating: removals wait
    objs[1] = None; gc.collect(); out.append((len(ws), len(ws._pending_removals)))
    ws.add(objs[2]); out.append((len(ws), len(ws._pending_removals), len(ws.data)))
    del it; gc.collect(); out.append((len(ws), len(ws._pending_removals), len(ws.data)))
    objs[2] = None; gc.collect(); out.append((len(ws), len(ws.data)))
    ws.add(objs[3]); ws.discard(objs[3]); ws.add(objs[4])
    out.append([x is objs[4] for x in ws])
    return out

fast = weakref.WeakSet()
c_weakset(fast)
PLAIN, FAST = trace(weakref.WeakSet()), trace(fast)

async def main():
    t = asyncio.ensure_future(asyncio.sleep(0))
    inside = t in asyncio.all_tasks()
    await t
    return inside
INSIDE = asyncio.run(main())
INSTALLED = "add" in vars(asyncio.tasks._all_tasks)
''')
    assert worker.eval("FAST") == worker.eval("PLAIN")
    assert worker.eval("PLAIN")[-1] == [True]
    assert worker.eval("INSTALLED") is True
    assert worker.eval("INSIDE") is True


def test_request_fields_defaults_and_attribute_semantics(worker):
    worker.exec('''
import erlang._http_conn
from erlang._http_request import _Request
r = _Request.__new__(_Request)
DEFAULTS = (r.chunks, r.buffered, r.body_done, r.length_left, r.started_at, r._head, r.task)
try:
    r.conn
    UNSET = "no error"
except AttributeError as e:
    UNSET = "AttributeError"
r.buffered = 2 ** 80  # any value, as an attribute
r.status = "x"
r.extra = 1  # not a field: the instance dict
BIG = (r.buffered, r.status, r.extra)
''')
    assert worker.eval("DEFAULTS") == (None, 0, False, -1, 0.0, None, None)
    assert worker.eval("UNSET") == "AttributeError"
    assert worker.eval("BIG") == (2 ** 80, "x", 1)


def test_a_class_attribute_hiding_a_field_is_refused(worker):
    worker.exec('''
import erlang._http_conn
from erlang._http_request import _Request
from _pyport_http import register_fields
class Hiding(_Request):
    status = 5
try:
    register_fields(Hiding)
    ERR = None
except TypeError as e:
    ERR = str(e)
class Fine(_Request):
    pass
register_fields(Fine)
register_fields(_Request)  # back to the runtime's class
''')
    assert "Hiding.status shadows the C field" in worker.eval("ERR")
