#include "event_loop.hpp"

#include <fcntl.h>

#include <climits>
#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "py_ref.hpp"

namespace pyport {
namespace {

// selectors.EVENT_READ / EVENT_WRITE.
constexpr int kRead = 1;
constexpr int kWrite = 2;

int uv_events_of(int events) {
  return ((events & kRead) ? UV_READABLE : 0) | ((events & kWrite) ? UV_WRITABLE : 0);
}

PyObject* set_uv_error(int err, const char* what) {
  // libuv errors are negated errno values on Unix.
  PyObject* args =
      Py_BuildValue("(is)", -err, (std::string(what) + ": " + uv_strerror(err)).c_str());
  if (args) {
    PyErr_SetObject(PyExc_OSError, args);
    Py_DECREF(args);
  }
  return nullptr;
}

class PollerCore;

// One registered descriptor. Freed in its handle's close callback, as libuv
// requires: the memory must outlive uv_close until the loop confirms.
struct PollEntry {
  uv_poll_t handle{};
  PollerCore* owner = nullptr;
  int fd = -1;
  int events = 0;  // selectors mask
  PyRef key;       // the SelectorKey returned for this fd (GIL only)
  int ready = 0;   // events seen since the last poll() (loop thread)
  bool queued = false;

  static void on_closed(uv_handle_t* h) { delete static_cast<PollEntry*>(h->data); }
};

void on_timer_closed(uv_handle_t* h) {
  delete reinterpret_cast<uv_timer_t*>(h);
}

// The C++ side of one Poller: its descriptors, the events they collected and
// the libuv loop it waits on. Methods other than the callbacks need the GIL.
class PollerCore {
 public:
  // A core on `shared` (the worker's loop, owned by the worker), or on a
  // private loop when shared is null.
  static std::unique_ptr<PollerCore> create(uv_loop_t* shared, std::string& error) {
    std::unique_ptr<PollerCore> core(new PollerCore());
    if (shared) {
      core->loop_ = shared;
    } else {
      core->private_loop_.reset(new uv_loop_t());
      int rc = uv_loop_init(core->private_loop_.get());
      if (rc) {
        core->private_loop_.reset();
        error = std::string("cannot create a libuv loop: ") + uv_strerror(rc);
        return nullptr;
      }
      core->loop_ = core->private_loop_.get();
    }
    core->timer_ = new uv_timer_t();
    uv_timer_init(core->loop_, core->timer_);
    return core;
  }

  ~PollerCore() { close(); }

  bool closed() const { return loop_ == nullptr; }
  bool waiting() const { return waiting_; }
  bool shared_loop() const { return !private_loop_ && loop_; }
  size_t size() const { return entries_.size(); }

  // Python-facing operations return false with an exception set.
  bool add(int fd, int events, PyObject* key) {
    if (entries_.count(fd)) {
      PyErr_Format(PyExc_KeyError, "descriptor %d is already registered", fd);
      return false;
    }
    std::unique_ptr<PollEntry> e(new PollEntry());
    e->owner = this;
    e->fd = fd;
    e->events = events;
    e->key = PyRef::borrow(key);
    // The ready list must never grow inside a callback, where allocation
    // cannot fail safely: it can hold every entry.
    ready_.reserve(entries_.size() + 1);
    entries_.reserve(entries_.size() + 1);
    // libuv makes the descriptor non-blocking; asyncio's selectors leave
    // the mode alone, and code that reads it in its callback may rely on that.
    int flags = fcntl(fd, F_GETFL);
    int rc = uv_poll_init(loop_, &e->handle, fd);
    if (rc) {
      // Not started: no close needed; the entry is freed right here.
      set_uv_error(rc, "cannot watch the descriptor");
      return false;
    }
    if (flags >= 0 && !(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, flags);
    e->handle.data = e.get();
    rc = uv_poll_start(&e->handle, uv_events_of(events), on_poll);
    PollEntry* entry = e.release();
    if (rc) {
      entry->key.reset();
      uv_close(reinterpret_cast<uv_handle_t*>(&entry->handle), PollEntry::on_closed);
      set_uv_error(rc, "cannot watch the descriptor");
      return false;
    }
    entries_.emplace(fd, entry);
    return true;
  }

  bool modify(int fd, int events, PyObject* key) {
    PollEntry* e = find(fd);
    if (!e) return false;
    if (events != e->events) {
      int rc = uv_poll_start(&e->handle, uv_events_of(events), on_poll);
      if (rc) return set_uv_error(rc, "cannot change the watched events"), false;
      e->events = events;
      e->ready &= events;
    }
    e->key = PyRef::borrow(key);
    return true;
  }

  bool remove(int fd) {
    PollEntry* e = find(fd);
    if (!e) return false;
    entries_.erase(fd);
    if (e->queued) {
      for (auto it = ready_.begin(); it != ready_.end(); ++it) {
        if (*it == e) {
          ready_.erase(it);
          break;
        }
      }
    }
    close_entry(e);
    return true;
  }

  // Runs one libuv iteration, waiting at most `timeout` seconds (negative:
  // no limit) unless something is ready already. The GIL is released while
  // libuv runs.
  void wait(double timeout) {
    if (!ready_.empty()) timeout = 0;
    waiting_ = true;
    Py_BEGIN_ALLOW_THREADS if (timeout == 0) {
      uv_run(loop_, UV_RUN_NOWAIT);
    }
    else if (timeout < 0) {
      uv_run(loop_, UV_RUN_ONCE);
    }
    else {
      // Whole milliseconds only (libuv's resolution), rounded down: the last
      // fraction is waited by asyncio calling again with timeout 0, so a
      // timer fires on time rather than up to a millisecond late.
      double ms = std::floor(timeout * 1000.0);
      if (ms < 1) {
        uv_run(loop_, UV_RUN_NOWAIT);
      } else {
        uv_update_time(loop_);
        uv_timer_start(timer_, on_timer, ms > 1e12 ? uint64_t(1e12) : uint64_t(ms), 0);
        uv_run(loop_, UV_RUN_ONCE);
        uv_timer_stop(timer_);
      }
    }
    Py_END_ALLOW_THREADS waiting_ = false;
  }

  // Moves the collected events into a new list of (key, events) tuples,
  // with room for `extra` more items after them.
  PyObject* take_events(Py_ssize_t extra) {
    PyObject* list = PyList_New(Py_ssize_t(ready_.size()) + extra);
    if (!list) return nullptr;
    Py_ssize_t i = 0;
    for (PollEntry* e : ready_) {
      PyObject* item = PyTuple_New(2);
      PyObject* mask = item ? PyLong_FromLong(e->ready) : nullptr;
      if (!mask) {
        Py_XDECREF(item);
        Py_DECREF(list);
        return nullptr;  // the events stay queued for the next poll
      }
      PyTuple_SET_ITEM(item, 0, PyRef(e->key).release());
      PyTuple_SET_ITEM(item, 1, mask);
      PyList_SET_ITEM(list, i++, item);
    }
    for (PollEntry* e : ready_) {
      e->ready = 0;
      e->queued = false;
    }
    ready_.clear();
    return list;
  }

  // Moves the collected events out as (key, events) pairs, keys referenced:
  // processing them may unregister descriptors.
  void take_ready(std::vector<std::pair<PyRef, int>>& out) {
    out.reserve(ready_.size());
    for (PollEntry* e : ready_) {
      out.emplace_back(e->key, e->ready);
      e->ready = 0;
      e->queued = false;
    }
    ready_.clear();
  }

  // Closes every handle; a private loop is run until they are gone and then
  // closed itself. Idempotent.
  void close() {
    if (!loop_) return;
    for (auto& [fd, e] : entries_)
      close_entry(e);
    entries_.clear();
    ready_.clear();
    uv_close(reinterpret_cast<uv_handle_t*>(timer_), on_timer_closed);
    timer_ = nullptr;
    if (private_loop_) {
      uv_run(private_loop_.get(), UV_RUN_DEFAULT);  // only close callbacks are left
      if (uv_loop_close(private_loop_.get()) != 0) {
        (void)private_loop_.release();  // still in use: leaking beats freeing live memory
      }
      private_loop_.reset();
    }
    loop_ = nullptr;
  }

  int traverse(visitproc visit, void* arg) {
    for (auto& [fd, e] : entries_)
      Py_VISIT(e->key.get());
    return 0;
  }

 private:
  PollerCore() = default;

  PollEntry* find(int fd) {
    auto it = entries_.find(fd);
    if (it == entries_.end()) {
      PyErr_Format(PyExc_KeyError, "descriptor %d is not registered", fd);
      return nullptr;
    }
    return it->second;
  }

  void close_entry(PollEntry* e) {
    e->key.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&e->handle), PollEntry::on_closed);
  }

  static void on_timer(uv_timer_t*) {}  // ends uv_run's wait; nothing to do

  static void on_poll(uv_poll_t* h, int status, int uv_events) {
    auto* e = static_cast<PollEntry*>(h->data);
    int mask;
    if (status < 0) {
      // An error condition (POLLERR): libuv stopped watching. Like epoll
      // selectors, report it as every registered event, so the callbacks
      // run and meet the error, and keep watching (level-triggered).
      mask = e->events;
      uv_poll_start(h, uv_events_of(e->events), on_poll);
    } else {
      mask = ((uv_events & UV_READABLE) ? kRead : 0) | ((uv_events & UV_WRITABLE) ? kWrite : 0);
      mask &= e->events;
    }
    if (!mask) return;
    e->ready |= mask;
    if (!e->queued) {
      e->queued = true;
      e->owner->ready_.push_back(e);  // capacity reserved in add()
    }
  }

  uv_loop_t* loop_ = nullptr;
  std::unique_ptr<uv_loop_t> private_loop_;
  uv_timer_t* timer_ = nullptr;                  // freed in its close callback
  std::unordered_map<int, PollEntry*> entries_;  // owned until closed
  std::vector<PollEntry*> ready_;
  bool waiting_ = false;
};

// ---------------------------------------------------------------- module

// What run_once() needs from asyncio, looked up once.
struct LoopNames {
  PyRef scheduled, ready, stopping, timer_cancelled_count, debug, clock_resolution, when, cancelled,
      scheduled_flag, remove_reader, remove_writer, append, popleft, run, time, context, callback,
      args, compact_timers, run_debug, closed, loop_attr, repr_attr, source_traceback, context_kw;
  PyRef heappop;          // heapq.heappop
  PyRef handle_type;      // asyncio.Handle
  PyRef timer_type;       // asyncio.TimerHandle
  PyRef callback_failed;  // erlang._loop._callback_failed(handle, exc)
  PyRef base_call_soon;   // asyncio.BaseEventLoop.call_soon, for debug mode

  bool load() {
    struct {
      PyRef* slot;
      const char* name;
    } names[] = {{&scheduled, "_scheduled"},
                 {&ready, "_ready"},
                 {&stopping, "_stopping"},
                 {&timer_cancelled_count, "_timer_cancelled_count"},
                 {&debug, "_debug"},
                 {&clock_resolution, "_clock_resolution"},
                 {&when, "_when"},
                 {&cancelled, "_cancelled"},
                 {&scheduled_flag, "_scheduled"},
                 {&remove_reader, "_remove_reader"},
                 {&remove_writer, "_remove_writer"},
                 {&append, "append"},
                 {&popleft, "popleft"},
                 {&run, "_run"},
                 {&time, "time"},
                 {&context, "_context"},
                 {&callback, "_callback"},
                 {&args, "_args"},
                 {&compact_timers, "_pyport_compact_timers"},
                 {&run_debug, "_pyport_run_debug"},
                 {&closed, "_closed"},
                 {&loop_attr, "_loop"},
                 {&repr_attr, "_repr"},
                 {&source_traceback, "_source_traceback"},
                 {&context_kw, "context"}};
    for (auto& n : names) {
      *n.slot = PyRef::steal(PyUnicode_InternFromString(n.name));
      if (!*n.slot) return false;
    }
    PyRef heapq = PyRef::steal(PyImport_ImportModule("heapq"));
    PyRef events = heapq ? PyRef::steal(PyImport_ImportModule("asyncio.events")) : PyRef();
    PyRef loop = events ? PyRef::steal(PyImport_ImportModule("erlang._loop")) : PyRef();
    if (!loop) return false;
    heappop = PyRef::steal(PyObject_GetAttrString(heapq.get(), "heappop"));
    handle_type = PyRef::steal(PyObject_GetAttrString(events.get(), "Handle"));
    timer_type = PyRef::steal(PyObject_GetAttrString(events.get(), "TimerHandle"));
    callback_failed = PyRef::steal(PyObject_GetAttrString(loop.get(), "_callback_failed"));
    PyRef base = PyRef::steal(PyImport_ImportModule("asyncio.base_events"));
    PyRef cls = base ? PyRef::steal(PyObject_GetAttrString(base.get(), "BaseEventLoop")) : PyRef();
    base_call_soon = cls ? PyRef::steal(PyObject_GetAttrString(cls.get(), "call_soon")) : PyRef();
    return heappop && handle_type && timer_type && callback_failed && base_call_soon;
  }
};

struct ModuleState {
  LoopHost* host = nullptr;
  PyObject* poller_type = nullptr;   // strong
  PyObject* root = nullptr;          // the worker's Poller (borrowed; cleared when it closes)
  std::unique_ptr<LoopNames> names;  // loaded by the first run_once()
};

struct PollerObject {
  PyObject_HEAD PollerCore* core;
  ModuleState* state;
  bool is_root;
  PyObject* input_key;  // root: the pseudo key reported when frames wait
  unsigned long owner_thread;
};

ModuleState* module_state(PyObject* module) {
  return static_cast<ModuleState*>(PyModule_GetState(module));
}

bool check_usable(PollerObject* self) {
  if (!self->core || self->core->closed()) {
    PyErr_SetString(PyExc_ValueError, "the poller is closed");
    return false;
  }
  if (self->core->waiting()) {
    // Only possible from another thread, as nothing else runs meanwhile.
    PyErr_SetString(PyExc_RuntimeError,
                    "the poller is waiting in another thread; use call_soon_threadsafe()");
    return false;
  }
  if (self->core->shared_loop() && !(self->state->host && self->state->host->on_loop_thread())) {
    PyErr_SetString(PyExc_RuntimeError,
                    "the worker's event loop can only be used from the worker's main thread; "
                    "use call_soon_threadsafe()");
    return false;
  }
  return true;
}

void close_poller(PollerObject* self) {
  if (self->is_root && self->state && self->state->root == reinterpret_cast<PyObject*>(self)) {
    self->state->root = nullptr;
  }
  if (self->core) {
    self->core->close();
    delete self->core;
    self->core = nullptr;
  }
  Py_CLEAR(self->input_key);
}

PyObject* Poller_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"worker", nullptr};
  int worker = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$p:Poller", const_cast<char**>(kwlist),
                                   &worker)) {
    return nullptr;
  }
  PyObject* module = PyType_GetModule(type);
  ModuleState* st = module ? module_state(module) : nullptr;
  if (!st) return nullptr;
  if (worker) {
    if (!st->host) {
      PyErr_SetString(PyExc_RuntimeError, "not running inside a pyport worker");
      return nullptr;
    }
    if (!st->host->on_loop_thread()) {
      PyErr_SetString(PyExc_RuntimeError, "the worker's loop belongs to the worker's main thread");
      return nullptr;
    }
    if (st->root) {
      PyErr_SetString(PyExc_RuntimeError, "the worker's event loop already exists");
      return nullptr;
    }
  }
  auto* self = reinterpret_cast<PollerObject*>(type->tp_alloc(type, 0));
  if (!self) return nullptr;
  self->state = st;
  self->is_root = worker;
  self->owner_thread = PyThread_get_thread_ident();
  std::string error;
  std::unique_ptr<PollerCore> core;
  try {
    core = PollerCore::create(worker ? st->host->uv_loop() : nullptr, error);
  } catch (const std::bad_alloc&) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  if (!core) {
    Py_DECREF(self);
    PyErr_SetString(PyExc_OSError, error.c_str());
    return nullptr;
  }
  self->core = core.release();
  if (worker) st->root = reinterpret_cast<PyObject*>(self);
  return reinterpret_cast<PyObject*>(self);
}

int Poller_traverse(PollerObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->input_key);
  return self->core ? self->core->traverse(visit, arg) : 0;
}

int Poller_clear(PollerObject* self) {
  close_poller(self);
  return 0;
}

void Poller_dealloc(PollerObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  close_poller(self);
  type->tp_free(self);
  Py_DECREF(type);
}

// An int argument; false with an exception set.
bool as_int(PyObject* obj, int* out) {
  long v = PyLong_AsLong(obj);
  if (v == -1 && PyErr_Occurred()) return false;
  if (v < INT_MIN || v > INT_MAX) {
    PyErr_SetString(PyExc_OverflowError, "value does not fit in an int");
    return false;
  }
  *out = int(v);
  return true;
}

bool parse_fd_events(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t want, const char* name,
                     int* fd, int* events) {
  if (nargs != want) {
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
    return false;
  }
  if (!as_int(args[0], fd)) return false;
  if (*fd < 0) {
    PyErr_Format(PyExc_ValueError, "invalid file descriptor %d", *fd);
    return false;
  }
  if (want < 2) return true;
  if (!as_int(args[1], events)) return false;
  if (*events <= 0 || (*events & ~(kRead | kWrite))) {
    PyErr_Format(PyExc_ValueError, "invalid events: %d", *events);
    return false;
  }
  return true;
}

PyObject* Poller_register(PollerObject* self, PyObject* const* args, Py_ssize_t nargs) {
  int fd, events;
  if (!parse_fd_events(args, nargs, 3, "register", &fd, &events) || !check_usable(self)) {
    return nullptr;
  }
  try {
    if (!self->core->add(fd, events, args[2])) return nullptr;
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  Py_RETURN_NONE;
}

PyObject* Poller_modify(PollerObject* self, PyObject* const* args, Py_ssize_t nargs) {
  int fd, events;
  if (!parse_fd_events(args, nargs, 3, "modify", &fd, &events) || !check_usable(self)) {
    return nullptr;
  }
  if (!self->core->modify(fd, events, args[2])) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Poller_unregister(PollerObject* self, PyObject* const* args, Py_ssize_t nargs) {
  int fd;
  if (!parse_fd_events(args, nargs, 1, "unregister", &fd, nullptr) || !check_usable(self)) {
    return nullptr;
  }
  if (!self->core->remove(fd)) return nullptr;
  Py_RETURN_NONE;
}

// One wait of a usable poller: the worker's hooks around it (answers out,
// input watched), then signal handlers. *input tells whether frames wait.
// False with an exception set (a signal handler raised).
bool wait_for_events(PollerObject* self, double timeout, bool* input) {
  LoopHost* host = self->is_root ? self->state->host : nullptr;
  if (self->is_root && !host) {
    PyErr_SetString(PyExc_RuntimeError, "the worker has gone");
    return false;
  }
  if (host) {
    host->before_wait();
    if (host->input_ready()) timeout = 0;
  }
  // Keeps self alive while the GIL is released (another thread could drop
  // the last reference otherwise).
  PyRef hold = PyRef::borrow(reinterpret_cast<PyObject*>(self));
  self->core->wait(timeout);
  if (host) host->after_wait();
  // A signal handler that raises (KeyboardInterrupt) ends the wait; the
  // events collected stay queued for the next poll.
  if (PyErr_CheckSignals() < 0) return false;
  *input = host && host->input_ready();
  return true;
}

PyObject* Poller_poll(PollerObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs > 1) {
    PyErr_SetString(PyExc_TypeError, "poll() takes at most 1 argument");
    return nullptr;
  }
  double timeout = -1;
  if (nargs == 1 && args[0] != Py_None) {
    timeout = PyFloat_AsDouble(args[0]);
    if (timeout == -1 && PyErr_Occurred()) return nullptr;
    if (std::isnan(timeout)) {
      PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
      return nullptr;
    }
    if (timeout < 0) timeout = 0;
  }
  if (!check_usable(self)) return nullptr;
  bool input = false;
  if (!wait_for_events(self, timeout, &input)) return nullptr;
  if (!self->core || self->core->closed()) return PyList_New(0);
  input = input && self->input_key;
  PyObject* list = self->core->take_events(input ? 1 : 0);
  if (list && input) {
    PyObject* item = Py_BuildValue("(Oi)", self->input_key, kRead);
    if (!item) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, PyList_GET_SIZE(list) - 1, item);
  }
  return list;
}

// ---------------------------------------------------------------- run_once

// Truth of obj.name; -1 with an exception set.
int attr_true(PyObject* obj, PyObject* name) {
  PyRef v = PyRef::steal(PyObject_GetAttr(obj, name));
  return v ? PyObject_IsTrue(v.get()) : -1;
}

// float(obj.name); NaN with an exception set on failure.
double attr_float(PyObject* obj, PyObject* name) {
  PyRef v = PyRef::steal(PyObject_GetAttr(obj, name));
  return v ? PyFloat_AsDouble(v.get()) : NAN;
}

bool failed(double v) {
  return std::isnan(v) && PyErr_Occurred();
}

// Pops the earliest timer off the heap and marks it unscheduled.
PyRef pop_timer(LoopNames& n, PyObject* scheduled) {
  PyRef handle = PyRef::steal(PyObject_CallOneArg(n.heappop.get(), scheduled));
  if (handle && PyObject_SetAttr(handle.get(), n.scheduled_flag.get(), Py_False) < 0) return {};
  return handle;
}

// Drops cancelled timers: all of them when they are many (as asyncio
// does, in Python: rare), else those at the head of the heap.
bool drop_cancelled_timers(LoopNames& n, PyObject* loop, PyRef& scheduled) {
  Py_ssize_t count = PyList_GET_SIZE(scheduled.get());
  if (count > 100) {
    PyRef c = PyRef::steal(PyObject_GetAttr(loop, n.timer_cancelled_count.get()));
    long cancelled = c ? PyLong_AsLong(c.get()) : -1;
    if (cancelled == -1 && PyErr_Occurred()) return false;
    if (cancelled * 2 > count) {
      PyRef done = PyRef::steal(PyObject_CallMethodNoArgs(loop, n.compact_timers.get()));
      if (!done) return false;
      scheduled = PyRef::steal(PyObject_GetAttr(loop, n.scheduled.get()));
      return scheduled && PyList_Check(scheduled.get());
    }
  }
  while (PyList_GET_SIZE(scheduled.get()) > 0) {
    int cancelled = attr_true(PyList_GET_ITEM(scheduled.get(), 0), n.cancelled.get());
    if (cancelled < 0) return false;
    if (!cancelled) break;
    PyRef c = PyRef::steal(PyObject_GetAttr(loop, n.timer_cancelled_count.get()));
    PyRef one = PyRef::steal(PyLong_FromLong(1));
    PyRef less = c && one ? PyRef::steal(PyNumber_Subtract(c.get(), one.get())) : PyRef();
    if (!less || PyObject_SetAttr(loop, n.timer_cancelled_count.get(), less.get()) < 0)
      return false;
    if (!pop_timer(n, scheduled.get())) return false;
  }
  return true;
}

// Runs one ready handle as Handle._run() does. asyncio's own Handle and
// TimerHandle run here without a Python frame of their own; other handle
// types (and a context already entered) go through their _run().
bool run_handle(LoopNames& n, PyObject* handle) {
  PyTypeObject* type = Py_TYPE(handle);
  if (type == reinterpret_cast<PyTypeObject*>(n.handle_type.get()) ||
      type == reinterpret_cast<PyTypeObject*>(n.timer_type.get())) {
    PyRef context = PyRef::steal(PyObject_GetAttr(handle, n.context.get()));
    PyRef callback = context ? PyRef::steal(PyObject_GetAttr(handle, n.callback.get())) : PyRef();
    PyRef args = callback ? PyRef::steal(PyObject_GetAttr(handle, n.args.get())) : PyRef();
    if (!args) return false;
    if (PyContext_CheckExact(context.get()) && PyTuple_Check(args.get()) &&
        PyContext_Enter(context.get()) == 0) {
      PyRef result = PyRef::steal(PyObject_Call(callback.get(), args.get(), nullptr));
      PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
      if (!result) PyErr_Fetch(&t, &v, &tb);
      // Leaving fails only if the callback entered the context elsewhere
      // and left it entered: report that rather than the callback's result.
      if (PyContext_Exit(context.get()) < 0) {
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        return false;
      }
      if (result) return true;
      PyErr_Restore(t, v, tb);
      if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
          PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return false;
      }
      PyError e = PyError::fetch();
      PyRef reported = PyRef::steal(
          PyObject_CallFunctionObjArgs(n.callback_failed.get(), handle, e.value.get(), nullptr));
      return bool(reported);
    }
    PyErr_Clear();
  }
  PyRef done = PyRef::steal(PyObject_CallMethodNoArgs(handle, n.run.get()));
  return bool(done);
}

// loop._run_once() of asyncio's BaseEventLoop, with the poller's events
// taken directly (no select() list, no _process_events). Tolerates being
// re-entered from a callback it runs (erlang.sleep in synchronous code).
// The names, loaded on first use; null with an exception set on failure.
LoopNames* loop_names(ModuleState* st) {
  if (!st->names) {
    try {
      st->names.reset(new LoopNames());
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return nullptr;
    }
    if (!st->names->load()) {
      st->names.reset();
      return nullptr;
    }
  }
  return st->names.get();
}

PyObject* Poller_run_once(PollerObject* self, PyObject* loop) {
  LoopNames* names = loop_names(self->state);
  if (!names) return nullptr;
  LoopNames& n = *names;
  if (!check_usable(self)) return nullptr;

  PyRef scheduled = PyRef::steal(PyObject_GetAttr(loop, n.scheduled.get()));
  PyRef ready = scheduled ? PyRef::steal(PyObject_GetAttr(loop, n.ready.get())) : PyRef();
  if (!ready) return nullptr;
  if (!PyList_Check(scheduled.get())) {
    PyErr_SetString(PyExc_TypeError, "loop._scheduled must be a list");
    return nullptr;
  }
  if (!drop_cancelled_timers(n, loop, scheduled)) return nullptr;

  Py_ssize_t waiting = PyObject_Size(ready.get());
  int stopping = waiting == 0 ? attr_true(loop, n.stopping.get()) : 0;
  if (waiting < 0 || stopping < 0) return nullptr;
  double timeout = -1;
  if (waiting > 0 || stopping) {
    timeout = 0;
  } else if (PyList_GET_SIZE(scheduled.get()) > 0) {
    double when = attr_float(PyList_GET_ITEM(scheduled.get(), 0), n.when.get());
    if (failed(when)) return nullptr;
    PyRef now = PyRef::steal(PyObject_CallMethodNoArgs(loop, n.time.get()));
    double t = now ? PyFloat_AsDouble(now.get()) : NAN;
    if (failed(t)) return nullptr;
    timeout = std::min(std::max(0.0, when - t), 86400.0);
  }

  bool input = false;
  if (!wait_for_events(self, timeout, &input)) return nullptr;
  if (!self->core || self->core->closed()) Py_RETURN_NONE;

  // Ready descriptors: their reader/writer handles join the ready queue
  // (or, cancelled, are removed), as asyncio's _process_events does.
  std::vector<std::pair<PyRef, int>> events;
  try {
    self->core->take_ready(events);
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  PyRef append = PyRef::steal(PyObject_GetAttr(ready.get(), n.append.get()));
  if (!append) return nullptr;
  for (auto& [key, mask] : events) {
    PyObject* k = key.get();
    PyObject* data =
        PyTuple_Check(k) && PyTuple_GET_SIZE(k) == 4 ? PyTuple_GET_ITEM(k, 3) : nullptr;
    if (!data || !PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {
      PyErr_SetString(PyExc_TypeError, "a selector key's data must be (reader, writer)");
      return nullptr;
    }
    PyObject* fileobj = PyTuple_GET_ITEM(k, 0);
    for (int side = 0; side < 2; ++side) {
      PyObject* handle = PyTuple_GET_ITEM(data, side);
      if (!(mask & (side ? kWrite : kRead)) || handle == Py_None) continue;
      int cancelled = attr_true(handle, n.cancelled.get());
      if (cancelled < 0) return nullptr;
      PyRef done = cancelled ? PyRef::steal(PyObject_CallMethodOneArg(
                                   loop, (side ? n.remove_writer : n.remove_reader).get(), fileobj))
                             : PyRef::steal(PyObject_CallOneArg(append.get(), handle));
      if (!done) return nullptr;
    }
  }
  events.clear();
  if (input && self->input_key) {
    PyRef done = PyRef::steal(PyObject_CallOneArg(
        append.get(), PyTuple_GET_ITEM(PyTuple_GET_ITEM(self->input_key, 3), 0)));
    if (!done) return nullptr;
  }

  // Timers that are due.
  if (PyList_GET_SIZE(scheduled.get()) > 0) {
    PyRef now = PyRef::steal(PyObject_CallMethodNoArgs(loop, n.time.get()));
    double end = now ? PyFloat_AsDouble(now.get()) : NAN;
    double resolution = failed(end) ? NAN : attr_float(loop, n.clock_resolution.get());
    if (failed(resolution)) return nullptr;
    end += resolution;
    while (PyList_GET_SIZE(scheduled.get()) > 0) {
      double when = attr_float(PyList_GET_ITEM(scheduled.get(), 0), n.when.get());
      if (failed(when)) return nullptr;
      if (when >= end) break;
      PyRef handle = pop_timer(n, scheduled.get());
      PyRef done = handle ? PyRef::steal(PyObject_CallOneArg(append.get(), handle.get())) : PyRef();
      if (!done) return nullptr;
    }
  }

  // What was ready before this iteration's callbacks add more. A nested
  // iteration may have taken some: stop when the queue is empty.
  Py_ssize_t todo = PyObject_Size(ready.get());
  int debug = attr_true(loop, n.debug.get());
  PyRef popleft = PyRef::steal(PyObject_GetAttr(ready.get(), n.popleft.get()));
  if (todo < 0 || debug < 0 || !popleft) return nullptr;
  while (todo-- > 0) {
    Py_ssize_t left = PyObject_Size(ready.get());
    if (left <= 0) {
      if (left < 0) return nullptr;
      break;
    }
    PyRef handle = PyRef::steal(PyObject_CallNoArgs(popleft.get()));
    if (!handle) return nullptr;
    int cancelled = attr_true(handle.get(), n.cancelled.get());
    if (cancelled < 0) return nullptr;
    if (cancelled) continue;
    if (debug) {
      PyRef done = PyRef::steal(PyObject_CallMethodOneArg(loop, n.run_debug.get(), handle.get()));
      if (!done) return nullptr;
    } else if (!run_handle(n, handle.get())) {
      return nullptr;
    }
  }
  Py_RETURN_NONE;
}

// loop.call_soon(callback, *args, context=None) of asyncio's BaseEventLoop
// for `loop` (args[0]): an asyncio.Handle made without running Python code,
// appended to the ready queue. Debug mode takes asyncio's own path (its
// checks and the creation traceback).
PyObject* Poller_call_soon(PollerObject* self, PyObject* const* args, size_t nargsf,
                           PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  LoopNames* names = loop_names(self->state);
  if (!names) return nullptr;
  LoopNames& n = *names;
  if (nargs < 2) {
    PyErr_SetString(PyExc_TypeError, "call_soon() needs a callback");
    return nullptr;
  }
  PyObject* loop = args[0];
  PyObject* context = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    int is_context = PyUnicode_Compare(key, n.context_kw.get()) == 0;
    if (!is_context) {
      PyErr_Format(PyExc_TypeError, "call_soon() got an unexpected keyword argument '%U'", key);
      return nullptr;
    }
    context = args[nargs + i];
  }
  int closed = attr_true(loop, n.closed.get());
  int debug = closed == 0 ? attr_true(loop, n.debug.get()) : 0;
  if (closed < 0 || debug < 0) return nullptr;
  if (closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (debug) return PyObject_Vectorcall(n.base_call_soon.get(), args, nargsf, kwnames);
  PyTypeObject* type = reinterpret_cast<PyTypeObject*>(n.handle_type.get());
  PyRef handle = PyRef::steal(type->tp_alloc(type, 0));
  PyRef ctx = context == Py_None ? PyRef::steal(PyContext_CopyCurrent()) : PyRef::borrow(context);
  PyRef cb_args = PyRef::steal(PyTuple_New(nargs - 2));
  if (!handle || !ctx || !cb_args) return nullptr;
  for (Py_ssize_t i = 2; i < nargs; ++i)
    PyTuple_SET_ITEM(cb_args.get(), i - 2, PyRef::borrow(args[i]).release());
  PyObject* h = handle.get();
  if (PyObject_SetAttr(h, n.context.get(), ctx.get()) < 0 ||
      PyObject_SetAttr(h, n.loop_attr.get(), loop) < 0 ||
      PyObject_SetAttr(h, n.callback.get(), args[1]) < 0 ||
      PyObject_SetAttr(h, n.args.get(), cb_args.get()) < 0 ||
      PyObject_SetAttr(h, n.cancelled.get(), Py_False) < 0 ||
      PyObject_SetAttr(h, n.repr_attr.get(), Py_None) < 0 ||
      PyObject_SetAttr(h, n.source_traceback.get(), Py_None) < 0) {
    return nullptr;
  }
  PyRef ready = PyRef::steal(PyObject_GetAttr(loop, n.ready.get()));
  PyRef done =
      ready ? PyRef::steal(PyObject_CallMethodOneArg(ready.get(), n.append.get(), h)) : PyRef();
  if (!done) return nullptr;
  return handle.release();
}

PyObject* Poller_set_input_key(PollerObject* self, PyObject* key) {
  if (!self->is_root) {
    PyErr_SetString(PyExc_RuntimeError, "only the worker's poller receives frames");
    return nullptr;
  }
  Py_INCREF(key);
  Py_XSETREF(self->input_key, key);
  Py_RETURN_NONE;
}

PyObject* Poller_close(PollerObject* self, PyObject*) {
  if (self->core && self->core->waiting()) {
    PyErr_SetString(PyExc_RuntimeError, "cannot close a poller while it waits");
    return nullptr;
  }
  if (self->core && self->core->shared_loop() &&
      !(self->state->host && self->state->host->on_loop_thread())) {
    PyErr_SetString(PyExc_RuntimeError,
                    "the worker's event loop can only be closed from its main thread");
    return nullptr;
  }
  close_poller(self);
  Py_RETURN_NONE;
}

PyObject* Poller_get_closed(PollerObject* self, void*) {
  return PyBool_FromLong(!self->core || self->core->closed());
}

PyObject* Poller_get_worker(PollerObject* self, void*) {
  return PyBool_FromLong(self->is_root);
}

Py_ssize_t Poller_len(PollerObject* self) {
  return self->core ? Py_ssize_t(self->core->size()) : 0;
}

PyMethodDef poller_methods[] = {
    {"register", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_register)),
     METH_FASTCALL, "register(fd, events, key): watch fd for events; poll() reports key."},
    {"modify", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_modify)),
     METH_FASTCALL, "modify(fd, events, key): change what fd is watched for and its key."},
    {"unregister", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_unregister)),
     METH_FASTCALL, "unregister(fd): stop watching fd."},
    {"poll", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_poll)),
     METH_FASTCALL,
     "poll(timeout=None) -> [(key, events)]: waits at most timeout seconds (None: no limit)."},
    {"call_soon", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_call_soon)),
     METH_FASTCALL | METH_KEYWORDS,
     "call_soon(loop, callback, *args, context=None): loop.call_soon, without Python code."},
    {"run_once", reinterpret_cast<PyCFunction>(Poller_run_once), METH_O,
     "run_once(loop): one iteration of asyncio loop `loop` whose selector this poller is."},
    {"set_input_key", reinterpret_cast<PyCFunction>(Poller_set_input_key), METH_O,
     "set_input_key(key): the worker poller reports key as readable when frames wait."},
    {"close", reinterpret_cast<PyCFunction>(Poller_close), METH_NOARGS,
     "close(): stop watching everything and release the libuv handles."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef poller_getset[] = {
    {"closed", reinterpret_cast<getter>(Poller_get_closed), nullptr, "True once closed.", nullptr},
    {"worker", reinterpret_cast<getter>(Poller_get_worker), nullptr,
     "True for the worker's own loop (frames from Erlang arrive through it).", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot poller_slots[] = {
    {Py_tp_doc, const_cast<char*>("Poller(*, worker=False): descriptors and timeouts on libuv.")},
    {Py_tp_new, reinterpret_cast<void*>(Poller_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(Poller_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(Poller_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(Poller_clear)},
    {Py_tp_methods, poller_methods},
    {Py_tp_getset, poller_getset},
    {Py_mp_length, reinterpret_cast<void*>(Poller_len)},
    {0, nullptr}};

PyType_Spec poller_spec = {"_pyport_loop.Poller", sizeof(PollerObject), 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, poller_slots};

// ---------------------------------------------------------------- worker functions

LoopHost* host_of(PyObject* module) {
  ModuleState* st = module_state(module);
  if (!st || !st->host) {
    PyErr_SetString(PyExc_RuntimeError, "not running inside a pyport worker");
    return nullptr;
  }
  if (!st->host->on_loop_thread()) {
    PyErr_SetString(PyExc_RuntimeError, "only the worker's main thread answers requests");
    return nullptr;
  }
  return st->host;
}

bool parse_id(PyObject* obj, uint64_t* id) {
  *id = PyLong_AsUnsignedLongLong(obj);
  return !(*id == uint64_t(-1) && PyErr_Occurred());
}

PyObject* mod_process_input(PyObject* module, PyObject*) {
  LoopHost* host = host_of(module);
  if (!host) return nullptr;
  bool more = true;
  if (!host->process_input(&more)) return nullptr;
  return PyBool_FromLong(more);
}

PyObject* mod_answer(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "answer(id, future) takes 2 arguments");
    return nullptr;
  }
  LoopHost* host = host_of(module);
  if (!host || !parse_id(args[0], &id)) return nullptr;
  if (!host->answer_future(id, args[1])) return nullptr;
  Py_RETURN_NONE;
}

PyObject* mod_stream_chunk(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  uint64_t id;
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "stream_chunk(id, value) takes 2 arguments");
    return nullptr;
  }
  LoopHost* host = host_of(module);
  if (!host || !parse_id(args[0], &id)) return nullptr;
  if (!host->stream_chunk(id, args[1])) return nullptr;
  Py_RETURN_NONE;
}

PyObject* mod_stream_end(PyObject* module, PyObject* arg) {
  uint64_t id;
  LoopHost* host = host_of(module);
  if (!host || !parse_id(arg, &id)) return nullptr;
  if (!host->stream_end(id)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* mod_worker_loop_started(PyObject* module, PyObject*) {
  LoopHost* host = host_of(module);
  if (!host) return nullptr;
  host->loop_started();
  Py_RETURN_NONE;
}

PyObject* mod_request_worker_loop(PyObject* module, PyObject*) {
  ModuleState* st = module_state(module);
  if (!st || !st->host) {
    PyErr_SetString(PyExc_RuntimeError, "not running inside a pyport worker");
    return nullptr;
  }
  st->host->request_loop();
  Py_RETURN_NONE;
}

PyObject* mod_on_main_thread(PyObject* module, PyObject*) {
  ModuleState* st = module_state(module);
  return PyBool_FromLong(st && st->host && st->host->on_loop_thread());
}

PyObject* mod_in_worker(PyObject* module, PyObject*) {
  ModuleState* st = module_state(module);
  return PyBool_FromLong(st && st->host);
}

PyMethodDef module_methods[] = {
    {"process_input", mod_process_input, METH_NOARGS,
     "process_input() -> bool: handles the frames that wait (the worker loop's input callback);\n"
     "False once the worker must shut down."},
    {"answer", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mod_answer)),
     METH_FASTCALL, "answer(id, future): answers request id with the outcome of a done future."},
    {"stream_chunk", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mod_stream_chunk)),
     METH_FASTCALL, "stream_chunk(id, value): sends one item of stream id."},
    {"stream_end", mod_stream_end, METH_O, "stream_end(id): ends stream id."},
    {"worker_loop_started", mod_worker_loop_started, METH_NOARGS,
     "worker_loop_started(): the worker's asyncio loop exists now (main thread)."},
    {"request_worker_loop", mod_request_worker_loop, METH_NOARGS,
     "request_worker_loop(): asks the main thread to start the worker's loop (any thread)."},
    {"on_main_thread", mod_on_main_thread, METH_NOARGS,
     "on_main_thread() -> bool: whether this is the worker's main thread."},
    {"in_worker", mod_in_worker, METH_NOARGS,
     "in_worker() -> bool: whether a pyport worker hosts this interpreter."},
    {nullptr, nullptr, 0, nullptr}};

int module_traverse(PyObject* module, visitproc visit, void* arg) {
  ModuleState* st = module_state(module);
  if (st) Py_VISIT(st->poller_type);
  return 0;
}

int module_clear(PyObject* module) {
  ModuleState* st = module_state(module);
  if (st) {
    Py_CLEAR(st->poller_type);
    st->names.reset();
  }
  return 0;
}

void module_free(void* module) {
  ModuleState* st = module_state(static_cast<PyObject*>(module));
  if (st) {
    module_clear(static_cast<PyObject*>(module));
    st->~ModuleState();
  }
}

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_pyport_loop",
                          "libuv side of erlang.ErlangEventLoop (see port_worker/event_loop.hpp).",
                          sizeof(ModuleState),
                          module_methods,
                          nullptr,
                          module_traverse,
                          module_clear,
                          module_free};

}  // namespace

namespace loop_module {

PyObject* init() {
  PyObject* module = PyModule_Create(&module_def);
  if (!module) return nullptr;
  ModuleState* st = module_state(module);
  new (st) ModuleState();
  st->poller_type = PyType_FromModuleAndSpec(module, &poller_spec, nullptr);
  if (!st->poller_type || PyModule_AddObjectRef(module, "Poller", st->poller_type) < 0 ||
      PyModule_AddIntConstant(module, "EVENT_READ", kRead) < 0 ||
      PyModule_AddIntConstant(module, "EVENT_WRITE", kWrite) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

bool attach(LoopHost* host) {
  PyRef module = PyRef::steal(PyImport_ImportModule(kName));
  if (!module) return false;
  ModuleState* st = module_state(module.get());
  if (!st) return false;
  st->host = host;
  return true;
}

}  // namespace loop_module
}  // namespace pyport
