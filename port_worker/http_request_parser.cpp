#define PY_SSIZE_T_CLEAN
#include "http_request_parser.hpp"

#include <http_parser.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <string>
#include <string_view>

#include "http_connection.hpp"
#include "http_exchange.hpp"
#include "http_fields.hpp"
#include "py_ref.hpp"

namespace pyport {
namespace {

enum Event { kHead = 0, kBody = 1, kEnd = 2, kError = 3 };

// Interned scope keys and values, made at module init.
enum Key {
  kKeyMethod,
  kKeyPath,
  kKeyRawPath,
  kKeyQueryString,
  kKeyHeaders,
  kKeyHttpVersion,
  kKeyExtensions,
  kValue11,
  kValue10,
  kKeyCount
};
const char* const kKeyNames[kKeyCount] = {"method",       "path",    "raw_path",
                                          "query_string", "headers", "http_version",
                                          "extensions",   "1.1",     "1.0"};
PyObject* keys[kKeyCount];

// The method names as str, made once each.
PyObject* method_name(unsigned method) {
  static PyObject* names[64];
  if (method >= 64) return nullptr;
  if (!names[method]) {
    names[method] = PyUnicode_InternFromString(http_method_str(static_cast<http_method>(method)));
  }
  return names[method];
}

struct ParserObject {
  PyObject_HEAD http_parser parser;
  // Limits (0: none).
  size_t max_line;
  size_t max_headers;
  size_t max_header_bytes;
  unsigned long long max_body;
  // The request being read.
  std::string* url;
  std::string* field;
  std::string* value;
  PyObject* headers;  // list of (name, value) bytes pairs, or null
  size_t header_count;
  size_t header_bytes;
  unsigned long long body_bytes;
  bool in_value;  // the last header callback was a value
  bool expect_continue;
  int host_count;
  // Where callbacks put their events; set during feed() only.
  PyObject* events;
  // Set when a callback refuses the request (a limit): the status to answer.
  int refuse_status;
  const char* refuse_reason;
  bool python_error;         // a callback failed with a Python exception set
  bool failed;               // an ERROR was returned: nothing more is parsed
  bool in_message;           // a request is partly read
  PyObject* scope_template;  // dict copied into each request's scope, or null
};

ParserObject* self_of(http_parser* p) {
  return static_cast<ParserObject*>(p->data);
}

int refuse(ParserObject* self, int status, const char* reason) {
  self->refuse_status = status;
  self->refuse_reason = reason;
  return 1;
}

bool append(ParserObject* self, PyObject* event) {
  if (!event) return false;
  int rc = PyList_Append(self->events, event);
  Py_DECREF(event);
  return rc == 0;
}

// Trims optional whitespace (SP, HTAB) at both ends.
void trim(std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t'))
    ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t'))
    --e;
  if (b != 0 || e != s.size()) s = s.substr(b, e - b);
}

bool iequals(const std::string& s, const char* lit) {
  size_t n = std::strlen(lit);
  if (s.size() != n) return false;
  for (size_t i = 0; i < n; ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lit[i]) return false;
  }
  return true;
}

// RFC 9110 token characters (a field name).
bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return c != 0 && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

// Ends the header being read: appends (name, value) to the list. A name
// that is no token ("Host :" included, a smuggling vector) or a value with
// control characters is refused.
int finish_header(ParserObject* self) {
  if (self->field->empty()) return 0;
  for (char& c : *self->field) {
    if (!is_tchar(static_cast<unsigned char>(c))) {
      return refuse(self, 400, "invalid header field name");
    }
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  for (char c : *self->value) {
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && u != '\t') || u == 0x7f)
      return refuse(self, 400, "invalid header field value");
  }
  trim(*self->value);
  if (*self->field == "expect" && iequals(*self->value, "100-continue")) {
    self->expect_continue = true;
  } else if (*self->field == "host" && ++self->host_count > 1) {
    return refuse(self, 400, "more than one Host header");
  }
  PyObject* pair =
      Py_BuildValue("(y#y#)", self->field->data(), static_cast<Py_ssize_t>(self->field->size()),
                    self->value->data(), static_cast<Py_ssize_t>(self->value->size()));
  if (!pair || PyList_Append(self->headers, pair) < 0) {
    Py_XDECREF(pair);
    self->python_error = true;
    return 1;
  }
  Py_DECREF(pair);
  self->field->clear();
  self->value->clear();
  return 0;
}

int on_message_begin(http_parser* p) {
  ParserObject* self = self_of(p);
  self->url->clear();
  self->field->clear();
  self->value->clear();
  Py_XDECREF(self->headers);
  self->headers = PyList_New(0);
  if (!self->headers) {
    self->python_error = true;
    return 1;
  }
  self->header_count = 0;
  self->header_bytes = 0;
  self->body_bytes = 0;
  self->in_value = false;
  self->expect_continue = false;
  self->host_count = 0;
  self->in_message = true;
  return 0;
}

int on_url(http_parser* p, const char* at, size_t len) {
  ParserObject* self = self_of(p);
  if (self->max_line && self->url->size() + len > self->max_line) {
    return refuse(self, 414, "request target too long");
  }
  self->url->append(at, len);
  return 0;
}

int on_header_field(http_parser* p, const char* at, size_t len) {
  ParserObject* self = self_of(p);
  if (self->in_value || self->field->empty()) {
    if (self->in_value && finish_header(self)) return 1;
    self->in_value = false;
    if (self->max_headers && ++self->header_count > self->max_headers) {
      return refuse(self, 431, "too many header fields");
    }
  }
  self->header_bytes += len;
  if (self->max_header_bytes && self->header_bytes > self->max_header_bytes) {
    return refuse(self, 431, "header fields too large");
  }
  self->field->append(at, len);
  return 0;
}

int on_header_value(http_parser* p, const char* at, size_t len) {
  ParserObject* self = self_of(p);
  self->in_value = true;
  self->header_bytes += len;
  if (self->max_header_bytes && self->header_bytes > self->max_header_bytes) {
    return refuse(self, 431, "header fields too large");
  }
  self->value->append(at, len);
  return 0;
}

// Percent-decodes `in` (the path part of the target) into `out`.
void percent_decode(const char* in, size_t n, std::string& out) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (in[i] == '%' && i + 2 < n) {
      int h = hex(in[i + 1]), l = hex(in[i + 2]);
      if (h >= 0 && l >= 0) {
        out.push_back(static_cast<char>(h * 16 + l));
        i += 2;
        continue;
      }
    }
    out.push_back(in[i]);
  }
}

int on_headers_complete(http_parser* p) {
  ParserObject* self = self_of(p);
  if (self->in_value && finish_header(self)) return 1;
  self->in_value = false;
  unsigned long long length = p->content_length;
  bool chunked = (p->flags & F_CHUNKED) != 0;
  bool has_length = !chunked && length != ULLONG_MAX;
  if (self->max_body && has_length && length > self->max_body) {
    return refuse(self, 413, "request body too large");
  }
  // The target: origin-form "/path?query", or absolute-form "http://h/p?q".
  const std::string& url = *self->url;
  const char* path = url.data();
  size_t path_len = url.size();
  const char* query = "";
  size_t query_len = 0;
  if (!url.empty() && url[0] != '/' && url != "*") {
    http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url.data(), url.size(), 0, &u) != 0) {
      return refuse(self, 400, "invalid request target");
    }
    if (u.field_set & (1 << UF_PATH)) {
      path = url.data() + u.field_data[UF_PATH].off;
      path_len = u.field_data[UF_PATH].len;
    } else {
      path = "/";
      path_len = 1;
    }
    if (u.field_set & (1 << UF_QUERY)) {
      query = url.data() + u.field_data[UF_QUERY].off;
      query_len = u.field_data[UF_QUERY].len;
    }
  } else {
    const void* q = std::memchr(url.data(), '?', url.size());
    if (q) {
      size_t at = static_cast<const char*>(q) - url.data();
      path_len = at;
      query = url.data() + at + 1;
      query_len = url.size() - at - 1;
    }
    const void* hash = std::memchr(query, '#', query_len);
    if (hash) query_len = static_cast<const char*>(hash) - query;
  }
  PyRef decoded;
  if (std::memchr(path, '%', path_len)) {
    std::string bytes;
    percent_decode(path, path_len, bytes);
    decoded = PyRef::steal(PyUnicode_DecodeUTF8(bytes.data(), bytes.size(), "replace"));
  } else {
    decoded = PyRef::steal(PyUnicode_DecodeUTF8(path, path_len, "replace"));
  }
  if (!decoded) {
    self->python_error = true;
    return 1;
  }
  const char* version = p->http_major == 1 && p->http_minor == 1   ? "1.1"
                        : p->http_major == 1 && p->http_minor == 0 ? "1.0"
                                                                   : nullptr;
  if (!version) return refuse(self, 505, "HTTP version not supported");
  // RFC 9112 3.2: an HTTP/1.1 request without Host is refused.
  if (self->host_count == 0 && p->http_minor == 1) return refuse(self, 400, "no Host header");
  long long content_length = has_length ? static_cast<long long>(length) : -1;
  // The ASGI scope: a copy of the connection's template (type, asgi,
  // scheme, root_path, client, server) with this request's fields.
  PyRef scope =
      PyRef::steal(self->scope_template ? PyDict_Copy(self->scope_template) : PyDict_New());
  PyRef raw = PyRef::steal(PyBytes_FromStringAndSize(path, static_cast<Py_ssize_t>(path_len)));
  PyRef qs = PyRef::steal(PyBytes_FromStringAndSize(query, static_cast<Py_ssize_t>(query_len)));
  // Each request its own extensions dict (an app may add to it): the
  // template's extensions (those the server implements), copied.
  PyObject* ext_template = self->scope_template
                               ? PyDict_GetItemWithError(self->scope_template, keys[kKeyExtensions])
                               : nullptr;
  if (!ext_template && PyErr_Occurred()) {
    self->python_error = true;
    return 1;
  }
  PyRef extensions = PyRef::steal(
      ext_template && PyDict_Check(ext_template) ? PyDict_Copy(ext_template) : PyDict_New());
  PyObject* method = method_name(p->method);
  if (!scope || !raw || !qs || !extensions || !method ||
      PyDict_SetItem(scope.get(), keys[kKeyMethod], method) < 0 ||
      PyDict_SetItem(scope.get(), keys[kKeyPath], decoded.get()) < 0 ||
      PyDict_SetItem(scope.get(), keys[kKeyRawPath], raw.get()) < 0 ||
      PyDict_SetItem(scope.get(), keys[kKeyQueryString], qs.get()) < 0 ||
      PyDict_SetItem(scope.get(), keys[kKeyHeaders], self->headers) < 0 ||
      PyDict_SetItem(scope.get(), keys[kKeyHttpVersion],
                     p->http_minor == 1 ? keys[kValue11] : keys[kValue10]) < 0 ||
      PyDict_SetItem(scope.get(), keys[kKeyExtensions], extensions.get()) < 0) {
    self->python_error = true;
    return 1;
  }
  PyObject* event = Py_BuildValue("(iOOOL)", static_cast<int>(kHead), scope.get(),
                                  http_should_keep_alive(p) ? Py_True : Py_False,
                                  self->expect_continue ? Py_True : Py_False, content_length);
  Py_CLEAR(self->headers);
  if (!append(self, event)) {
    self->python_error = true;
    return 1;
  }
  return 0;
}

int on_body(http_parser* p, const char* at, size_t len) {
  ParserObject* self = self_of(p);
  self->body_bytes += len;
  if (self->max_body && self->body_bytes > self->max_body) {
    return refuse(self, 413, "request body too large");
  }
  if (!append(self,
              Py_BuildValue("(iy#)", static_cast<int>(kBody), at, static_cast<Py_ssize_t>(len)))) {
    self->python_error = true;
    return 1;
  }
  return 0;
}

int on_message_complete(http_parser* p) {
  ParserObject* self = self_of(p);
  self->in_message = false;
  if (!append(self, Py_BuildValue("(i)", static_cast<int>(kEnd)))) {
    self->python_error = true;
    return 1;
  }
  return 0;
}

http_parser_settings make_settings() {
  http_parser_settings s;
  http_parser_settings_init(&s);
  s.on_message_begin = on_message_begin;
  s.on_url = on_url;
  s.on_header_field = on_header_field;
  s.on_header_value = on_header_value;
  s.on_headers_complete = on_headers_complete;
  s.on_body = on_body;
  s.on_message_complete = on_message_complete;
  return s;
}

const http_parser_settings kSettings = make_settings();

PyObject* error_event(int status, const char* reason) {
  return Py_BuildValue("(iis)", static_cast<int>(kError), status, reason);
}

int parser_init(PyObject* obj, PyObject* args, PyObject* kwargs) {
  auto* self = reinterpret_cast<ParserObject*>(obj);
  static const char* kw[] = {"max_request_line", "max_headers", "max_header_bytes",
                             "max_body",         "scope",       nullptr};
  Py_ssize_t line = 8190, headers = 100, header_bytes = 65536;
  long long body = 0;
  PyObject* scope = nullptr;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|nnnLO!", const_cast<char**>(kw), &line, &headers,
                                   &header_bytes, &body, &PyDict_Type, &scope)) {
    return -1;
  }
  Py_XINCREF(scope);
  Py_XSETREF(self->scope_template, scope);
  if (line < 0 || headers < 0 || header_bytes < 0 || body < 0) {
    PyErr_SetString(PyExc_ValueError, "limits must be >= 0 (0: no limit)");
    return -1;
  }
  http_parser_init(&self->parser, HTTP_REQUEST);
  self->parser.data = self;
  self->max_line = static_cast<size_t>(line);
  self->max_headers = static_cast<size_t>(headers);
  self->max_header_bytes = static_cast<size_t>(header_bytes);
  self->max_body = static_cast<unsigned long long>(body);
  if (!self->url) {
    self->url = new (std::nothrow) std::string();
    self->field = new (std::nothrow) std::string();
    self->value = new (std::nothrow) std::string();
    if (!self->url || !self->field || !self->value) {
      PyErr_NoMemory();
      return -1;
    }
  }
  self->failed = false;
  return 0;
}

void parser_dealloc(PyObject* obj) {
  auto* self = reinterpret_cast<ParserObject*>(obj);
  delete self->url;
  delete self->field;
  delete self->value;
  Py_XDECREF(self->headers);
  Py_XDECREF(self->scope_template);
  PyTypeObject* type = Py_TYPE(obj);
  type->tp_free(obj);
  Py_DECREF(type);
}

PyTypeObject* parser_type;  // _pyport_http.Parser, for the C++ callers

// feed(data) -> list of events (see the header).
PyObject* parser_feed(PyObject* obj, PyObject* arg) {
  auto* self = reinterpret_cast<ParserObject*>(obj);
  if (!self->url) {
    PyErr_SetString(PyExc_RuntimeError, "Parser not initialised");
    return nullptr;
  }
  PyRef events = PyRef::steal(PyList_New(0));
  if (!events) return nullptr;
  if (self->failed || self->parser.upgrade) return events.release();
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return nullptr;
  self->events = events.get();
  self->refuse_status = 0;
  self->python_error = false;
  // An empty feed is end of input: a request cut short is an error.
  size_t n = http_parser_execute(&self->parser, &kSettings, static_cast<const char*>(view.buf),
                                 static_cast<size_t>(view.len));
  PyBuffer_Release(&view);
  self->events = nullptr;
  if (self->python_error) return nullptr;
  http_errno err = HTTP_PARSER_ERRNO(&self->parser);
  if (self->refuse_status) {
    self->failed = true;
    PyObject* e = error_event(self->refuse_status, self->refuse_reason);
    if (!e || PyList_Append(events.get(), e) < 0) {
      Py_XDECREF(e);
      return nullptr;
    }
    Py_DECREF(e);
  } else if (err != HPE_OK) {
    self->failed = true;
    int status = err == HPE_HEADER_OVERFLOW ? 431 : 400;
    PyObject* e = error_event(status, http_errno_description(err));
    if (!e || PyList_Append(events.get(), e) < 0) {
      Py_XDECREF(e);
      return nullptr;
    }
    Py_DECREF(e);
  } else if (!self->parser.upgrade && n != static_cast<size_t>(view.len)) {
    self->failed = true;
    PyObject* e = error_event(400, "unparsed input");
    if (!e || PyList_Append(events.get(), e) < 0) {
      Py_XDECREF(e);
      return nullptr;
    }
    Py_DECREF(e);
  }
  return events.release();
}

// Whether the parser sits between requests (nothing of a next one read):
// where a connection may close quietly at end of input or idle timeout.
PyObject* parser_idle(PyObject* obj, void*) {
  auto* self = reinterpret_cast<ParserObject*>(obj);
  return PyBool_FromLong(!self->in_message);
}

PyObject* parser_upgrade(PyObject* obj, void*) {
  auto* self = reinterpret_cast<ParserObject*>(obj);
  return PyBool_FromLong(self->parser.upgrade);
}

PyMethodDef parser_methods[] = {
    {"feed", parser_feed, METH_O,
     "feed(data) -> list of events: (0, scope, keep_alive, expect_continue, content_length), "
     "(1, body), (2,), (3, status, reason)"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef parser_getset[] = {
    {"idle", parser_idle, nullptr, "no request is partly read", nullptr},
    {"upgrade", parser_upgrade, nullptr, "the last request asked to upgrade (or CONNECT)", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot parser_slots[] = {{Py_tp_init, reinterpret_cast<void*>(parser_init)},
                              {Py_tp_dealloc, reinterpret_cast<void*>(parser_dealloc)},
                              {Py_tp_methods, parser_methods},
                              {Py_tp_getset, parser_getset},
                              {Py_tp_doc, const_cast<char*>("An HTTP/1.1 request stream parser.")},
                              {0, nullptr}};

PyType_Spec parser_spec = {"_pyport_http.Parser", sizeof(ParserObject), 0, Py_TPFLAGS_DEFAULT,
                           parser_slots};

// ---- response heads ----------------------------------------------------------

bool ascii_iequals(const char* a, Py_ssize_t n, const char* lit) {
  if (static_cast<size_t>(n) != std::strlen(lit)) return false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    char c = a[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lit[i]) return false;
  }
  return true;
}

bool has_crlf(const char* p, Py_ssize_t n) {
  return std::memchr(p, '\r', n) != nullptr || std::memchr(p, '\n', n) != nullptr;
}

enum HeadFlags { kChunkedDeclared = 1, kClose = 2 };

// The Date header's value (RFC 9110 5.6.7's IMF-fixdate), formatted once a
// second. Callers hold the GIL, which guards the cache. Fixed English
// names: strftime's %a/%b would follow the process's locale.
std::string_view http_date() {
  static std::time_t cached = -1;
  static char buf[40];
  static size_t len = 0;
  std::time_t now = std::time(nullptr);
  if (now != cached) {
    static const char* const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char* const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::tm tm{};
    gmtime_r(&now, &tm);
    int n = std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
                          tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                          tm.tm_sec);
    len = n > 0 && static_cast<size_t>(n) < sizeof buf ? static_cast<size_t>(n) : 0;
    cached = now;
  }
  return std::string_view(buf, len);
}

// response_head(status, reason, headers[, date]) -> (head, content_length, flags):
// the status line and header lines of an ASGI http.response.start, without
// the blank line. `connection` headers are left out (flags & 2: the app
// asked to close), `date` added unless the app set one (without the
// argument: the current time's); content_length is the app's
// Content-Length (-1: none); flags & 1: it set Transfer-Encoding.
PyObject* response_head(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 && nargs != 4) {
    PyErr_SetString(PyExc_TypeError, "response_head(status, reason, headers[, date])");
    return nullptr;
  }
  long status = PyLong_AsLong(args[0]);
  if (status == -1 && PyErr_Occurred()) return nullptr;
  if (status < 100 || status > 999) {
    PyErr_Format(PyExc_ValueError, "bad status %ld", status);
    return nullptr;
  }
  char* reason;
  Py_ssize_t reason_len;
  if (PyBytes_AsStringAndSize(args[1], &reason, &reason_len) < 0) return nullptr;
  std::string_view date;
  if (nargs == 4) {
    char* p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(args[3], &p, &n) < 0) return nullptr;
    date = std::string_view(p, static_cast<size_t>(n));
  } else {
    date = http_date();
  }
  std::string head;
  head.reserve(256);
  head.append("HTTP/1.1 ");
  head.push_back(static_cast<char>('0' + status / 100));
  head.push_back(static_cast<char>('0' + status / 10 % 10));
  head.push_back(static_cast<char>('0' + status % 10));
  head.push_back(' ');
  head.append(reason, static_cast<size_t>(reason_len));
  head.append("\r\n");
  long long content_length = -1;
  int flags = 0;
  bool has_date = false;
  PyRef seq = PyRef::steal(PySequence_Fast(args[2], "response headers must be a sequence"));
  if (!seq) return nullptr;
  Py_ssize_t count = PySequence_Fast_GET_SIZE(seq.get());
  PyObject** items = PySequence_Fast_ITEMS(seq.get());
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyRef pair = PyRef::steal(PySequence_Fast(items[i], "a response header must be a pair"));
    if (!pair) return nullptr;
    if (PySequence_Fast_GET_SIZE(pair.get()) != 2) {
      PyErr_SetString(PyExc_ValueError, "a response header must be a (name, value) pair");
      return nullptr;
    }
    PyObject* name = PySequence_Fast_GET_ITEM(pair.get(), 0);
    PyObject* value = PySequence_Fast_GET_ITEM(pair.get(), 1);
    if (!PyBytes_Check(name) || !PyBytes_Check(value)) {
      PyErr_SetString(PyExc_TypeError, "response header names and values must be bytes");
      return nullptr;
    }
    const char* np = PyBytes_AS_STRING(name);
    Py_ssize_t nn = PyBytes_GET_SIZE(name);
    const char* vp = PyBytes_AS_STRING(value);
    Py_ssize_t vn = PyBytes_GET_SIZE(value);
    if (nn == 0 || has_crlf(np, nn) || has_crlf(vp, vn) || std::memchr(np, ':', nn)) {
      PyErr_SetString(PyExc_ValueError, "response header name empty, or with ':', CR or LF");
      return nullptr;
    }
    if (ascii_iequals(np, nn, "content-length")) {
      long long v = 0;
      if (vn == 0 || vn > 18) v = -1;
      for (Py_ssize_t k = 0; k < vn && v >= 0; ++k) {
        if (vp[k] < '0' || vp[k] > '9') {
          v = -1;
        } else {
          v = v * 10 + (vp[k] - '0');
        }
      }
      if (v < 0) {
        PyErr_Format(PyExc_ValueError, "bad content-length %R", value);
        return nullptr;
      }
      content_length = v;
    } else if (ascii_iequals(np, nn, "transfer-encoding")) {
      flags |= kChunkedDeclared;
    } else if (ascii_iequals(np, nn, "connection")) {
      if (ascii_iequals(vp, vn, "close")) flags |= kClose;
      continue;  // the server writes its own
    } else if (ascii_iequals(np, nn, "date")) {
      has_date = true;
    }
    head.append(np, static_cast<size_t>(nn));
    head.append(": ");
    head.append(vp, static_cast<size_t>(vn));
    head.append("\r\n");
  }
  if (!has_date) {
    head.append("date: ");
    head.append(date.data(), date.size());
    head.append("\r\n");
  }
  PyRef bytes =
      PyRef::steal(PyBytes_FromStringAndSize(head.data(), static_cast<Py_ssize_t>(head.size())));
  PyRef length = PyRef::steal(PyLong_FromLongLong(content_length));
  PyRef flag_obj = PyRef::steal(PyLong_FromLong(flags));
  if (!bytes || !length || !flag_obj) return nullptr;
  return PyTuple_Pack(3, bytes.get(), length.get(), flag_obj.get());
}

PyMethodDef module_methods[] = {
    {"response_head", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(response_head)),
     METH_FASTCALL,
     "response_head(status, reason, headers[, date]) -> (head, content_length, flags)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_pyport_http",
    "HTTP/1.1 request parsing on libhttp-parser (see port_worker/http_request_parser.hpp).",
    -1,
    module_methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr};

}  // namespace

namespace http_module {

PyObject* response_head(PyObject* status, PyObject* reason, PyObject* headers) {
  PyObject* const args[] = {status, reason, headers};
  return pyport::response_head(nullptr, args, 3);
}

PyObject* init() {
  PyRef module = PyRef::steal(PyModule_Create(&module_def));
  if (!module) return nullptr;
  for (int i = 0; i < kKeyCount; ++i) {
    if (!keys[i] && !(keys[i] = PyUnicode_InternFromString(kKeyNames[i]))) return nullptr;
  }
  PyObject* type = PyType_FromSpec(&parser_spec);
  if (!type || PyModule_AddObject(module.get(), "Parser", Py_NewRef(type)) < 0) {
    Py_XDECREF(type);
    Py_XDECREF(type);
    return nullptr;
  }
  Py_XSETREF(parser_type, reinterpret_cast<PyTypeObject*>(type));
  if (PyModule_AddIntConstant(module.get(), "HEAD", kHead) < 0 ||
      PyModule_AddIntConstant(module.get(), "BODY", kBody) < 0 ||
      PyModule_AddIntConstant(module.get(), "END", kEnd) < 0 ||
      PyModule_AddIntConstant(module.get(), "ERROR", kError) < 0 ||
      PyModule_AddIntConstant(module.get(), "HEAD_CHUNKED", kChunkedDeclared) < 0 ||
      PyModule_AddIntConstant(module.get(), "HEAD_CLOSE", kClose) < 0 ||
      !http_exchange::add_to(module.get()) || !http_connection::add_to(module.get()) ||
      !http_fields::add_to(module.get())) {
    return nullptr;
  }
  return module.release();
}

PyObject* feed(PyObject* parser, PyObject* data) {
  if (parser_type == nullptr || Py_TYPE(parser) != parser_type) {
    // Another parser (a subclass's or a test's): its own feed(), rarely.
    return PyObject_CallMethod(parser, "feed", "O", data);
  }
  return parser_feed(parser, data);
}

int state(PyObject* parser, bool& idle, bool& upgrade) {
  if (parser_type == nullptr || Py_TYPE(parser) != parser_type) return 0;
  auto* self = reinterpret_cast<ParserObject*>(parser);
  idle = !self->in_message;
  upgrade = self->parser.upgrade != 0;
  return 1;
}

}  // namespace http_module
}  // namespace pyport
