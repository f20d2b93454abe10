#define PY_SSIZE_T_CLEAN
#include "wsgi_pool.hpp"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "py_ref.hpp"
#include "wsgi_environ.hpp"

namespace pyport {
namespace {

// Interned method names (made once at module init).
PyObject* s_done = nullptr;
PyObject* s_set_result = nullptr;
PyObject* s_set_exception = nullptr;
PyObject* s_cancel = nullptr;

// A queued request: fn(arg), whose outcome goes to `future`. The references
// are dropped only with the GIL held.
struct Job {
  PyRef fn, arg, future;
};

// A finished job: the future and its result or exception.
struct Done {
  PyRef future, result, error;
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class PoolCore : public std::enable_shared_from_this<PoolCore> {
 public:
  PoolCore(int max_threads, int spin_us, int efd, PyRef hook)
      : max_(max_threads), spin_(spin_us), efd_(efd), hook_(std::move(hook)) {}
  // The last owner may be a pool thread without the GIL: hook_ was dropped
  // (with the GIL) by the Python object's dealloc.
  ~PoolCore() { close(efd_); }
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  int fd() const { return efd_; }

  // Loop thread, GIL held. 1 when the job may wait behind another one
  // (the caller then calls check() now and then while it returns true),
  // 0 when not, -1 with a Python exception set when the pool is shut down
  // or no thread at all could be started.
  int submit(Job&& job) {
    std::lock_guard<std::mutex> g(mu_);
    if (stop_) {
      PyErr_SetString(PyExc_RuntimeError, "the WSGI thread pool is shut down");
      return -1;
    }
    try {
      queue_.push_back(std::move(job));
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return -1;
    }
    queued_.store(queue_.size(), std::memory_order_release);
    ++submitted_;
    // A thread that is awake between jobs takes it. Otherwise every awake
    // thread is in a job, and (as this thread holds the GIL) blocked in the
    // app or waiting for the GIL: wake or start another.
    if (spare_ == 0) {
      if (!parked_.empty()) {
        wake_one();
      } else if (threads_ < max_ && !start_thread(true)) {
        if (threads_ > 0) {
          PyErr_Clear();  // the threads there are take it after their jobs
        } else {
          job = std::move(queue_.back());
          queue_.pop_back();
          queued_.store(queue_.size(), std::memory_order_release);
          return -1;
        }
      }
    }
    return queue_.size() > 1 || spare_ == 0 ? 1 : 0;
  }

  // Loop thread, GIL held, every millisecond or so while jobs wait. A
  // thread inside the app while this one holds the GIL let the GIL go: if
  // no job was taken since the last check, the app blocks (a slow request)
  // and another thread takes the jobs behind it. True while jobs wait.
  bool check() {
    std::lock_guard<std::mutex> g(mu_);
    if (queue_.empty() || stop_) return false;
    if (spare_ == 0 && active_ > 0 && popped_ == checked_popped_) {
      if (!parked_.empty()) {
        wake_one();
        ++rescues_;
      } else if (threads_ < max_ && start_thread(false)) {
        ++rescues_;
      }
    }
    checked_popped_ = popped_;
    return true;
  }

  // Loop thread, GIL held: no more jobs; the queued ones are handed back
  // (their futures to cancel), the threads end after their current job.
  std::deque<Job> shutdown() {
    std::deque<Job> left;
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
    left.swap(queue_);
    queued_.store(0, std::memory_order_release);
    for (Parked* p : parked_) {
      p->woken = true;
      ++spare_;
      p->cv.notify_one();
    }
    parked_.clear();
    return left;
  }

  // GIL held: results that arrive from now on are dropped by the threads
  // (the Python object is gone, nobody drains); returns those waiting.
  std::vector<Done> close_results() {
    std::vector<Done> out;
    {
      std::lock_guard<std::mutex> g(mu_);
      hook_.reset();  // the threads read it with mu_ held
    }
    std::lock_guard<std::mutex> g(done_mu_);
    closed_ = true;
    out.swap(done_);
    return out;
  }

  // Loop thread, GIL held: the finished jobs, the eventfd made quiet.
  void take_done(std::vector<Done>* out) {
    uint64_t v;
    while (read(efd_, &v, sizeof v) < 0 && errno == EINTR) {
    }
    std::lock_guard<std::mutex> g(done_mu_);
    out->swap(done_);
    signaled_ = false;
  }

  struct Stats {
    int threads, idle, active, queued;
    uint64_t submitted, batches, wakes, rescues;
  };
  Stats stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {
        threads_, int(parked_.size()), active_, int(queue_.size()), submitted_, batches_, wakes_,
        rescues_};
  }

 private:
  // A thread waiting for work, woken by the thread that sets `woken`.
  struct Parked {
    std::condition_variable cv;
    bool woken = false;
  };

  // mu_ held, parked_ not empty. The most recently parked thread (its
  // stack and caches are the warmest) is woken to take jobs.
  void wake_one() {
    Parked* p = parked_.back();
    parked_.pop_back();
    p->woken = true;
    ++spare_;
    ++wakes_;
    p->cv.notify_one();
  }

  // mu_ held, GIL held (the loop thread). False when the system refuses a
  // thread, with a Python exception set if `report`.
  bool start_thread(bool report) {
    ++threads_;
    ++spare_;
    try {
      std::thread([self = shared_from_this()] { self->thread_main(); }).detach();
    } catch (const std::system_error& e) {
      --threads_;
      --spare_;
      if (report) PyErr_Format(PyExc_RuntimeError, "cannot start a WSGI thread: %s", e.what());
      return false;
    }
    return true;
  }

  // mu_ held, queue_ not empty.
  Job pop() {
    Job job = std::move(queue_.front());
    queue_.pop_front();
    queued_.store(queue_.size(), std::memory_order_release);
    ++popped_;
    return job;
  }

  // GIL held: the hook (erlang._wsgi names the thread for `threading`).
  void call_hook(bool starting) {
    PyRef hook;
    {
      std::lock_guard<std::mutex> g(mu_);
      hook = hook_;  // a reference of our own: dealloc may drop hook_ meanwhile
    }
    if (!hook) return;
    PyRef r = PyRef::steal(PyObject_CallOneArg(hook.get(), starting ? Py_True : Py_False));
    if (!r) PyErr_WriteUnraisable(hook.get());
  }

  void thread_main() {
    pthread_setname_np(pthread_self(), "pyport-wsgi");
    PyGILState_STATE gil = PyGILState_Ensure();
    call_hook(true);
    PyThreadState* ts = PyEval_SaveThread();
    Parked me;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      if (!queue_.empty()) {
        run_jobs(lk, ts);
        if (spin_ > 0 && !stop_ && queue_.empty()) {
          // Requests flow: a short spin may catch the next one without a
          // sleep and a wake-up. Never after an idle wait.
          lk.unlock();
          auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_);
          while (queued_.load(std::memory_order_acquire) == 0 &&
                 std::chrono::steady_clock::now() < until) {
            cpu_relax();
          }
          lk.lock();
        }
        continue;
      }
      if (stop_) break;
      --spare_;
      me.woken = false;
      try {
        parked_.push_back(&me);
      } catch (const std::bad_alloc&) {
        ++spare_;
        break;  // this thread ends; the others go on
      }
      while (!me.woken)
        me.cv.wait(lk);
    }
    --spare_;
    --threads_;
    lk.unlock();
    PyEval_RestoreThread(ts);
    call_hook(false);
    PyGILState_Release(gil);
  }

  // mu_ held, queue_ not empty, this thread spare; returns with mu_ held,
  // the GIL released. The thread takes the GIL before it takes a job, so
  // while it waits for the GIL it still counts as spare and submit() wakes
  // nobody else. Then it runs jobs while any are queued, keeping the GIL
  // between them: a burst of requests costs one GIL hand-over, not one each.
  void run_jobs(std::unique_lock<std::mutex>& lk, PyThreadState* ts) {
    lk.unlock();
    PyEval_RestoreThread(ts);
    lk.lock();
    if (!queue_.empty()) {
      --spare_;
      ++active_;
      ++batches_;
      do {
        Job job = pop();
        lk.unlock();
        run_one(std::move(job));
        lk.lock();
      } while (!queue_.empty());
      --active_;
      ++spare_;
    }
    // After shutdown() the loop stops watching the pool once no job runs:
    // it must look again when the last one ends.
    bool last = stop_ && active_ == 0;
    lk.unlock();
    if (last) {
      const uint64_t one = 1;
      while (write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
      }
    }
    PyEval_SaveThread();
    lk.lock();
  }

  // GIL held.
  void run_one(Job&& taken) {
    Job job = std::move(taken);
    PyRef done = PyRef::steal(PyObject_CallMethodNoArgs(job.future.get(), s_done));
    if (!done) {
      PyErr_Clear();
    } else if (done.get() == Py_True) {
      return;  // cancelled while queued: the app does not run
    }
    Done d;
    d.result = PyRef::steal(PyObject_CallOneArg(job.fn.get(), job.arg.get()));
    if (!d.result) d.error = PyError::fetch().value;
    d.future = std::move(job.future);
    post(std::move(d));
  }

  // GIL held (a pool thread). The first result of a batch wakes the loop.
  void post(Done&& d) {
    Done local = std::move(d);  // dropped here (GIL held) if nobody drains
    bool signal = false;
    {
      std::lock_guard<std::mutex> g(done_mu_);
      if (closed_) return;
      try {
        done_.push_back(std::move(local));
      } catch (const std::bad_alloc&) {
        std::fputs("pyport: WSGI pool: no memory to queue a result\n", stderr);
        return;
      }
      signal = !signaled_;
      signaled_ = true;
    }
    if (signal) {
      const uint64_t one = 1;
      while (write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
      }
    }
  }

  const int max_, spin_;
  const int efd_;
  PyRef hook_;  // called with True/False as a thread starts/ends; mu_

  std::mutex mu_;  // everything below to done_mu_
  std::deque<Job> queue_;
  std::vector<Parked*> parked_;
  int threads_ = 0;  // started, not ended
  int spare_ = 0;    // awake, not in a job, will look at the queue before parking
  int active_ = 0;   // running jobs: holding the GIL, unless the app let it go
  bool stop_ = false;
  uint64_t popped_ = 0, checked_popped_ = 0;
  uint64_t submitted_ = 0, batches_ = 0, wakes_ = 0, rescues_ = 0;
  std::atomic<size_t> queued_{0};  // queue_.size(), for the spin without mu_

  std::mutex done_mu_;
  std::vector<Done> done_;
  bool signaled_ = false;  // the eventfd was written since the last take_done
  bool closed_ = false;
};

struct PoolObject {
  PyObject_HEAD std::shared_ptr<PoolCore>* core;
};

PoolCore* core_of(PyObject* self) {
  auto* p = reinterpret_cast<PoolObject*>(self);
  if (!p->core) {
    PyErr_SetString(PyExc_ValueError, "the WSGI pool is closed");
    return nullptr;
  }
  return p->core->get();
}

int pool_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"threads", "spin_us", "thread_hook", nullptr};
  int threads = 0, spin_us = 0;
  PyObject* hook = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|$iO", const_cast<char**>(kwlist), &threads,
                                   &spin_us, &hook)) {
    return -1;
  }
  if (hook != Py_None && !PyCallable_Check(hook)) {
    PyErr_SetString(PyExc_TypeError, "thread_hook must be callable or None");
    return -1;
  }
  if (threads < 1 || threads > 1024) {
    PyErr_Format(PyExc_ValueError, "threads must be 1..1024, not %d", threads);
    return -1;
  }
  if (spin_us < 0 || spin_us > 1000) {
    PyErr_Format(PyExc_ValueError, "spin_us must be 0..1000, not %d", spin_us);
    return -1;
  }
  auto* p = reinterpret_cast<PoolObject*>(self);
  if (p->core) {
    PyErr_SetString(PyExc_RuntimeError, "Pool.__init__ called twice");
    return -1;
  }
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  try {
    p->core = new std::shared_ptr<PoolCore>(std::make_shared<PoolCore>(
        threads, spin_us, efd, hook == Py_None ? PyRef() : PyRef::borrow(hook)));
  } catch (const std::bad_alloc&) {
    close(efd);
    PyErr_NoMemory();
    return -1;
  }
  return 0;
}

// Cancels the futures of jobs that never ran. GIL held.
void cancel_all(std::deque<Job>& jobs) {
  for (Job& j : jobs) {
    PyRef r = PyRef::steal(PyObject_CallMethodNoArgs(j.future.get(), s_cancel));
    if (!r) PyErr_WriteUnraisable(j.future.get());
  }
  jobs.clear();
}

void pool_dealloc(PyObject* self) {
  auto* p = reinterpret_cast<PoolObject*>(self);
  if (p->core) {
    std::deque<Job> left = (*p->core)->shutdown();
    cancel_all(left);
    std::vector<Done> done = (*p->core)->close_results();
    done.clear();
    delete p->core;  // the threads keep the core (and the eventfd) until they end
    p->core = nullptr;
  }
  PyTypeObject* tp = Py_TYPE(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

PyObject* pool_submit(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "submit(fn, arg, future) takes 3 arguments");
    return nullptr;
  }
  PoolCore* core = core_of(self);
  if (!core) return nullptr;
  Job job{PyRef::borrow(args[0]), PyRef::borrow(args[1]), PyRef::borrow(args[2])};
  int r = core->submit(std::move(job));
  if (r < 0) return nullptr;
  return PyBool_FromLong(r);
}

PyObject* pool_check(PyObject* self, PyObject*) {
  PoolCore* core = core_of(self);
  return core ? PyBool_FromLong(core->check()) : nullptr;
}

PyObject* pool_drain(PyObject* self, PyObject*) {
  PoolCore* core = core_of(self);
  if (!core) return nullptr;
  std::vector<Done> batch;
  core->take_done(&batch);
  for (Done& d : batch) {
    PyObject* fut = d.future.get();
    PyRef done = PyRef::steal(PyObject_CallMethodNoArgs(fut, s_done));
    if (!done) {
      PyErr_WriteUnraisable(fut);
      continue;
    }
    if (done.get() == Py_True) continue;  // cancelled: the request went away
    PyRef r = PyRef::steal(d.error ? PyObject_CallMethodOneArg(fut, s_set_exception, d.error.get())
                                   : PyObject_CallMethodOneArg(fut, s_set_result, d.result.get()));
    if (!r) {
      if (d.error && PyErr_ExceptionMatches(PyExc_TypeError)) {
        // StopIteration cannot go into a future: the request fails with a
        // RuntimeError instead (as asyncio's own executor bridge does).
        PyErr_Clear();
        PyRef e = PyRef::steal(
            PyObject_CallFunction(PyExc_RuntimeError, "sO", "the WSGI app raised", d.error.get()));
        if (e) r = PyRef::steal(PyObject_CallMethodOneArg(fut, s_set_exception, e.get()));
      }
      if (!r) PyErr_WriteUnraisable(fut);
    }
  }
  Py_RETURN_NONE;
}

PyObject* pool_fileno(PyObject* self, PyObject*) {
  PoolCore* core = core_of(self);
  return core ? PyLong_FromLong(core->fd()) : nullptr;
}

PyObject* pool_shutdown(PyObject* self, PyObject*) {
  PoolCore* core = core_of(self);
  if (!core) return nullptr;
  std::deque<Job> left = core->shutdown();
  cancel_all(left);
  Py_RETURN_NONE;
}

PyObject* pool_stats(PyObject* self, PyObject*) {
  PoolCore* core = core_of(self);
  if (!core) return nullptr;
  PoolCore::Stats s = core->stats();
  return Py_BuildValue(
      "{s:i,s:i,s:i,s:i,s:K,s:K,s:K,s:K}", "threads", s.threads, "idle", s.idle, "active", s.active,
      "queued", s.queued, "submitted", static_cast<unsigned long long>(s.submitted), "batches",
      static_cast<unsigned long long>(s.batches), "wakes", static_cast<unsigned long long>(s.wakes),
      "rescues", static_cast<unsigned long long>(s.rescues));
}

PyMethodDef pool_methods[] = {
    {"submit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pool_submit)),
     METH_FASTCALL,
     "submit(fn, arg, future) -> bool: runs fn(arg) on a pool thread; its result or exception "
     "goes to the asyncio future (in drain()). True when the job may wait behind another: call "
     "check() every millisecond or so while it returns True. Loop thread only."},
    {"check", pool_check, METH_NOARGS,
     "check() -> bool: when no job was taken since the last check and the threads with jobs "
     "are blocked in the app, another thread takes the next job. True while jobs wait."},
    {"drain", pool_drain, METH_NOARGS,
     "drain(): sets the futures of the finished jobs (the reader of fileno())."},
    {"fileno", pool_fileno, METH_NOARGS,
     "fileno(): the eventfd that is readable when jobs have finished."},
    {"shutdown", pool_shutdown, METH_NOARGS,
     "shutdown(): no more jobs; queued ones are cancelled, running ones finish."},
    {"stats", pool_stats, METH_NOARGS,
     "stats() -> dict: threads, idle, active, queued, submitted, batches, wakes, rescues."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot pool_slots[] = {
    {Py_tp_init, reinterpret_cast<void*>(pool_init)},
    {Py_tp_dealloc, reinterpret_cast<void*>(pool_dealloc)},
    {Py_tp_methods, pool_methods},
    {Py_tp_doc, const_cast<char*>("Pool(threads, *, spin_us=0, thread_hook=None): the threads "
                                  "that run a WSGI app (see port_worker/wsgi_pool.hpp).")},
    {0, nullptr}};

PyType_Spec pool_spec = {"_pyport_wsgi.Pool", sizeof(PoolObject), 0, Py_TPFLAGS_DEFAULT,
                         pool_slots};

PyMethodDef module_methods[] = {
    {"environ", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(wsgi_environ::environ)),
     METH_FASTCALL,
     "environ(scope, wsgi_input, mount, base) -> dict: the PEP 3333 environ of an ASGI http "
     "scope (see port_worker/wsgi_environ.hpp)."},
    {"response_start",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(wsgi_environ::response_start)),
     METH_FASTCALL,
     "response_start(status, headers) -> (code, headers as bytes pairs): start_response's "
     "arguments for http.response.start (see port_worker/wsgi_environ.hpp)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_pyport_wsgi",
                          "The WSGI thread pool and environ (see port_worker/wsgi_pool.hpp).",
                          -1,
                          module_methods,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

}  // namespace

namespace wsgi_module {

PyObject* init() {
  struct Name {
    PyObject** slot;
    const char* text;
  };
  for (Name n : {Name{&s_done, "done"}, Name{&s_set_result, "set_result"},
                 Name{&s_set_exception, "set_exception"}, Name{&s_cancel, "cancel"}}) {
    if (!*n.slot && !(*n.slot = PyUnicode_InternFromString(n.text))) return nullptr;
  }
  if (!wsgi_environ::init()) return nullptr;
  PyRef module = PyRef::steal(PyModule_Create(&module_def));
  if (!module) return nullptr;
  PyObject* type = PyType_FromSpec(&pool_spec);
  if (!type || PyModule_AddObject(module.get(), "Pool", type) < 0) {
    Py_XDECREF(type);
    return nullptr;
  }
  return module.release();
}

}  // namespace wsgi_module
}  // namespace pyport
