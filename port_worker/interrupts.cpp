#include "interrupts.hpp"

#include <Python.h>
#include <signal.h>
#include <time.h>

#include <algorithm>

namespace pyport {
namespace {

void set_sigint_blocked(bool blocked) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, nullptr);
}

}  // namespace

Interrupts::Interrupts() : main_(pthread_self()) {
  set_sigint_blocked(true);
}

bool Interrupts::begin(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(early_.begin(), early_.end(), id);
    if (it != early_.end()) {
      early_.erase(it);
      return false;
    }
    running_.push_back({id, false, false});
  }
  // A nested request runs inside a wait for Erlang, which blocked SIGINT.
  bool nested = running_.size() > 1;
  if (nested || !unblocked_) set_sigint_blocked(false);
  unblocked_ = true;
  return true;
}

void Interrupts::end() {
  bool was_signalled = false;
  bool nested = false;
  {
    // Once it is off the list no SIGINT is sent for it; one sent before
    // marked it signalled.
    std::lock_guard<std::mutex> lock(mu_);
    if (!running_.empty()) {
      was_signalled = running_.back().signalled;
      running_.pop_back();
    }
    nested = !running_.empty();
  }
  if (was_signalled) {
    // Blocked: a SIGINT still on its way stays pending (or has already run
    // Python's handler), and is discarded here.
    set_sigint_blocked(true);
    unblocked_ = false;
    discard_pending();
  }
  if (nested) {
    // Back in the outer request: interrupted now if that was asked for
    // meanwhile (the signal waits, blocked, until the unblock below).
    std::lock_guard<std::mutex> lock(mu_);
    Running& outer = running_.back();
    if (outer.requested && !outer.signalled) signal_locked(outer);
    outer.requested = false;
  }
  if (nested && !unblocked_) {
    set_sigint_blocked(false);
    unblocked_ = true;
  }
}

void Interrupts::idle() {
  if (!unblocked_) return;
  set_sigint_blocked(true);
  unblocked_ = false;
}

void Interrupts::interrupt(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!running_.empty() && running_.back().id == id) {
    if (!running_.back().signalled) signal_locked(running_.back());
    return;
  }
  for (Running& r : running_) {
    if (r.id == id) {
      // An outer request, waiting on a nested one: interrupted once it
      // runs again.
      r.requested = true;
      return;
    }
  }
  if (early_.size() >= kMaxEarly) early_.pop_front();
  early_.push_back(id);
}

void Interrupts::interrupt_all() {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_.empty()) return;
  for (Running& r : running_)
    r.requested = true;
  if (!running_.back().signalled) signal_locked(running_.back());
}

bool Interrupts::innermost_signalled() {
  std::lock_guard<std::mutex> lock(mu_);
  return !running_.empty() && running_.back().signalled;
}

void Interrupts::signal_locked(Running& r) {
  r.signalled = true;
  pthread_kill(main_, SIGINT);
}

// The main thread, SIGINT blocked: a SIGINT still pending is taken out of
// the kernel, and one whose C handler already ran (Python notes it and
// raises KeyboardInterrupt at the next check) is consumed here.
void Interrupts::discard_pending() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  struct timespec zero = {0, 0};
  while (sigtimedwait(&set, nullptr, &zero) == SIGINT) {
  }
  if (PyErr_CheckSignals() < 0) {
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
      PyErr_Clear();
    } else {
      // Another signal handler of the program raised: report, as Python
      // does for errors nobody can catch.
      PyErr_WriteUnraisable(nullptr);
    }
  }
}

}  // namespace pyport
