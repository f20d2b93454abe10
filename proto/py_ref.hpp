// Owning references to Python objects. Every PyObject* the C++ side keeps
// lives in a PyRef; bare Py_DECREF pairs do not appear elsewhere.
// A PyRef must only be created, copied or destroyed with the GIL held.
#pragma once

#include <Python.h>

#include <utility>

namespace pyport {

class PyRef {
 public:
  PyRef() = default;
  // Takes over a new reference (may be null: a failed API call).
  static PyRef steal(PyObject* o) { return PyRef(o); }
  // Adds a reference to a borrowed object.
  static PyRef borrow(PyObject* o) {
    Py_XINCREF(o);
    return PyRef(o);
  }

  ~PyRef() { Py_XDECREF(obj_); }
  PyRef(const PyRef& other) : obj_(other.obj_) { Py_XINCREF(obj_); }
  PyRef(PyRef&& other) noexcept : obj_(std::exchange(other.obj_, nullptr)) {}
  PyRef& operator=(PyRef other) noexcept {
    std::swap(obj_, other.obj_);
    return *this;
  }

  PyObject* get() const { return obj_; }
  explicit operator bool() const { return obj_ != nullptr; }
  // Hands the reference to the caller (e.g. to a function that steals it).
  PyObject* release() { return std::exchange(obj_, nullptr); }
  void reset() { PyRef().swap(*this); }
  void swap(PyRef& other) noexcept { std::swap(obj_, other.obj_); }

 private:
  explicit PyRef(PyObject* o) : obj_(o) {}
  PyObject* obj_ = nullptr;
};

// Holds the GIL for a scope, from a thread that may or may not have it.
class GilScope {
 public:
  GilScope() : state_(PyGILState_Ensure()) {}
  ~GilScope() { PyGILState_Release(state_); }
  GilScope(const GilScope&) = delete;
  GilScope& operator=(const GilScope&) = delete;

 private:
  PyGILState_STATE state_;
};

// A Python exception taken out of the interpreter's error indicator, so it
// can be inspected while other Python calls run. Restores nothing: the
// holder decides what to do with it.
struct PyError {
  PyRef value;  // the exception instance (never null after fetch())

  // Moves the current exception into a PyError (a SystemError if none is
  // set, so that a caller that expected one still reports something).
  static PyError fetch() {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "error without an exception set");
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value) PyException_SetTraceback(value, tb);
    PyRef t = PyRef::steal(type), v = PyRef::steal(value), b = PyRef::steal(tb);
    return PyError{v ? v : t};
  }
};

}  // namespace pyport
