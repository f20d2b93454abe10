#define PY_SSIZE_T_CLEAN
#include "http_fields.hpp"

#include <structmember.h>

#include <cstddef>
#include <cstring>

namespace pyport {
namespace {

// A field's name and its default: a kind of constant, or none (unset
// until the class's __init__ or the C++ maker sets it).
enum Default { kUnset, kNone, kFalse, kZero, kMinusOne, kZeroFloat };
struct Spec {
  const char* name;
  Default dflt;
};

// _Request: __init__'s five, then what were its class defaults.
const Spec kRequestSpecs[] = {
    {"conn", kUnset},
    {"scope", kUnset},
    {"method_head", kUnset},
    {"keep_alive", kUnset},
    {"expect_continue", kUnset},
    {"chunks", kNone},
    {"buffered", kZero},
    {"body_done", kFalse},
    {"delivered_end", kFalse},
    {"waiter", kNone},
    {"started", kFalse},
    {"complete", kFalse},
    {"status", kZero},
    {"chunked", kFalse},
    {"no_body", kFalse},
    {"task", kNone},
    {"length_left", kMinusOne},
    {"chunked_declared", kFalse},
    {"_head", kNone},
    {"broken", kFalse},
    {"timed_out", kFalse},
    {"started_at", kZeroFloat},
    {"sent_bytes", kZero},
    {"own_response", kFalse},
};
// HttpConnection: what its C++ paths read per request (__init__ sets them).
const Spec kConnSpecs[] = {
    {"server", kUnset},
    {"app", kUnset},
    {"loop", kUnset},
    {"transport", kUnset},
    {"parser", kUnset},
    {"pipeline", kUnset},
    {"pending_error", kUnset},
    {"reading", kUnset},
    {"lost", kUnset},
    {"eof", kUnset},
    {"closing", kUnset},
    {"read_paused", kUnset},
    {"buffered", kUnset},
    {"timer_when", kUnset},
    {"request_timeout", kUnset},
    {"keepalive_timeout", kUnset},
    {"access_log", kUnset},
    {"_time", kUnset},
    {"deadline", kUnset},
    {"deadline_kind", kUnset},
};
constexpr int kRequestCount = sizeof kRequestSpecs / sizeof kRequestSpecs[0];
constexpr int kConnCount = sizeof kConnSpecs / sizeof kConnSpecs[0];

using Fields = http_fields::FieldsObject;

struct BaseInfo {
  const Spec* specs;
  int count;
  PyTypeObject* type;
  PyObject* defaults[kRequestCount > kConnCount ? kRequestCount : kConnCount];
};
BaseInfo bases[2] = {{kRequestSpecs, kRequestCount, nullptr, {}},
                     {kConnSpecs, kConnCount, nullptr, {}}};

int count_of(PyTypeObject* t) {
  for (const BaseInfo& b : bases) {
    if (b.type && PyType_IsSubtype(t, b.type)) return b.count;
  }
  return 0;
}

PyObject* Fields_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyObject* self = type->tp_alloc(type, 0);
  if (self == nullptr) return nullptr;
  for (const BaseInfo& b : bases) {
    if (b.type && PyType_IsSubtype(type, b.type)) {
      auto* fields = reinterpret_cast<Fields*>(self);
      for (int i = 0; i < b.count; ++i)
        fields->f[i] = Py_XNewRef(b.defaults[i]);
      break;
    }
  }
  return self;
}

int Fields_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* fields = reinterpret_cast<Fields*>(self);
  int n = count_of(Py_TYPE(self));
  for (int i = 0; i < n; ++i)
    Py_VISIT(fields->f[i]);
  return 0;
}

int Fields_clear(PyObject* self) {
  auto* fields = reinterpret_cast<Fields*>(self);
  int n = count_of(Py_TYPE(self));
  for (int i = 0; i < n; ++i)
    Py_CLEAR(fields->f[i]);
  return 0;
}

void Fields_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  Fields_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyMemberDef request_members[kRequestCount + 1];
PyMemberDef conn_members[kConnCount + 1];

PyTypeObject make_type(const char* name, const char* doc, int count, PyMemberDef* members) {
  PyTypeObject t{};
  Py_SET_REFCNT(reinterpret_cast<PyObject*>(&t), 1);
  t.tp_name = name;
  t.tp_doc = doc;
  t.tp_basicsize = static_cast<Py_ssize_t>(offsetof(Fields, f) + count * sizeof(PyObject*));
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
  t.tp_new = Fields_new;
  t.tp_dealloc = Fields_dealloc;
  t.tp_traverse = Fields_traverse;
  t.tp_clear = Fields_clear;
  t.tp_members = members;
  return t;
}

PyTypeObject request_fields_type =
    make_type("_pyport_http.RequestFields", "_Request's fields (port_worker/http_fields.hpp)",
              kRequestCount, request_members);
PyTypeObject conn_fields_type =
    make_type("_pyport_http.ConnFields", "HttpConnection's fields (port_worker/http_fields.hpp)",
              kConnCount, conn_members);

// register_fields(cls): direct access for instances of exactly cls.
PyObject* register_fields(PyObject*, PyObject* cls_obj) {
  if (!PyType_Check(cls_obj)) {
    PyErr_SetString(PyExc_TypeError, "register_fields(cls): cls is a class");
    return nullptr;
  }
  auto* cls = reinterpret_cast<PyTypeObject*>(cls_obj);
  for (int which = 0; which < 2; ++which) {
    BaseInfo& b = bases[which];
    if (!PyType_IsSubtype(cls, b.type)) continue;
    // No class before the base in the MRO may define a field's name.
    PyObject* mro = cls->tp_mro;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(mro); ++k) {
      auto* t = reinterpret_cast<PyTypeObject*>(PyTuple_GET_ITEM(mro, k));
      if (t == b.type) break;
      for (int i = 0; i < b.count; ++i) {
        PyObject* v = PyDict_GetItemString(t->tp_dict, b.specs[i].name);
        if (v != nullptr) {
          PyErr_Format(PyExc_TypeError, "%s.%s shadows the C field of %s", t->tp_name,
                       b.specs[i].name, b.type->tp_name);
          return nullptr;
        }
      }
    }
    Py_INCREF(cls);
    Py_XSETREF(http_fields::registered[which], cls);
    Py_RETURN_NONE;
  }
  PyErr_SetString(PyExc_TypeError, "register_fields(cls): cls subclasses no fields base");
  return nullptr;
}

PyMethodDef functions[] = {{"register_fields", register_fields, METH_O,
                            "register_fields(cls): its fields read directly by the C++ path"},
                           {nullptr, nullptr, 0, nullptr}};

}  // namespace

namespace http_fields {

PyTypeObject* registered[2];

int index_of(Base base, const char* name) {
  const BaseInfo& b = bases[base];
  for (int i = 0; i < b.count; ++i) {
    if (std::strcmp(b.specs[i].name, name) == 0) return i;
  }
  return -1;
}

bool add_to(PyObject* module) {
  bases[kRequest].type = &request_fields_type;
  bases[kConn].type = &conn_fields_type;
  PyMemberDef* member_lists[] = {request_members, conn_members};
  for (int which = 0; which < 2; ++which) {
    BaseInfo& b = bases[which];
    for (int i = 0; i < b.count; ++i) {
      member_lists[which][i] = PyMemberDef{
          b.specs[i].name, T_OBJECT_EX,
          static_cast<Py_ssize_t>(offsetof(Fields, f) + i * sizeof(PyObject*)), 0, nullptr};
      PyObject* v = nullptr;
      switch (b.specs[i].dflt) {
        case kUnset:
          break;
        case kNone:
          v = Py_NewRef(Py_None);
          break;
        case kFalse:
          v = Py_NewRef(Py_False);
          break;
        case kZero:
          v = PyLong_FromLong(0);
          break;
        case kMinusOne:
          v = PyLong_FromLong(-1);
          break;
        case kZeroFloat:
          v = PyFloat_FromDouble(0.0);
          break;
      }
      if (b.specs[i].dflt != kUnset && v == nullptr) return false;
      Py_XSETREF(b.defaults[i], v);
    }
    if (PyType_Ready(b.type) < 0) return false;
  }
  return PyModule_AddObjectRef(module, "RequestFields",
                               reinterpret_cast<PyObject*>(&request_fields_type)) == 0 &&
         PyModule_AddObjectRef(module, "ConnFields",
                               reinterpret_cast<PyObject*>(&conn_fields_type)) == 0 &&
         PyModule_AddFunctions(module, functions) == 0;
}

}  // namespace http_fields
}  // namespace pyport
