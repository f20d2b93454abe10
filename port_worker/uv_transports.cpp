#include "uv_transports.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <new>

#include <structmember.h>

#include "py_ref.hpp"

namespace pyport {
namespace {

// Reads land in a scratch buffer and are copied out (a 64 B message costs a
// 64 B bytes object, not a 256 KiB one shrunk). A stream whose reads fill
// kBigRead switches to reading straight into a bytes object of max_size,
// which saves the copy when data comes in bulk.
constexpr Py_ssize_t kScratch = 256 * 1024;
constexpr Py_ssize_t kBigRead = 64 * 1024;
constexpr Py_ssize_t kSmallRead = 16 * 1024;
constexpr int kMaxIov = 64;

struct Names {
  PyRef conn_lost, protocol, sock_fd, buffer, buffered, fatal_error, on_eof, data_received,
      get_buffer, buffer_updated, eof, empty_waiter, loop, add_writer, remove_writer, write_ready,
      high_water, protocol_paused, maybe_pause, maybe_resume, write_drained, write_lost, max_size,
      address, family, connected, addr_cache, error_received, datagram_received, backlog,
      slow_sendto, slow_read_ready, sendto_ready;
  // asyncio.transports._FlowControlMixin keeps _loop, _protocol_paused and
  // _high_water in __slots__: read at their offsets.
  PyRef flow_type;
  Py_ssize_t loop_offset = -1, paused_offset = -1, high_offset = -1;

  bool load_slots() {
    PyRef mod = PyRef::steal(PyImport_ImportModule("asyncio.transports"));
    flow_type = mod ? PyRef::steal(PyObject_GetAttrString(mod.get(), "_FlowControlMixin")) : PyRef();
    if (!flow_type) return false;
    if (!PyType_Check(flow_type.get())) {
      PyErr_SetString(PyExc_TypeError, "asyncio.transports._FlowControlMixin is not a class");
      return false;
    }
    PyObject* dict = reinterpret_cast<PyTypeObject*>(flow_type.get())->tp_dict;
    struct {
      Py_ssize_t* slot;
      const char* name;
    } slots[] = {{&loop_offset, "_loop"},
                 {&paused_offset, "_protocol_paused"},
                 {&high_offset, "_high_water"}};
    for (auto& sl : slots) {
      PyObject* descr = PyDict_GetItemString(dict, sl.name);
      if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
          reinterpret_cast<PyMemberDescrObject*>(descr)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "asyncio's _FlowControlMixin.%s is not a slot", sl.name);
        return false;
      }
      *sl.slot = reinterpret_cast<PyMemberDescrObject*>(descr)->d_member->offset;
    }
    return true;
  }

  bool load() {
    struct {
      PyRef* slot;
      const char* name;
    } names[] = {{&conn_lost, "_conn_lost"},
                 {&protocol, "_protocol"},
                 {&sock_fd, "_sock_fd"},
                 {&buffer, "_buffer"},
                 {&buffered, "_pyport_buffered"},
                 {&fatal_error, "_fatal_error"},
                 {&on_eof, "_read_ready__on_eof"},
                 {&data_received, "data_received"},
                 {&get_buffer, "get_buffer"},
                 {&buffer_updated, "buffer_updated"},
                 {&eof, "_eof"},
                 {&empty_waiter, "_empty_waiter"},
                 {&loop, "_loop"},
                 {&add_writer, "_add_writer"},
                 {&remove_writer, "_remove_writer"},
                 {&write_ready, "_write_ready"},
                 {&high_water, "_high_water"},
                 {&protocol_paused, "_protocol_paused"},
                 {&maybe_pause, "_maybe_pause_protocol"},
                 {&maybe_resume, "_maybe_resume_protocol"},
                 {&write_drained, "_pyport_write_drained"},
                 {&write_lost, "_pyport_write_lost"},
                 {&max_size, "_pyport_max_size"},
                 {&address, "_address"},
                 {&family, "_pyport_family"},
                 {&connected, "_pyport_connected"},
                 {&addr_cache, "_pyport_addr"},
                 {&error_received, "error_received"},
                 {&datagram_received, "datagram_received"},
                 {&backlog, "_pyport_backlog"},
                 {&slow_sendto, "_pyport_slow_sendto"},
                 {&slow_read_ready, "_pyport_slow_read_ready"},
                 {&sendto_ready, "_sendto_ready"}};
    for (auto& n : names) {
      *n.slot = PyRef::steal(PyUnicode_InternFromString(n.name));
      if (!*n.slot) return false;
    }
    return load_slots();
  }
};

struct ModuleState {
  PyObject* write_buffer_type = nullptr;  // strong
  PyObject* addr_cache_type = nullptr;    // strong
  std::unique_ptr<Names> names;
  // Only touched with the GIL held and never across a call into Python.
  std::unique_ptr<char[]> scratch;
};

ModuleState* state_of(PyTypeObject* defining_class) {
  return static_cast<ModuleState*>(PyType_GetModuleState(defining_class));
}

// ---------------------------------------------------------------- helpers

// obj.name. The transports' state lives in the instance dict (asyncio's
// code sets it there), so it is read from there first: a generic lookup
// would search the long MRO of the transport classes for a descriptor.
// None of the names read here is a data descriptor of those classes.
PyRef attr(PyObject* obj, const PyRef& name) {
  PyObject** dict = _PyObject_GetDictPtr(obj);
  if (dict && *dict) {
    PyObject* v = PyDict_GetItemWithError(*dict, name.get());
    if (v) return PyRef::borrow(v);
    if (PyErr_Occurred()) return {};
  }
  return PyRef::steal(PyObject_GetAttr(obj, name.get()));
}

// A _FlowControlMixin slot of `obj` (null with AttributeError if unset).
PyRef slot(PyObject* obj, const Names& n, Py_ssize_t offset, const char* name) {
  if (!PyObject_TypeCheck(obj, reinterpret_cast<PyTypeObject*>(n.flow_type.get()))) {
    PyErr_SetString(PyExc_TypeError, "not an asyncio flow-controlled transport");
    return {};
  }
  PyObject* v = *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(obj) + offset);
  if (!v) {
    PyErr_Format(PyExc_AttributeError, "transport has no attribute '%s'", name);
    return {};
  }
  return PyRef::borrow(v);
}

// Truth of obj.name; -1 with an exception set.
int attr_true(PyObject* obj, const PyRef& name) {
  PyRef v = attr(obj, name);
  return v ? PyObject_IsTrue(v.get()) : -1;
}

// obj.name as a Py_ssize_t; false with an exception set.
bool attr_size(PyObject* obj, const PyRef& name, Py_ssize_t* out) {
  PyRef v = attr(obj, name);
  if (!v) return false;
  *out = PyLong_AsSsize_t(v.get());
  return !(*out == -1 && PyErr_Occurred());
}

bool attr_fd(PyObject* obj, const Names& n, int* fd) {
  Py_ssize_t v;
  if (!attr_size(obj, n.sock_fd, &v)) return false;
  if (v < 0 || v > INT32_MAX) {
    PyErr_SetString(PyExc_ValueError, "the transport has no socket");
    return false;
  }
  *fd = int(v);
  return true;
}

PyObject* call_method(PyObject* obj, const PyRef& name, PyObject* a = nullptr,
                      PyObject* b = nullptr) {
  PyObject* args[3] = {obj, a, b};
  size_t nargs = 1 + (a ? 1 : 0) + (b ? 1 : 0);
  return PyObject_VectorcallMethod(name.get(), args, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                   nullptr);
}

bool is_bytes_like(PyObject* data) {
  return PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data);
}

PyObject* not_bytes_like(PyObject* data) {
  PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%s'",
               Py_TYPE(data)->tp_name);
  return nullptr;
}

bool would_block(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

// The OSError (the errno's subclass, as socket methods raise) for `err`.
PyError os_error(int err) {
  errno = err;
  PyErr_SetFromErrno(PyExc_OSError);
  return PyError::fetch();
}

// What asyncio's transports do with an exception from the protocol or the
// socket: SystemExit and KeyboardInterrupt propagate (null), anything else
// goes to transport._fatal_error(exc, message).
PyObject* fatal_error(PyObject* self, const Names& n, PyError e, const char* message) {
  PyRef msg = PyRef::steal(PyUnicode_FromString(message));
  if (!msg) return nullptr;
  return call_method(self, n.fatal_error, e.value.get(), msg.get());
}

PyObject* fatal_current(PyObject* self, const Names& n, const char* message) {
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
    return nullptr;
  return fatal_error(self, n, PyError::fetch(), message);
}

Names* names_of(ModuleState* st) {
  if (!st->names) {
    try {
      st->names.reset(new Names());
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return nullptr;
    }
    if (!st->names->load()) {
      st->names.reset();
      return nullptr;
    }
  }
  return st->names.get();
}

// ---------------------------------------------------------------- WriteBuffer

// The stream transport's _buffer: the bytes objects written and not yet
// sent, referenced rather than copied (mutable buffers are copied, as
// asyncio copies them). len() is the number of bytes waiting.
struct Segment {
  PyObject* owner;  // a bytes object (strong)
  const char* data;
  Py_ssize_t len;
};

struct WriteBufferObject {
  PyObject_HEAD std::deque<Segment>* segments;
  Py_ssize_t size;
  bool big_reads;  // the stream's recent reads were large (see kBigRead)
};

void wb_clear(WriteBufferObject* self) {
  if (!self->segments) return;
  // Take the segments out first: dropping a bytes object runs no Python
  // code, but the buffer must be consistent whatever happens.
  std::deque<Segment> old;
  old.swap(*self->segments);
  self->size = 0;
  for (Segment& s : old)
    Py_DECREF(s.owner);
}

// Appends data[offset:]; false with an exception set.
bool wb_append(WriteBufferObject* self, PyObject* data, const Py_buffer& view, Py_ssize_t offset) {
  PyRef owner;
  const char* start;
  if (PyBytes_CheckExact(data)) {
    owner = PyRef::borrow(data);
    start = static_cast<const char*>(view.buf) + offset;
  } else {
    owner = PyRef::steal(PyBytes_FromStringAndSize(static_cast<const char*>(view.buf) + offset,
                                                   view.len - offset));
    if (!owner) return false;
    start = PyBytes_AS_STRING(owner.get());
  }
  try {
    self->segments->push_back(Segment{owner.get(), start, view.len - offset});
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return false;
  }
  (void)owner.release();
  self->size += view.len - offset;
  return true;
}

void wb_consume(WriteBufferObject* self, Py_ssize_t n) {
  self->size -= n;
  while (n > 0 && !self->segments->empty()) {
    Segment& s = self->segments->front();
    if (n < s.len) {
      s.data += n;
      s.len -= n;
      return;
    }
    n -= s.len;
    PyObject* owner = s.owner;
    self->segments->pop_front();
    Py_DECREF(owner);
  }
}

PyObject* WriteBuffer_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs))) {
    PyErr_SetString(PyExc_TypeError, "WriteBuffer() takes no arguments");
    return nullptr;
  }
  auto* self = reinterpret_cast<WriteBufferObject*>(type->tp_alloc(type, 0));
  if (!self) return nullptr;
  self->segments = new (std::nothrow) std::deque<Segment>();
  if (!self->segments) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  return reinterpret_cast<PyObject*>(self);
}

void WriteBuffer_dealloc(WriteBufferObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  wb_clear(self);
  delete self->segments;
  type->tp_free(self);
  Py_DECREF(type);
}

Py_ssize_t WriteBuffer_len(WriteBufferObject* self) {
  return self->size;
}

PyObject* WriteBuffer_clear(WriteBufferObject* self, PyObject*) {
  wb_clear(self);
  Py_RETURN_NONE;
}

PyMethodDef write_buffer_methods[] = {
    {"clear", reinterpret_cast<PyCFunction>(WriteBuffer_clear), METH_NOARGS,
     "clear(): drops every byte waiting."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot write_buffer_slots[] = {
    {Py_tp_doc, const_cast<char*>("The bytes a stream transport has not sent yet.")},
    {Py_tp_new, reinterpret_cast<void*>(WriteBuffer_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(WriteBuffer_dealloc)},
    {Py_tp_methods, write_buffer_methods},
    {Py_sq_length, reinterpret_cast<void*>(WriteBuffer_len)},
    {0, nullptr}};

PyType_Spec write_buffer_spec = {"_pyport_transports.WriteBuffer", sizeof(WriteBufferObject), 0,
                                 Py_TPFLAGS_DEFAULT, write_buffer_slots};

WriteBufferObject* buffer_of(PyObject* self, ModuleState* st, const Names& n, PyRef& holder) {
  holder = attr(self, n.buffer);
  if (!holder) return nullptr;
  if (Py_TYPE(holder.get()) != reinterpret_cast<PyTypeObject*>(st->write_buffer_type)) {
    PyErr_SetString(PyExc_TypeError, "the transport's _buffer must be a WriteBuffer");
    return nullptr;
  }
  return reinterpret_cast<WriteBufferObject*>(holder.get());
}

// ---------------------------------------------------------------- stream methods

bool no_args(const char* name, Py_ssize_t nargs, PyObject* kwnames, Py_ssize_t want) {
  if (nargs != want || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments", name, want);
    return false;
  }
  return true;
}

// data_received(recv(...)), reading into the scratch buffer or, for bulk
// data, straight into the bytes object handed over.
PyObject* read_data(PyObject* self, ModuleState* st, const Names& n, int fd,
                    PyObject* protocol) {
  PyRef holder;
  WriteBufferObject* wb = buffer_of(self, st, n, holder);
  Py_ssize_t max_size;
  if (!wb || !attr_size(self, n.max_size, &max_size)) return nullptr;
  if (max_size <= 0) max_size = kScratch;
  PyRef data;
  ssize_t got;
  if (wb->big_reads || max_size > kScratch) {
    data = PyRef::steal(PyBytes_FromStringAndSize(nullptr, max_size));
    if (!data) return nullptr;
    got = recv(fd, PyBytes_AS_STRING(data.get()), size_t(max_size), 0);
    if (got > 0) {
      if (got < kSmallRead) wb->big_reads = false;
      PyObject* raw = data.release();
      if (_PyBytes_Resize(&raw, got) < 0) return nullptr;
      data = PyRef::steal(raw);
    }
  } else {
    got = recv(fd, st->scratch.get(), size_t(max_size), 0);
    if (got > 0) {
      if (got >= kBigRead) wb->big_reads = true;
      data = PyRef::steal(PyBytes_FromStringAndSize(st->scratch.get(), got));
      if (!data) return nullptr;
    }
  }
  if (got < 0) {
    int err = errno;
    if (would_block(err)) Py_RETURN_NONE;
    return fatal_error(self, n, os_error(err), "Fatal read error on socket transport");
  }
  if (got == 0) return call_method(self, n.on_eof);
  PyRef done = PyRef::steal(call_method(protocol, n.data_received, data.get()));
  if (!done) return fatal_current(self, n, "Fatal error: protocol.data_received() call failed.");
  Py_RETURN_NONE;
}

// get_buffer(-1), recv_into it, buffer_updated(n): BufferedProtocol.
PyObject* read_buffered(PyObject* self, const Names& n, int fd, PyObject* protocol) {
  static const char* get_failed = "Fatal error: protocol.get_buffer() call failed.";
  PyRef minus_one = PyRef::steal(PyLong_FromLong(-1));
  if (!minus_one) return nullptr;
  PyRef buf = PyRef::steal(call_method(protocol, n.get_buffer, minus_one.get()));
  if (!buf) return fatal_current(self, n, get_failed);
  Py_ssize_t len = PyObject_Size(buf.get());
  if (len < 0) return fatal_current(self, n, get_failed);
  if (len == 0) {
    PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    return fatal_current(self, n, get_failed);
  }
  Py_buffer view;
  if (PyObject_GetBuffer(buf.get(), &view, PyBUF_WRITABLE) < 0) {
    return fatal_current(self, n, "Fatal read error on socket transport");
  }
  ssize_t got = recv(fd, view.buf, size_t(view.len), 0);
  int err = errno;
  PyBuffer_Release(&view);
  if (got < 0) {
    if (would_block(err)) Py_RETURN_NONE;
    return fatal_error(self, n, os_error(err), "Fatal read error on socket transport");
  }
  if (got == 0) return call_method(self, n.on_eof);
  PyRef count = PyRef::steal(PyLong_FromSsize_t(got));
  if (!count) return nullptr;
  PyRef done = PyRef::steal(call_method(protocol, n.buffer_updated, count.get()));
  if (!done) return fatal_current(self, n, "Fatal error: protocol.buffer_updated() call failed.");
  Py_RETURN_NONE;
}

PyObject* Stream_read_ready(PyObject* self, PyTypeObject* cls, PyObject* const*, Py_ssize_t nargs,
                            PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  Names* names = st ? names_of(st) : nullptr;
  if (!names || !no_args("_read_ready", nargs, kwnames, 0)) return nullptr;
  const Names& n = *names;
  int lost = attr_true(self, n.conn_lost);
  if (lost) return lost < 0 ? nullptr : (Py_INCREF(Py_None), Py_None);
  int fd;
  PyRef protocol = attr(self, n.protocol);
  int buffered = protocol ? attr_true(self, n.buffered) : -1;
  if (buffered < 0 || !attr_fd(self, n, &fd)) return nullptr;
  return buffered ? read_buffered(self, n, fd, protocol.get())
                  : read_data(self, st, n, fd, protocol.get());
}

// Calls transport._maybe_pause_protocol() once the buffer is over the high
// water mark (it pauses the protocol if it is not paused yet).
bool check_pause(PyObject* self, const Names& n, WriteBufferObject* wb) {
  PyRef high_obj = slot(self, n, n.high_offset, "_high_water");
  Py_ssize_t high = high_obj ? PyLong_AsSsize_t(high_obj.get()) : -1;
  if (high == -1 && PyErr_Occurred()) return false;
  if (wb->size <= high) return true;
  PyRef done = PyRef::steal(call_method(self, n.maybe_pause));
  return bool(done);
}

PyObject* Stream_write(PyObject* self, PyTypeObject* cls, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  Names* names = st ? names_of(st) : nullptr;
  if (!names || !no_args("write", nargs, kwnames, 1)) return nullptr;
  const Names& n = *names;
  PyObject* data = args[0];
  if (!is_bytes_like(data)) return not_bytes_like(data);
  int eof = attr_true(self, n.eof);
  if (eof) {
    if (eof > 0) PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return nullptr;
  }
  PyRef waiter = attr(self, n.empty_waiter);
  if (!waiter) return nullptr;
  if (waiter.get() != Py_None) {
    PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
    return nullptr;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> release(&view, PyBuffer_Release);
  if (view.len == 0) Py_RETURN_NONE;
  int lost = attr_true(self, n.conn_lost);
  if (lost) return lost < 0 ? nullptr : call_method(self, n.write_lost);
  PyRef holder;
  WriteBufferObject* wb = buffer_of(self, st, n, holder);
  if (!wb) return nullptr;
  int fd;
  if (!attr_fd(self, n, &fd)) return nullptr;
  if (wb->size == 0) {
    // Send at once; buffer only what the socket did not take.
    ssize_t sent = send(fd, view.buf, size_t(view.len), MSG_NOSIGNAL);
    if (sent < 0) {
      int err = errno;
      if (!would_block(err)) {
        return fatal_error(self, n, os_error(err), "Fatal write error on socket transport");
      }
      sent = 0;
    }
    if (sent == view.len) Py_RETURN_NONE;
    PyRef loop = slot(self, n, n.loop_offset, "_loop");
    PyRef cb = loop ? PyRef::steal(PyObject_GetAttr(self, n.write_ready.get())) : PyRef();
    PyRef fd_obj = cb ? PyRef::steal(PyLong_FromLong(fd)) : PyRef();
    PyRef added =
        fd_obj ? PyRef::steal(call_method(loop.get(), n.add_writer, fd_obj.get(), cb.get()))
               : PyRef();
    if (!added || !wb_append(wb, data, view, sent)) return nullptr;
  } else if (!wb_append(wb, data, view, 0)) {
    return nullptr;
  }
  if (!check_pause(self, n, wb)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Stream_write_ready(PyObject* self, PyTypeObject* cls, PyObject* const*,
                             Py_ssize_t nargs, PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  Names* names = st ? names_of(st) : nullptr;
  if (!names || !no_args("_write_ready", nargs, kwnames, 0)) return nullptr;
  const Names& n = *names;
  int lost = attr_true(self, n.conn_lost);
  if (lost) return lost < 0 ? nullptr : (Py_INCREF(Py_None), Py_None);
  PyRef holder;
  WriteBufferObject* wb = buffer_of(self, st, n, holder);
  int fd;
  if (!wb || !attr_fd(self, n, &fd)) return nullptr;
  PyRef fd_obj = PyRef::steal(PyLong_FromLong(fd));
  PyRef loop = fd_obj ? slot(self, n, n.loop_offset, "_loop") : PyRef();
  if (!loop) return nullptr;
  if (wb->size > 0) {
    iovec iov[kMaxIov];
    int count = 0;
    for (const Segment& s : *wb->segments) {
      if (count == kMaxIov) break;
      iov[count].iov_base = const_cast<char*>(s.data);
      iov[count].iov_len = size_t(s.len);
      ++count;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = size_t(count);
    ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (sent < 0) {
      int err = errno;
      if (would_block(err)) Py_RETURN_NONE;
      PyError e = os_error(err);
      PyRef removed = PyRef::steal(call_method(loop.get(), n.remove_writer, fd_obj.get()));
      if (!removed) return nullptr;
      wb_clear(wb);
      PyRef reported = PyRef::steal(fatal_error(self, n, e, "Fatal write error on socket transport"));
      if (!reported) return nullptr;
      PyRef waiter = attr(self, n.empty_waiter);
      if (!waiter) return nullptr;
      if (waiter.get() != Py_None) {
        return PyObject_CallMethod(waiter.get(), "set_exception", "O", e.value.get());
      }
      Py_RETURN_NONE;
    }
    wb_consume(wb, sent);
  }
  PyRef paused_obj = slot(self, n, n.paused_offset, "_protocol_paused");
  int paused = paused_obj ? PyObject_IsTrue(paused_obj.get()) : -1;
  if (paused < 0) return nullptr;
  if (paused) {
    PyRef done = PyRef::steal(call_method(self, n.maybe_resume));  // may write more
    if (!done) return nullptr;
  }
  if (wb->size == 0) {
    PyRef removed = PyRef::steal(call_method(loop.get(), n.remove_writer, fd_obj.get()));
    if (!removed) return nullptr;
    return call_method(self, n.write_drained);
  }
  Py_RETURN_NONE;
}

constexpr int kMethodFlags = METH_METHOD | METH_FASTCALL | METH_KEYWORDS;

template <typename F>
PyCFunction as_cfunction(F f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

PyMethodDef stream_methods[] = {
    {"_read_ready", as_cfunction(Stream_read_ready), kMethodFlags,
     "The descriptor is readable: recv and hand the data to the protocol."},
    {"write", as_cfunction(Stream_write), kMethodFlags,
     "write(data): sends data, buffering what the socket does not take at once."},
    {"_write_ready", as_cfunction(Stream_write_ready), kMethodFlags,
     "The descriptor is writable: flush the buffer."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot stream_slots[] = {
    {Py_tp_doc, const_cast<char*>("The C++ methods of erlang._transports.SocketTransport.")},
    {Py_tp_methods, stream_methods},
    {0, nullptr}};

PyType_Spec stream_spec = {"_pyport_transports.StreamMethods", 0, 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, stream_slots};

// ---------------------------------------------------------------- datagrams

// The last socket address sent to or received from, with its Python form:
// an echo server answers the address it just received from, a client sends
// to the same address again and again.
struct AddrCacheObject {
  PyObject_HEAD PyObject* addr;  // tuple or null
  sockaddr_storage storage;
  socklen_t len;
};

PyObject* AddrCache_new(PyTypeObject* type, PyObject*, PyObject*) {
  return type->tp_alloc(type, 0);
}

int AddrCache_traverse(AddrCacheObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->addr);
  return 0;
}

int AddrCache_clear(AddrCacheObject* self) {
  Py_CLEAR(self->addr);
  return 0;
}

void AddrCache_dealloc(AddrCacheObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Py_CLEAR(self->addr);
  type->tp_free(self);
  Py_DECREF(type);
}

PyType_Slot addr_cache_slots[] = {
    {Py_tp_doc, const_cast<char*>("A datagram transport's last socket address.")},
    {Py_tp_new, reinterpret_cast<void*>(AddrCache_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(AddrCache_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(AddrCache_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(AddrCache_clear)},
    {0, nullptr}};

PyType_Spec addr_cache_spec = {"_pyport_transports.AddrCache", sizeof(AddrCacheObject), 0,
                               Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, addr_cache_slots};

AddrCacheObject* cache_of(PyObject* self, ModuleState* st, const Names& n, PyRef& holder) {
  holder = attr(self, n.addr_cache);
  if (!holder) return nullptr;
  if (Py_TYPE(holder.get()) != reinterpret_cast<PyTypeObject*>(st->addr_cache_type)) {
    PyErr_SetString(PyExc_TypeError, "the transport's _pyport_addr must be an AddrCache");
    return nullptr;
  }
  return reinterpret_cast<AddrCacheObject*>(holder.get());
}

// The Python form of an IPv4/IPv6 address, as the socket module gives it.
PyObject* make_address(const sockaddr_storage& ss) {
  char host[NI_MAXHOST];
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    if (!inet_ntop(AF_INET, &a.sin_addr, host, sizeof host)) return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", host, int(ntohs(a.sin_port)));
  }
  const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
  int rc = getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof a, host, sizeof host,
                       nullptr, 0, NI_NUMERICHOST);
  if (rc) {
    PyErr_Format(PyExc_OSError, "cannot format an IPv6 address: %s", gai_strerror(rc));
    return nullptr;
  }
  return Py_BuildValue("(siII)", host, int(ntohs(a.sin6_port)), unsigned(ntohl(a.sin6_flowinfo)),
                       unsigned(a.sin6_scope_id));
}

// Numeric (host, port[, flowinfo[, scope_id]]) for `family` into the cache.
// 1 parsed, 0 not numeric (asyncio's path resolves it), -1 error set.
int parse_address(PyObject* addr, int family, AddrCacheObject* cache) {
  if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) return 0;
  PyObject* host = PyTuple_GET_ITEM(addr, 0);
  PyObject* port_obj = PyTuple_GET_ITEM(addr, 1);
  if (!PyUnicode_Check(host) || !PyLong_Check(port_obj)) return 0;
  const char* text = PyUnicode_AsUTF8(host);
  if (!text) return -1;
  long port = PyLong_AsLong(port_obj);
  if (port == -1 && PyErr_Occurred()) return -1;
  if (port < 0 || port > 65535) return 0;
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET) {
    if (PyTuple_GET_SIZE(addr) != 2) return 0;
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    if (inet_pton(AF_INET, text, &a.sin_addr) != 1) return 0;
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    len = sizeof a;
  } else {
    if (PyTuple_GET_SIZE(addr) > 4) return 0;
    auto& a = reinterpret_cast<sockaddr_in6&>(ss);
    if (inet_pton(AF_INET6, text, &a.sin6_addr) != 1) return 0;
    unsigned long flow = 0, scope = 0;
    if (PyTuple_GET_SIZE(addr) > 2) {
      flow = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 2));
      if (flow == (unsigned long)-1 && PyErr_Occurred()) return -1;
    }
    if (PyTuple_GET_SIZE(addr) > 3) {
      scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 3));
      if (scope == (unsigned long)-1 && PyErr_Occurred()) return -1;
    }
    if (flow > 0xfffff || scope > 0xffffffffUL) return 0;  // let the socket module say why
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(uint16_t(port));
    a.sin6_flowinfo = htonl(uint32_t(flow));
    a.sin6_scope_id = uint32_t(scope);
    len = sizeof a;
  }
  cache->storage = ss;
  cache->len = len;
  Py_INCREF(addr);
  Py_XSETREF(cache->addr, addr);
  return 1;
}

PyObject* Datagram_read_ready(PyObject* self, PyTypeObject* cls, PyObject* const*,
                              Py_ssize_t nargs, PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  Names* names = st ? names_of(st) : nullptr;
  if (!names || !no_args("_read_ready", nargs, kwnames, 0)) return nullptr;
  const Names& n = *names;
  int lost = attr_true(self, n.conn_lost);
  if (lost) return lost < 0 ? nullptr : (Py_INCREF(Py_None), Py_None);
  Py_ssize_t family, max_size;
  if (!attr_size(self, n.family, &family) || !attr_size(self, n.max_size, &max_size)) {
    return nullptr;
  }
  if ((family != AF_INET && family != AF_INET6) || max_size <= 0 || max_size > kScratch) {
    return call_method(self, n.slow_read_ready);
  }
  PyRef holder;
  AddrCacheObject* cache = cache_of(self, st, n, holder);
  int fd;
  PyRef protocol = cache ? attr(self, n.protocol) : PyRef();
  if (!protocol || !attr_fd(self, n, &fd)) return nullptr;
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t got = recvfrom(fd, st->scratch.get(), size_t(max_size), 0,
                         reinterpret_cast<sockaddr*>(&ss), &len);
  if (got < 0) {
    int err = errno;
    if (would_block(err)) Py_RETURN_NONE;
    PyError e = os_error(err);
    return call_method(protocol.get(), n.error_received, e.value.get());
  }
  PyRef data = PyRef::steal(PyBytes_FromStringAndSize(st->scratch.get(), got));
  if (!data) return nullptr;
  PyRef addr;
  if (cache->addr && len == cache->len && std::memcmp(&ss, &cache->storage, len) == 0) {
    addr = PyRef::borrow(cache->addr);
  } else if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    addr = PyRef::steal(make_address(ss));
    if (!addr) return nullptr;
    cache->storage = ss;
    cache->len = len;
    Py_XSETREF(cache->addr, PyRef(addr).release());
  } else {
    addr = PyRef::borrow(Py_None);  // no address (an unnamed peer)
  }
  // As in asyncio, an exception from datagram_received reaches the loop's
  // exception handler (the callback failed), not _fatal_error.
  return call_method(protocol.get(), n.datagram_received, data.get(), addr.get());
}

PyObject* Datagram_sendto(PyObject* self, PyTypeObject* cls, PyObject* const* args,
                          Py_ssize_t nargs, PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  Names* names = st ? names_of(st) : nullptr;
  if (!names) return nullptr;
  const Names& n = *names;
  auto take_slow_path = [&]() -> PyObject* {
    PyRef slow = PyRef::steal(PyObject_GetAttr(self, n.slow_sendto.get()));  // bound
    return slow ? PyObject_Vectorcall(slow.get(), args, size_t(nargs), kwnames) : nullptr;
  };
  if (nargs < 1 || nargs > 2 || (kwnames && PyTuple_GET_SIZE(kwnames))) return take_slow_path();
  PyObject* data = args[0];
  PyObject* addr = nargs == 2 ? args[1] : Py_None;
  if (!is_bytes_like(data)) return not_bytes_like(data);
  // The unusual cases keep asyncio's code: a transport lost or with a
  // backlog, a socket that is not IP, an address that needs resolving.
  int lost = attr_true(self, n.conn_lost);
  PyRef backlog = lost == 0 ? attr(self, n.buffer) : PyRef();
  if (!backlog) return lost > 0 ? take_slow_path() : nullptr;
  int waiting = PyObject_IsTrue(backlog.get());
  if (waiting < 0) return nullptr;
  Py_ssize_t family;
  if (!attr_size(self, n.family, &family)) return nullptr;
  if (waiting || (family != AF_INET && family != AF_INET6)) return take_slow_path();
  PyRef remote = attr(self, n.address);
  int connected = remote ? attr_true(self, n.connected) : -1;
  if (connected < 0) return nullptr;
  if (remote.get() != Py_None && PyObject_IsTrue(remote.get()) == 1) {
    if (addr != Py_None) {
      int same = PyObject_RichCompareBool(addr, remote.get(), Py_EQ);
      if (same < 0) return nullptr;
      if (!same) return take_slow_path();  // raises ValueError as asyncio does
    }
    addr = remote.get();
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> release(&view, PyBuffer_Release);
  if (view.len == 0) Py_RETURN_NONE;
  PyRef holder;
  AddrCacheObject* cache = nullptr;
  int fd;
  if (!attr_fd(self, n, &fd)) return nullptr;
  ssize_t sent;
  if (connected) {
    sent = send(fd, view.buf, size_t(view.len), 0);
  } else {
    cache = cache_of(self, st, n, holder);
    if (!cache) return nullptr;
    int known = cache->addr && cache->addr == addr;
    if (!known && cache->addr && PyTuple_CheckExact(addr)) {
      known = PyObject_RichCompareBool(addr, cache->addr, Py_EQ);
      if (known < 0) return nullptr;
    }
    if (!known) {
      int parsed = parse_address(addr, int(family), cache);
      if (parsed < 0) return nullptr;
      if (!parsed) return take_slow_path();
    }
    sent = sendto(fd, view.buf, size_t(view.len), 0,
                  reinterpret_cast<const sockaddr*>(&cache->storage), cache->len);
  }
  if (sent >= 0) Py_RETURN_NONE;
  int err = errno;
  if (would_block(err)) return call_method(self, n.backlog, data, addr);
  PyRef protocol = attr(self, n.protocol);
  if (!protocol) return nullptr;
  PyError e = os_error(err);
  PyRef done = PyRef::steal(call_method(protocol.get(), n.error_received, e.value.get()));
  if (!done) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef datagram_methods[] = {
    {"_read_ready", as_cfunction(Datagram_read_ready), kMethodFlags,
     "The descriptor is readable: recvfrom and hand the datagram to the protocol."},
    {"sendto", as_cfunction(Datagram_sendto), kMethodFlags,
     "sendto(data, addr=None): sends a datagram (to the remote address if connected)."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot datagram_slots[] = {
    {Py_tp_doc, const_cast<char*>("The C++ methods of erlang._transports.DatagramTransport.")},
    {Py_tp_methods, datagram_methods},
    {0, nullptr}};

PyType_Spec datagram_spec = {"_pyport_transports.DatagramMethods", 0, 0,
                             Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, datagram_slots};

// ---------------------------------------------------------------- module

ModuleState* module_state(PyObject* module) {
  return static_cast<ModuleState*>(PyModule_GetState(module));
}

int module_traverse(PyObject* module, visitproc visit, void* arg) {
  ModuleState* st = module_state(module);
  if (st) {
    Py_VISIT(st->write_buffer_type);
    Py_VISIT(st->addr_cache_type);
  }
  return 0;
}

int module_clear(PyObject* module) {
  ModuleState* st = module_state(module);
  if (st) {
    Py_CLEAR(st->write_buffer_type);
    Py_CLEAR(st->addr_cache_type);
    st->names.reset();
  }
  return 0;
}

void module_free(void* module) {
  ModuleState* st = module_state(static_cast<PyObject*>(module));
  if (st) {
    module_clear(static_cast<PyObject*>(module));
    st->~ModuleState();
  }
}

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_pyport_transports",
                          "C++ hot paths of erlang._transports (see port_worker/uv_transports.hpp).",
                          sizeof(ModuleState),
                          nullptr,
                          nullptr,
                          module_traverse,
                          module_clear,
                          module_free};

bool add_type(PyObject* module, PyType_Spec* spec, const char* name, PyObject** keep) {
  PyRef type = PyRef::steal(PyType_FromModuleAndSpec(module, spec, nullptr));
  if (!type || PyModule_AddObjectRef(module, name, type.get()) < 0) return false;
  if (keep) *keep = type.release();
  return true;
}

}  // namespace

namespace transports_module {

PyObject* init() {
  PyRef module = PyRef::steal(PyModule_Create(&module_def));
  if (!module) return nullptr;
  ModuleState* st = module_state(module.get());
  new (st) ModuleState();
  st->scratch.reset(new (std::nothrow) char[kScratch]);
  if (!st->scratch) return PyErr_NoMemory();
  if (!add_type(module.get(), &write_buffer_spec, "WriteBuffer", &st->write_buffer_type) ||
      !add_type(module.get(), &addr_cache_spec, "AddrCache", &st->addr_cache_type) ||
      !add_type(module.get(), &stream_spec, "StreamMethods", nullptr) ||
      !add_type(module.get(), &datagram_spec, "DatagramMethods", nullptr)) {
    return nullptr;
  }
  return module.release();
}

}  // namespace transports_module
}  // namespace pyport
