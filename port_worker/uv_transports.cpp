#include "uv_transports.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <structmember.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <deque>
#include <memory>
#include <new>

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
constexpr int kDatagramsPerEvent = 32;
constexpr int kReadsPerEvent = 32;

// The state the C++ methods use, stored in the transport object itself
// after asyncio's _FlowControlMixin slots. asyncio's Python code reads and
// sets the same attributes (_conn_lost, _eof, _protocol, ...) through the
// member descriptors of StreamBase/DatagramBase, so both sides share it.
struct StreamFields {
  PyObject* protocol;      // _protocol
  PyObject* empty_waiter;  // _empty_waiter
  PyObject* buffer;        // _buffer (a WriteBuffer)
  Py_ssize_t conn_lost;    // _conn_lost
  Py_ssize_t max_size;     // _pyport_max_size: what one recv may read
  int sock_fd;             // _sock_fd
  char eof;                // _eof
  char closing;            // _closing
  char paused;             // _paused: reading paused
  char buffered;           // _pyport_buffered: the protocol is a BufferedProtocol
  char big_reads;          // recent reads were large (see kBigRead)
};

struct DatagramFields {
  PyObject* protocol;    // _protocol
  PyObject* buffer;      // _buffer (asyncio's deque of datagrams waiting)
  PyObject* address;     // _address (the remote address, or None)
  PyObject* last_addr;   // _pyport_last_addr: the address as sendto() was given it
  PyObject* from_addr;   // _pyport_from_addr: Python form of `from`, as recvfrom gives it
  Py_ssize_t conn_lost;  // _conn_lost
  Py_ssize_t max_size;   // _pyport_max_size: the largest datagram received whole
  int sock_fd;           // _sock_fd
  int family;            // _pyport_family: AF_INET, AF_INET6, or 0 (asyncio's path)
  char connected;        // _pyport_connected: the socket has a peer (send, not sendto)
  // The last socket address sent to and the last received from: a client
  // sends to the same address again and again, a server answers the address
  // it just received from. Two caches, as the same socket address has
  // several Python forms ((host, port) or (host, port, flow, scope) for IPv6)
  // and datagram_received must get the socket module's.
  socklen_t last_len, from_len;
  sockaddr_storage last, from;
};

struct Names {
  PyRef fatal_error, on_eof, data_received, get_buffer, buffer_updated, add_writer, remove_writer,
      write_ready, maybe_pause, maybe_resume, write_drained, write_lost, error_received,
      datagram_received, backlog, slow_sendto, slow_read_ready, set_exception;

  bool load() {
    struct {
      PyRef* slot;
      const char* name;
    } names[] = {{&fatal_error, "_fatal_error"},
                 {&on_eof, "_read_ready__on_eof"},
                 {&data_received, "data_received"},
                 {&get_buffer, "get_buffer"},
                 {&buffer_updated, "buffer_updated"},
                 {&add_writer, "_add_writer"},
                 {&remove_writer, "_remove_writer"},
                 {&write_ready, "_write_ready"},
                 {&maybe_pause, "_maybe_pause_protocol"},
                 {&maybe_resume, "_maybe_resume_protocol"},
                 {&write_drained, "_pyport_write_drained"},
                 {&write_lost, "_pyport_write_lost"},
                 {&error_received, "error_received"},
                 {&datagram_received, "datagram_received"},
                 {&backlog, "_pyport_backlog"},
                 {&slow_sendto, "_pyport_slow_sendto"},
                 {&slow_read_ready, "_pyport_slow_read_ready"},
                 {&set_exception, "set_exception"}};
    for (auto& n : names) {
      *n.slot = PyRef::steal(PyUnicode_InternFromString(n.name));
      if (!*n.slot) return false;
    }
    return true;
  }
};

struct ModuleState {
  PyObject* write_buffer_type = nullptr;  // strong
  Names names;
  // Where StreamFields/DatagramFields start in a transport: the size of
  // asyncio's _FlowControlMixin instances. And its slots _loop,
  // _protocol_paused, _high_water.
  Py_ssize_t fields_offset = 0;
  Py_ssize_t loop_offset = 0, paused_offset = 0, high_offset = 0;
  // Only touched with the GIL held and never across a call into Python.
  std::unique_ptr<char[]> scratch;
};

ModuleState* state_of(PyTypeObject* defining_class) {
  return static_cast<ModuleState*>(PyType_GetModuleState(defining_class));
}

template <typename Fields>
Fields& fields(PyObject* self, const ModuleState* st) {
  return *reinterpret_cast<Fields*>(reinterpret_cast<char*>(self) + st->fields_offset);
}

// A _FlowControlMixin slot of a transport (null with AttributeError if unset).
PyObject* slot(PyObject* self, Py_ssize_t offset, const char* name) {
  PyObject* v = *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(self) + offset);
  if (!v) PyErr_Format(PyExc_AttributeError, "the transport has no attribute '%s'", name);
  return v;
}

// ---------------------------------------------------------------- helpers

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
PyObject* fatal_error(PyObject* self, const Names& n, const PyError& e, const char* message) {
  PyRef msg = PyRef::steal(PyUnicode_FromString(message));
  if (!msg) return nullptr;
  return call_method(self, n.fatal_error, e.value.get(), msg.get());
}

PyObject* fatal_current(PyObject* self, const Names& n, const char* message) {
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
    return nullptr;
  return fatal_error(self, n, PyError::fetch(), message);
}

bool no_args(const char* name, Py_ssize_t nargs, PyObject* kwnames, Py_ssize_t want) {
  if (nargs != want || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments", name, want);
    return false;
  }
  return true;
}

PyObject* none() {
  Py_RETURN_NONE;
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
    owner = PyRef::steal(
        PyBytes_FromStringAndSize(static_cast<const char*>(view.buf) + offset, view.len - offset));
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

PyMethodDef write_buffer_methods[] = {{"clear", reinterpret_cast<PyCFunction>(WriteBuffer_clear),
                                       METH_NOARGS, "clear(): drops every byte waiting."},
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

// The stream's WriteBuffer (null with an exception set if _buffer is not one).
WriteBufferObject* buffer_of(const StreamFields& f, const ModuleState* st) {
  if (!f.buffer || Py_TYPE(f.buffer) != reinterpret_cast<PyTypeObject*>(st->write_buffer_type)) {
    PyErr_SetString(PyExc_TypeError, "the transport's _buffer must be a WriteBuffer");
    return nullptr;
  }
  return reinterpret_cast<WriteBufferObject*>(f.buffer);
}

PyObject* protocol_of(PyObject* protocol) {
  if (!protocol) PyErr_SetString(PyExc_AttributeError, "the transport has no protocol");
  return protocol;
}

// ---------------------------------------------------------------- stream methods

// data_received(recv(...)), reading into the scratch buffer or, for bulk
// data, straight into the bytes object handed over.
PyObject* read_data(PyObject* self, ModuleState* st, StreamFields& f, PyObject* protocol,
                    bool* full) {
  const Names& n = st->names;
  Py_ssize_t max_size = f.max_size > 0 ? f.max_size : kScratch;
  PyRef data;
  ssize_t got;
  if (f.big_reads || max_size > kScratch) {
    data = PyRef::steal(PyBytes_FromStringAndSize(nullptr, max_size));
    if (!data) return nullptr;
    got = recv(f.sock_fd, PyBytes_AS_STRING(data.get()), size_t(max_size), 0);
    if (got > 0) {
      if (got < kSmallRead) f.big_reads = false;
      PyObject* raw = data.release();
      if (_PyBytes_Resize(&raw, got) < 0) return nullptr;
      data = PyRef::steal(raw);
    }
  } else {
    got = recv(f.sock_fd, st->scratch.get(), size_t(max_size), 0);
    if (got > 0) {
      if (got >= kBigRead) f.big_reads = true;
      data = PyRef::steal(PyBytes_FromStringAndSize(st->scratch.get(), got));
      if (!data) return nullptr;
    }
  }
  if (got < 0) {
    int err = errno;
    if (would_block(err)) return none();
    return fatal_error(self, n, os_error(err), "Fatal read error on socket transport");
  }
  if (got == 0) return call_method(self, n.on_eof);
  *full = got == max_size;
  PyRef done = PyRef::steal(call_method(protocol, n.data_received, data.get()));
  if (!done) return fatal_current(self, n, "Fatal error: protocol.data_received() call failed.");
  return none();
}

// get_buffer(-1), recv_into it, buffer_updated(n): BufferedProtocol.
PyObject* read_buffered(PyObject* self, const ModuleState* st, int fd, PyObject* protocol,
                        bool* full) {
  const Names& n = st->names;
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
    if (would_block(err)) return none();
    return fatal_error(self, n, os_error(err), "Fatal read error on socket transport");
  }
  if (got == 0) return call_method(self, n.on_eof);
  *full = got == view.len;
  PyRef count = PyRef::steal(PyLong_FromSsize_t(got));
  if (!count) return nullptr;
  PyRef done = PyRef::steal(call_method(protocol, n.buffer_updated, count.get()));
  if (!done) return fatal_current(self, n, "Fatal error: protocol.buffer_updated() call failed.");
  return none();
}

PyObject* Stream_read_ready(PyObject* self, PyTypeObject* cls, PyObject* const*, Py_ssize_t nargs,
                            PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  if (!st || !no_args("_read_ready", nargs, kwnames, 0)) return nullptr;
  auto& f = fields<StreamFields>(self, st);
  // While reads fill the buffer more is likely waiting: read again (up to
  // kReadsPerEvent times, as libuv does) rather than wait for the next loop
  // iteration, unless the protocol paused reading or the transport closed.
  // (The first read is done whatever the state, as asyncio does for an
  // event queued before the protocol paused or closed.)
  for (int i = 0; i < kReadsPerEvent && !f.conn_lost && (i == 0 || !(f.closing || f.paused)); ++i) {
    // The protocol is held: it may be replaced (set_protocol) while it runs.
    PyRef protocol = PyRef::borrow(protocol_of(f.protocol));
    if (!protocol) return nullptr;
    bool full = false;
    PyRef done = PyRef::steal(f.buffered ? read_buffered(self, st, f.sock_fd, protocol.get(), &full)
                                         : read_data(self, st, f, protocol.get(), &full));
    if (!done) return nullptr;
    if (!full) break;
  }
  return none();
}

// Calls transport._maybe_pause_protocol() once the buffer is over the high
// water mark (it pauses the protocol if it is not paused yet).
bool check_pause(PyObject* self, const ModuleState* st, const WriteBufferObject* wb) {
  PyObject* high_obj = slot(self, st->high_offset, "_high_water");
  Py_ssize_t high = high_obj ? PyLong_AsSsize_t(high_obj) : -1;
  if (high == -1 && PyErr_Occurred()) return false;
  if (wb->size <= high) return true;
  PyRef done = PyRef::steal(call_method(self, st->names.maybe_pause));
  return bool(done);
}

PyObject* Stream_write(PyObject* self, PyTypeObject* cls, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  if (!st || !no_args("write", nargs, kwnames, 1)) return nullptr;
  const Names& n = st->names;
  auto& f = fields<StreamFields>(self, st);
  PyObject* data = args[0];
  if (!is_bytes_like(data)) return not_bytes_like(data);
  if (f.eof) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return nullptr;
  }
  if (f.empty_waiter && f.empty_waiter != Py_None) {
    PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
    return nullptr;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> release(&view, PyBuffer_Release);
  if (view.len == 0) return none();
  if (f.conn_lost) return call_method(self, n.write_lost);
  PyRef holder = PyRef::borrow(f.buffer);
  WriteBufferObject* wb = buffer_of(f, st);
  if (!wb) return nullptr;
  if (wb->size == 0) {
    // Send at once; buffer only what the socket did not take.
    ssize_t sent = send(f.sock_fd, view.buf, size_t(view.len), MSG_NOSIGNAL);
    if (sent < 0) {
      int err = errno;
      if (!would_block(err)) {
        return fatal_error(self, n, os_error(err), "Fatal write error on socket transport");
      }
      sent = 0;
    }
    if (sent == view.len) return none();
    PyRef loop = PyRef::borrow(slot(self, st->loop_offset, "_loop"));
    PyRef cb = loop ? PyRef::steal(PyObject_GetAttr(self, n.write_ready.get())) : PyRef();
    PyRef fd = cb ? PyRef::steal(PyLong_FromLong(f.sock_fd)) : PyRef();
    PyRef added =
        fd ? PyRef::steal(call_method(loop.get(), n.add_writer, fd.get(), cb.get())) : PyRef();
    if (!added || !wb_append(wb, data, view, sent)) return nullptr;
  } else if (!wb_append(wb, data, view, 0)) {
    return nullptr;
  }
  if (!check_pause(self, st, wb)) return nullptr;
  return none();
}

PyObject* Stream_write_ready(PyObject* self, PyTypeObject* cls, PyObject* const*, Py_ssize_t nargs,
                             PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  if (!st || !no_args("_write_ready", nargs, kwnames, 0)) return nullptr;
  const Names& n = st->names;
  auto& f = fields<StreamFields>(self, st);
  if (f.conn_lost) return none();
  PyRef holder = PyRef::borrow(f.buffer);
  WriteBufferObject* wb = buffer_of(f, st);
  if (!wb) return nullptr;
  PyRef fd = PyRef::steal(PyLong_FromLong(f.sock_fd));
  PyRef loop = fd ? PyRef::borrow(slot(self, st->loop_offset, "_loop")) : PyRef();
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
    ssize_t sent = sendmsg(f.sock_fd, &msg, MSG_NOSIGNAL);
    if (sent < 0) {
      int err = errno;
      if (would_block(err)) return none();
      PyError e = os_error(err);
      PyRef removed = PyRef::steal(call_method(loop.get(), n.remove_writer, fd.get()));
      if (!removed) return nullptr;
      wb_clear(wb);
      PyRef reported =
          PyRef::steal(fatal_error(self, n, e, "Fatal write error on socket transport"));
      if (!reported) return nullptr;
      PyObject* waiter = f.empty_waiter;
      if (waiter && waiter != Py_None) {
        return call_method(PyRef::borrow(waiter).get(), n.set_exception, e.value.get());
      }
      return none();
    }
    wb_consume(wb, sent);
  }
  PyObject* paused_obj = slot(self, st->paused_offset, "_protocol_paused");
  int paused = paused_obj ? PyObject_IsTrue(paused_obj) : -1;
  if (paused < 0) return nullptr;
  if (paused) {
    PyRef done = PyRef::steal(call_method(self, n.maybe_resume));  // may write more
    if (!done) return nullptr;
  }
  if (wb->size == 0) {
    PyRef removed = PyRef::steal(call_method(loop.get(), n.remove_writer, fd.get()));
    if (!removed) return nullptr;
    return call_method(self, n.write_drained);
  }
  return none();
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

// ---------------------------------------------------------------- datagrams

// The Python form of an IPv4/IPv6 address, as the socket module gives it.
PyObject* make_address(const sockaddr_storage& ss) {
  char host[NI_MAXHOST];
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    if (!inet_ntop(AF_INET, &a.sin_addr, host, sizeof host)) {
      return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(si)", host, int(ntohs(a.sin_port)));
  }
  const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
  int rc = getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof a, host, sizeof host, nullptr,
                       0, NI_NUMERICHOST);
  if (rc) {
    PyErr_Format(PyExc_OSError, "cannot format an IPv6 address: %s", gai_strerror(rc));
    return nullptr;
  }
  return Py_BuildValue("(siII)", host, int(ntohs(a.sin6_port)), unsigned(ntohl(a.sin6_flowinfo)),
                       unsigned(a.sin6_scope_id));
}

// A numeric (host, port[, flowinfo[, scope_id]]) of the socket's family
// into the last-address cache. 1 parsed, 0 not numeric (asyncio's path
// resolves it or says why not), -1 error set.
int parse_address(PyObject* addr, DatagramFields& f) {
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
  if (f.family == AF_INET) {
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
      if (flow == static_cast<unsigned long>(-1) && PyErr_Occurred()) return -1;
    }
    if (PyTuple_GET_SIZE(addr) > 3) {
      scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 3));
      if (scope == static_cast<unsigned long>(-1) && PyErr_Occurred()) return -1;
    }
    if (flow > 0xfffff || scope > 0xffffffffUL) return 0;
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(uint16_t(port));
    a.sin6_flowinfo = htonl(uint32_t(flow));
    a.sin6_scope_id = uint32_t(scope);
    len = sizeof a;
  }
  f.last = ss;
  f.last_len = len;
  Py_INCREF(addr);
  Py_XSETREF(f.last_addr, addr);
  return 1;
}

// One received datagram to the protocol: false with an exception set (from
// datagram_received, which reaches the loop's exception handler as in
// asyncio, or a failure to build the arguments).
bool deliver_datagram(const ModuleState* st, DatagramFields& f, PyObject* protocol,
                      const sockaddr_storage& ss, socklen_t len, ssize_t got) {
  PyRef data = PyRef::steal(PyBytes_FromStringAndSize(st->scratch.get(), got));
  if (!data) return false;
  PyRef addr;
  if (f.from_addr && len == f.from_len && std::memcmp(&ss, &f.from, len) == 0) {
    addr = PyRef::borrow(f.from_addr);
  } else if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    addr = PyRef::steal(make_address(ss));
    if (!addr) return false;
    f.from = ss;
    f.from_len = len;
    Py_XSETREF(f.from_addr, PyRef(addr).release());
  } else {
    addr = PyRef::borrow(Py_None);  // an unnamed peer
  }
  PyRef done =
      PyRef::steal(call_method(protocol, st->names.datagram_received, data.get(), addr.get()));
  return bool(done);
}

PyObject* Datagram_read_ready(PyObject* self, PyTypeObject* cls, PyObject* const*, Py_ssize_t nargs,
                              PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  if (!st || !no_args("_read_ready", nargs, kwnames, 0)) return nullptr;
  const Names& n = st->names;
  auto& f = fields<DatagramFields>(self, st);
  if (f.conn_lost) return none();
  if ((f.family != AF_INET && f.family != AF_INET6) || f.max_size <= 0 || f.max_size > kScratch) {
    return call_method(self, n.slow_read_ready);
  }
  // Up to kDatagramsPerEvent datagrams per readiness event, as libuv does:
  // one loop iteration then serves a burst. Each goes to the protocol
  // before the next is read; the transport being closed meanwhile ends it.
  for (int i = 0; i < kDatagramsPerEvent && !f.conn_lost; ++i) {
    PyRef protocol = PyRef::borrow(protocol_of(f.protocol));
    if (!protocol) return nullptr;
    sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ssize_t got = recvfrom(f.sock_fd, st->scratch.get(), size_t(f.max_size), 0,
                           reinterpret_cast<sockaddr*>(&ss), &len);
    if (got < 0) {
      int err = errno;
      if (would_block(err)) break;
      PyError e = os_error(err);
      return call_method(protocol.get(), n.error_received, e.value.get());
    }
    if (!deliver_datagram(st, f, protocol.get(), ss, len, got)) return nullptr;
  }
  return none();
}

PyObject* Datagram_sendto(PyObject* self, PyTypeObject* cls, PyObject* const* args,
                          Py_ssize_t nargs, PyObject* kwnames) {
  ModuleState* st = state_of(cls);
  if (!st) return nullptr;
  const Names& n = st->names;
  auto& f = fields<DatagramFields>(self, st);
  // The unusual cases keep asyncio's code: odd arguments, a transport lost
  // or with a backlog, a socket that is not IP, an address to resolve.
  auto asyncio_sendto = [&]() -> PyObject* {
    PyRef slow = PyRef::steal(PyObject_GetAttr(self, n.slow_sendto.get()));  // bound
    return slow ? PyObject_Vectorcall(slow.get(), args, size_t(nargs), kwnames) : nullptr;
  };
  if (nargs < 1 || nargs > 2 || (kwnames && PyTuple_GET_SIZE(kwnames))) return asyncio_sendto();
  PyObject* data = args[0];
  PyObject* addr = nargs == 2 ? args[1] : Py_None;
  if (!is_bytes_like(data)) return not_bytes_like(data);
  if (f.conn_lost || (f.family != AF_INET && f.family != AF_INET6) || !f.buffer) {
    return asyncio_sendto();
  }
  Py_ssize_t backlog = PyObject_Size(f.buffer);
  if (backlog) return backlog < 0 ? nullptr : asyncio_sendto();
  if (f.address && f.address != Py_None) {
    if (addr != Py_None && addr != f.address) {
      int same = PyObject_RichCompareBool(addr, f.address, Py_EQ);
      if (same < 0) return nullptr;
      if (!same) return asyncio_sendto();  // raises ValueError, as asyncio does
    }
    addr = f.address;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> release(&view, PyBuffer_Release);
  if (view.len == 0) return none();
  PyRef held_addr = PyRef::borrow(addr);
  ssize_t sent;
  if (f.connected) {
    sent = send(f.sock_fd, view.buf, size_t(view.len), 0);
  } else if (f.from_addr && addr == f.from_addr) {
    // An answer to the last sender.
    sent = sendto(f.sock_fd, view.buf, size_t(view.len), 0,
                  reinterpret_cast<const sockaddr*>(&f.from), f.from_len);
  } else {
    int known = f.last_addr && f.last_addr == addr;
    if (!known && f.last_addr && PyTuple_CheckExact(addr)) {
      known = PyObject_RichCompareBool(addr, f.last_addr, Py_EQ);
      if (known < 0) return nullptr;
    }
    if (!known) {
      int parsed = parse_address(addr, f);
      if (parsed < 0) return nullptr;
      if (!parsed) return asyncio_sendto();
    }
    sent = sendto(f.sock_fd, view.buf, size_t(view.len), 0,
                  reinterpret_cast<const sockaddr*>(&f.last), f.last_len);
  }
  if (sent >= 0) return none();
  int err = errno;
  if (would_block(err)) return call_method(self, n.backlog, data, held_addr.get());
  PyRef protocol = PyRef::borrow(protocol_of(f.protocol));
  if (!protocol) return nullptr;
  PyError e = os_error(err);
  PyRef done = PyRef::steal(call_method(protocol.get(), n.error_received, e.value.get()));
  if (!done) return nullptr;
  return none();
}

PyMethodDef datagram_methods[] = {
    {"_read_ready", as_cfunction(Datagram_read_ready), kMethodFlags,
     "The descriptor is readable: recvfrom and hand the datagram to the protocol."},
    {"sendto", as_cfunction(Datagram_sendto), kMethodFlags,
     "sendto(data, addr=None): sends a datagram (to the remote address if connected)."},
    {nullptr, nullptr, 0, nullptr}};

// ---------------------------------------------------------------- module

ModuleState* module_state(PyObject* module) {
  return static_cast<ModuleState*>(PyModule_GetState(module));
}

int module_traverse(PyObject* module, visitproc visit, void* arg) {
  ModuleState* st = module_state(module);
  if (st) Py_VISIT(st->write_buffer_type);
  return 0;
}

int module_clear(PyObject* module) {
  ModuleState* st = module_state(module);
  if (st) Py_CLEAR(st->write_buffer_type);
  return 0;
}

void module_free(void* module) {
  ModuleState* st = module_state(static_cast<PyObject*>(module));
  if (st) {
    module_clear(static_cast<PyObject*>(module));
    st->~ModuleState();
  }
}

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_pyport_transports",
    "C++ hot paths of erlang._transports (see port_worker/uv_transports.hpp).",
    sizeof(ModuleState),
    nullptr,
    nullptr,
    module_traverse,
    module_clear,
    module_free};

// Finds asyncio's _FlowControlMixin: its instance size (where our fields
// go) and the offsets of the slots the methods read.
bool load_flow_control(ModuleState* st, PyRef& flow) {
  PyRef mod = PyRef::steal(PyImport_ImportModule("asyncio.transports"));
  flow = mod ? PyRef::steal(PyObject_GetAttrString(mod.get(), "_FlowControlMixin")) : PyRef();
  if (!flow) return false;
  if (!PyType_Check(flow.get())) {
    PyErr_SetString(PyExc_TypeError, "asyncio.transports._FlowControlMixin is not a class");
    return false;
  }
  auto* type = reinterpret_cast<PyTypeObject*>(flow.get());
  st->fields_offset = type->tp_basicsize;
  struct {
    Py_ssize_t* slot;
    const char* name;
  } slots[] = {{&st->loop_offset, "_loop"},
               {&st->paused_offset, "_protocol_paused"},
               {&st->high_offset, "_high_water"}};
  for (auto& sl : slots) {
    PyObject* descr = PyDict_GetItemString(type->tp_dict, sl.name);
    if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
        reinterpret_cast<PyMemberDescrObject*>(descr)->d_member->type != T_OBJECT_EX) {
      PyErr_Format(PyExc_TypeError, "asyncio's _FlowControlMixin.%s is not a slot", sl.name);
      return false;
    }
    *sl.slot = reinterpret_cast<PyMemberDescrObject*>(descr)->d_member->offset;
  }
  return true;
}

#define FIELD(type, name, kind, field) \
  { name, kind, base + Py_ssize_t(offsetof(type, field)), 0, nullptr }

// A class derived from _FlowControlMixin whose instances carry `Fields`
// (exposed as `members`) and whose methods are `methods`. Instances are
// collected and freed by the interpreter's own code for heap classes (the
// object members are listed, nothing else needs freeing).
bool add_base(PyObject* module, PyObject* flow, const char* qualname, const char* attr,
              int fields_size, PyMemberDef* members, PyMethodDef* methods) {
  auto* flow_type = reinterpret_cast<PyTypeObject*>(flow);
  PyType_Slot slots[] = {{Py_tp_members, members}, {Py_tp_methods, methods}, {0, nullptr}};
  PyType_Spec spec = {qualname, int(flow_type->tp_basicsize) + fields_size, 0,
                      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, slots};
  PyRef bases = PyRef::steal(PyTuple_Pack(1, flow));
  PyRef type = bases ? PyRef::steal(PyType_FromModuleAndSpec(module, &spec, bases.get())) : PyRef();
  return type && PyModule_AddObjectRef(module, attr, type.get()) == 0;
}

bool add_transport_bases(PyObject* module, ModuleState* st, PyObject* flow) {
  Py_ssize_t base = st->fields_offset;
  PyMemberDef stream_members[] = {FIELD(StreamFields, "_protocol", T_OBJECT_EX, protocol),
                                  FIELD(StreamFields, "_empty_waiter", T_OBJECT_EX, empty_waiter),
                                  FIELD(StreamFields, "_buffer", T_OBJECT_EX, buffer),
                                  FIELD(StreamFields, "_conn_lost", T_PYSSIZET, conn_lost),
                                  FIELD(StreamFields, "_pyport_max_size", T_PYSSIZET, max_size),
                                  FIELD(StreamFields, "_sock_fd", T_INT, sock_fd),
                                  FIELD(StreamFields, "_eof", T_BOOL, eof),
                                  FIELD(StreamFields, "_closing", T_BOOL, closing),
                                  FIELD(StreamFields, "_paused", T_BOOL, paused),
                                  FIELD(StreamFields, "_pyport_buffered", T_BOOL, buffered),
                                  {nullptr, 0, 0, 0, nullptr}};
  PyMemberDef datagram_members[] = {
      FIELD(DatagramFields, "_protocol", T_OBJECT_EX, protocol),
      FIELD(DatagramFields, "_buffer", T_OBJECT_EX, buffer),
      FIELD(DatagramFields, "_address", T_OBJECT_EX, address),
      FIELD(DatagramFields, "_pyport_last_addr", T_OBJECT_EX, last_addr),
      FIELD(DatagramFields, "_pyport_from_addr", T_OBJECT_EX, from_addr),
      FIELD(DatagramFields, "_conn_lost", T_PYSSIZET, conn_lost),
      FIELD(DatagramFields, "_pyport_max_size", T_PYSSIZET, max_size),
      FIELD(DatagramFields, "_sock_fd", T_INT, sock_fd),
      FIELD(DatagramFields, "_pyport_family", T_INT, family),
      FIELD(DatagramFields, "_pyport_connected", T_BOOL, connected),
      {nullptr, 0, 0, 0, nullptr}};
  return add_base(module, flow, "_pyport_transports.StreamBase", "StreamBase",
                  int(sizeof(StreamFields)), stream_members, stream_methods) &&
         add_base(module, flow, "_pyport_transports.DatagramBase", "DatagramBase",
                  int(sizeof(DatagramFields)), datagram_members, datagram_methods);
}

#undef FIELD

}  // namespace

namespace transports_module {

PyObject* init() {
  PyRef module = PyRef::steal(PyModule_Create(&module_def));
  if (!module) return nullptr;
  ModuleState* st = module_state(module.get());
  new (st) ModuleState();
  st->scratch.reset(new (std::nothrow) char[kScratch]);
  if (!st->scratch) return PyErr_NoMemory();
  if (!st->names.load()) return nullptr;
  PyRef wb = PyRef::steal(PyType_FromModuleAndSpec(module.get(), &write_buffer_spec, nullptr));
  if (!wb || PyModule_AddObjectRef(module.get(), "WriteBuffer", wb.get()) < 0) return nullptr;
  st->write_buffer_type = wb.release();
  PyRef flow;
  if (!load_flow_control(st, flow) || !add_transport_bases(module.get(), st, flow.get())) {
    return nullptr;
  }
  return module.release();
}

}  // namespace transports_module
}  // namespace pyport
