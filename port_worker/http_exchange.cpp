#define PY_SSIZE_T_CLEAN
#include "http_exchange.hpp"

#include <structmember.h>

#include <cstddef>
#include <cstring>

#include "http_fields.hpp"
#include "http_request_parser.hpp"
#include "py_ref.hpp"

namespace pyport {
namespace {

// Interned attribute names and constants, made in add_to().
enum Name {
  kConn,
  kLost,
  kHeadAttr,
  kKeepAlive,
  kChunkedDeclared,
  kNoBody,
  kServer,
  kDraining,
  kLengthLeft,
  kMethodHead,
  kTransport,
  kWrite,
  kSentBytes,
  kDeadlineKind,
  kDeadline,
  kComplete,
  kWaiter,
  kWake,
  kStarted,
  kHooks,
  kStatus,
  kChunked,
  kSendSlow,
  kChunks,
  kBuffered,
  kBodyDone,
  kDeliveredEnd,
  kReadPaused,
  kUnbuffer,
  kReceiveSlow,
  kType,
  kBody,
  kMoreBody,
  kHeaders,
  kResponseBody,
  kResponseStart,
  kRequest,
  kEmpty,
  kHttpRequest,
  kPopleft,
  kClear,
  kNameCount
};
const char* const kNames[] = {"conn",
                              "lost",
                              "_head",
                              "keep_alive",
                              "chunked_declared",
                              "no_body",
                              "server",
                              "draining",
                              "length_left",
                              "method_head",
                              "transport",
                              "write",
                              "sent_bytes",
                              "deadline_kind",
                              "deadline",
                              "complete",
                              "waiter",
                              "wake",
                              "started",
                              "hooks",
                              "status",
                              "chunked",
                              "_send_slow",
                              "chunks",
                              "buffered",
                              "body_done",
                              "delivered_end",
                              "read_paused",
                              "unbuffer",
                              "_receive_slow",
                              "type",
                              "body",
                              "more_body",
                              "headers",
                              "http.response.body",
                              "http.response.start",
                              "request",
                              "",
                              "http.request",
                              "popleft",
                              "clear"};
static_assert(sizeof kNames / sizeof kNames[0] == kNameCount, "a name per Name");
http_fields::Names<kNameCount> names;
PyObject* empty_bytes;
PyObject* empty_tuple;
PyObject* reasons;  // status -> reason phrase (bytes), from setup()
PyObject* done;     // the awaitable of a send that completed

PyRef get(PyObject* o, Name n) {
  return names.get(o, n);
}
int truth(PyObject* o, Name n) {
  return names.truth(o, n);
}  // 1, 0, -1 error
bool set(PyObject* o, Name n, PyObject* v) {
  return names.set(o, n, v);
}

bool set_bool(PyObject* o, Name n, bool v) {
  return set(o, n, v ? Py_True : Py_False);
}

bool set_int(PyObject* o, Name n, long long v) {
  PyRef i = PyRef::steal(PyLong_FromLongLong(v));
  return i && set(o, n, i.get());
}

// The value of a message key: borrowed, or null when absent (no error).
PyObject* item(PyObject* message, Name n) {
  return PyDict_GetItemWithError(message, names[n]);
}

// ---- the done awaitable ----------------------------------------------------

// A finished awaitable holding its result (null: None). `await` on it
// returns the result without suspending.
struct ReadyObject {
  PyObject_HEAD PyObject* result;
};

PyObject* ready_await(PyObject* self) {
  Py_INCREF(self);
  return self;
}

PyObject* ready_next(PyObject* self) {
  PyObject* result = reinterpret_cast<ReadyObject*>(self)->result;
  if (result == nullptr) return nullptr;  // StopIteration(None)
  // StopIteration(result), made explicitly: a tuple result stays one value.
  PyRef exc = PyRef::steal(PyObject_CallOneArg(PyExc_StopIteration, result));
  if (exc) PyErr_SetObject(PyExc_StopIteration, exc.get());
  return nullptr;
}

PySendResult ready_send(PyObject* self, PyObject*, PyObject** out) {
  PyObject* result = reinterpret_cast<ReadyObject*>(self)->result;
  *out = Py_NewRef(result ? result : Py_None);
  return PYGEN_RETURN;
}

// send(value) / throw(exc) / close(): the coroutine protocol, for callers
// that drive it as one (asyncio.create_task, run_coroutine_threadsafe).
PyObject* ready_send_method(PyObject* self, PyObject*) {
  return ready_next(self);
}

PyObject* ready_throw(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "throw(type[, value[, traceback]])");
    return nullptr;
  }
  PyObject* exc = args[0];
  if (PyExceptionInstance_Check(exc)) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
  } else if (PyExceptionClass_Check(exc)) {
    PyErr_SetObject(exc, nargs > 1 ? args[1] : nullptr);
  } else {
    PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
  }
  return nullptr;
}

PyObject* ready_close(PyObject*, PyObject*) {
  Py_RETURN_NONE;
}

PyMethodDef ready_methods[] = {
    {"send", ready_send_method, METH_O, "send(value): StopIteration(result)"},
    {"throw", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ready_throw)),
     METH_FASTCALL, "throw(exc): raises it"},
    {"close", ready_close, METH_NOARGS, "close(): nothing to close"},
    {nullptr, nullptr, 0, nullptr}};

void ready_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  Py_XDECREF(reinterpret_cast<ReadyObject*>(self)->result);
  type->tp_free(self);
  Py_DECREF(type);
}

PyType_Slot ready_slots[] = {{Py_am_await, reinterpret_cast<void*>(ready_await)},
                             {Py_am_send, reinterpret_cast<void*>(ready_send)},
                             {Py_tp_iter, reinterpret_cast<void*>(ready_await)},
                             {Py_tp_iternext, reinterpret_cast<void*>(ready_next)},
                             {Py_tp_dealloc, reinterpret_cast<void*>(ready_dealloc)},
                             {Py_tp_methods, ready_methods},
                             {0, nullptr}};
PyType_Spec ready_spec = {"_pyport_http.Ready", sizeof(ReadyObject), 0, Py_TPFLAGS_DEFAULT,
                          ready_slots};
PyTypeObject* ready_type;

PyObject* make_ready(PyObject* result) {
  ReadyObject* r = PyObject_New(ReadyObject, ready_type);
  if (r == nullptr) return nullptr;  // (PyObject_New took the heap type's reference)
  r->result = Py_XNewRef(result);
  return reinterpret_cast<PyObject*>(r);
}

// ---- Send and Receive --------------------------------------------------------

// Both hold the request (a _Request); called through vectorcall.
// Called from another thread (a WSGI app's wsgi.input), they take the
// slow path: its coroutine runs on the loop, where the request lives.
struct BoundObject {
  PyObject_HEAD PyObject* req;
  vectorcallfunc vectorcall;
  unsigned long thread;  // the loop's thread (the one that made it)
};

int bound_init(PyObject* self, PyObject* args, PyObject* kwargs);

int bound_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(reinterpret_cast<BoundObject*>(self)->req);
  Py_VISIT(Py_TYPE(self));
  return 0;
}

int bound_clear(PyObject* self) {
  Py_CLEAR(reinterpret_cast<BoundObject*>(self)->req);
  return 0;
}

void bound_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  bound_clear(self);
  type->tp_free(self);
  Py_DECREF(type);
}

// The slow path: the request's coroutine method `which`(args...).
PyObject* slow(PyObject* req, Name which, PyObject* message) {
  if (message == nullptr) return PyObject_CallMethodNoArgs(req, names[which]);
  return PyObject_CallMethodOneArg(req, names[which], message);
}

// A whole body in one message, the head still unsent, keep-alive, no
// framing of the app's: head and body in one write. Returns done, null
// with an error, or nullptr with no error: not this case (nothing changed).
PyObject* send_whole_body(PyObject* req, PyObject* conn, PyObject* message, bool& taken) {
  taken = false;
  PyRef head = get(req, kHeadAttr);
  if (!head) return nullptr;
  if (!PyBytes_CheckExact(head.get())) return nullptr;
  int r;
  if ((r = truth(req, kKeepAlive)) <= 0) return nullptr;
  if ((r = truth(req, kChunkedDeclared)) != 0) return nullptr;
  if ((r = truth(req, kNoBody)) != 0) return nullptr;
  PyObject* more = item(message, kMoreBody);
  if (more != nullptr && (r = PyObject_IsTrue(more)) != 0) return nullptr;
  PyObject* body = item(message, kBody);
  if (body == nullptr) body = empty_bytes;
  if (!PyBytes_CheckExact(body)) return nullptr;  // other buffers: the Python path
  PyRef server = get(conn, kServer);
  if (!server) return nullptr;
  if ((r = truth(server.get(), kDraining)) != 0) return nullptr;
  PyRef declared_obj = get(req, kLengthLeft);
  if (!declared_obj) return nullptr;
  long long declared = PyLong_AsLongLong(declared_obj.get());
  if (declared == -1 && PyErr_Occurred()) return nullptr;
  int head_only = truth(req, kMethodHead);
  if (head_only < 0) return nullptr;
  Py_ssize_t n = PyBytes_GET_SIZE(body);
  if (declared >= 0 && declared != n && !head_only) return nullptr;  // a length mismatch
  // From here on the request changes: the case is taken.
  taken = true;
  // Head, content-length, blank line and body written straight into the
  // bytes object (one allocation, one copy).
  char length_line[48];
  int length_n = 0;
  if (declared < 0) {
    // "content-length: N\r\n" (snprintf's formatting showed in the profile).
    char digits[24];
    int k = 0;
    size_t v = static_cast<size_t>(n);
    do {
      digits[k++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    std::memcpy(length_line, "content-length: ", 16);
    length_n = 16;
    while (k > 0)
      length_line[length_n++] = digits[--k];
    length_line[length_n++] = '\r';
    length_line[length_n++] = '\n';
  }
  Py_ssize_t head_n = PyBytes_GET_SIZE(head.get());
  Py_ssize_t body_n = head_only ? 0 : n;
  PyRef data = PyRef::steal(PyBytes_FromStringAndSize(nullptr, head_n + length_n + 2 + body_n));
  if (!data) return nullptr;
  char* out = PyBytes_AS_STRING(data.get());
  std::memcpy(out, PyBytes_AS_STRING(head.get()), static_cast<size_t>(head_n));
  out += head_n;
  std::memcpy(out, length_line, static_cast<size_t>(length_n));
  out += length_n;
  *out++ = '\r';
  *out++ = '\n';
  if (body_n > 0) std::memcpy(out, PyBytes_AS_STRING(body), static_cast<size_t>(body_n));
  PyRef transport = get(conn, kTransport);
  if (!transport) return nullptr;
  PyRef written =
      PyRef::steal(PyObject_CallMethodOneArg(transport.get(), names[kWrite], data.get()));
  if (!written) return nullptr;
  if (!head_only) {
    if (!set_int(req, kSentBytes, n)) return nullptr;
    if (declared >= 0 && !set_int(req, kLengthLeft, 0)) return nullptr;
  }
  if (!set(req, kHeadAttr, Py_None)) return nullptr;
  PyRef kind = get(conn, kDeadlineKind);
  if (!kind) return nullptr;
  r = PyUnicode_Check(kind.get()) ? PyUnicode_Compare(kind.get(), names[kRequest]) : 1;
  if (r == -1 && PyErr_Occurred()) return nullptr;
  if (r == 0) {  // the response started: request_timeout is met (conn._disarm())
    if (!set(conn, kDeadline, Py_None) || !set(conn, kDeadlineKind, names[kEmpty])) return nullptr;
  }
  if (!set_bool(req, kComplete, true)) return nullptr;
  PyRef waiter = get(req, kWaiter);
  if (!waiter) return nullptr;
  if (waiter.get() != Py_None) {
    PyRef woke = PyRef::steal(PyObject_CallMethodNoArgs(req, names[kWake]));
    if (!woke) return nullptr;
  }
  return Py_NewRef(done);
}

// http.response.start without hooks: the head built (_Request._start).
PyObject* send_start(PyObject* req, PyObject* conn, PyObject* message) {
  int r = truth(req, kStarted);
  if (r != 0) return nullptr;
  PyRef server = get(conn, kServer);
  if (!server) return nullptr;
  PyRef hooks = get(server.get(), kHooks);
  if (!hooks || hooks.get() != Py_None) return nullptr;
  PyObject* status = item(message, kStatus);
  if (status == nullptr || !PyLong_CheckExact(status)) return nullptr;
  long code = PyLong_AsLong(status);
  if (code < 200 || code > 999) return nullptr;  // the Python path's errors
  PyObject* reason = reasons ? PyDict_GetItemWithError(reasons, status) : nullptr;
  if (reason == nullptr) {
    if (PyErr_Occurred()) return nullptr;
    reason = empty_bytes;
  }
  PyObject* headers = item(message, kHeaders);
  if (headers == nullptr) {
    if (PyErr_Occurred()) return nullptr;
    headers = empty_tuple;
  }
  PyRef built = PyRef::steal(http_module::response_head(status, reason, headers));
  if (!built) return nullptr;
  PyObject* head = PyTuple_GET_ITEM(built.get(), 0);
  PyObject* length = PyTuple_GET_ITEM(built.get(), 1);
  long flags = PyLong_AsLong(PyTuple_GET_ITEM(built.get(), 2));
  bool no_body = code == 204 || code == 304;
  if (!set(req, kStatus, status) || !set_bool(req, kNoBody, no_body) ||
      !set(req, kLengthLeft, length)) {
    return nullptr;
  }
  if (flags != 0) {
    bool declared = (flags & 1) != 0;
    if (!set_bool(req, kChunkedDeclared, declared)) return nullptr;
    if ((flags & 2) != 0 && !set_bool(req, kKeepAlive, false)) return nullptr;
    if (!set_bool(req, kChunked, declared && !no_body)) return nullptr;
  }
  if (!set(req, kHeadAttr, head) || !set_bool(req, kStarted, true)) return nullptr;
  return Py_NewRef(done);
}

PyObject* send_call(PyObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs != 1 || (kwnames != nullptr && PyTuple_GET_SIZE(kwnames) != 0)) {
    PyErr_SetString(PyExc_TypeError, "send(message) takes one message");
    return nullptr;
  }
  auto* b = reinterpret_cast<BoundObject*>(self);
  PyObject* req = b->req;
  PyObject* message = args[0];
  if (req == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "send() of a request that is gone");
    return nullptr;
  }
  if (!PyDict_CheckExact(message) || PyThread_get_thread_ident() != b->thread) {
    return slow(req, kSendSlow, message);
  }
  PyRef conn = get(req, kConn);
  if (!conn) return nullptr;
  if (truth(conn.get(), kLost) != 0) return slow(req, kSendSlow, message);
  PyObject* kind = item(message, kType);
  PyObject* result = nullptr;
  if (kind != nullptr && PyUnicode_CheckExact(kind)) {
    if (PyUnicode_Compare(kind, names[kResponseBody]) == 0) {
      bool taken = false;
      result = send_whole_body(req, conn.get(), message, taken);
      if (result == nullptr && taken) return nullptr;  // failed while writing: raise
    } else if (PyUnicode_Compare(kind, names[kResponseStart]) == 0) {
      result = send_start(req, conn.get(), message);
    }
  }
  if (result != nullptr) return result;
  PyErr_Clear();  // not a fast case (or it cannot tell): the Python path decides
  return slow(req, kSendSlow, message);
}

// receive(): the body pieces already read, or the end of the body.
PyObject* receive_call(PyObject* self, PyObject* const*, size_t nargsf, PyObject* kwnames) {
  if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != nullptr && PyTuple_GET_SIZE(kwnames) != 0)) {
    PyErr_SetString(PyExc_TypeError, "receive() takes no arguments");
    return nullptr;
  }
  PyObject* req = reinterpret_cast<BoundObject*>(self)->req;
  if (req == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "receive() of a request that is gone");
    return nullptr;
  }
  if (PyThread_get_thread_ident() != reinterpret_cast<BoundObject*>(self)->thread) {
    return slow(req, kReceiveSlow, nullptr);
  }
  PyRef chunks = get(req, kChunks);
  if (!chunks) return nullptr;
  PyRef body;
  if (chunks.get() != Py_None) {
    Py_ssize_t count = PyObject_Length(chunks.get());
    if (count < 0) return nullptr;
    if (count == 1) {
      body = PyRef::steal(PyObject_CallMethodNoArgs(chunks.get(), names[kPopleft]));
    } else if (count > 1) {
      body = PyRef::steal(_PyBytes_Join(empty_bytes, chunks.get()));
      if (body) {
        PyRef cleared = PyRef::steal(PyObject_CallMethodNoArgs(chunks.get(), names[kClear]));
        if (!cleared) return nullptr;
      }
    }
    if (count > 0) {
      if (!body) return nullptr;
      // conn.unbuffer(req.buffered): a call only when reading is paused.
      PyRef conn = get(req, kConn);
      PyRef n = get(req, kBuffered);
      if (!conn || !n) return nullptr;
      int paused = truth(conn.get(), kReadPaused);
      if (paused < 0) return nullptr;
      if (paused) {
        PyRef r = PyRef::steal(PyObject_CallMethodOneArg(conn.get(), names[kUnbuffer], n.get()));
        if (!r) return nullptr;
      } else {
        PyRef total = get(conn.get(), kBuffered);
        if (!total) return nullptr;
        PyRef left = PyRef::steal(PyNumber_Subtract(total.get(), n.get()));
        if (!left || !set(conn.get(), kBuffered, left.get())) return nullptr;
      }
      if (!set_int(req, kBuffered, 0)) return nullptr;
    }
  }
  int body_done = truth(req, kBodyDone);
  if (body_done < 0) return nullptr;
  if (!body) {
    int delivered = truth(req, kDeliveredEnd);
    if (delivered < 0) return nullptr;
    if (!body_done || delivered) return slow(req, kReceiveSlow, nullptr);
    body = PyRef::borrow(empty_bytes);
  }
  if (body_done && !set_bool(req, kDeliveredEnd, true)) return nullptr;
  PyRef message = PyRef::steal(PyDict_New());
  if (!message || PyDict_SetItem(message.get(), names[kType], names[kHttpRequest]) < 0 ||
      PyDict_SetItem(message.get(), names[kBody], body.get()) < 0 ||
      PyDict_SetItem(message.get(), names[kMoreBody], body_done ? Py_False : Py_True) < 0) {
    return nullptr;
  }
  return make_ready(message.get());
}

PyMemberDef bound_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(BoundObject, vectorcall), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyType_Slot send_slots[] = {{Py_tp_init, reinterpret_cast<void*>(bound_init)},
                            {Py_tp_call, reinterpret_cast<void*>(PyVectorcall_Call)},
                            {Py_tp_traverse, reinterpret_cast<void*>(bound_traverse)},
                            {Py_tp_clear, reinterpret_cast<void*>(bound_clear)},
                            {Py_tp_dealloc, reinterpret_cast<void*>(bound_dealloc)},
                            {Py_tp_members, bound_members},
                            {Py_tp_doc, const_cast<char*>("Send(request): its ASGI send()")},
                            {0, nullptr}};
PyType_Slot receive_slots[] = {
    {Py_tp_init, reinterpret_cast<void*>(bound_init)},
    {Py_tp_call, reinterpret_cast<void*>(PyVectorcall_Call)},
    {Py_tp_traverse, reinterpret_cast<void*>(bound_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(bound_clear)},
    {Py_tp_dealloc, reinterpret_cast<void*>(bound_dealloc)},
    {Py_tp_members, bound_members},
    {Py_tp_doc, const_cast<char*>("Receive(request): its ASGI receive()")},
    {0, nullptr}};
constexpr unsigned kBoundFlags =
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
PyType_Spec send_spec = {"_pyport_http.Send", sizeof(BoundObject), 0, kBoundFlags, send_slots};
PyType_Spec receive_spec = {"_pyport_http.Receive", sizeof(BoundObject), 0, kBoundFlags,
                            receive_slots};
PyObject* send_type;

int bound_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  PyObject* req;
  if ((kwargs != nullptr && PyDict_GET_SIZE(kwargs) != 0) ||
      !PyArg_UnpackTuple(args, "Send", 1, 1, &req)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "takes one request");
    return -1;
  }
  auto* b = reinterpret_cast<BoundObject*>(self);
  Py_XSETREF(b->req, Py_NewRef(req));
  b->thread = PyThread_get_thread_ident();
  b->vectorcall =
      Py_TYPE(self) == reinterpret_cast<PyTypeObject*>(send_type) ? send_call : receive_call;
  return 0;
}

// setup(reasons): the status -> reason phrase dict of _http_response.
PyObject* setup(PyObject*, PyObject* arg) {
  if (!PyDict_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "setup(reasons): a dict");
    return nullptr;
  }
  Py_XSETREF(reasons, Py_NewRef(arg));
  Py_RETURN_NONE;
}

PyMethodDef setup_def = {"setup_exchange", setup, METH_O,
                         "setup_exchange(reasons): the reason phrases Send uses"};

}  // namespace

namespace http_exchange {

bool add_to(PyObject* module) {
  if (!names.init(kNames)) return false;
  if (!empty_bytes && !(empty_bytes = PyBytes_FromStringAndSize("", 0))) return false;
  if (!empty_tuple && !(empty_tuple = PyTuple_New(0))) return false;
  if (!ready_type) {
    ready_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&ready_spec));
    if (!ready_type) return false;
  }
  if (!done && !(done = make_ready(nullptr))) return false;
  if (PyModule_AddObjectRef(module, "Ready", reinterpret_cast<PyObject*>(ready_type)) < 0) {
    return false;
  }
  PyRef send = PyRef::steal(PyType_FromSpec(&send_spec));
  if (!send || PyModule_AddObjectRef(module, "Send", send.get()) < 0) return false;
  send_type = send.get();  // the module keeps it
  PyRef receive = PyRef::steal(PyType_FromSpec(&receive_spec));
  if (!receive || PyModule_AddObjectRef(module, "Receive", receive.get()) < 0) return false;
  PyRef fn = PyRef::steal(PyCFunction_New(&setup_def, nullptr));
  return fn && PyModule_AddObjectRef(module, "setup_exchange", fn.get()) == 0;
}

}  // namespace http_exchange
}  // namespace pyport
