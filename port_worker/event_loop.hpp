// The `_pyport_loop` builtin module: the libuv side of erlang.ErlangEventLoop.
//
// Its Poller is the selector behind asyncio's BaseSelectorEventLoop: one
// uv_poll_t per registered descriptor, and poll(timeout) runs one libuv
// iteration (a timerfd, watched too, ends timed waits) and returns the
// (key, events) pairs the poll callbacks collected. libuv callbacks never
// run Python: they only record readiness, so uv_run is never re-entered and
// the loop can wait without the GIL.
//
// The Poller is also the asyncio loop's engine once bound to it: its ready
// queue and timer heap (loop._ready / loop._scheduled, see loop_queues.hpp),
// call_soon / call_at / call_later / create_task, and run_once, asyncio's
// _run_once in C++.
//
// The worker's own loop (the one the main thread idles in) is the Poller
// made with worker=True: it runs on the worker's libuv loop, so frames from
// Erlang are read by the same uv_run that waits for asyncio's descriptors
// and timers, and it reports "frames waiting" as a readable pseudo key whose
// callback handles them. Every other Poller (erlang.new_event_loop(), loops
// in threads) runs a private libuv loop, as stock asyncio loops each have
// their own epoll.
#pragma once

#include <Python.h>
#include <uv.h>

#include <cstdint>

namespace pyport {

// What the worker provides to its root Poller and to the module's request
// functions. Every method is called on the loop thread with the GIL held.
class LoopHost {
 public:
  virtual ~LoopHost() = default;
  virtual uv_loop_t* uv_loop() = 0;
  virtual bool on_loop_thread() const = 0;

  // Around each wait of the root Poller: before it, answers are handed to
  // the writer and input is watched; after it, the main thread is busy.
  virtual void before_wait() = 0;
  virtual void after_wait() = 0;
  // Frames (or end of input) wait to be handled.
  virtual bool input_ready() = 0;
  // Before a wait that would block (timeout in seconds, negative: none):
  // the worker may poll for frames a short while first; true when some
  // came (input_ready() then says so).
  virtual bool spin_for_input(double timeout) {
    (void)timeout;
    return false;
  }
  // Handles every waiting frame; *more is false once the worker must stop
  // (SHUTDOWN, end of input, output gone). False with a Python exception set.
  virtual bool process_input(bool* more) = 0;

  // Answers request `id` with the outcome of a done future (RESULT or ERROR).
  virtual bool answer_future(uint64_t id, PyObject* future) = 0;
  // Writes a stream chunk / the end of a stream. False with an exception set
  // when the value cannot be sent (TypeError, or ValueError when too large).
  virtual bool stream_chunk(uint64_t id, PyObject* value) = 0;
  virtual bool stream_end(uint64_t id) = 0;

  // The worker's asyncio loop is made on first use (erlang._worker): the
  // main thread idles in plain libuv until then. loop_started() (loop
  // thread) says it now exists; request_loop() (any thread, GIL held) asks
  // the main thread to make it as soon as it is idle or waits for Erlang.
  virtual void loop_started() = 0;
  virtual void request_loop() = 0;
};

namespace loop_module {

constexpr const char* kName = "_pyport_loop";

// For PyImport_AppendInittab, before Py_Initialize.
PyObject* init();

// Imports the module and makes `host` its worker (null detaches). Returns
// false with a Python exception set on failure. GIL held.
bool attach(LoopHost* host);

}  // namespace loop_module
}  // namespace pyport
