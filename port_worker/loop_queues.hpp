// The ready queue and timer heap of erlang.ErlangEventLoop, in C++.
//
// The handles in them are asyncio's own Handle and TimerHandle objects, so
// everything Python code does with a handle (cancel(), cancelled(), when(),
// get_context(), repr, isinstance) is asyncio's code. The loop's hot paths
// (call_soon, call_at, run_once) fill and read the handles' __slots__
// directly at the offsets asyncio's classes define (HandleLayout), so no
// Python code and no attribute lookup runs per callback. Every method needs
// the GIL.
#pragma once

#include <Python.h>
#include <structmember.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <new>
#include <utility>
#include <vector>

#include "py_ref.hpp"

namespace pyport {

// Where asyncio.Handle and asyncio.TimerHandle keep their slots, read from
// the classes' member descriptors (so a Python whose Handle differs makes
// load() fail loudly instead of corrupting memory).
struct HandleLayout {
  PyRef handle_type;  // asyncio.events.Handle
  PyRef timer_type;   // asyncio.events.TimerHandle
  // The types call_soon/call_at make: subclasses of the two above with a
  // C traverse/clear/dealloc (see make_native_handle_type), or asyncio's
  // own classes when their layout is not the plain one those need.
  PyRef new_handle_type, new_timer_type;
  Py_ssize_t callback = 0, args = 0, cancelled = 0, loop = 0, source_traceback = 0, repr = 0,
             context = 0, scheduled = 0, when = 0;

  // False with a Python exception set.
  bool load();

  // Whether asyncio's Handle/TimerHandle or our subclasses of them are
  // exactly o's type: those are run without calling their _run().
  bool runs_natively(PyObject* o) const {
    PyObject* t = reinterpret_cast<PyObject*>(Py_TYPE(o));
    return t == new_handle_type.get() || t == new_timer_type.get() || t == handle_type.get() ||
           t == timer_type.get();
  }

  bool is_handle(PyObject* o) const {
    return PyObject_TypeCheck(o, reinterpret_cast<PyTypeObject*>(handle_type.get()));
  }
  bool is_timer(PyObject* o) const {
    return PyObject_TypeCheck(o, reinterpret_cast<PyTypeObject*>(timer_type.get()));
  }

  // The slot at `offset` of a Handle instance (null when unset).
  static PyObject* get(PyObject* o, Py_ssize_t offset) {
    return *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + offset);
  }
  // Stores a new reference to `value` in a slot, dropping the old one.
  static void set(PyObject* o, Py_ssize_t offset, PyObject* value) {
    PyObject** p = reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + offset);
    PyObject* old = *p;
    Py_INCREF(value);
    *p = value;
    Py_XDECREF(old);
  }

  // handle._cancelled for a Handle instance; -1 with an exception set.
  int cancelled_of(PyObject* h) const {
    PyObject* c = get(h, cancelled);
    if (c == Py_False) return 0;
    if (c == Py_True) return 1;
    if (!c) {
      PyErr_SetString(PyExc_AttributeError, "_cancelled");
      return -1;
    }
    return PyObject_IsTrue(c);
  }
};

// The offset of slot `name` of `type`, from its member descriptor.
inline bool slot_offset(PyObject* type, const char* name, Py_ssize_t* offset) {
  PyRef d = PyRef::steal(PyObject_GetAttrString(type, name));
  if (!d) return false;
  if (!Py_IS_TYPE(d.get(), &PyMemberDescr_Type)) {
    PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ member", type, name);
    return false;
  }
  PyMemberDef* m = reinterpret_cast<PyMemberDescrObject*>(d.get())->d_member;
  if (m->type != T_OBJECT_EX || m->offset < Py_ssize_t(sizeof(PyObject))) {
    PyErr_Format(PyExc_TypeError, "%R.%s is not an object slot", type, name);
    return false;
  }
  *offset = m->offset;
  return true;
}

inline bool HandleLayout::load() {
  PyRef events = PyRef::steal(PyImport_ImportModule("asyncio.events"));
  if (!events) return false;
  handle_type = PyRef::steal(PyObject_GetAttrString(events.get(), "Handle"));
  timer_type =
      handle_type ? PyRef::steal(PyObject_GetAttrString(events.get(), "TimerHandle")) : PyRef();
  if (!timer_type) return false;
  if (!PyType_Check(handle_type.get()) || !PyType_Check(timer_type.get()) ||
      !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(timer_type.get()),
                        reinterpret_cast<PyTypeObject*>(handle_type.get()))) {
    PyErr_SetString(PyExc_TypeError,
                    "asyncio.events.Handle/TimerHandle are not the expected classes");
    return false;
  }
  PyObject* h = handle_type.get();
  PyObject* t = timer_type.get();
  return slot_offset(h, "_callback", &callback) && slot_offset(h, "_args", &args) &&
         slot_offset(h, "_cancelled", &cancelled) && slot_offset(h, "_loop", &loop) &&
         slot_offset(h, "_source_traceback", &source_traceback) && slot_offset(h, "_repr", &repr) &&
         slot_offset(h, "_context", &context) && slot_offset(t, "_scheduled", &scheduled) &&
         slot_offset(t, "_when", &when);
}

// Whether instances of `type` hold nothing but object slots (listed in
// tp_members along the MRO) and a weak reference list: then the generic
// traverse/clear/dealloc below handle them completely.
inline bool plain_slots_layout(PyTypeObject* type) {
  if (type->tp_dictoffset != 0 || type->tp_itemsize != 0) return false;
  Py_ssize_t first = Py_ssize_t(sizeof(PyObject));
  Py_ssize_t words = (type->tp_basicsize - first) / Py_ssize_t(sizeof(PyObject*));
  if (words <= 0 || first + words * Py_ssize_t(sizeof(PyObject*)) != type->tp_basicsize)
    return false;
  std::vector<bool> covered(size_t(words), false);
  auto cover = [&](Py_ssize_t offset) {
    Py_ssize_t i = (offset - first) / Py_ssize_t(sizeof(PyObject*));
    if (offset < first || i >= words || (offset - first) % Py_ssize_t(sizeof(PyObject*)))
      return false;
    covered[size_t(i)] = true;
    return true;
  };
  if (type->tp_weaklistoffset && !cover(type->tp_weaklistoffset)) return false;
  for (PyTypeObject* t = type; t && t != &PyBaseObject_Type; t = t->tp_base) {
    for (PyMemberDef* m = t->tp_members; m && m->name; ++m) {
      if (m->type != T_OBJECT_EX || !cover(m->offset)) return false;
    }
  }
  return std::all_of(covered.begin(), covered.end(), [](bool c) { return c; });
}

// The object slots of a plain-slots instance (see plain_slots_layout).
template <class F>
void each_slot(PyObject* o, F f) {
  PyTypeObject* type = Py_TYPE(o);
  char* base = reinterpret_cast<char*>(o);
  for (Py_ssize_t off = Py_ssize_t(sizeof(PyObject)); off < type->tp_basicsize;
       off += Py_ssize_t(sizeof(PyObject*))) {
    if (off != type->tp_weaklistoffset) f(*reinterpret_cast<PyObject**>(base + off));
  }
}

// loop._ready: handles waiting to run, in order.
class ReadyQueue {
 public:
  size_t size() const { return q_.size(); }
  bool empty() const { return q_.empty(); }

  // False with MemoryError set.
  bool push(PyObject* handle) {
    try {
      q_.push_back(PyRef::borrow(handle));
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return false;
    }
    return true;
  }
  bool push(PyRef&& handle) {
    try {
      q_.push_back(std::move(handle));
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return false;
    }
    return true;
  }
  // Not empty.
  PyRef pop() {
    PyRef h = std::move(q_.front());
    q_.pop_front();
    return h;
  }
  // Each handle is released once it is out of the queue (a finalizer it
  // runs may queue new ones, which stay). Allocates nothing.
  void clear() {
    for (size_t n = q_.size(); n > 0 && !q_.empty(); --n) {
      PyRef gone = pop();
    }
  }
  template <class F>
  void each(F f) const {
    for (const PyRef& h : q_)
      f(h.get());
  }

 private:
  std::deque<PyRef> q_;
};

// loop._scheduled: timers by due time; equal times keep their call order.
class TimerHeap {
 public:
  struct Entry {
    double when;
    uint64_t seq;
    PyRef handle;
  };

  size_t size() const { return heap_.size(); }
  bool empty() const { return heap_.empty(); }
  const Entry& top() const { return heap_.front(); }
  Py_ssize_t cancelled_count() const { return cancelled_; }
  void set_cancelled_count(Py_ssize_t n) { cancelled_ = n; }
  void note_cancelled() { ++cancelled_; }

  // False with MemoryError set.
  bool push(double when, PyObject* handle) {
    try {
      heap_.push_back(Entry{when, seq_++, PyRef::borrow(handle)});
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return false;
    }
    std::push_heap(heap_.begin(), heap_.end(), later);
    return true;
  }
  // Not empty.
  PyRef pop() {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    PyRef h = std::move(heap_.back().handle);
    heap_.pop_back();
    return h;
  }
  // Drops the entries `drop` says so (it sees each handle once) and
  // restores the heap order. The dropped handles are released after the
  // heap is whole again, as releasing one may run a finalizer that adds a
  // timer. False (nothing changed) when memory is short.
  template <class Drop>
  bool remove_if(Drop drop) {
    std::vector<PyRef> dropped;
    try {
      dropped.reserve(heap_.size());
    } catch (const std::bad_alloc&) {
      return false;
    }
    size_t kept = 0;
    for (size_t i = 0; i < heap_.size(); ++i) {
      if (drop(heap_[i].handle.get())) {
        dropped.push_back(std::move(heap_[i].handle));
      } else {
        if (i != kept) heap_[kept] = std::move(heap_[i]);
        ++kept;
      }
    }
    heap_.erase(heap_.begin() + kept, heap_.end());  // the entries left there are empty
    std::make_heap(heap_.begin(), heap_.end(), later);
    return true;
  }
  void clear() {
    std::vector<Entry> old;
    old.swap(heap_);
    cancelled_ = 0;
  }
  template <class F>
  void each(F f) const {
    for (const Entry& e : heap_)
      f(e.handle.get());
  }

 private:
  static bool later(const Entry& a, const Entry& b) {
    return a.when > b.when || (a.when == b.when && a.seq > b.seq);
  }

  std::vector<Entry> heap_;
  uint64_t seq_ = 0;
  Py_ssize_t cancelled_ = 0;
};

}  // namespace pyport
