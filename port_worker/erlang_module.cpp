#include "erlang_module.hpp"

#include <cmath>

namespace pyport {

namespace {

struct ModuleState {
  ErlangLink* link;
};

ErlangLink* link_of(PyObject* module) {
  auto* state = static_cast<ModuleState*>(PyModule_GetState(module));
  if (!state || !state->link) {
    PyErr_SetString(
        PyExc_RuntimeError,
        "this needs a pyport worker: the erlang module is not connected to Erlang here");
    return nullptr;
  }
  return state->link;
}

// The link, for a function taking two positional arguments.
ErlangLink* link_of(PyObject* module, Py_ssize_t nargs, const char* signature) {
  if (nargs != 2) {
    PyErr_Format(PyExc_TypeError, "%s takes 2 arguments (%zd given)", signature, nargs);
    return nullptr;
  }
  return link_of(module);
}

// A timeout in seconds (None: forever) as a deadline.
bool deadline_of(PyObject* timeout, ErlangLink::Clock::time_point* deadline) {
  if (timeout == Py_None) {
    *deadline = ErlangLink::kForever;
    return true;
  }
  double s = PyFloat_AsDouble(timeout);
  if (s == -1.0 && PyErr_Occurred()) return false;
  if (std::isnan(s)) {
    PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds or None");
    return false;
  }
  if (s <= 0) s = 0;
  if (s > 1e9) {  // past any real wait: forever
    *deadline = ErlangLink::kForever;
    return true;
  }
  *deadline = ErlangLink::Clock::now() + std::chrono::duration_cast<ErlangLink::Clock::duration>(
                                             std::chrono::duration<double>(s));
  return true;
}

bool id_of(PyObject* arg, uint64_t* id) {
  *id = PyLong_AsUnsignedLongLong(arg);
  return !(*id == static_cast<uint64_t>(-1) && PyErr_Occurred());
}

PyObject* request(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  ErlangLink* link = link_of(module, nargs, "request(op, args)");
  return link ? link->request(args[0], args[1]).release() : nullptr;
}

PyObject* start_request(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  ErlangLink* link = link_of(module, nargs, "start_request(op, args)");
  uint64_t id;
  if (!link || !link->start_request(args[0], args[1], &id)) return nullptr;
  return PyLong_FromUnsignedLongLong(id);
}

PyObject* take_reply(PyObject* module, PyObject* arg) {
  ErlangLink* link = link_of(module);
  uint64_t id;
  if (!link || !id_of(arg, &id)) return nullptr;
  return link->take_reply(id).release();
}

PyObject* notify(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  ErlangLink* link = link_of(module, nargs, "notify(op, args)");
  if (!link || !link->notify(args[0], args[1])) return nullptr;
  Py_RETURN_NONE;
}

PyObject* open_mailbox(PyObject* module, PyObject*) {
  ErlangLink* link = link_of(module);
  return link ? PyLong_FromUnsignedLongLong(link->open_mailbox()) : nullptr;
}

PyObject* close_mailbox(PyObject* module, PyObject* arg) {
  ErlangLink* link = link_of(module);
  uint64_t id;
  if (!link || !id_of(arg, &id)) return nullptr;
  link->close_mailbox(id);
  Py_RETURN_NONE;
}

PyObject* receive(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  ErlangLink* link = link_of(module, nargs, "receive(mailbox, timeout)");
  uint64_t id;
  ErlangLink::Clock::time_point deadline;
  if (!link || !id_of(args[0], &id) || !deadline_of(args[1], &deadline)) return nullptr;
  return link->receive(id, deadline).release();
}

PyObject* watch(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  ErlangLink* link = link_of(module, nargs, "watch(mailbox, token)");
  uint64_t id, token;
  if (!link || !id_of(args[0], &id) || !id_of(args[1], &token)) return nullptr;
  if (token == 0) {
    PyErr_SetString(PyExc_ValueError, "token 0 is reserved");
    return nullptr;
  }
  if (!link->watch(id, token)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* watch_on_loop(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
  ErlangLink* link = link_of(module, nargs, "watch_on_loop(mailbox, token)");
  uint64_t id, token;
  if (!link || !id_of(args[0], &id) || !id_of(args[1], &token)) return nullptr;
  if (!link->watch_on_loop(id, token)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* next_completion(PyObject* module, PyObject*) {
  ErlangLink* link = link_of(module);
  return link ? PyLong_FromUnsignedLongLong(link->next_completion()) : nullptr;
}

PyObject* consume_time_slice(PyObject* module, PyObject* arg) {
  ErlangLink* link = link_of(module);
  if (!link) return nullptr;
  long percent = PyLong_AsLong(arg);
  if (percent == -1 && PyErr_Occurred()) return nullptr;
  if (percent < 1 || percent > 100) {
    PyErr_SetString(PyExc_ValueError, "percent must be between 1 and 100");
    return nullptr;
  }
  return PyBool_FromLong(link->consume_time_slice(percent));
}

PyObject* connected(PyObject* module, PyObject*) {
  auto* state = static_cast<ModuleState*>(PyModule_GetState(module));
  return PyBool_FromLong(state && state->link && !state->link->closed());
}

PyMethodDef kMethods[] = {
    {"request", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(request)), METH_FASTCALL,
     "request(op, args): ask Erlang and wait for the answer"},
    {"start_request", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(start_request)),
     METH_FASTCALL, "start_request(op, args) -> mailbox id of the coming reply"},
    {"take_reply", take_reply, METH_O, "take_reply(id): the reply in that mailbox (closes it)"},
    {"notify", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(notify)), METH_FASTCALL,
     "notify(op, args): tell Erlang, no answer"},
    {"open_mailbox", open_mailbox, METH_NOARGS, "a new mailbox id"},
    {"close_mailbox", close_mailbox, METH_O, "close_mailbox(id)"},
    {"receive", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(receive)), METH_FASTCALL,
     "receive(id, timeout) -> (True, term) or (False, None)"},
    {"watch", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(watch)), METH_FASTCALL,
     "watch(id, token): post token when the mailbox has a frame"},
    {"watch_on_loop", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(watch_on_loop)),
     METH_FASTCALL,
     "watch_on_loop(id, token): the worker's event loop gets token when the mailbox has a frame"},
    {"next_completion", next_completion, METH_NOARGS,
     "the next posted token (waits); 0 once the link is closed"},
    {"consume_time_slice", consume_time_slice, METH_O,
     "consume_time_slice(percent) -> True when the slice is used and requests wait"},
    {"connected", connected, METH_NOARGS, "whether this process talks to Erlang"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT,
    "_erlang",
    "Primitives of the erlang package inside a pyport worker (see erlang_module.hpp).",
    sizeof(ModuleState),
    kMethods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

PyObject* init_module() {
  PyObject* module = PyModule_Create(&kModule);
  if (module) static_cast<ModuleState*>(PyModule_GetState(module))->link = nullptr;
  return module;
}

}  // namespace

bool register_erlang_module() {
  return PyImport_AppendInittab("_erlang", init_module) == 0;
}

bool bind_erlang_module(ErlangLink* link) {
  PyRef module = PyRef::steal(PyImport_ImportModule("_erlang"));
  if (!module) return false;
  static_cast<ModuleState*>(PyModule_GetState(module.get()))->link = link;
  return true;
}

}  // namespace pyport
