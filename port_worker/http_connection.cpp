#define PY_SSIZE_T_CLEAN
#include "http_connection.hpp"

#include <initializer_list>

#include "http_fields.hpp"
#include "http_request_parser.hpp"
#include "py_ref.hpp"

namespace pyport {
namespace {

enum Event { kHead = 0, kBody = 1, kEnd = 2 };  // as http_request_parser.cpp's

enum Name {
  kClosing,
  kParser,
  kFeed,
  kEventMethod,
  kAfterEvents,
  kUpgrade,
  kDeadlineKind,
  kDeadline,
  kPipeline,
  kBuffered,
  kServer,
  kState,
  kConn,
  kScope,
  kMethod,
  kHeadMethod,
  kMethodHead,
  kKeepAlive,
  kExpectContinue,
  kReading,
  kAppend,
  kApp,
  kRun,
  kLoop,
  kCreateTask,
  kTask,
  kRequestTimeout,
  kTime,
  kTimerWhen,
  kArm,
  kRequest,
  kIdle,
  kBodyDone,
  kWaiter,
  kWake,
  kAccessLog,
  kReadPaused,
  kLost,
  kBroken,
  kPendingError,
  kEof,
  kServed,
  kMaxRequests,
  kPopleft,
  kKeepaliveTimeout,
  kRequestDone,
  kChunks,
  kNameCount
};
const char* const kNames[] = {"closing",
                              "parser",
                              "feed",
                              "_event",
                              "_after_events",
                              "upgrade",
                              "deadline_kind",
                              "deadline",
                              "pipeline",
                              "buffered",
                              "server",
                              "state",
                              "conn",
                              "scope",
                              "method",
                              "HEAD",
                              "method_head",
                              "keep_alive",
                              "expect_continue",
                              "reading",
                              "append",
                              "app",
                              "run",
                              "loop",
                              "create_task",
                              "task",
                              "request_timeout",
                              "_time",
                              "timer_when",
                              "_arm",
                              "request",
                              "idle",
                              "body_done",
                              "waiter",
                              "wake",
                              "access_log",
                              "read_paused",
                              "lost",
                              "broken",
                              "pending_error",
                              "eof",
                              "served",
                              "max_requests",
                              "popleft",
                              "keepalive_timeout",
                              "request_done",
                              "chunks"};
static_assert(sizeof kNames / sizeof kNames[0] == kNameCount, "a name per Name");
http_fields::Names<kNameCount> names;
PyObject* empty_tuple;
PyTypeObject* request_type;  // _Request, from setup_connection()
PyObject* read_high;         // READ_HIGH, from setup_connection()
PyObject* deque_type;        // collections.deque

PyRef get(PyObject* o, Name n) {
  return names.get(o, n);
}
int truth(PyObject* o, Name n) {
  return names.truth(o, n);
}  // 1, 0, -1 error
bool set(PyObject* o, Name n, PyObject* v) {
  return names.set(o, n, v);
}

PyRef call(PyObject* o, Name method, PyObject* arg = nullptr) {
  return PyRef::steal(arg ? PyObject_CallMethodOneArg(o, names[method], arg)
                          : PyObject_CallMethodNoArgs(o, names[method]));
}

// conn._arm(seconds, kind) when it needs no new timer: the deadline moves
// (the connection's timer, due no later, reschedules itself); else the
// Python method, which makes the timer.
bool arm(PyObject* conn, PyObject* seconds, Name kind) {
  PyRef clock = get(conn, kTime);
  if (!clock) return false;
  PyRef now = PyRef::steal(PyObject_CallNoArgs(clock.get()));
  if (!now) return false;
  PyRef when = PyRef::steal(PyNumber_Add(now.get(), seconds));
  PyRef timer_when = get(conn, kTimerWhen);
  if (!when || !timer_when) return false;
  int earlier = PyObject_RichCompareBool(when.get(), timer_when.get(), Py_LT);
  if (earlier < 0) return false;
  if (earlier) {
    PyObject* args[] = {conn, seconds, names[kind]};
    PyRef r = PyRef::steal(PyObject_VectorcallMethod(names[kArm], args, 3, nullptr));
    return static_cast<bool>(r);
  }
  return set(conn, kDeadline, when.get()) && set(conn, kDeadlineKind, names[kind]);
}

// HttpConnection._start(req).
bool start(PyObject* conn, PyObject* req) {
  PyRef app = get(conn, kApp);
  if (!app) return false;
  PyRef coro = call(req, kRun, app.get());
  if (!coro) return false;
  PyRef loop = get(conn, kLoop);
  if (!loop) return false;
  PyRef task = call(loop.get(), kCreateTask, coro.get());
  if (!task || !set(req, kTask, task.get())) return false;
  PyRef timeout = get(conn, kRequestTimeout);
  if (!timeout) return false;
  double seconds = PyFloat_AsDouble(timeout.get());
  if (seconds == -1.0 && PyErr_Occurred()) return false;
  return seconds <= 0 || arm(conn, timeout.get(), kRequest);
}

// HttpConnection._head(ev) without lifespan state: 1 done, 0 not this
// case (nothing changed), -1 error.
int head(PyObject* conn, PyObject* ev) {
  if (request_type == nullptr || PyTuple_GET_SIZE(ev) < 4) return 0;
  PyRef server = get(conn, kServer);
  if (!server) return -1;
  PyRef state = get(server.get(), kState);
  if (!state) return -1;
  if (state.get() != Py_None) return 0;
  PyObject* scope = PyTuple_GET_ITEM(ev, 1);
  if (!PyDict_CheckExact(scope)) return 0;
  PyObject* method = PyDict_GetItemWithError(scope, names[kMethod]);
  if (method == nullptr) return PyErr_Occurred() ? -1 : 0;
  int is_head = PyObject_RichCompareBool(method, names[kHeadMethod], Py_EQ);
  if (is_head < 0) return -1;
  // _Request.__init__'s fields, set without running it.
  PyRef req = PyRef::steal(request_type->tp_new(request_type, empty_tuple, nullptr));
  if (!req) return -1;
  if (!set(req.get(), kConn, conn) || !set(req.get(), kScope, scope) ||
      !set(req.get(), kMethodHead, is_head ? Py_True : Py_False) ||
      !set(req.get(), kKeepAlive, PyTuple_GET_ITEM(ev, 2)) ||
      !set(req.get(), kExpectContinue, PyTuple_GET_ITEM(ev, 3)) ||
      !set(conn, kReading, req.get())) {
    return -1;
  }
  PyRef pipeline = get(conn, kPipeline);
  if (!pipeline) return -1;
  PyRef appended = call(pipeline.get(), kAppend, req.get());
  if (!appended) return -1;
  Py_ssize_t n = PyObject_Length(pipeline.get());
  if (n < 0) return -1;
  if (n == 1 && !start(conn, req.get())) return -1;
  return 1;
}

// A request's END: body_done, its waiter woken, reading none.
bool end(PyObject* conn) {
  PyRef req = get(conn, kReading);
  if (!req) return false;
  if (req.get() == Py_None) return true;
  if (!set(req.get(), kBodyDone, Py_True)) return false;
  PyRef waiter = get(req.get(), kWaiter);
  if (!waiter) return false;
  if (waiter.get() != Py_None && !call(req.get(), kWake)) return false;
  return set(conn, kReading, Py_None);
}

// A piece of the body: queued on the request being read, its waiter woken.
bool body(PyObject* conn, PyObject* ev) {
  PyRef req = get(conn, kReading);
  if (!req) return false;
  if (req.get() == Py_None) return true;
  PyObject* data = PyTuple_GET_ITEM(ev, 1);
  PyRef chunks = get(req.get(), kChunks);
  if (!chunks) return false;
  if (chunks.get() == Py_None) {
    chunks = PyRef::steal(PyObject_CallNoArgs(deque_type));
    if (!chunks || !set(req.get(), kChunks, chunks.get())) return false;
  }
  if (!call(chunks.get(), kAppend, data)) return false;
  Py_ssize_t n = PyObject_Length(data);
  if (n < 0) return false;
  PyRef size = PyRef::steal(PyLong_FromSsize_t(n));
  if (!size) return false;
  for (PyObject* o : {req.get(), conn}) {
    PyRef old = get(o, kBuffered);
    if (!old) return false;
    PyRef now = PyRef::steal(PyNumber_Add(old.get(), size.get()));
    if (!now || !set(o, kBuffered, now.get())) return false;
  }
  PyRef waiter = get(req.get(), kWaiter);
  if (!waiter) return false;
  return waiter.get() == Py_None || static_cast<bool>(call(req.get(), kWake));
}

// Whether _after_events has nothing to do: no upgrade, the request's
// timeout armed, one request, no more body buffered than READ_HIGH.
// -1: error.
int after_events_idle(PyObject* conn, PyObject* parser) {
  bool idle_flag = false, upgrade_flag = false;
  int upgrade =
      http_module::state(parser, idle_flag, upgrade_flag) ? upgrade_flag : truth(parser, kUpgrade);
  if (upgrade != 0) return upgrade < 0 ? -1 : 0;
  PyRef kind = get(conn, kDeadlineKind);
  if (!kind) return -1;
  int request = PyObject_RichCompareBool(kind.get(), names[kRequest], Py_EQ);
  if (request <= 0) return request;
  PyRef pipeline = get(conn, kPipeline);
  if (!pipeline) return -1;
  Py_ssize_t n = PyObject_Length(pipeline.get());
  if (n != 1) return n < 0 ? -1 : 0;
  PyRef buffered = get(conn, kBuffered);
  if (!buffered || read_high == nullptr) return buffered ? 0 : -1;
  return PyObject_RichCompareBool(buffered.get(), read_high, Py_LE);
}

PyObject* data_received(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "data_received(data)");
    return nullptr;
  }
  PyObject* conn = args[0];
  int closing = truth(conn, kClosing);
  if (closing < 0) return nullptr;
  if (closing) Py_RETURN_NONE;
  PyRef parser = get(conn, kParser);
  if (!parser) return nullptr;
  PyRef events = PyRef::steal(http_module::feed(parser.get(), args[1]));
  if (!events) return nullptr;
  if (!PyList_CheckExact(events.get())) {
    PyErr_SetString(PyExc_TypeError, "Parser.feed() returned no list");
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events.get()); ++i) {
    PyRef ev = PyRef::borrow(PyList_GET_ITEM(events.get(), i));
    if (!PyTuple_CheckExact(ev.get()) || PyTuple_GET_SIZE(ev.get()) < 1) {
      PyErr_SetString(PyExc_TypeError, "a parser event is a tuple");
      return nullptr;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(ev.get(), 0));
    if (kind == -1 && PyErr_Occurred()) return nullptr;
    int done = 0;
    if (kind == kHead) {
      done = head(conn, ev.get());
    } else if (kind == kEnd) {
      done = end(conn) ? 1 : -1;
    } else if (kind == kBody && PyTuple_GET_SIZE(ev.get()) == 2) {
      done = body(conn, ev.get()) ? 1 : -1;
    }
    if (done < 0) return nullptr;
    if (done) continue;
    PyRef more = call(conn, kEventMethod, ev.get());
    if (!more) return nullptr;
    int go_on = PyObject_IsTrue(more.get());
    if (go_on < 0) return nullptr;
    if (!go_on) Py_RETURN_NONE;
  }
  int idle = after_events_idle(conn, parser.get());
  if (idle < 0) return nullptr;
  if (!idle && !call(conn, kAfterEvents)) return nullptr;
  Py_RETURN_NONE;
}

// HttpConnection.request_done's common case, its conditions checked
// before anything changes: 1 taken, 0 not, -1 error.
int request_done_fast(PyObject* conn, PyObject* req) {
  static const Name falsy_conn[] = {kAccessLog, kReadPaused, kLost, kEof, kClosing};
  for (Name n : falsy_conn) {
    int v = truth(conn, n);
    if (v != 0) return v < 0 ? -1 : 0;
  }
  static const Name falsy_req[] = {kBuffered, kBroken};
  for (Name n : falsy_req) {
    int v = truth(req, n);
    if (v != 0) return v < 0 ? -1 : 0;
  }
  static const Name true_req[] = {kKeepAlive, kBodyDone};
  for (Name n : true_req) {
    int v = truth(req, n);
    if (v != 1) return v < 0 ? -1 : 0;
  }
  PyRef pending = get(conn, kPendingError);
  if (!pending) return -1;
  if (pending.get() != Py_None) return 0;
  PyRef pipeline = get(conn, kPipeline);
  if (!pipeline) return -1;
  if (PyObject_Length(pipeline.get()) != 1) return PyErr_Occurred() ? -1 : 0;
  PyRef first = PyRef::steal(PySequence_GetItem(pipeline.get(), 0));
  if (!first) return -1;
  if (first.get() != req) return 0;
  PyRef parser = get(conn, kParser);
  if (!parser) return -1;
  bool idle_flag = false, upgrade_flag = false;
  int idle = http_module::state(parser.get(), idle_flag, upgrade_flag) ? idle_flag
                                                                       : truth(parser.get(), kIdle);
  if (idle != 1) return idle < 0 ? -1 : 0;
  PyRef server = get(conn, kServer);
  if (!server) return -1;
  PyRef served = get(server.get(), kServed);
  PyRef max_requests = get(server.get(), kMaxRequests);
  if (!served || !max_requests) return -1;
  PyRef one = PyRef::steal(PyLong_FromLong(1));
  if (!one) return -1;
  PyRef next = PyRef::steal(PyNumber_Add(served.get(), one.get()));
  if (!next) return -1;
  int recycle = PyObject_RichCompareBool(next.get(), max_requests.get(), Py_EQ);
  if (recycle != 0) return recycle < 0 ? -1 : 0;
  // Taken: the request leaves, the connection waits for the next one.
  if (!call(pipeline.get(), kPopleft) || !set(server.get(), kServed, next.get())) return -1;
  PyRef keepalive = get(conn, kKeepaliveTimeout);
  if (!keepalive || !arm(conn, keepalive.get(), kIdle)) return -1;
  return 1;
}

PyObject* request_done(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "request_done(conn, req)");
    return nullptr;
  }
  int taken = request_done_fast(args[0], args[1]);
  if (taken < 0) return nullptr;
  if (taken) Py_RETURN_NONE;
  return PyObject_CallMethodOneArg(args[0], names[kRequestDone], args[1]);
}

PyObject* setup(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyType_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "setup_connection(request_class, read_high)");
    return nullptr;
  }
  if (deque_type == nullptr) {
    PyRef collections = PyRef::steal(PyImport_ImportModule("collections"));
    if (!collections) return nullptr;
    deque_type = PyObject_GetAttrString(collections.get(), "deque");
    if (deque_type == nullptr) return nullptr;
  }
  Py_XSETREF(request_type, reinterpret_cast<PyTypeObject*>(Py_NewRef(args[0])));
  Py_XSETREF(read_high, Py_NewRef(args[1]));
  Py_RETURN_NONE;
}

// ---- asyncio's task registry ----
// Every Task registers itself with _asyncio's all_tasks, a
// weakref.WeakSet whose add() and weakref callback (_remove) are Python:
// two Python frames per request. The same set gets both in C, as
// instance attributes (_asyncio calls all_tasks.add(task), which finds
// them first), with WeakSet's exact rules: add() commits pending
// removals, then adds ref(item, _remove); _remove(ref) defers while the
// set is iterated (_iterating non-empty), else discards. The set stays a
// WeakSet: all_tasks(), iteration and its other methods are unchanged.
struct WeakSetOps {
  PyObject_HEAD PyObject* selfref;  // a weak reference to the set, as WeakSet's closure
  PyObject* remove;                 // the bound _remove, the callback of every ref
};

// Interned by c_weakset(), before any ops object exists.
enum { kWsData, kWsPending, kWsIterating, kWsCommit, kWsAdd, kWsAppend, kWsDiscard, kWsRemove };
constexpr const char* kWsNameText[] = {
    "data",   "_pending_removals", "_iterating", "_commit_removals", "add",
    "append", "discard",           "_remove"};
constexpr int kWsNameCount = sizeof kWsNameText / sizeof kWsNameText[0];
PyObject* ws_names[kWsNameCount];

void WeakSetOps_dealloc(WeakSetOps* self) {
  Py_CLEAR(self->selfref);
  Py_CLEAR(self->remove);
  Py_TYPE(self)->tp_free(self);
}

PyTypeObject weakset_ops_type = [] {
  PyTypeObject t{};
  Py_SET_REFCNT(reinterpret_cast<PyObject*>(&t), 1);
  t.tp_name = "_pyport_http.WeakSetOps";
  t.tp_basicsize = sizeof(WeakSetOps);
  t.tp_dealloc = reinterpret_cast<destructor>(WeakSetOps_dealloc);
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  return t;
}();

PyObject* ws_add(PyObject* ops_obj, PyObject* item) {
  auto* ops = reinterpret_cast<WeakSetOps*>(ops_obj);
  PyObject* ws = PyWeakref_GetObject(ops->selfref);  // borrowed
  if (ws == Py_None) {
    PyErr_SetString(PyExc_ReferenceError, "the WeakSet is gone");
    return nullptr;
  }
  PyRef keep = PyRef::borrow(ws);
  PyRef pending = PyRef::steal(PyObject_GetAttr(ws, ws_names[kWsPending]));
  if (!pending) return nullptr;
  int any = PyObject_IsTrue(pending.get());
  if (any < 0) return nullptr;
  if (any) {
    PyRef r = PyRef::steal(PyObject_CallMethodNoArgs(ws, ws_names[kWsCommit]));
    if (!r) return nullptr;
  }
  PyRef ref = PyRef::steal(PyWeakref_NewRef(item, ops->remove));
  if (!ref) return nullptr;
  PyRef data = PyRef::steal(PyObject_GetAttr(ws, ws_names[kWsData]));
  if (!data) return nullptr;
  if (PySet_CheckExact(data.get())) {
    if (PySet_Add(data.get(), ref.get()) < 0) return nullptr;
  } else {
    PyRef r = PyRef::steal(PyObject_CallMethodOneArg(data.get(), ws_names[kWsAdd], ref.get()));
    if (!r) return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* ws_remove(PyObject* ops_obj, PyObject* item) {
  auto* ops = reinterpret_cast<WeakSetOps*>(ops_obj);
  PyObject* ws = PyWeakref_GetObject(ops->selfref);
  if (ws == Py_None) Py_RETURN_NONE;
  PyRef keep = PyRef::borrow(ws);
  PyRef iterating = PyRef::steal(PyObject_GetAttr(ws, ws_names[kWsIterating]));
  if (!iterating) return nullptr;
  int busy = PyObject_IsTrue(iterating.get());
  if (busy < 0) return nullptr;
  if (busy) {
    PyRef pending = PyRef::steal(PyObject_GetAttr(ws, ws_names[kWsPending]));
    if (!pending) return nullptr;
    PyRef r = PyRef::steal(PyObject_CallMethodOneArg(pending.get(), ws_names[kWsAppend], item));
    if (!r) return nullptr;
    Py_RETURN_NONE;
  }
  PyRef data = PyRef::steal(PyObject_GetAttr(ws, ws_names[kWsData]));
  if (!data) return nullptr;
  if (PySet_CheckExact(data.get())) {
    if (PySet_Discard(data.get(), item) < 0) return nullptr;
  } else {
    PyRef r = PyRef::steal(PyObject_CallMethodOneArg(data.get(), ws_names[kWsDiscard], item));
    if (!r) return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef ws_add_def = {"add", ws_add, METH_O, "WeakSet.add, in C"};
PyMethodDef ws_remove_def = {"_remove", ws_remove, METH_O, "WeakSet's weakref callback, in C"};

// c_weakset(ws): gives the WeakSet ws C add() and _remove (above).
PyObject* c_weakset(PyObject*, PyObject* ws) {
  for (int i = 0; i < kWsNameCount; ++i) {
    if (!ws_names[i] && !(ws_names[i] = PyUnicode_InternFromString(kWsNameText[i]))) return nullptr;
  }
  if (!(weakset_ops_type.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&weakset_ops_type) < 0)
    return nullptr;
  PyRef ops_obj = PyRef::steal(PyType_GenericAlloc(&weakset_ops_type, 0));
  if (!ops_obj) return nullptr;
  auto* ops = reinterpret_cast<WeakSetOps*>(ops_obj.get());
  if (!(ops->selfref = PyWeakref_NewRef(ws, nullptr))) return nullptr;
  if (!(ops->remove = PyCFunction_New(&ws_remove_def, ops_obj.get()))) return nullptr;
  PyRef add = PyRef::steal(PyCFunction_New(&ws_add_def, ops_obj.get()));
  if (!add) return nullptr;
  if (PyObject_SetAttr(ws, ws_names[kWsAdd], add.get()) < 0 ||
      PyObject_SetAttr(ws, ws_names[kWsRemove], ops->remove) < 0)
    return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef data_received_def = {
    "connection_data_received",
    reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(data_received)), METH_FASTCALL,
    "HttpConnection.data_received (see port_worker/http_connection.hpp)"};

PyMethodDef functions[] = {
    {"request_done", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(request_done)),
     METH_FASTCALL, "request_done(conn, req): HttpConnection.request_done(req)"},
    {"setup_connection", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(setup)),
     METH_FASTCALL, "setup_connection(request_class, read_high)"},
    {"c_weakset", c_weakset, METH_O, "c_weakset(weakset): its add() and _remove in C"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

namespace http_connection {

bool add_to(PyObject* module) {
  if (!names.init(kNames)) return false;
  if (!empty_tuple && !(empty_tuple = PyTuple_New(0))) return false;
  if (PyModule_AddFunctions(module, functions) < 0) return false;
  // An instancemethod: as a class attribute it binds like a function.
  PyRef fn = PyRef::steal(PyCFunction_New(&data_received_def, nullptr));
  if (!fn) return false;
  PyRef method = PyRef::steal(PyInstanceMethod_New(fn.get()));
  return method && PyModule_AddObjectRef(module, "connection_data_received", method.get()) == 0;
}

}  // namespace http_connection
}  // namespace pyport
