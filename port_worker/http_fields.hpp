// The per-request and per-connection state of the HTTP server as C fields:
// _pyport_http.RequestFields and ConnFields, C base types of
// python_runtime/erlang/_http_request.py's _Request and _http_conn.py's
// HttpConnection. Each field is a member (Python reads and writes it as
// an attribute, any value, AttributeError while unset), starting at its
// default; the C++ fast paths (http_connection.cpp, http_exchange.cpp)
// read and write the field itself instead of an instance dict entry.
//
// The direct access is for objects whose exact class was registered with
// register_fields(cls), which checks that no class between cls and the
// base shadows a field (a property or class attribute of the same name);
// every other object goes through PyObject_GetAttr as before.
#pragma once

#include <Python.h>

#include "py_ref.hpp"

namespace pyport {
namespace http_fields {

// The field of `o` at `index` (from index_of) when `o`'s class is
// registered for that base, else nullptr. kRequest/kConn pick the base.
enum Base { kRequest = 0, kConn = 1 };
extern PyTypeObject* registered[2];  // by register_fields(cls)
struct FieldsObject {
  PyObject_HEAD PyObject* f[1];  // as many as the base has fields
};
inline PyObject** field(PyObject* o, Base base, int index) {
  if (index < 0 || Py_TYPE(o) != registered[base]) return nullptr;
  return &reinterpret_cast<FieldsObject*>(o)->f[index];
}

// The index of the field named `name` in `base`, or -1.
int index_of(Base base, const char* name);

// One C++ file's table of attribute names (interned once) with the field
// each names, if any: get/truth/set use the C field of a registered
// _Request or HttpConnection and the attribute of any other object.
template <int N>
class Names {
 public:
  // Interns `spelled` and finds their fields; false on a Python error.
  bool init(const char* const (&spelled)[N]) {
    for (int i = 0; i < N; ++i) {
      request_field_[i] = index_of(kRequest, spelled[i]);
      conn_field_[i] = index_of(kConn, spelled[i]);
      if (!str_[i] && !(str_[i] = PyUnicode_InternFromString(spelled[i]))) return false;
    }
    return true;
  }
  PyObject* operator[](int n) const { return str_[n]; }

  PyRef get(PyObject* o, int n) const {
    PyObject** p = field_of(o, n);
    if (p != nullptr && *p != nullptr) return PyRef::borrow(*p);
    return PyRef::steal(PyObject_GetAttr(o, str_[n]));
  }
  // 1 true, 0 false, -1 error.
  int truth(PyObject* o, int n) const {
    PyRef v = get(o, n);
    return v ? PyObject_IsTrue(v.get()) : -1;
  }
  bool set(PyObject* o, int n, PyObject* v) const {
    if (PyObject** p = field_of(o, n)) {
      Py_XSETREF(*p, Py_NewRef(v));
      return true;
    }
    return PyObject_SetAttr(o, str_[n], v) == 0;
  }

 private:
  PyObject** field_of(PyObject* o, int n) const {
    PyObject** p = field(o, kRequest, request_field_[n]);
    return p ? p : field(o, kConn, conn_field_[n]);
  }
  PyObject* str_[N] = {};
  int request_field_[N] = {};
  int conn_field_[N] = {};
};

// Adds RequestFields, ConnFields and register_fields to the module.
bool add_to(PyObject* module);

}  // namespace http_fields
}  // namespace pyport
