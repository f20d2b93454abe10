#include "task_interrupter.hpp"

#include <system_error>

namespace pyport {

int TaskInterrupter::start(PyRef check, unsigned long main_thread) {
  check_ = std::move(check);
  main_thread_ = main_thread;
  try {
    thread_ = std::thread(&TaskInterrupter::run, this);
  } catch (const std::system_error& e) {
    check_.reset();
    return e.code().value();
  }
  started_.store(true);
  return 0;
}

void TaskInterrupter::request(uint64_t id) {
  if (!started_.load()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return;
  // Bounded: a flood of INTERRUPTs only needs the latest few.
  if (ids_.size() >= 1024) ids_.pop_front();
  ids_.push_back(id);
  cv_.notify_one();
}

void TaskInterrupter::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) {
    // The thread may be waiting for the GIL.
    Py_BEGIN_ALLOW_THREADS thread_.join();
    Py_END_ALLOW_THREADS
  }
  check_.reset();
}

void TaskInterrupter::run() {
  for (;;) {
    uint64_t id;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !ids_.empty(); });
      if (stopping_) return;
      id = ids_.front();
      ids_.pop_front();
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
    PyRef running = rid ? PyRef::steal(PyObject_CallOneArg(check_.get(), rid.get())) : PyRef();
    int yes = running ? PyObject_IsTrue(running.get()) : -1;
    if (yes < 0) {
      PyErr_WriteUnraisable(check_.get());
    } else if (yes) {
      PyThreadState_SetAsyncExc(main_thread_, PyExc_KeyboardInterrupt);
    }
    PyGILState_Release(gil);
  }
}

}  // namespace pyport
