// Shared helpers of the C++ tests. The tests hold the GIL throughout.
#pragma once

#include <Python.h>

#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <msgpack.hpp>
#include <string>
#include <vector>

#include "codec.hpp"
#include "py_ref.hpp"

namespace testing {

using Bytes = std::vector<uint8_t>;

inline std::string source_path(const std::string& rel) {
  return std::string(PYPORT_SOURCE_DIR) + "/" + rel;
}

inline Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in, "cannot open " << path);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

inline std::string hex(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}
inline std::string hex(const Bytes& b) {
  return hex(b.data(), b.size());
}

// Takes the pending Python exception as "Type: message" (empty if none).
inline std::string take_error() {
  if (!PyErr_Occurred()) return "";
  pyport::PyError e = pyport::PyError::fetch();
  pyport::PyRef name = pyport::PyRef::steal(PyType_GetName(Py_TYPE(e.value.get())));
  pyport::PyRef str = pyport::PyRef::steal(PyObject_Str(e.value.get()));
  std::string text = std::string(name ? PyUnicode_AsUTF8(name.get()) : "?") + ": " +
                     (str ? PyUnicode_AsUTF8(str.get()) : "?");
  PyErr_Clear();
  return text;
}

// Evaluates a Python expression with `erlang` imported.
inline pyport::PyRef py(const std::string& expr) {
  // Never freed: it must outlive every test and not die after Py_Finalize.
  static PyObject* globals = nullptr;
  if (!globals) {
    globals = PyDict_New();
    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
    pyport::PyRef r = pyport::PyRef::steal(
        PyRun_String("import erlang, math, decimal, collections", Py_file_input, globals, globals));
    BOOST_REQUIRE_MESSAGE(r, "cannot import erlang: " << take_error());
  }
  pyport::PyRef v =
      pyport::PyRef::steal(PyRun_String(expr.c_str(), Py_eval_input, globals, globals));
  BOOST_REQUIRE_MESSAGE(v, "evaluating " << expr << ": " << take_error());
  return v;
}

inline std::string repr(PyObject* o) {
  pyport::PyRef r = pyport::PyRef::steal(PyObject_Repr(o));
  if (!r) return "<repr failed: " + take_error() + ">";
  return PyUnicode_AsUTF8(r.get());
}

// Equal values of identical types all the way down (nan equals nan).
inline bool same_value(PyObject* a, PyObject* b, std::string& why) {
  if (Py_TYPE(a) != Py_TYPE(b)) {
    why = "type " + std::string(Py_TYPE(a)->tp_name) + " vs " + Py_TYPE(b)->tp_name + " for " +
          repr(a) + " vs " + repr(b);
    return false;
  }
  if (PyFloat_Check(a) && std::isnan(PyFloat_AS_DOUBLE(a)) && std::isnan(PyFloat_AS_DOUBLE(b))) {
    return true;
  }
  if (PyList_Check(a) || PyTuple_Check(a)) {
    pyport::PyRef fa = pyport::PyRef::steal(PySequence_Fast(a, "")),
                  fb = pyport::PyRef::steal(PySequence_Fast(b, ""));
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fa.get());
    if (n != PySequence_Fast_GET_SIZE(fb.get())) {
      why = "length differs: " + repr(a) + " vs " + repr(b);
      return false;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!same_value(PySequence_Fast_GET_ITEM(fa.get(), i), PySequence_Fast_GET_ITEM(fb.get(), i),
                      why)) {
        return false;
      }
    }
    return true;
  }
  if (PyDict_Check(a)) {
    if (PyDict_GET_SIZE(a) != PyDict_GET_SIZE(b)) {
      why = "size differs: " + repr(a) + " vs " + repr(b);
      return false;
    }
    Py_ssize_t pa = 0, pb = 0;
    PyObject *ka, *va, *kb, *vb;
    while (PyDict_Next(a, &pa, &ka, &va) && PyDict_Next(b, &pb, &kb, &vb)) {
      if (!same_value(ka, kb, why) || !same_value(va, vb, why)) return false;
    }
    return true;
  }
  int eq = PyObject_RichCompareBool(a, b, Py_EQ);
  if (eq != 1) {
    why = repr(a) + " != " + repr(b);
    PyErr_Clear();
    return false;
  }
  return true;
}

// The codec shared by the tests. Leaked on purpose: it must not be destroyed
// after the interpreter is finalised.
inline pyport::Codec& codec() {
  static pyport::Codec* c = pyport::Codec::create().release();
  BOOST_REQUIRE_MESSAGE(c, "Codec::create: " << take_error());
  return *c;
}

// msgpack-c, an independent implementation, must parse exactly these bytes
// as one value.
inline bool msgpack_c_parses(const uint8_t* p, size_t n, std::string& why) {
  try {
    size_t offset = 0;
    msgpack::object_handle oh = msgpack::unpack(reinterpret_cast<const char*>(p), n, offset);
    if (offset != n) {
      why = "msgpack-c parsed " + std::to_string(offset) + " of " + std::to_string(n) + " bytes";
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    why = std::string("msgpack-c: ") + e.what();
    return false;
  }
}

}  // namespace testing
