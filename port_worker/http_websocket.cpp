#define PY_SSIZE_T_CLEAN
#include "http_websocket.hpp"

#include <wslay/wslay.h>
#include <zlib.h>

#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "py_ref.hpp"

namespace pyport {
namespace {

enum Event { kText = 0, kBinary = 1, kClose = 2 };

struct ContextDeleter {
  void operator()(wslay_event_context* ctx) const { wslay_event_context_free(ctx); }
};
using ContextPtr = std::unique_ptr<wslay_event_context, ContextDeleter>;

// permessage-deflate (RFC 7692) as negotiated by _websocket.py: raw
// deflate streams (no zlib header), each message ending with a sync flush
// whose 00 00 FF FF tail is left off the wire. The zlib streams are made
// on first use (a deflater is ~256 KiB), and the deflater is freed after
// each message under server_no_context_takeover.
struct Deflate {
  bool no_context = false;  // server_no_context_takeover
  int window_bits = 15;     // server_max_window_bits (9..15)
  z_stream def{};
  bool def_open = false;
  z_stream inf{};
  bool inf_open = false;

  Deflate() = default;
  Deflate(const Deflate&) = delete;
  Deflate& operator=(const Deflate&) = delete;
  ~Deflate() {
    if (def_open) deflateEnd(&def);
    if (inf_open) inflateEnd(&inf);
  }
};

// Messages shorter than this go uncompressed (RSV1 clear; RFC 7692 6):
// deflate would not make them smaller.
constexpr size_t kDeflateMin = 64;

// The C++ side of a Session. Python objects are only touched from
// wslay's callbacks while feed() runs, under the GIL.
struct State {
  ContextPtr ctx;
  std::unique_ptr<Deflate> pmd;  // null: no permessage-deflate
  unsigned long long max_message = 0;
  const uint8_t* in = nullptr;  // the bytes of the feed() in progress
  size_t in_len = 0;
  std::string out;             // frames to write, taken by the caller
  PyObject* events = nullptr;  // borrowed: the list feed() returns
  bool python_error = false;   // a callback could not build an event
};

struct SessionObject {
  PyObject_HEAD State* st;
};

ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t* buf, size_t len, int, void* user) noexcept {
  auto* st = static_cast<State*>(user);
  if (st->in_len == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < st->in_len ? len : st->in_len;
  std::memcpy(buf, st->in, n);
  st->in += n;
  st->in_len -= n;
  return static_cast<ssize_t>(n);
}

ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t* data, size_t len, int,
                void* user) noexcept {
  auto* st = static_cast<State*>(user);
  try {
    st->out.append(reinterpret_cast<const char*>(data), len);
  } catch (...) {  // bad_alloc: never across wslay's C frames
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return static_cast<ssize_t>(len);
}

void fail_connection(wslay_event_context_ptr ctx, uint16_t code, const char* reason) {
  wslay_event_queue_close(ctx, code, reinterpret_cast<const uint8_t*>(reason), std::strlen(reason));
  wslay_event_shutdown_read(ctx);
}

bool append(State* st, PyObject* event) {
  if (!event) return false;
  int rc = PyList_Append(st->events, event);
  Py_DECREF(event);
  return rc == 0;
}

enum class Inflated { kOk, kTooBig, kBad };

// A compressed message's payload, inflated into `out` (at most `max`
// bytes when max > 0: a small frame may inflate to gigabytes).
Inflated inflate_message(Deflate* d, const uint8_t* data, size_t len, unsigned long long max,
                         std::string* out) noexcept {
  if (!d->inf_open) {
    if (inflateInit2(&d->inf, -15) != Z_OK) return Inflated::kBad;
    d->inf_open = true;
  }
  static const uint8_t kTail[4] = {0, 0, 0xff, 0xff};
  uint8_t buf[16384];
  for (int part = 0; part < 2; ++part) {
    d->inf.next_in = const_cast<uint8_t*>(part == 0 ? data : kTail);
    d->inf.avail_in = static_cast<uInt>(part == 0 ? len : sizeof kTail);
    do {
      d->inf.next_out = buf;
      d->inf.avail_out = sizeof buf;
      int rc = inflate(&d->inf, Z_SYNC_FLUSH);
      if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) return Inflated::kBad;
      size_t got = sizeof buf - d->inf.avail_out;
      if (max && out->size() + got > max) return Inflated::kTooBig;
      try {
        out->append(reinterpret_cast<const char*>(buf), got);
      } catch (...) {
        return Inflated::kTooBig;
      }
      if (rc == Z_STREAM_END) {
        // A final block (BFINAL) ended the stream: the next message
        // starts a new one.
        inflateReset(&d->inf);
        return Inflated::kOk;
      }
      if (rc == Z_BUF_ERROR && got == 0) break;  // needs more input
    } while (d->inf.avail_in > 0 || d->inf.avail_out == 0);
  }
  return Inflated::kOk;
}

void on_msg_cb(wslay_event_context_ptr ctx, const wslay_event_on_msg_recv_arg* arg,
               void* user) noexcept {
  auto* st = static_cast<State*>(user);
  if (st->python_error || !st->events) return;
  const char* data = reinterpret_cast<const char*>(arg->msg);
  auto len = static_cast<Py_ssize_t>(arg->msg_length);
  std::string inflated;
  if ((arg->rsv & WSLAY_RSV1_BIT) && st->pmd &&
      (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME)) {
    switch (inflate_message(st->pmd.get(), arg->msg, arg->msg_length, st->max_message, &inflated)) {
      case Inflated::kOk:
        break;
      case Inflated::kTooBig:
        fail_connection(ctx, WSLAY_CODE_MESSAGE_TOO_BIG, "message too big (inflated)");
        return;
      case Inflated::kBad:
        fail_connection(ctx, WSLAY_CODE_PROTOCOL_ERROR, "bad permessage-deflate data");
        return;
    }
    data = inflated.data();
    len = static_cast<Py_ssize_t>(inflated.size());
  }
  PyObject* event = nullptr;
  switch (arg->opcode) {
    case WSLAY_TEXT_FRAME: {
      PyObject* text = PyUnicode_DecodeUTF8(data, len, nullptr);
      if (!text) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
          st->python_error = true;
          return;
        }
        PyErr_Clear();
        fail_connection(ctx, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA,
                        "invalid UTF-8 in a text message");
        return;
      }
      event = Py_BuildValue("(iN)", static_cast<int>(kText), text);
      break;
    }
    case WSLAY_BINARY_FRAME:
      event = Py_BuildValue("(iy#)", static_cast<int>(kBinary), data, len);
      break;
    case WSLAY_CONNECTION_CLOSE: {
      int code = arg->status_code ? arg->status_code : static_cast<int>(WSLAY_CODE_NO_STATUS_RCVD);
      const char* reason = len > 2 ? data + 2 : "";
      Py_ssize_t reason_len = len > 2 ? len - 2 : 0;
      event = Py_BuildValue("(iiN)", static_cast<int>(kClose), code,
                            PyUnicode_DecodeUTF8(reason, reason_len, "replace"));
      break;
    }
    default:  // ping (wslay queued the pong), pong
      return;
  }
  if (!append(st, event)) st->python_error = true;
}

bool make_context(State* st, unsigned long long max_message, bool deflate) {
  wslay_event_callbacks callbacks{};
  callbacks.recv_callback = recv_cb;
  callbacks.send_callback = send_cb;
  callbacks.on_msg_recv_callback = on_msg_cb;
  wslay_event_context_ptr raw = nullptr;
  if (wslay_event_context_server_init(&raw, &callbacks, st) != 0) return false;
  st->ctx.reset(raw);
  // RSV1 only with permessage-deflate; any other RSV bit is a protocol error.
  wslay_event_config_set_allowed_rsv_bits(raw, deflate ? WSLAY_RSV1_BIT : WSLAY_RSV_NONE);
  // Compressed, a message is bounded after inflating (inflate_message),
  // and its frames are not larger than it: the same bound holds.
  if (max_message) wslay_event_config_set_max_recv_msg_length(raw, max_message);
  st->max_message = max_message;
  return true;
}

// The frames wslay queued, as bytes (b"" when none).
PyObject* flush(State* st) {
  if (wslay_event_want_write(st->ctx.get()) && wslay_event_send(st->ctx.get()) != 0) {
    PyErr_NoMemory();
    return nullptr;
  }
  PyObject* out =
      PyBytes_FromStringAndSize(st->out.data(), static_cast<Py_ssize_t>(st->out.size()));
  st->out.clear();
  return out;
}

State* state_of(PyObject* obj) {
  State* st = reinterpret_cast<SessionObject*>(obj)->st;
  if (!st) PyErr_SetString(PyExc_RuntimeError, "Session not initialised");
  return st;
}

int session_init(PyObject* obj, PyObject* args, PyObject* kwargs) {
  auto* self = reinterpret_cast<SessionObject*>(obj);
  static const char* kw[] = {"max_message_size", "deflate", nullptr};
  unsigned long long max_message = 16ULL << 20;
  PyObject* deflate = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|KO", const_cast<char**>(kw), &max_message,
                                   &deflate)) {
    return -1;
  }
  // deflate: None, or (server_no_context_takeover, server_max_window_bits).
  int no_context = 0;
  int window_bits = 15;
  bool pmd = deflate != Py_None;
  if (pmd && !PyArg_ParseTuple(deflate, "pi", &no_context, &window_bits)) return -1;
  if (pmd && (window_bits < 9 || window_bits > 15)) {
    PyErr_SetString(PyExc_ValueError, "server_max_window_bits: 9..15 (zlib makes 8 into 9)");
    return -1;
  }
  delete self->st;
  self->st = new (std::nothrow) State();
  if (self->st && pmd) {
    self->st->pmd.reset(new (std::nothrow) Deflate());
    if (self->st->pmd) {
      self->st->pmd->no_context = no_context != 0;
      self->st->pmd->window_bits = window_bits;
    }
  }
  if (!self->st || (pmd && !self->st->pmd) || !make_context(self->st, max_message, pmd)) {
    delete self->st;
    self->st = nullptr;
    PyErr_NoMemory();
    return -1;
  }
  return 0;
}

void session_dealloc(PyObject* obj) {
  auto* self = reinterpret_cast<SessionObject*>(obj);
  delete self->st;  // frees the wslay context
  PyTypeObject* type = Py_TYPE(obj);
  type->tp_free(obj);
  Py_DECREF(type);
}

PyObject* session_feed(PyObject* obj, PyObject* arg) {
  State* st = state_of(obj);
  if (!st) return nullptr;
  PyRef events = PyRef::steal(PyList_New(0));
  if (!events) return nullptr;
  if (!wslay_event_want_read(st->ctx.get())) return events.release();
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return nullptr;
  st->in = static_cast<const uint8_t*>(view.buf);
  st->in_len = static_cast<size_t>(view.len);
  st->events = events.get();
  st->python_error = false;
  int rc = wslay_event_recv(st->ctx.get());
  st->events = nullptr;
  st->in = nullptr;
  st->in_len = 0;
  PyBuffer_Release(&view);
  if (st->python_error) return nullptr;
  if (rc != 0) {
    // Only a failed callback or memory: wslay stops reading; the
    // connection ends as a server error.
    fail_connection(st->ctx.get(), WSLAY_CODE_INTERNAL_SERVER_ERROR, "");
  }
  return events.release();
}

// A message deflated into `out`, the sync flush's tail left off.
bool deflate_message(Deflate* d, const char* data, size_t len, std::string* out) noexcept {
  if (!d->def_open) {
    if (deflateInit2(&d->def, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -d->window_bits, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
      return false;
    }
    d->def_open = true;
  }
  d->def.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
  d->def.avail_in = static_cast<uInt>(len);
  uint8_t buf[16384];
  do {
    d->def.next_out = buf;
    d->def.avail_out = sizeof buf;
    if (deflate(&d->def, Z_SYNC_FLUSH) == Z_STREAM_ERROR) return false;
    try {
      out->append(reinterpret_cast<const char*>(buf), sizeof buf - d->def.avail_out);
    } catch (...) {
      return false;
    }
  } while (d->def.avail_out == 0);
  if (out->size() >= 4 && out->compare(out->size() - 4, 4, "\x00\x00\xff\xff", 4) == 0) {
    out->resize(out->size() - 4);
  }
  if (d->no_context) {
    deflateEnd(&d->def);  // a fresh stream per message: no window kept
    d->def_open = false;
  }
  return true;
}

PyObject* queue(PyObject* obj, uint8_t opcode, const char* data, Py_ssize_t len) {
  State* st = state_of(obj);
  if (!st) return nullptr;
  std::string packed;
  uint8_t rsv = WSLAY_RSV_NONE;
  if (st->pmd && (opcode == WSLAY_TEXT_FRAME || opcode == WSLAY_BINARY_FRAME) &&
      static_cast<size_t>(len) >= kDeflateMin &&
      static_cast<unsigned long long>(len) <= 0xffffffffULL) {
    if (!deflate_message(st->pmd.get(), data, static_cast<size_t>(len), &packed)) {
      PyErr_SetString(PyExc_MemoryError, "permessage-deflate: deflate failed");
      return nullptr;
    }
    data = packed.data();
    len = static_cast<Py_ssize_t>(packed.size());
    rsv = WSLAY_RSV1_BIT;
  }
  wslay_event_msg msg{opcode, reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)};
  int rc = wslay_event_queue_msg_ex(st->ctx.get(), &msg, rsv);
  if (rc == WSLAY_ERR_NO_MORE_MSG) {
    PyErr_SetString(PyExc_RuntimeError, "the WebSocket is closing: no more messages");
    return nullptr;
  }
  if (rc != 0) {
    PyErr_NoMemory();
    return nullptr;
  }
  return flush(st);
}

PyObject* session_send_text(PyObject* obj, PyObject* arg) {
  Py_ssize_t len = 0;
  const char* data = PyUnicode_AsUTF8AndSize(arg, &len);
  if (!data) return nullptr;
  return queue(obj, WSLAY_TEXT_FRAME, data, len);
}

PyObject* session_send_bytes(PyObject* obj, PyObject* arg) {
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return nullptr;
  PyObject* out = queue(obj, WSLAY_BINARY_FRAME, static_cast<const char*>(view.buf), view.len);
  PyBuffer_Release(&view);
  return out;
}

// ping(payload=b"") -> bytes: a ping frame (the idle check of
// _websocket.py); RFC 6455 5.5: a control frame's payload is at most 125.
PyObject* session_ping(PyObject* obj, PyObject* args) {
  Py_buffer view;
  view.buf = nullptr;
  view.len = 0;
  view.obj = nullptr;
  if (!PyArg_ParseTuple(args, "|y*", &view)) return nullptr;
  if (view.len > 125) {
    PyBuffer_Release(&view);
    PyErr_SetString(PyExc_ValueError, "a ping payload is at most 125 bytes");
    return nullptr;
  }
  PyObject* out = queue(obj, WSLAY_PING, static_cast<const char*>(view.buf), view.len);
  if (view.obj) PyBuffer_Release(&view);
  return out;
}

// close(code, reason) -> bytes: the close frame (b"" if one went already).
PyObject* session_close(PyObject* obj, PyObject* args) {
  State* st = state_of(obj);
  if (!st) return nullptr;
  int code = 1000;
  const char* reason = "";
  Py_ssize_t reason_len = 0;
  if (!PyArg_ParseTuple(args, "|is#", &code, &reason, &reason_len)) return nullptr;
  // RFC 6455 7.4: 1005, 1006 and 1015 are never sent; 0 sends no code.
  if (code != 0 && (code < 1000 || code > 4999 || code == 1005 || code == 1006 || code == 1015)) {
    PyErr_Format(PyExc_ValueError, "bad WebSocket close code %d", code);
    return nullptr;
  }
  if (reason_len > 123) {
    PyErr_SetString(PyExc_ValueError, "a close reason is at most 123 bytes of UTF-8");
    return nullptr;
  }
  if (!wslay_event_get_close_sent(st->ctx.get())) {
    int rc = wslay_event_queue_close(st->ctx.get(), static_cast<uint16_t>(code),
                                     reinterpret_cast<const uint8_t*>(reason),
                                     static_cast<size_t>(reason_len));
    if (rc != 0 && rc != WSLAY_ERR_NO_MORE_MSG) {
      PyErr_NoMemory();
      return nullptr;
    }
  }
  return flush(st);
}

PyObject* session_output(PyObject* obj, PyObject*) {
  State* st = state_of(obj);
  return st ? flush(st) : nullptr;
}

PyObject* session_close_sent(PyObject* obj, void*) {
  State* st = state_of(obj);
  return st ? PyBool_FromLong(wslay_event_get_close_sent(st->ctx.get())) : nullptr;
}

PyObject* session_close_received(PyObject* obj, void*) {
  State* st = state_of(obj);
  return st ? PyBool_FromLong(wslay_event_get_close_received(st->ctx.get())) : nullptr;
}

PyObject* session_code_sent(PyObject* obj, void*) {
  State* st = state_of(obj);
  return st ? PyLong_FromLong(wslay_event_get_status_code_sent(st->ctx.get())) : nullptr;
}

PyObject* session_reading(PyObject* obj, void*) {
  State* st = state_of(obj);
  return st ? PyBool_FromLong(wslay_event_want_read(st->ctx.get())) : nullptr;
}

PyMethodDef session_methods[] = {
    {"feed", session_feed, METH_O,
     "feed(data) -> list of events: (0, str), (1, bytes), (2, code, reason)"},
    {"send_text", session_send_text, METH_O, "send_text(str) -> bytes to write"},
    {"send_bytes", session_send_bytes, METH_O, "send_bytes(bytes) -> bytes to write"},
    {"close", session_close, METH_VARARGS, "close(code=1000, reason='') -> bytes to write"},
    {"ping", session_ping, METH_VARARGS, "ping(payload=b'') -> bytes to write"},
    {"output", session_output, METH_NOARGS, "output() -> the frames wslay queued itself"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef session_getset[] = {
    {"close_sent", session_close_sent, nullptr, "a close frame was sent", nullptr},
    {"close_received", session_close_received, nullptr, "the peer's close frame came", nullptr},
    {"code_sent", session_code_sent, nullptr, "the code of the close frame sent (1006: none)",
     nullptr},
    {"reading", session_reading, nullptr, "frames from the peer are still read", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot session_slots[] = {
    {Py_tp_init, reinterpret_cast<void*>(session_init)},
    {Py_tp_dealloc, reinterpret_cast<void*>(session_dealloc)},
    {Py_tp_methods, session_methods},
    {Py_tp_getset, session_getset},
    {Py_tp_doc, const_cast<char*>("The server side of one WebSocket connection (libwslay).")},
    {0, nullptr}};

PyType_Spec session_spec = {"_pyport_ws.Session", sizeof(SessionObject), 0, Py_TPFLAGS_DEFAULT,
                            session_slots};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_pyport_ws",
                          "WebSocket framing on libwslay (see port_worker/http_websocket.hpp).",
                          -1,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

}  // namespace

namespace ws_module {

PyObject* init() {
  PyRef module = PyRef::steal(PyModule_Create(&module_def));
  if (!module) return nullptr;
  PyObject* type = PyType_FromSpec(&session_spec);
  if (!type || PyModule_AddObject(module.get(), "Session", type) < 0) {
    Py_XDECREF(type);
    return nullptr;
  }
  if (PyModule_AddIntConstant(module.get(), "TEXT", kText) < 0 ||
      PyModule_AddIntConstant(module.get(), "BINARY", kBinary) < 0 ||
      PyModule_AddIntConstant(module.get(), "CLOSE", kClose) < 0) {
    return nullptr;
  }
  return module.release();
}

}  // namespace ws_module
}  // namespace pyport
