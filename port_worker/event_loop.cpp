#include "event_loop.hpp"

#include <fcntl.h>
#include <structmember.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "loop_queues.hpp"
#include "py_ref.hpp"

namespace pyport {
namespace {

// selectors.EVENT_READ / EVENT_WRITE.
constexpr int kRead = 1;
constexpr int kWrite = 2;

// While callbacks are ready, an iteration runs them without asking libuv
// for I/O (an epoll_wait that cannot wait, and libuv's own turn): the
// descriptors are polled again once this long has passed since the last
// poll, so I/O is never held back longer than that by a busy loop. An idle
// loop is unaffected: with nothing ready it waits in the kernel as before.
constexpr int64_t kPollIntervalNs = 50'000;

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

void on_wake_closed(uv_handle_t* h) {
  delete reinterpret_cast<uv_poll_t*>(h);
}

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
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
    // The wake-up for timed waits: a timerfd (nanosecond deadlines, where
    // libuv's timers count whole milliseconds) watched like any descriptor.
    core->wake_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (core->wake_fd_ < 0) {
      error = std::string("cannot create a timerfd: ") + std::strerror(errno);
      return nullptr;
    }
    core->wake_ = new uv_poll_t();
    int rc = uv_poll_init(core->loop_, core->wake_, core->wake_fd_);
    if (rc == 0) {
      core->wake_->data = core.get();
      rc = uv_poll_start(core->wake_, UV_READABLE, on_wake);
    } else {
      delete core->wake_;  // not initialised: nothing for libuv to close
      core->wake_ = nullptr;
    }
    if (rc) {
      error = std::string("cannot watch a timerfd: ") + uv_strerror(rc);
      return nullptr;
    }
    return core;
  }

  ~PollerCore() {
    close();
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

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

  // Entries collected and not yet returned: the next wait does not block.
  bool has_ready() const { return !ready_.empty(); }

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
    else if (!arm_wake(timeout)) {
      uv_run(loop_, UV_RUN_NOWAIT);  // no timerfd: the caller polls again until it is time
    }
    else {
      // The whole wait sleeps in the kernel: the timerfd fires at the
      // deadline itself (nanoseconds, no timer slack), so a timer is late
      // only by the thread's wake-up, and an idle loop costs no CPU. An
      // earlier wake-up left armed fires once, spuriously, later on: the
      // caller just goes round again.
      uv_run(loop_, UV_RUN_ONCE);
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
    if (wake_) uv_close(reinterpret_cast<uv_handle_t*>(wake_), on_wake_closed);
    wake_ = nullptr;
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

  // Arms the wake-up `timeout` seconds from now (never earlier: asyncio
  // counts a timer as due only once its time has come).
  bool arm_wake(double timeout) {
    double ns = std::ceil(std::min(timeout, 1e9) * 1e9);
    int64_t at = monotonic_ns() + int64_t(ns);
    itimerspec spec{};
    spec.it_value.tv_sec = time_t(at / 1'000'000'000);
    spec.it_value.tv_nsec = long(at % 1'000'000'000);
    return timerfd_settime(wake_fd_, TFD_TIMER_ABSTIME, &spec, nullptr) == 0;
  }

  // The timerfd fired: uv_run returns; reading it makes it quiet again.
  static void on_wake(uv_poll_t* h, int, int) {
    uint64_t expirations;
    ssize_t n = read(static_cast<PollerCore*>(h->data)->wake_fd_, &expirations, sizeof expirations);
    (void)n;  // EAGAIN: already read
  }

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
  int wake_fd_ = -1;                             // timerfd; closed with the core
  uv_poll_t* wake_ = nullptr;                    // watches it; freed in its close callback
  std::unordered_map<int, PollEntry*> entries_;  // owned until closed
  std::vector<PollEntry*> ready_;

 public:
  // Room for take_ready's output kept between iterations (see queue_io).
  std::vector<std::pair<PyRef, int>> scratch;
  bool waiting_ = false;
};

// ---------------------------------------------------------------- Handle, TimerHandle

// The handles call_soon and call_at make are subclasses of asyncio's Handle
// and TimerHandle (so isinstance, every method and repr are asyncio's)
// that add nothing but C slot functions: the generic ones of Python
// classes walk the member lists on every GC pass and deallocation.
int native_handle_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  int rc = 0;
  // Most slots hold None, bools, floats or strings, which the collector
  // ignores anyway: skipping them here saves a call each, on every pass.
  each_slot(self, [&](PyObject*& slot) {
    if (!rc && slot && PyType_IS_GC(Py_TYPE(slot))) rc = visit(slot, arg);
  });
  return rc;
}

int native_handle_clear(PyObject* self) {
  each_slot(self, [](PyObject*& slot) { Py_CLEAR(slot); });
  return 0;
}

void native_handle_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (type->tp_weaklistoffset &&
      *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(self) + type->tp_weaklistoffset)) {
    PyObject_ClearWeakRefs(self);
  }
  native_handle_clear(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyType_Slot native_handle_slots[] = {
    {Py_tp_doc, const_cast<char*>("An asyncio.Handle made by an ErlangEventLoop.")},
    {Py_tp_traverse, reinterpret_cast<void*>(native_handle_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(native_handle_clear)},
    {Py_tp_dealloc, reinterpret_cast<void*>(native_handle_dealloc)},
    {0, nullptr}};

PyType_Spec native_handle_spec = {"_pyport_loop.Handle", 0, 0,
                                  Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, native_handle_slots};
PyType_Spec native_timer_spec = {"_pyport_loop.TimerHandle", 0, 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, native_handle_slots};

// Our subclass of `base`, or `base` itself when its instances are not
// plain slots. Null with an exception set.
PyRef native_handle_type(PyObject* module, PyType_Spec* spec, const PyRef& base) {
  if (!plain_slots_layout(reinterpret_cast<PyTypeObject*>(base.get()))) return base;
  return PyRef::steal(PyType_FromModuleAndSpec(module, spec, base.get()));
}

// ---------------------------------------------------------------- module

// What the loop needs from asyncio, looked up once.
struct LoopNames {
  PyRef stopping, cancelled, remove_reader, remove_writer, run, run_debug, call_at_py,
      call_later_py, context_kw, task_name, future_name;
  PyRef task_kwnames;      // ("loop", "name", "context")
  PyRef loop_kwnames;      // ("loop",)
  PyRef tasks_dict;        // asyncio.tasks.__dict__: Task is looked up per call, as asyncio does
  PyRef futures_dict;      // asyncio.futures.__dict__: Future, likewise
  PyRef base_create_task;  // asyncio.BaseEventLoop.create_task, for debug mode and factories
  PyRef callback_failed;   // erlang._loop._callback_failed(handle, exc)
  PyRef base_call_soon;    // asyncio.BaseEventLoop.call_soon, for debug mode
  HandleLayout layout;

  bool load(PyObject* module) {
    struct {
      PyRef* slot;
      const char* name;
    } names[] = {{&stopping, "_stopping"},
                 {&cancelled, "_cancelled"},
                 {&remove_reader, "_remove_reader"},
                 {&remove_writer, "_remove_writer"},
                 {&run, "_run"},
                 {&run_debug, "_pyport_run_debug"},
                 {&call_at_py, "_pyport_call_at"},
                 {&call_later_py, "_pyport_call_later"},
                 {&context_kw, "context"},
                 {&task_name, "Task"},
                 {&future_name, "Future"}};
    for (auto& n : names) {
      *n.slot = PyRef::steal(PyUnicode_InternFromString(n.name));
      if (!*n.slot) return false;
    }
    if (!layout.load()) return false;
    layout.new_handle_type = native_handle_type(module, &native_handle_spec, layout.handle_type);
    layout.new_timer_type = layout.new_handle_type
                                ? native_handle_type(module, &native_timer_spec, layout.timer_type)
                                : PyRef();
    if (!layout.new_timer_type) return false;
    PyRef loop = PyRef::steal(PyImport_ImportModule("erlang._loop"));
    callback_failed =
        loop ? PyRef::steal(PyObject_GetAttrString(loop.get(), "_callback_failed")) : PyRef();
    PyRef base =
        callback_failed ? PyRef::steal(PyImport_ImportModule("asyncio.base_events")) : PyRef();
    PyRef cls = base ? PyRef::steal(PyObject_GetAttrString(base.get(), "BaseEventLoop")) : PyRef();
    base_call_soon = cls ? PyRef::steal(PyObject_GetAttrString(cls.get(), "call_soon")) : PyRef();
    base_create_task =
        base_call_soon ? PyRef::steal(PyObject_GetAttrString(cls.get(), "create_task")) : PyRef();
    PyRef tasks = base_create_task ? PyRef::steal(PyImport_ImportModule("asyncio.tasks")) : PyRef();
    tasks_dict = tasks ? PyRef::borrow(PyModule_GetDict(tasks.get())) : PyRef();
    PyRef futures = tasks_dict ? PyRef::steal(PyImport_ImportModule("asyncio.futures")) : PyRef();
    futures_dict = futures ? PyRef::borrow(PyModule_GetDict(futures.get())) : PyRef();
    task_kwnames =
        futures_dict ? PyRef::steal(Py_BuildValue("(sss)", "loop", "name", "context")) : PyRef();
    loop_kwnames = task_kwnames ? PyRef::steal(Py_BuildValue("(s)", "loop")) : PyRef();
    return bool(loop_kwnames);
  }
};

struct ModuleState {
  LoopHost* host = nullptr;
  PyObject* poller_type = nullptr;   // strong
  PyObject* ready_type = nullptr;    // strong
  PyObject* timers_type = nullptr;   // strong
  PyObject* root = nullptr;          // the worker's Poller (borrowed; cleared when it closes)
  std::unique_ptr<LoopNames> names;  // loaded by the first poller
};

ModuleState* module_state(PyObject* module) {
  return static_cast<ModuleState*>(PyModule_GetState(module));
}

// The names, loaded on first use; null with an exception set on failure.
LoopNames* loop_names(ModuleState* st, PyObject* module) {
  if (!st->names) {
    try {
      st->names.reset(new LoopNames());
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return nullptr;
    }
    if (!st->names->load(module)) {
      st->names.reset();
      return nullptr;
    }
  }
  return st->names.get();
}

// ---------------------------------------------------------------- ReadyQueue, TimerHeap

// loop._ready of an ErlangEventLoop: what asyncio's code does with its
// deque (append, popleft, clear, len) works on it.
struct ReadyObject {
  PyObject_HEAD ReadyQueue* q;
};

// loop._scheduled: the timer heap (len, clear, iteration; push for timers
// made in Python).
struct TimersObject {
  PyObject_HEAD TimerHeap* heap;
  LoopNames* names;
};

template <class T>
T* as(PyObject* o) {
  return reinterpret_cast<T*>(o);
}

PyObject* Ready_append(ReadyObject* self, PyObject* handle) {
  if (!self->q->push(handle)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Ready_popleft(ReadyObject* self, PyObject*) {
  if (self->q->empty()) {
    PyErr_SetString(PyExc_IndexError, "pop from an empty ready queue");
    return nullptr;
  }
  return self->q->pop().release();
}

PyObject* Ready_clear(ReadyObject* self, PyObject*) {
  self->q->clear();
  Py_RETURN_NONE;
}

Py_ssize_t Ready_len(ReadyObject* self) {
  return Py_ssize_t(self->q->size());
}

// A list of what a container holds, for iteration and repr.
template <class C>
PyObject* snapshot(const C& c) {
  PyObject* list = PyList_New(Py_ssize_t(c.size()));
  if (!list) return nullptr;
  Py_ssize_t i = 0;
  c.each([&](PyObject* h) { PyList_SET_ITEM(list, i++, PyRef::borrow(h).release()); });
  return list;
}

PyObject* Ready_iter(ReadyObject* self) {
  PyRef list = PyRef::steal(snapshot(*self->q));
  return list ? PyObject_GetIter(list.get()) : nullptr;
}

int Ready_traverse(ReadyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  if (self->q) self->q->each([&](PyObject* h) { visit(h, arg); });
  return 0;
}

int Ready_clear_gc(ReadyObject* self) {
  if (self->q) self->q->clear();
  return 0;
}

void Ready_dealloc(ReadyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->q) self->q->clear();
  delete self->q;
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef ready_methods[] = {
    {"append", reinterpret_cast<PyCFunction>(Ready_append), METH_O, "append(handle)"},
    {"popleft", reinterpret_cast<PyCFunction>(Ready_popleft), METH_NOARGS, "popleft() -> handle"},
    {"clear", reinterpret_cast<PyCFunction>(Ready_clear), METH_NOARGS, "clear()"},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot ready_slots[] = {
    {Py_tp_doc, const_cast<char*>("The ready queue of an ErlangEventLoop (loop._ready).")},
    {Py_tp_dealloc, reinterpret_cast<void*>(Ready_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(Ready_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(Ready_clear_gc)},
    {Py_tp_iter, reinterpret_cast<void*>(Ready_iter)},
    {Py_tp_methods, ready_methods},
    {Py_mp_length, reinterpret_cast<void*>(Ready_len)},
    {Py_sq_length, reinterpret_cast<void*>(Ready_len)},
    {0, nullptr}};

PyType_Spec ready_spec = {
    "_pyport_loop.ReadyQueue", sizeof(ReadyObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION, ready_slots};

// A float `when` for the heap: NaN sorts first (asyncio runs such a timer
// at once); -1 with an exception set when `when` is not a number.
bool when_of(PyObject* obj, double* when) {
  *when = PyFloat_AsDouble(obj);
  if (*when == -1.0 && PyErr_Occurred()) return false;
  if (std::isnan(*when)) *when = -HUGE_VAL;
  return true;
}

// Puts a TimerHandle (scheduled from Python) on the heap.
PyObject* Timers_push(TimersObject* self, PyObject* timer) {
  const HandleLayout& l = self->names->layout;
  if (!l.is_timer(timer)) {
    PyErr_Format(PyExc_TypeError, "an asyncio.TimerHandle was expected, got %R", timer);
    return nullptr;
  }
  PyObject* when_obj = HandleLayout::get(timer, l.when);
  double when;
  if (!when_obj) {
    PyErr_SetString(PyExc_AttributeError, "the timer has no _when");
    return nullptr;
  }
  if (!when_of(when_obj, &when) || !self->heap->push(when, timer)) return nullptr;
  HandleLayout::set(timer, l.scheduled, Py_True);
  Py_RETURN_NONE;
}

// loop._timer_handle_cancelled(handle): counts cancelled timers still on
// the heap, so that run_once knows when to compact it.
PyObject* Timers_note_cancelled(TimersObject* self, PyObject* timer) {
  const HandleLayout& l = self->names->layout;
  if (l.is_timer(timer)) {
    PyObject* scheduled = HandleLayout::get(timer, l.scheduled);
    int on_heap = scheduled ? PyObject_IsTrue(scheduled) : 0;
    if (on_heap < 0) return nullptr;
    if (on_heap) self->heap->note_cancelled();
  }
  Py_RETURN_NONE;
}

PyObject* Timers_clear(TimersObject* self, PyObject*) {
  self->heap->clear();
  Py_RETURN_NONE;
}

Py_ssize_t Timers_len(TimersObject* self) {
  return Py_ssize_t(self->heap->size());
}

PyObject* Timers_iter(TimersObject* self) {
  PyRef list = PyRef::steal(snapshot(*self->heap));
  return list ? PyObject_GetIter(list.get()) : nullptr;
}

PyObject* Timers_get_cancelled(TimersObject* self, void*) {
  return PyLong_FromSsize_t(self->heap->cancelled_count());
}

int Timers_set_cancelled(TimersObject* self, PyObject* value, void*) {
  Py_ssize_t n = value ? PyLong_AsSsize_t(value) : 0;
  if (n == -1 && PyErr_Occurred()) return -1;
  self->heap->set_cancelled_count(n < 0 ? 0 : n);
  return 0;
}

int Timers_traverse(TimersObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  if (self->heap) self->heap->each([&](PyObject* h) { visit(h, arg); });
  return 0;
}

int Timers_clear_gc(TimersObject* self) {
  if (self->heap) self->heap->clear();
  return 0;
}

void Timers_dealloc(TimersObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->heap) self->heap->clear();
  delete self->heap;
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef timers_methods[] = {
    {"push", reinterpret_cast<PyCFunction>(Timers_push), METH_O,
     "push(timer): schedules an asyncio.TimerHandle at timer.when()."},
    {"note_cancelled", reinterpret_cast<PyCFunction>(Timers_note_cancelled), METH_O,
     "note_cancelled(timer): a timer on the heap was cancelled."},
    {"clear", reinterpret_cast<PyCFunction>(Timers_clear), METH_NOARGS, "clear()"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef timers_getset[] = {{"cancelled_count", reinterpret_cast<getter>(Timers_get_cancelled),
                                reinterpret_cast<setter>(Timers_set_cancelled),
                                "Cancelled timers still on the heap.", nullptr},
                               {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot timers_slots[] = {
    {Py_tp_doc, const_cast<char*>("The timers of an ErlangEventLoop (loop._scheduled).")},
    {Py_tp_dealloc, reinterpret_cast<void*>(Timers_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(Timers_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(Timers_clear_gc)},
    {Py_tp_iter, reinterpret_cast<void*>(Timers_iter)},
    {Py_tp_methods, timers_methods},
    {Py_tp_getset, timers_getset},
    {Py_mp_length, reinterpret_cast<void*>(Timers_len)},
    {Py_sq_length, reinterpret_cast<void*>(Timers_len)},
    {0, nullptr}};

PyType_Spec timers_spec = {
    "_pyport_loop.TimerHeap", sizeof(TimersObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION, timers_slots};

// A new, empty ReadyQueue or TimerHeap object; null with an exception set.
template <class Obj, class Container>
PyObject* new_container(PyObject* type, Container* Obj::*member) {
  std::unique_ptr<Container> c;
  try {
    c.reset(new Container());
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  PyTypeObject* t = reinterpret_cast<PyTypeObject*>(type);
  PyObject* self = t->tp_alloc(t, 0);
  if (!self) return nullptr;
  as<Obj>(self)->*member = c.release();
  return self;
}

// ---------------------------------------------------------------- Poller

struct PollerObject {
  PyObject_HEAD PollerCore* core;
  ModuleState* state;
  bool is_root;
  PyObject* input_key;  // root: the pseudo key reported when frames wait
  PyObject* input_ended;  // root: called once process_input says the worker must stop
  unsigned long owner_thread;
  // The asyncio loop whose selector this is (bind()), its ready queue and
  // timers, and the loop's _closed / _debug flags (kept here so the hot
  // paths read plain ints).
  PyObject* loop;
  PyObject* ready;   // ReadyObject
  PyObject* timers;  // TimersObject
  LoopNames* names;
  PyObject* task_factory;  // the bound loop's _task_factory
  int loop_closed;
  int debug;
  double clock_resolution;
  int64_t last_poll_ns;  // when run_once last polled for I/O (CLOCK_MONOTONIC)
  uint64_t polls;        // run_once iterations that polled (the others ran callbacks only)
};

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
  Py_CLEAR(self->input_ended);
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
  if (!st->ready_type || !st->timers_type) {
    PyErr_SetString(PyExc_RuntimeError, "the _pyport_loop module is finalized");
    return nullptr;
  }
  LoopNames* names = loop_names(st, module);
  if (!names) return nullptr;
  PyRef obj = PyRef::steal(type->tp_alloc(type, 0));
  if (!obj) return nullptr;
  auto* self = as<PollerObject>(obj.get());
  self->state = st;
  self->names = names;
  self->is_root = worker;
  self->owner_thread = PyThread_get_thread_ident();
  self->ready = new_container<ReadyObject>(st->ready_type, &ReadyObject::q);
  self->timers =
      self->ready ? new_container<TimersObject>(st->timers_type, &TimersObject::heap) : nullptr;
  if (!self->timers) return nullptr;
  as<TimersObject>(self->timers)->names = names;
  std::string error;
  std::unique_ptr<PollerCore> core;
  try {
    core = PollerCore::create(worker ? st->host->uv_loop() : nullptr, error);
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  if (!core) {
    PyErr_SetString(PyExc_OSError, error.c_str());
    return nullptr;
  }
  self->core = core.release();
  if (worker) st->root = obj.get();
  return obj.release();
}

int Poller_traverse(PollerObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->input_key);
  Py_VISIT(self->input_ended);
  Py_VISIT(self->loop);
  Py_VISIT(self->ready);
  Py_VISIT(self->timers);
  Py_VISIT(self->task_factory);
  return self->core ? self->core->traverse(visit, arg) : 0;
}

int Poller_clear(PollerObject* self) {
  close_poller(self);
  Py_CLEAR(self->loop);
  Py_CLEAR(self->ready);
  Py_CLEAR(self->timers);
  Py_CLEAR(self->task_factory);
  return 0;
}

void Poller_dealloc(PollerObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Poller_clear(self);
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
    if (host->input_ready()) {
      timeout = 0;
    } else if (timeout != 0 && !self->core->has_ready() && host->spin_for_input(timeout)) {
      // The worker polled its channel a short while first (input_reader.hpp).
      timeout = 0;
    }
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

// ---------------------------------------------------------------- handles

// time.monotonic(), which BaseEventLoop.time() is, to the same bit.
double monotonic_now() {
  return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
}

// The loop this poller serves; null with an exception set before bind().
PyObject* bound_loop(PollerObject* self) {
  // tp_clear drops the loop before the queues, so a loop means queues too.
  if (!self->loop) PyErr_SetString(PyExc_RuntimeError, "the poller serves no event loop");
  return self->loop;
}

// func(loop, *args, **kwargs) for a vectorcall's args: asyncio's own
// (Python) method for the cases the C versions hand over.
PyObject* call_unbound(PyObject* func, PyObject* loop, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
  Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
  std::vector<PyObject*> stack;
  try {
    stack.reserve(size_t(total) + 1);
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  stack.push_back(loop);
  stack.insert(stack.end(), args, args + total);
  return PyObject_Vectorcall(func, stack.data(), size_t(nargs) + 1, kwnames);
}

// A Handle (or TimerHandle) as Handle.__init__ makes it outside debug mode:
// callback(*args) to run in `context` (a copy of the current one if None).
PyRef make_handle(const HandleLayout& l, PyObject* type, PyObject* loop, PyObject* callback,
                  PyObject* const* args, Py_ssize_t nargs, PyObject* context) {
  PyRef ctx = context == Py_None ? PyRef::steal(PyContext_CopyCurrent()) : PyRef::borrow(context);
  PyRef cb_args = ctx ? PyRef::steal(PyTuple_New(nargs)) : PyRef();
  if (!cb_args) return {};
  for (Py_ssize_t i = 0; i < nargs; ++i)
    PyTuple_SET_ITEM(cb_args.get(), i, PyRef::borrow(args[i]).release());
  PyTypeObject* t = reinterpret_cast<PyTypeObject*>(type);
  PyRef handle = PyRef::steal(t->tp_alloc(t, 0));
  if (!handle) return {};
  PyObject* h = handle.get();
  HandleLayout::set(h, l.context, ctx.get());
  HandleLayout::set(h, l.loop, loop);
  HandleLayout::set(h, l.callback, callback);
  HandleLayout::set(h, l.args, cb_args.get());
  HandleLayout::set(h, l.cancelled, Py_False);
  HandleLayout::set(h, l.repr, Py_None);
  HandleLayout::set(h, l.source_traceback, Py_None);
  return handle;
}

// The context= keyword of call_soon/call_at/call_later; false with an
// exception set for any other keyword.
bool context_kw(LoopNames& n, const char* what, PyObject* const* args, Py_ssize_t nargs,
                PyObject* kwnames, PyObject** context) {
  *context = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    if (key != n.context_kw.get() && PyUnicode_Compare(key, n.context_kw.get()) != 0) {
      if (!PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", what, key);
      return false;
    }
    *context = args[nargs + i];
  }
  return true;
}

// loop.call_soon(callback, *args, context=None) of the bound loop: a
// Handle made and queued without running Python code. Debug mode takes
// asyncio's own path (its checks and the creation traceback).
PyObject* Poller_call_soon(PollerObject* self, PyObject* const* args, size_t nargsf,
                           PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  LoopNames& n = *self->names;
  PyObject* loop = bound_loop(self);
  PyObject* context;
  if (!loop || !context_kw(n, "call_soon", args, nargs, kwnames, &context)) return nullptr;
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "call_soon() needs a callback");
    return nullptr;
  }
  if (self->loop_closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (self->debug) {
    return call_unbound(n.base_call_soon.get(), loop, args, nargs, kwnames);
  }
  PyRef handle = make_handle(n.layout, n.layout.new_handle_type.get(), loop, args[0], args + 1,
                             nargs - 1, context);
  if (!handle || !as<ReadyObject>(self->ready)->q->push(handle.get())) return nullptr;
  return handle.release();
}

// call_at (later=false) or call_later (later=true) of the bound loop: a
// TimerHandle on the C++ heap. Debug mode, and `when`s that are not plain
// numbers, go through the loop's Python version of asyncio's code.
PyObject* schedule_timer(PollerObject* self, bool later, PyObject* const* args, size_t nargsf,
                         PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  LoopNames& n = *self->names;
  const char* what = later ? "call_later" : "call_at";
  PyObject* loop = bound_loop(self);
  PyObject* context;
  if (!loop || !context_kw(n, what, args, nargs, kwnames, &context)) return nullptr;
  if (nargs < 2) {
    PyErr_Format(PyExc_TypeError, "%s() needs a %s and a callback", what, later ? "delay" : "time");
    return nullptr;
  }
  PyObject* at = args[0];
  if (at == Py_None) {
    PyErr_SetString(PyExc_TypeError, later ? "delay must not be None" : "when cannot be None");
    return nullptr;
  }
  if (self->loop_closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (self->debug || !(PyFloat_CheckExact(at) || PyLong_CheckExact(at))) {
    PyRef rest = PyRef::steal(PyTuple_New(nargs - 2));
    if (!rest) return nullptr;
    for (Py_ssize_t i = 2; i < nargs; ++i)
      PyTuple_SET_ITEM(rest.get(), i - 2, PyRef::borrow(args[i]).release());
    PyObject* call[] = {loop, at, args[1], rest.get(), context};
    return PyObject_VectorcallMethod((later ? n.call_later_py : n.call_at_py).get(), call,
                                     5 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  }
  double when;
  if (!when_of(at, &when)) return nullptr;
  PyRef when_obj;
  if (later) {
    when = monotonic_now() + when;
    when_obj = PyRef::steal(PyFloat_FromDouble(when));
    if (!when_obj) return nullptr;
    if (std::isnan(when)) when = -HUGE_VAL;
  } else {
    when_obj = PyRef::borrow(at);
  }
  const HandleLayout& l = n.layout;
  PyRef timer = make_handle(l, l.new_timer_type.get(), loop, args[1], args + 2, nargs - 2, context);
  if (!timer) return nullptr;
  HandleLayout::set(timer.get(), l.when, when_obj.get());
  HandleLayout::set(timer.get(), l.scheduled, Py_False);
  if (!as<TimersObject>(self->timers)->heap->push(when, timer.get())) return nullptr;
  HandleLayout::set(timer.get(), l.scheduled, Py_True);
  return timer.release();
}

PyObject* Poller_call_at(PollerObject* self, PyObject* const* args, size_t nargsf,
                         PyObject* kwnames) {
  return schedule_timer(self, false, args, nargsf, kwnames);
}

PyObject* Poller_call_later(PollerObject* self, PyObject* const* args, size_t nargsf,
                            PyObject* kwnames) {
  return schedule_timer(self, true, args, nargsf, kwnames);
}

// loop.create_task(coro, *, name=None, context=None) of the bound loop:
// asyncio's Task made directly. Debug mode and task factories take
// asyncio's own path.
PyObject* Poller_create_task(PollerObject* self, PyObject* const* args, size_t nargsf,
                             PyObject* kwnames) {
  PyObject* loop = bound_loop(self);
  if (!loop) return nullptr;
  LoopNames& n = *self->names;
  if (self->debug || self->task_factory) {
    return call_unbound(n.base_create_task.get(), loop, args, PyVectorcall_NARGS(nargsf), kwnames);
  }
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs != 1) {
    PyErr_Format(PyExc_TypeError, "create_task() takes 1 positional argument (%zd given)", nargs);
    return nullptr;
  }
  PyObject *name = Py_None, *context = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    if (PyUnicode_CompareWithASCIIString(key, "name") == 0) {
      name = args[nargs + i];
    } else if (PyUnicode_CompareWithASCIIString(key, "context") == 0) {
      context = args[nargs + i];
    } else {
      PyErr_Format(PyExc_TypeError, "create_task() got an unexpected keyword argument '%U'", key);
      return nullptr;
    }
  }
  PyObject* coro = args[0];
  if (self->loop_closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  PyObject* task_type = PyDict_GetItemWithError(n.tasks_dict.get(), n.task_name.get());
  if (!task_type) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_AttributeError, "asyncio.tasks has no Task");
    return nullptr;
  }
  PyRef hold = PyRef::borrow(task_type);
  PyObject* call[] = {coro, loop, name, context};
  // name=None and context=None are Task's defaults: not passing them spares
  // their parsing.
  bool defaults = name == Py_None && context == Py_None;
  return PyObject_Vectorcall(task_type, call, 1,
                             (defaults ? n.loop_kwnames : n.task_kwnames).get());
}

// loop.create_future() of the bound loop: asyncio.futures.Future(loop=loop),
// without BaseEventLoop.create_future's Python frame.
PyObject* Poller_create_future(PollerObject* self, PyObject*) {
  PyObject* loop = bound_loop(self);
  if (!loop) return nullptr;
  LoopNames& n = *self->names;
  PyObject* future_type = PyDict_GetItemWithError(n.futures_dict.get(), n.future_name.get());
  if (!future_type) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_AttributeError, "asyncio.futures has no Future");
    return nullptr;
  }
  PyRef hold = PyRef::borrow(future_type);
  PyObject* call[] = {loop};
  return PyObject_Vectorcall(future_type, call, 0, n.loop_kwnames.get());
}

// loop.get_debug(): every Future and Task asks it when made.
PyObject* Poller_get_debug_method(PollerObject* self, PyObject*) {
  return PyBool_FromLong(self->debug);
}

// loop.time(): time.monotonic(), as BaseEventLoop.time.
PyObject* Poller_time(PollerObject*, PyObject*) {
  return PyFloat_FromDouble(monotonic_now());
}

// ---------------------------------------------------------------- run_once

// Truth of obj.name; -1 with an exception set.
int attr_true(PyObject* obj, PyObject* name) {
  PyRef v = PyRef::steal(PyObject_GetAttr(obj, name));
  return v ? PyObject_IsTrue(v.get()) : -1;
}

// handle._cancelled of any handle; -1 with an exception set.
int is_cancelled(LoopNames& n, PyObject* handle) {
  return n.layout.is_handle(handle) ? n.layout.cancelled_of(handle)
                                    : attr_true(handle, n.cancelled.get());
}

// Drops cancelled timers: all of them when they are most of a large heap
// (as asyncio does), else those at its head.
bool drop_cancelled_timers(LoopNames& n, TimerHeap& heap) {
  const HandleLayout& l = n.layout;
  size_t count = heap.size();
  // asyncio's _MIN_SCHEDULED_TIMER_HANDLES and _MIN_CANCELLED_TIMER_HANDLES_FRACTION.
  if (count > 100 && size_t(heap.cancelled_count()) * 2 > count) {
    bool compacted = heap.remove_if([&](PyObject* h) {
      if (l.get(h, l.cancelled) != Py_True) return false;
      HandleLayout::set(h, l.scheduled, Py_False);
      return true;
    });
    if (compacted) heap.set_cancelled_count(0);
  }
  while (!heap.empty()) {
    // Held: a _cancelled that is no bool runs Python code, which may change the heap.
    PyRef h = heap.top().handle;
    int cancelled = l.cancelled_of(h.get());
    if (cancelled < 0) return false;
    if (!cancelled) break;
    if (heap.empty() || heap.top().handle.get() != h.get()) continue;
    if (heap.cancelled_count() > 0) heap.set_cancelled_count(heap.cancelled_count() - 1);
    PyRef gone = heap.pop();
    HandleLayout::set(gone.get(), l.scheduled, Py_False);
  }
  return true;
}

// Runs one ready handle as Handle._run() does. asyncio's own Handle and
// TimerHandle run here without a Python frame of their own; other handle
// types (and a context already entered) go through their _run().
bool run_handle(LoopNames& n, PyObject* handle) {
  const HandleLayout& l = n.layout;
  if (l.runs_natively(handle)) {
    // Held: the callback may cancel its own handle, which drops them.
    PyRef context = PyRef::borrow(l.get(handle, l.context));
    PyRef callback = PyRef::borrow(l.get(handle, l.callback));
    PyRef args = PyRef::borrow(l.get(handle, l.args));
    if (context && callback && args && PyContext_CheckExact(context.get()) &&
        PyTuple_CheckExact(args.get()) && PyContext_Enter(context.get()) == 0) {
      PyRef result =
          PyRef::steal(PyObject_Vectorcall(callback.get(), &PyTuple_GET_ITEM(args.get(), 0),
                                           size_t(PyTuple_GET_SIZE(args.get())), nullptr));
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

// Queues the reader/writer handles of the descriptors that became ready (or,
// cancelled, unregisters them), as asyncio's _process_events does.
bool queue_io(PollerObject* self, PyObject* loop, ReadyQueue& ready, bool input) {
  LoopNames& n = *self->names;
  // The events are moved out (with their keys referenced: handling one may
  // unregister others) into a buffer that is reused, not allocated, per
  // iteration.
  std::vector<std::pair<PyRef, int>> events;
  events.swap(self->core->scratch);
  try {
    self->core->take_ready(events);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return false;
  }
  for (auto& [key, mask] : events) {
    PyObject* k = key.get();
    PyObject* data =
        PyTuple_Check(k) && PyTuple_GET_SIZE(k) == 4 ? PyTuple_GET_ITEM(k, 3) : nullptr;
    if (!data || !PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {
      PyErr_SetString(PyExc_TypeError, "a selector key's data must be (reader, writer)");
      return false;
    }
    PyObject* fileobj = PyTuple_GET_ITEM(k, 0);
    for (int side = 0; side < 2; ++side) {
      PyObject* handle = PyTuple_GET_ITEM(data, side);
      if (!(mask & (side ? kWrite : kRead)) || handle == Py_None) continue;
      int cancelled = is_cancelled(n, handle);
      if (cancelled < 0) return false;
      if (cancelled) {
        PyRef done = PyRef::steal(PyObject_CallMethodOneArg(
            loop, (side ? n.remove_writer : n.remove_reader).get(), fileobj));
        if (!done) return false;
      } else if (!ready.push(handle)) {
        return false;
      }
    }
  }
  events.clear();
  if (self->core) events.swap(self->core->scratch);
  if (input && self->input_key) {
    return ready.push(PyTuple_GET_ITEM(PyTuple_GET_ITEM(self->input_key, 3), 0));
  }
  return true;
}

bool run_input(PollerObject* self, PyObject* handle);

// loop._run_once() of asyncio's BaseEventLoop on the C++ ready queue and
// timer heap, with the poller's events taken directly (no select() list,
// no _process_events). Tolerates being re-entered from a callback it runs
// (erlang.sleep in synchronous code).
PyObject* Poller_run_once(PollerObject* self, PyObject*) {
  PyObject* loop_ptr = bound_loop(self);
  if (!loop_ptr || !check_usable(self)) return nullptr;
  LoopNames& n = *self->names;
  const HandleLayout& l = n.layout;
  // Held: a callback may close the loop or drop it.
  PyRef loop = PyRef::borrow(loop_ptr);
  PyRef ready_obj = PyRef::borrow(self->ready);
  PyRef timers_obj = PyRef::borrow(self->timers);
  ReadyQueue& ready = *as<ReadyObject>(ready_obj.get())->q;
  TimerHeap& timers = *as<TimersObject>(timers_obj.get())->heap;

  if (!drop_cancelled_timers(n, timers)) return nullptr;
  int stopping = ready.empty() ? attr_true(loop.get(), n.stopping.get()) : 0;
  if (stopping < 0) return nullptr;
  double timeout = -1;
  if (!ready.empty() || stopping) {
    timeout = 0;
  } else if (!timers.empty()) {
    // asyncio's MAXIMUM_SELECT_TIMEOUT is a day.
    timeout = std::min(std::max(0.0, timers.top().when - monotonic_now()), 86400.0);
  }

  // Callbacks are ready and I/O was polled a moment ago: run them at once
  // (see kPollIntervalNs). Frames the worker has already read still get
  // their turn, as do signal handlers.
  if (timeout == 0 && !ready.empty() && monotonic_ns() - self->last_poll_ns < kPollIntervalNs) {
    if (PyErr_CheckSignals() < 0) return nullptr;
    LoopHost* host = self->is_root ? self->state->host : nullptr;
    if (host && self->input_key && host->input_ready() &&
        !ready.push(PyTuple_GET_ITEM(PyTuple_GET_ITEM(self->input_key, 3), 0))) {
      return nullptr;
    }
  } else {
    bool input = false;
    if (!wait_for_events(self, timeout, &input)) return nullptr;
    if (!self->core || self->core->closed()) Py_RETURN_NONE;
    self->last_poll_ns = monotonic_ns();
    ++self->polls;
    if (!queue_io(self, loop.get(), ready, input)) return nullptr;
  }

  // Timers that are due (within the clock's resolution, as asyncio).
  if (!timers.empty()) {
    double end = monotonic_now() + self->clock_resolution;
    while (!timers.empty() && timers.top().when < end) {
      PyRef timer = timers.pop();
      HandleLayout::set(timer.get(), l.scheduled, Py_False);
      if (!ready.push(std::move(timer))) return nullptr;
    }
  }

  // What was ready before this iteration's callbacks add more. A nested
  // iteration may have taken some: stop when the queue is empty.
  size_t todo = ready.size();
  while (todo-- > 0 && !ready.empty()) {
    PyRef handle = ready.pop();
    int cancelled = is_cancelled(n, handle.get());
    if (cancelled < 0) return nullptr;
    if (cancelled) continue;
    if (self->debug) {
      PyRef done =
          PyRef::steal(PyObject_CallMethodOneArg(loop.get(), n.run_debug.get(), handle.get()));
      if (!done) return nullptr;
    } else if (self->input_ended && self->input_key &&
               handle.get() == PyTuple_GET_ITEM(PyTuple_GET_ITEM(self->input_key, 3), 0)) {
      if (!run_input(self, handle.get())) return nullptr;
    } else if (!run_handle(n, handle.get())) {
      return nullptr;
    }
  }
  Py_RETURN_NONE;
}

// bind(loop): the asyncio loop this poller is the selector of.
PyObject* Poller_bind(PollerObject* self, PyObject* loop) {
  PyRef res = PyRef::steal(PyObject_GetAttrString(loop, "_clock_resolution"));
  double resolution = res ? PyFloat_AsDouble(res.get()) : -1.0;
  if (resolution == -1.0 && PyErr_Occurred()) return nullptr;
  self->clock_resolution = resolution;
  Py_INCREF(loop);
  Py_XSETREF(self->loop, loop);
  Py_RETURN_NONE;
}

// set_input_key(key, ended=None): key's data is (handle, None), the
// handle run_once queues when frames wait. With `ended`, run_once handles
// the frames itself in C (the handle's own _run is for poll() users and
// debug mode) and calls ended() once the worker must stop.
PyObject* Poller_set_input_key(PollerObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 2) {
    PyErr_SetString(PyExc_TypeError, "set_input_key(key, ended=None) takes 1 or 2 arguments");
    return nullptr;
  }
  if (!self->is_root) {
    PyErr_SetString(PyExc_RuntimeError, "only the worker's poller receives frames");
    return nullptr;
  }
  PyObject* key = args[0];
  PyObject* data =
      PyTuple_Check(key) && PyTuple_GET_SIZE(key) == 4 ? PyTuple_GET_ITEM(key, 3) : nullptr;
  if (!data || !PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {
    PyErr_SetString(PyExc_TypeError, "the input key's data must be (handle, None)");
    return nullptr;
  }
  PyObject* ended = nargs == 2 && args[1] != Py_None ? args[1] : nullptr;
  Py_INCREF(key);
  Py_XSETREF(self->input_key, key);
  Py_XINCREF(ended);
  Py_XSETREF(self->input_ended, ended);
  Py_RETURN_NONE;
}

// The input handle's work without its Python frames: the frames that
// wait are handled; an error other than SystemExit/KeyboardInterrupt goes
// to handle._pyport_failed(exc) (the loop's exception handler), as the
// handle's _run would. False with an exception set.
bool run_input(PollerObject* self, PyObject* handle) {
  LoopHost* host = self->state->host;
  if (!host) {
    PyErr_SetString(PyExc_RuntimeError, "the worker has gone");
    return false;
  }
  PyRef ended = PyRef::borrow(self->input_ended);  // held: a request may replace it
  bool more = true;
  bool ok = host->process_input(&more);
  if (ok && !more) ok = bool(PyRef::steal(PyObject_CallNoArgs(ended.get())));
  if (ok) return true;
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
    return false;
  }
  PyError e = PyError::fetch();
  return bool(PyRef::steal(
      PyObject_CallMethod(handle, "_pyport_failed", "O", e.value ? e.value.get() : Py_None)));
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

PyObject* Poller_get_ready(PollerObject* self, void*) {
  return PyRef::borrow(self->ready).release();
}

PyObject* Poller_get_timers(PollerObject* self, void*) {
  return PyRef::borrow(self->timers).release();
}

PyObject* Poller_get_task_factory(PollerObject* self, void*) {
  return PyRef::borrow(self->task_factory ? self->task_factory : Py_None).release();
}

int Poller_set_task_factory(PollerObject* self, PyObject* value, void*) {
  Py_XSETREF(self->task_factory,
             value && value != Py_None ? PyRef::borrow(value).release() : nullptr);
  return 0;
}

PyObject* Poller_get_loop_closed(PollerObject* self, void*) {
  return PyBool_FromLong(self->loop_closed);
}

PyObject* Poller_get_polls(PollerObject* self, void*) {
  return PyLong_FromUnsignedLongLong(self->polls);
}

PyObject* Poller_get_debug(PollerObject* self, void*) {
  return PyBool_FromLong(self->debug);
}

// Truth of a flag being set; -1 with an exception set.
int set_flag(PyObject* value, int* flag) {
  int v = value ? PyObject_IsTrue(value) : 0;
  if (v < 0) return -1;
  *flag = v;
  return 0;
}

int Poller_set_loop_closed(PollerObject* self, PyObject* value, void*) {
  return set_flag(value, &self->loop_closed);
}

int Poller_set_debug(PollerObject* self, PyObject* value, void*) {
  return set_flag(value, &self->debug);
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
     "call_soon(callback, *args, context=None): loop.call_soon, without Python code."},
    {"run_once", reinterpret_cast<PyCFunction>(Poller_run_once), METH_NOARGS,
     "run_once(): one iteration (BaseEventLoop._run_once) of the bound loop."},
    {"create_task", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_create_task)),
     METH_FASTCALL | METH_KEYWORDS,
     "create_task(coro, *, name=None, context=None): loop.create_task, without Python code."},
    {"create_future", reinterpret_cast<PyCFunction>(Poller_create_future), METH_NOARGS,
     "create_future(): loop.create_future, without Python code."},
    {"get_debug", reinterpret_cast<PyCFunction>(Poller_get_debug_method), METH_NOARGS,
     "get_debug(): the bound loop's debug flag (loop.get_debug)."},
    {"time", reinterpret_cast<PyCFunction>(Poller_time), METH_NOARGS,
     "time(): loop.time (time.monotonic())."},
    {"bind", reinterpret_cast<PyCFunction>(Poller_bind), METH_O,
     "bind(loop): the asyncio loop this poller is the selector, ready queue and timers of."},
    {"call_at", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_call_at)),
     METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None): loop.call_at, without Python code."},
    {"call_later", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_call_later)),
     METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None): loop.call_later, without Python code."},
    {"set_input_key",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Poller_set_input_key)),
     METH_FASTCALL,
     "set_input_key(key, ended=None): the worker poller reports key as readable when frames\n"
     "wait; with ended, run_once handles them itself and calls ended() at the end."},
    {"close", reinterpret_cast<PyCFunction>(Poller_close), METH_NOARGS,
     "close(): stop watching everything and release the libuv handles."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef poller_getset[] = {
    {"closed", reinterpret_cast<getter>(Poller_get_closed), nullptr, "True once closed.", nullptr},
    {"worker", reinterpret_cast<getter>(Poller_get_worker), nullptr,
     "True for the worker's own loop (frames from Erlang arrive through it).", nullptr},
    {"ready", reinterpret_cast<getter>(Poller_get_ready), nullptr,
     "The ready queue (the bound loop's _ready).", nullptr},
    {"scheduled", reinterpret_cast<getter>(Poller_get_timers), nullptr,
     "The timer heap (the bound loop's _scheduled).", nullptr},
    {"loop_closed", reinterpret_cast<getter>(Poller_get_loop_closed),
     reinterpret_cast<setter>(Poller_set_loop_closed), "The bound loop's _closed.", nullptr},
    {"polls", reinterpret_cast<getter>(Poller_get_polls), nullptr,
     "How many run_once iterations polled for I/O (the rest only ran ready callbacks).", nullptr},
    {"debug", reinterpret_cast<getter>(Poller_get_debug),
     reinterpret_cast<setter>(Poller_set_debug), "The bound loop's _debug.", nullptr},
    {"task_factory", reinterpret_cast<getter>(Poller_get_task_factory),
     reinterpret_cast<setter>(Poller_set_task_factory), "The bound loop's _task_factory.", nullptr},
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
  if (st) {
    Py_VISIT(st->poller_type);
    Py_VISIT(st->ready_type);
    Py_VISIT(st->timers_type);
  }
  return 0;
}

int module_clear(PyObject* module) {
  ModuleState* st = module_state(module);
  if (st) {
    Py_CLEAR(st->poller_type);
    Py_CLEAR(st->ready_type);
    Py_CLEAR(st->timers_type);
    // The names stay until module_free: pollers and timer heaps still
    // alive point to them, and they keep the module alive through their types.
  }
  return 0;
}

void module_free(void* module) {
  ModuleState* st = module_state(static_cast<PyObject*>(module));
  if (st) {
    module_clear(static_cast<PyObject*>(module));
    st->names.reset();
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
  st->ready_type = PyType_FromModuleAndSpec(module, &ready_spec, nullptr);
  st->timers_type = PyType_FromModuleAndSpec(module, &timers_spec, nullptr);
  if (!st->poller_type || !st->ready_type || !st->timers_type ||
      PyModule_AddObjectRef(module, "Poller", st->poller_type) < 0 ||
      PyModule_AddObjectRef(module, "ReadyQueue", st->ready_type) < 0 ||
      PyModule_AddObjectRef(module, "TimerHeap", st->timers_type) < 0 ||
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
