#define PY_SSIZE_T_CLEAN
#include "wsgi_environ.hpp"

#include <strings.h>

#include <cstring>
#include <string>

#include "py_ref.hpp"

namespace pyport {
namespace wsgi_environ {
namespace {

// Interned strings, made once by init().
struct Keys {
  PyObject *type, *method, *root_path, *raw_path, *query_string, *server, *client, *scheme,
      *http_version, *headers;
  PyObject *REQUEST_METHOD, *SCRIPT_NAME, *PATH_INFO, *QUERY_STRING, *SERVER_NAME, *SERVER_PORT,
      *SERVER_PROTOCOL, *REMOTE_ADDR, *REMOTE_PORT, *CONTENT_TYPE, *CONTENT_LENGTH, *HTTP_COOKIE,
      *url_scheme, *input, *errors;
  PyObject *empty, *http, *localhost, *port80, *http11, *http10, *upper;
};
Keys k{};

// The last value seen and its str(): a server's host and port and the HTTP
// version repeat request after request. Only exact str/int keys, compared
// by value (no user code runs). The GIL guards them.
struct Memo {
  PyObject* key = nullptr;
  PyObject* value = nullptr;
};
Memo server_host, server_port;

// A new reference to str(obj), from the memo when obj equals its key.
PyObject* str_memo(Memo& m, PyObject* obj) {
  bool plain = PyUnicode_CheckExact(obj) || PyLong_CheckExact(obj);
  if (plain && m.key && Py_TYPE(m.key) == Py_TYPE(obj)) {
    int eq = PyObject_RichCompareBool(obj, m.key, Py_EQ);
    if (eq < 0) return nullptr;
    if (eq) {
      Py_INCREF(m.value);
      return m.value;
    }
  }
  PyObject* v = PyObject_Str(obj);
  if (v && plain) {
    Py_INCREF(obj);
    Py_INCREF(v);
    Py_XSETREF(m.key, obj);
    Py_XSETREF(m.value, v);
  }
  return v;
}

int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// urllib.parse.unquote_to_bytes(raw).decode("latin-1"), skipping the
// first `skip` decoded bytes.
PyObject* path_info(PyObject* raw, Py_ssize_t skip) {
  char* p;
  Py_ssize_t n;
  if (PyBytes_AsStringAndSize(raw, &p, &n) < 0) return nullptr;
  if (!std::memchr(p, '%', static_cast<size_t>(n))) {
    if (skip > n) skip = n;
    return PyUnicode_DecodeLatin1(p + skip, n - skip, nullptr);
  }
  std::string out;
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(p[i]);
    int hi, lo;
    if (c == '%' && i + 2 < n && (hi = hexval(static_cast<unsigned char>(p[i + 1]))) >= 0 &&
        (lo = hexval(static_cast<unsigned char>(p[i + 2]))) >= 0) {
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  Py_ssize_t len = static_cast<Py_ssize_t>(out.size());
  if (skip > len) skip = len;
  return PyUnicode_DecodeLatin1(out.data() + skip, len - skip, nullptr);
}

// The environ key of a header name: "HTTP_" + upper, "-" as "_" (or
// CONTENT_TYPE / CONTENT_LENGTH); null without an exception for a name
// with "_" (dropped); null with one on error.
PyObject* header_key(const char* name, Py_ssize_t n, bool* dropped) {
  *dropped = false;
  if (std::memchr(name, '_', static_cast<size_t>(n))) {
    *dropped = true;
    return nullptr;
  }
  if (n == 12 && std::memcmp(name, "content-type", 12) == 0) {
    Py_INCREF(k.CONTENT_TYPE);
    return k.CONTENT_TYPE;
  }
  if (n == 14 && std::memcmp(name, "content-length", 14) == 0) {
    Py_INCREF(k.CONTENT_LENGTH);
    return k.CONTENT_LENGTH;
  }
  char buf[256];
  std::string big;
  char* out = buf;
  if (n + 5 > static_cast<Py_ssize_t>(sizeof buf)) {
    big.resize(static_cast<size_t>(n) + 5);
    out = &big[0];
  }
  std::memcpy(out, "HTTP_", 5);
  for (Py_ssize_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(name[i]);
    if (c >= 0x80) {
      // Not a token character HTTP allows: str.upper()'s Unicode rules
      // (the parser normally refuses such names before this).
      PyRef s = PyRef::steal(PyUnicode_DecodeLatin1(name, n, nullptr));
      if (!s) return nullptr;
      PyRef up = PyRef::steal(PyObject_CallMethodNoArgs(s.get(), k.upper));
      if (!up) return nullptr;
      PyRef dash = PyRef::steal(PyUnicode_FromString("-"));
      PyRef under = PyRef::steal(PyUnicode_FromString("_"));
      if (!dash || !under) return nullptr;
      PyRef rep = PyRef::steal(PyUnicode_Replace(up.get(), dash.get(), under.get(), -1));
      if (!rep) return nullptr;
      PyRef prefix = PyRef::steal(PyUnicode_FromString("HTTP_"));
      if (!prefix) return nullptr;
      return PyUnicode_Concat(prefix.get(), rep.get());
    }
    if (c == '-') {
      c = '_';
    } else if (c >= 'a' && c <= 'z') {
      c = static_cast<unsigned char>(c - 'a' + 'A');
    }
    out[5 + i] = static_cast<char>(c);
  }
  return PyUnicode_DecodeLatin1(out, n + 5, nullptr);
}

// The name and value of a header pair, which must be bytes.
bool header_pair(PyObject* pair, PyRef* name, PyRef* value) {
  if (PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2) {
    *name = PyRef::borrow(PyTuple_GET_ITEM(pair, 0));
    *value = PyRef::borrow(PyTuple_GET_ITEM(pair, 1));
  } else {
    PyRef seq = PyRef::steal(PySequence_Fast(pair, "an ASGI header is a (name, value) pair"));
    if (!seq) return false;
    if (PySequence_Fast_GET_SIZE(seq.get()) != 2) {
      PyErr_SetString(PyExc_ValueError, "an ASGI header is a (name, value) pair");
      return false;
    }
    *name = PyRef::borrow(PySequence_Fast_GET_ITEM(seq.get(), 0));
    *value = PyRef::borrow(PySequence_Fast_GET_ITEM(seq.get(), 1));
  }
  if (!PyBytes_Check(name->get()) || !PyBytes_Check(value->get())) {
    PyErr_SetString(PyExc_TypeError, "ASGI header names and values must be bytes");
    return false;
  }
  return true;
}

bool set(PyObject* env, PyObject* key, PyObject* value) {
  if (!value) return false;
  return PyDict_SetItem(env, key, value) == 0;
}

bool set_steal(PyObject* env, PyObject* key, PyObject* value) {
  PyRef v = PyRef::steal(value);
  return set(env, key, v.get());
}

// scope[key], a KeyError naming it when missing.
PyObject* item(PyObject* scope, PyObject* key) {
  PyObject* v = PyDict_GetItemWithError(scope, key);  // borrowed
  if (!v && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
  return v;
}

}  // namespace

bool init() {
  struct Name {
    PyObject** slot;
    const char* text;
  };
  const Name names[] = {{&k.type, "type"},
                        {&k.method, "method"},
                        {&k.root_path, "root_path"},
                        {&k.raw_path, "raw_path"},
                        {&k.query_string, "query_string"},
                        {&k.server, "server"},
                        {&k.client, "client"},
                        {&k.scheme, "scheme"},
                        {&k.http_version, "http_version"},
                        {&k.headers, "headers"},
                        {&k.REQUEST_METHOD, "REQUEST_METHOD"},
                        {&k.SCRIPT_NAME, "SCRIPT_NAME"},
                        {&k.PATH_INFO, "PATH_INFO"},
                        {&k.QUERY_STRING, "QUERY_STRING"},
                        {&k.SERVER_NAME, "SERVER_NAME"},
                        {&k.SERVER_PORT, "SERVER_PORT"},
                        {&k.SERVER_PROTOCOL, "SERVER_PROTOCOL"},
                        {&k.REMOTE_ADDR, "REMOTE_ADDR"},
                        {&k.REMOTE_PORT, "REMOTE_PORT"},
                        {&k.CONTENT_TYPE, "CONTENT_TYPE"},
                        {&k.CONTENT_LENGTH, "CONTENT_LENGTH"},
                        {&k.HTTP_COOKIE, "HTTP_COOKIE"},
                        {&k.url_scheme, "wsgi.url_scheme"},
                        {&k.input, "wsgi.input"},
                        {&k.errors, "wsgi.errors"},
                        {&k.empty, ""},
                        {&k.http, "http"},
                        {&k.localhost, "localhost"},
                        {&k.port80, "80"},
                        {&k.http11, "HTTP/1.1"},
                        {&k.http10, "HTTP/1.0"},
                        {&k.upper, "upper"}};
  for (const Name& n : names) {
    if (!*n.slot && !(*n.slot = PyUnicode_InternFromString(n.text))) return false;
  }
  return true;
}

PyObject* environ(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyDict_Check(args[0]) || !PyUnicode_Check(args[2]) || !PyDict_Check(args[3])) {
    PyErr_SetString(PyExc_TypeError, "environ(scope: dict, wsgi_input, mount: str, base: dict)");
    return nullptr;
  }
  PyObject* scope = args[0];
  PyObject* mount = args[2];
  PyRef env = PyRef::steal(PyDict_Copy(args[3]));
  if (!env) return nullptr;
  PyObject* e = env.get();

  PyObject* method = item(scope, k.method);
  if (!method || !set(e, k.REQUEST_METHOD, method)) return nullptr;

  // SCRIPT_NAME is root_path; PATH_INFO loses the mount's prefix (a mount
  // of erlang._http._Mounts: the path keeps the pool's own root_path out)
  // or else root_path, when the path starts with it.
  PyObject* script = PyDict_GetItemWithError(scope, k.root_path);
  if (!script) {
    if (PyErr_Occurred()) return nullptr;
    script = k.empty;
  }
  if (!set(e, k.SCRIPT_NAME, script)) return nullptr;
  PyObject* raw = item(scope, k.raw_path);
  if (!raw) return nullptr;
  if (!PyBytes_Check(raw)) {
    PyErr_SetString(PyExc_TypeError, "scope['raw_path'] must be bytes");
    return nullptr;
  }
  PyRef path;
  if (PyUnicode_GET_LENGTH(mount) > 0) {
    Py_ssize_t mlen;
    if (!PyUnicode_AsUTF8AndSize(mount, &mlen)) return nullptr;
    path = PyRef::steal(path_info(raw, mlen));
  } else {
    path = PyRef::steal(path_info(raw, 0));
    if (path && PyUnicode_Check(script) && PyUnicode_GET_LENGTH(script) > 0) {
      Py_ssize_t slen = PyUnicode_GET_LENGTH(script);
      Py_ssize_t starts = PyUnicode_Tailmatch(path.get(), script, 0, slen, -1);
      if (starts < 0) return nullptr;
      if (starts) {
        path =
            PyRef::steal(PyUnicode_Substring(path.get(), slen, PyUnicode_GET_LENGTH(path.get())));
      }
    }
  }
  if (!set(e, k.PATH_INFO, path.get())) return nullptr;

  PyObject* query = item(scope, k.query_string);
  if (!query) return nullptr;
  char* q;
  Py_ssize_t qn;
  if (PyBytes_AsStringAndSize(query, &q, &qn) < 0) return nullptr;
  if (!set_steal(e, k.QUERY_STRING, PyUnicode_DecodeLatin1(q, qn, nullptr))) return nullptr;

  PyObject* server = PyDict_GetItemWithError(scope, k.server);
  if (!server && PyErr_Occurred()) return nullptr;
  if (server && server != Py_None) {
    PyRef seq = PyRef::steal(PySequence_Fast(server, "scope['server'] must be (host, port)"));
    if (!seq) return nullptr;
    if (PySequence_Fast_GET_SIZE(seq.get()) < 2) {
      PyErr_SetString(PyExc_ValueError, "scope['server'] must be (host, port)");
      return nullptr;
    }
    if (!set_steal(e, k.SERVER_NAME,
                   str_memo(server_host, PySequence_Fast_GET_ITEM(seq.get(), 0))) ||
        !set_steal(e, k.SERVER_PORT,
                   str_memo(server_port, PySequence_Fast_GET_ITEM(seq.get(), 1)))) {
      return nullptr;
    }
  } else if (!set(e, k.SERVER_NAME, k.localhost) || !set(e, k.SERVER_PORT, k.port80)) {
    return nullptr;
  }

  PyObject* version = item(scope, k.http_version);
  if (!version) return nullptr;
  if (PyUnicode_Check(version) && PyUnicode_GET_LENGTH(version) == 3 &&
      PyUnicode_KIND(version) == PyUnicode_1BYTE_KIND &&
      std::memcmp(PyUnicode_1BYTE_DATA(version), "1.1", 3) == 0) {
    if (!set(e, k.SERVER_PROTOCOL, k.http11)) return nullptr;
  } else if (PyUnicode_Check(version) && PyUnicode_CompareWithASCIIString(version, "1.0") == 0) {
    if (!set(e, k.SERVER_PROTOCOL, k.http10)) return nullptr;
  } else if (!set_steal(e, k.SERVER_PROTOCOL, PyUnicode_FromFormat("HTTP/%S", version))) {
    return nullptr;
  }

  PyObject* scheme = PyDict_GetItemWithError(scope, k.scheme);
  if (!scheme && PyErr_Occurred()) return nullptr;
  if (!set(e, k.url_scheme, scheme ? scheme : k.http) || !set(e, k.input, args[1])) {
    return nullptr;
  }
  PyObject* err = PySys_GetObject("stderr");  // borrowed; the relay may have replaced it
  if (!set(e, k.errors, err ? err : Py_None)) return nullptr;

  PyObject* client = PyDict_GetItemWithError(scope, k.client);
  if (!client && PyErr_Occurred()) return nullptr;
  if (client && client != Py_None) {
    PyRef seq = PyRef::steal(PySequence_Fast(client, "scope['client'] must be (host, port)"));
    if (!seq) return nullptr;
    if (PySequence_Fast_GET_SIZE(seq.get()) >= 2 &&
        (!set_steal(e, k.REMOTE_ADDR, PyObject_Str(PySequence_Fast_GET_ITEM(seq.get(), 0))) ||
         !set_steal(e, k.REMOTE_PORT, PyObject_Str(PySequence_Fast_GET_ITEM(seq.get(), 1))))) {
      return nullptr;
    }
  }

  PyObject* headers = item(scope, k.headers);
  if (!headers) return nullptr;
  PyRef list = PyRef::steal(PySequence_Fast(headers, "scope['headers'] must be a sequence"));
  if (!list) return nullptr;
  Py_ssize_t count = PySequence_Fast_GET_SIZE(list.get());
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyRef name, value;
    if (!header_pair(PySequence_Fast_GET_ITEM(list.get(), i), &name, &value)) return nullptr;
    bool dropped;
    PyRef key = PyRef::steal(
        header_key(PyBytes_AS_STRING(name.get()), PyBytes_GET_SIZE(name.get()), &dropped));
    if (dropped) continue;
    if (!key) return nullptr;
    PyRef v = PyRef::steal(PyUnicode_DecodeLatin1(PyBytes_AS_STRING(value.get()),
                                                  PyBytes_GET_SIZE(value.get()), nullptr));
    if (!v) return nullptr;
    PyObject* before = PyDict_GetItemWithError(e, key.get());  // borrowed
    if (!before && PyErr_Occurred()) return nullptr;
    if (before) {
      // A repeated header: one value, joined as RFC 9110 says (cookies
      // with "; ", RFC 6265; PEP 3333 leaves it to the server).
      PyRef sep = PyRef::steal(
          PyUnicode_FromString(PyUnicode_Compare(key.get(), k.HTTP_COOKIE) == 0 ? ";" : ","));
      if (!sep) return nullptr;
      PyRef joined = PyRef::steal(PyUnicode_Concat(before, sep.get()));
      if (!joined) return nullptr;
      v = PyRef::steal(PyUnicode_Concat(joined.get(), v.get()));
      if (!v) return nullptr;
    }
    if (PyDict_SetItem(e, key.get(), v.get()) < 0) return nullptr;
  }
  return env.release();
}

namespace {

// Hop-by-hop headers are the server's (PEP 3333): the app's are dropped.
bool hop_by_hop(const char* name, Py_ssize_t n) {
  static const char* const kNames[] = {"connection",          "keep-alive", "proxy-authenticate",
                                       "proxy-authorization", "te",         "trailers",
                                       "transfer-encoding",   "upgrade"};
  for (const char* h : kNames) {
    if (static_cast<Py_ssize_t>(std::strlen(h)) == n && strncasecmp(h, name, n) == 0) return true;
  }
  return false;
}

}  // namespace

PyObject* response_start(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "response_start(status, headers) takes 2 arguments");
    return nullptr;
  }
  PyObject* status = args[0];
  bool ok = PyUnicode_CheckExact(status) && PyUnicode_GET_LENGTH(status) >= 3;
  long code = 0;
  for (Py_ssize_t i = 0; ok && i < 3; ++i) {
    Py_UCS4 c = PyUnicode_READ_CHAR(status, i);
    ok = c >= '0' && c <= '9';
    code = code * 10 + static_cast<long>(c - '0');
  }
  if (!ok) {
    PyErr_Format(PyExc_ValueError, "bad WSGI status %R", status);
    return nullptr;
  }
  PyRef list = PyRef::steal(PySequence_Fast(args[1], "WSGI headers must be a list of pairs"));
  if (!list) return nullptr;
  Py_ssize_t count = PySequence_Fast_GET_SIZE(list.get());
  PyRef out = PyRef::steal(PyList_New(0));
  if (!out) return nullptr;
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* pair = PySequence_Fast_GET_ITEM(list.get(), i);
    PyRef seq = PyRef::steal(PySequence_Fast(pair, "a WSGI header is a (name, value) pair"));
    if (!seq) return nullptr;
    if (PySequence_Fast_GET_SIZE(seq.get()) != 2) {
      PyErr_SetString(PyExc_ValueError, "a WSGI header is a (name, value) pair");
      return nullptr;
    }
    PyObject* name = PySequence_Fast_GET_ITEM(seq.get(), 0);
    PyObject* value = PySequence_Fast_GET_ITEM(seq.get(), 1);
    if (!PyUnicode_CheckExact(name) || !PyUnicode_CheckExact(value)) {
      PyErr_SetString(PyExc_TypeError, "WSGI header names and values must be str");
      return nullptr;
    }
    PyRef n = PyRef::steal(PyUnicode_AsLatin1String(name));
    if (!n) return nullptr;
    if (hop_by_hop(PyBytes_AS_STRING(n.get()), PyBytes_GET_SIZE(n.get()))) continue;
    PyRef v = PyRef::steal(PyUnicode_AsLatin1String(value));
    if (!v) return nullptr;
    PyRef t = PyRef::steal(PyTuple_Pack(2, n.get(), v.get()));
    if (!t || PyList_Append(out.get(), t.get()) < 0) return nullptr;
  }
  PyRef c = PyRef::steal(PyLong_FromLong(code));
  if (!c) return nullptr;
  return PyTuple_Pack(2, c.get(), out.get());
}

}  // namespace wsgi_environ
}  // namespace pyport
