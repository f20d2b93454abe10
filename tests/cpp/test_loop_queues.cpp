// The event loop's C++ ready queue and timer heap (port_worker/loop_queues.hpp)
// on real Python objects: ordering, references, and what happens when
// releasing a handle runs Python code that touches the container again.
#include <Python.h>

#include <boost/test/unit_test.hpp>
#include <cmath>

#include "loop_queues.hpp"
#include "py_ref.hpp"

using pyport::HandleLayout;
using pyport::PyRef;
using pyport::ReadyQueue;
using pyport::TimerHeap;

namespace {

PyRef num(long v) {
  return PyRef::steal(PyLong_FromLong(v));
}

long as_long(const PyRef& o) {
  return PyLong_AsLong(o.get());
}

// Runs Python source in a fresh namespace and returns that namespace.
PyRef run(const char* source) {
  PyRef globals = PyRef::steal(PyDict_New());
  BOOST_REQUIRE(globals);
  PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
  PyRef result = PyRef::steal(PyRun_String(source, Py_file_input, globals.get(), globals.get()));
  if (!result) PyErr_Print();
  BOOST_REQUIRE(result);
  return globals;
}

PyObject* item(const PyRef& ns, const char* name) {
  return PyDict_GetItemString(ns.get(), name);  // borrowed
}

}  // namespace

BOOST_AUTO_TEST_SUITE(loop_queues)

BOOST_AUTO_TEST_CASE(ready_queue_is_fifo_and_owns_references) {
  ReadyQueue q;
  PyRef big = PyRef::steal(PyUnicode_FromString("a string only the queue and this test hold"));
  Py_ssize_t before = Py_REFCNT(big.get());
  BOOST_REQUIRE(q.push(big.get()));
  BOOST_REQUIRE(q.push(num(2).get()));
  BOOST_CHECK_EQUAL(Py_REFCNT(big.get()), before + 1);
  BOOST_CHECK_EQUAL(q.size(), 2u);
  BOOST_CHECK(q.pop().get() == big.get());
  BOOST_CHECK_EQUAL(Py_REFCNT(big.get()), before);
  BOOST_CHECK_EQUAL(as_long(q.pop()), 2);
  BOOST_CHECK(q.empty());
}

BOOST_AUTO_TEST_CASE(ready_queue_clear_survives_finalizers_that_queue_more) {
  // Each object's finalizer pushes a marker through `requeue` while the
  // queue is being cleared: the clear ends, the markers stay.
  ReadyQueue q;
  PyRef ns =
      run("pushed = []\n"
          "class Noisy:\n"
          "    def __del__(self):\n"
          "        pushed.append(1)\n"
          "        requeue()\n");
  PyRef marker = num(7);
  auto requeue = [](PyObject* self, PyObject*) -> PyObject* {
    auto* queue = static_cast<ReadyQueue*>(PyCapsule_GetPointer(self, "queue"));
    PyRef seven = PyRef::steal(PyLong_FromLong(7));
    if (!queue->push(seven.get())) return nullptr;
    Py_RETURN_NONE;
  };
  static PyMethodDef def = {"requeue", requeue, METH_NOARGS, nullptr};
  PyRef capsule = PyRef::steal(PyCapsule_New(&q, "queue", nullptr));
  PyRef fn = PyRef::steal(PyCFunction_New(&def, capsule.get()));
  BOOST_REQUIRE(fn);
  PyDict_SetItemString(ns.get(), "requeue", fn.get());
  for (int i = 0; i < 3; ++i) {
    PyRef noisy = PyRef::steal(PyObject_CallNoArgs(item(ns, "Noisy")));
    BOOST_REQUIRE(noisy && q.push(noisy.get()));
  }
  q.clear();
  BOOST_CHECK_EQUAL(PyList_GET_SIZE(item(ns, "pushed")), 3);
  BOOST_CHECK_EQUAL(q.size(), 3u);  // the markers queued meanwhile
  while (!q.empty())
    BOOST_CHECK_EQUAL(as_long(q.pop()), 7);
}

BOOST_AUTO_TEST_CASE(timer_heap_orders_by_time_then_by_arrival) {
  TimerHeap heap;
  const double whens[] = {3.0, 1.0, 2.0, 1.0, -HUGE_VAL, 1.0, 2.0};
  for (long i = 0; i < 7; ++i)
    BOOST_REQUIRE(heap.push(whens[i], num(i).get()));
  long expected[] = {4, 1, 3, 5, 2, 6, 0};
  for (long want : expected) {
    BOOST_REQUIRE(!heap.empty());
    BOOST_CHECK_EQUAL(as_long(heap.pop()), want);
  }
  BOOST_CHECK(heap.empty());
}

BOOST_AUTO_TEST_CASE(timer_heap_remove_if_keeps_order_and_counts) {
  TimerHeap heap;
  for (long i = 0; i < 200; ++i)
    BOOST_REQUIRE(heap.push(double(200 - i), num(i).get()));
  heap.set_cancelled_count(100);
  BOOST_REQUIRE(heap.remove_if([](PyObject* h) { return PyLong_AsLong(h) % 2 == 0; }));
  BOOST_CHECK_EQUAL(heap.size(), 100u);
  long last = 1000;
  while (!heap.empty()) {
    long v = as_long(heap.pop());
    BOOST_CHECK(v % 2 == 1);
    BOOST_CHECK(v < last);  // due later was pushed earlier
    last = v;
  }
  heap.clear();
  BOOST_CHECK_EQUAL(heap.cancelled_count(), 0);
}

BOOST_AUTO_TEST_CASE(asyncio_handles_have_the_plain_slot_layout) {
  HandleLayout layout;
  BOOST_REQUIRE(layout.load());
  auto* handle = reinterpret_cast<PyTypeObject*>(layout.handle_type.get());
  auto* timer = reinterpret_cast<PyTypeObject*>(layout.timer_type.get());
  BOOST_CHECK(pyport::plain_slots_layout(handle));
  BOOST_CHECK(pyport::plain_slots_layout(timer));
  // A class with a __dict__ is not: the loop then makes asyncio's classes.
  PyRef ns = run("class WithDict:\n    pass\n");
  BOOST_CHECK(!pyport::plain_slots_layout(reinterpret_cast<PyTypeObject*>(item(ns, "WithDict"))));
  // The offsets are where Python reads the attributes.
  PyRef loop_ns =
      run("class Loop:\n"
          "    def get_debug(self):\n"
          "        return False\n"
          "loop = Loop()\n");
  PyRef h = PyRef::steal(
      PyObject_CallFunction(layout.handle_type.get(), "O()O", Py_None, item(loop_ns, "loop")));
  if (!h) PyErr_Print();
  BOOST_REQUIRE(h);
  BOOST_CHECK(HandleLayout::get(h.get(), layout.cancelled) == Py_False);
  BOOST_CHECK_EQUAL(layout.cancelled_of(h.get()), 0);
  HandleLayout::set(h.get(), layout.cancelled, Py_True);
  PyRef seen = PyRef::steal(PyObject_CallMethod(h.get(), "cancelled", nullptr));
  BOOST_CHECK(seen.get() == Py_True);
}

BOOST_AUTO_TEST_SUITE_END()
