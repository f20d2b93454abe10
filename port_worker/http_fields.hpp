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

// Adds RequestFields, ConnFields and register_fields to the module.
bool add_to(PyObject* module);

}  // namespace http_fields
}  // namespace pyport
