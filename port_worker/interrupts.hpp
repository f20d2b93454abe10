// INTERRUPT (PROTOCOL.md): raising KeyboardInterrupt in the Python code of
// one request, and only in it.
//
// The main thread runs requests; it marks each one's start and end here.
// Another thread (the one reading frames) asks for a request to be
// interrupted. If that request is the one running, SIGINT is sent to the
// main thread: Python's handler raises KeyboardInterrupt at the next
// bytecode, and a blocking system call (sleep, a socket read) returns
// with EINTR so that happens at once. SIGINT is blocked on the main thread
// outside requests, so a signal that arrives as a request ends cannot
// land in the next one: end() takes it back before anything else runs.
// An interrupt for a request that has not started yet is remembered, and
// that request is answered without running.
#pragma once

#include <pthread.h>

#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace pyport {

class Interrupts {
 public:
  // How many interrupts for requests not running are remembered; an
  // interrupt for a request that already finished stays until pushed out.
  static constexpr size_t kMaxEarly = 1024;

  // On the main thread, before any other thread exists: blocks SIGINT so
  // every thread created later starts with it blocked.
  Interrupts();
  Interrupts(const Interrupts&) = delete;
  Interrupts& operator=(const Interrupts&) = delete;

  // Main thread, with the GIL: request `id` is about to run Python code.
  // False if it was interrupted before it started (it must not run).
  // Requests nest (a callback into the worker runs inside another).
  bool begin(uint64_t id);
  // Main thread, with the GIL: the request of the matching begin() is done.
  // A KeyboardInterrupt meant for it that is still pending is discarded.
  // SIGINT may stay unblocked until idle(), so that the requests of one
  // batch do not each pay two system calls for it.
  void end();
  // Main thread: no request runs any more (the batch is done): SIGINT is
  // blocked again.
  void idle();

  // Any thread, without the GIL: interrupt request `id`.
  void interrupt(uint64_t id);
  // Any thread, without the GIL: interrupt every request running (the
  // innermost now, the outer ones as they resume). At end of input.
  void interrupt_all();
  // Whether the innermost running request was sent its SIGINT: a wait
  // inside it (for Erlang) then lets Python raise KeyboardInterrupt, even
  // when the signal arrived before the wait blocked.
  bool innermost_signalled();

 private:
  struct Running {
    uint64_t id;
    bool signalled;  // SIGINT sent while it was the innermost request
    bool requested;  // an interrupt for it came while a nested request ran
  };
  void signal_locked(Running& r);
  void discard_pending();

  pthread_t main_;
  bool unblocked_ = false;  // main thread only: SIGINT is unblocked on it
  std::mutex mu_;
  std::vector<Running> running_;  // innermost last; changed by the main thread only
  std::deque<uint64_t> early_;
};

}  // namespace pyport
