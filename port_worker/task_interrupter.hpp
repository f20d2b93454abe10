// INTERRUPT of a request that became a task on the worker's event loop,
// while one of its steps runs and does not return to the loop (a runaway
// `while True` in a coroutine).
//
// Task steps run outside any request's span, where the main thread keeps
// SIGINT blocked (see Interrupts), and the main thread only reads the
// INTERRUPT frame itself once the step returns. So this thread does it: for
// each INTERRUPT it takes the GIL (the interpreter hands it over at its
// switch interval, also from a busy loop), asks Python whether that
// request's task is the one running now (erlang._worker_async.
// _interrupt_running), and if so raises KeyboardInterrupt in the main
// thread (PyThreadState_SetAsyncExc), which happens inside that step. The
// task then ends with it and its request answers KeyboardInterrupt. Code
// that holds the GIL in C for long, or swallows KeyboardInterrupt, is still
// ended only by the owner's kill_after.
#pragma once

#include <Python.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>

#include "py_ref.hpp"

namespace pyport {

class TaskInterrupter {
 public:
  TaskInterrupter() = default;
  ~TaskInterrupter() { stop(); }
  TaskInterrupter(const TaskInterrupter&) = delete;
  TaskInterrupter& operator=(const TaskInterrupter&) = delete;

  // Main thread, GIL held: starts the thread. check(id) -> bool says
  // whether request id's task is running now; main_thread is the ident of
  // the thread to interrupt. Returns 0 or an errno value.
  int start(PyRef check, unsigned long main_thread);
  // Any thread, without the GIL: request id is to be interrupted.
  void request(uint64_t id);
  // Main thread, GIL held (released while it waits): ends the thread.
  void stop();

 private:
  void run();

  PyRef check_;
  unsigned long main_thread_ = 0;
  std::thread thread_;
  std::atomic<bool> started_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<uint64_t> ids_;
  bool stopping_ = false;
};

}  // namespace pyport
