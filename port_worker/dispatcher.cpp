#include "dispatcher.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>

#include "frames.hpp"
#include "payloads.hpp"
#include "utf8.hpp"

namespace pyport {
namespace {

// UTF-8 of a str; unencodable characters (lone surrogates) are escaped
// rather than failing, since this text only goes into messages.
std::string utf8_of(PyObject* str) {
  PyRef bytes = PyRef::steal(PyUnicode_AsEncodedString(str, "utf-8", "backslashreplace"));
  if (!bytes) {
    PyErr_Clear();
    return "<unencodable text>";
  }
  return std::string(PyBytes_AS_STRING(bytes.get()), size_t(PyBytes_GET_SIZE(bytes.get())));
}

const char* kind_name(uint64_t kind) {
  switch (kind) {
    case kCall:
      return "CALL";
    case kCast:
      return "CAST";
    case kEval:
      return "EVAL";
    case kExec:
      return "EXEC";
    case kControl:
      return "CONTROL";
    case kInterrupt:
      return "INTERRUPT";
    case kCancel:
      return "CANCEL";
    case kStreamStart:
      return "STREAM_START";
    case kWith:
      return "WITH";
    case kLent:
      return "LENT";
    case kStreamCredit:
      return "STREAM_CREDIT";
    default:
      return "SHUTDOWN";
  }
}

// A str or bin field that must be text (a module name, source code).
bool read_text(mp::Reader& r, std::string_view& s, const char* what) {
  size_t start = r.offset();
  if (!r.read_string(s, what)) return false;
  if (utf8::classify(reinterpret_cast<const uint8_t*>(s.data()), s.size()) ==
      utf8::Kind::kInvalid) {
    return r.fail_at(start, std::string(what) + " is not valid UTF-8");
  }
  return true;
}

uint32_t expected_fields(uint64_t kind) {
  switch (kind) {
    case kCall:
    case kCast:
      return 6;
    case kEval:
    case kLent:
      return 5;
    case kExec:
    case kControl:
    case kStreamStart:
    case kWith:
      return 4;
    case kStreamCredit:
      return 3;
    default:  // SHUTDOWN, INTERRUPT, CANCEL
      return 2;
  }
}

// The span in which a request's Python code runs and may be interrupted
// (see Interrupts). Ends at done() or at the end of the scope.
class RunScope {
 public:
  RunScope(Interrupts* interrupts, uint64_t id)
      : interrupts_(interrupts), started_(!interrupts || interrupts->begin(id)) {}
  ~RunScope() { done(); }
  RunScope(const RunScope&) = delete;
  RunScope& operator=(const RunScope&) = delete;
  // False: interrupted before it started; it must not run.
  bool started() const { return started_; }
  void done() {
    if (interrupts_ && started_) interrupts_->end();
    started_ = false;
  }

 private:
  Interrupts* interrupts_;
  bool started_;
};

// The Kind of the frame a WITH or LENT wraps, read from its head; false
// when that is no frame head or its Id is not the wrapper's.
bool wrapped_kind(const uint8_t* p, size_t n, uint64_t id, const char* what, uint64_t* kind) {
  mp::Reader head(p, n);
  uint32_t fields;
  uint64_t inner_id = 0;
  return head.read_array_header(fields, what) && head.read_uint(*kind, "Kind") &&
         head.read_uint(inner_id, "Id") && inner_id == id;
}

}  // namespace

bool TaskHooks::load(PyObject* module) {
  struct {
    PyRef* slot;
    const char* name;
  } names[] = {{&is_awaitable, "is_awaitable_result"},
               {&start_task, "start_task"},
               {&start_stream, "start_stream"},
               {&stream_credit, "stream_credit"},
               {&cancel, "cancel"},
               {&tasks, "_tasks"}};
  for (auto& n : names) {
    *n.slot = PyRef::steal(PyObject_GetAttrString(module, n.name));
    if (!*n.slot) return false;
  }
  struct {
    PyRef* slot;
    const char* name;
  } optional[] = {{&loop, "request_loop"}, {&answer, "answer_request"}, {&partial, "partial"}};
  for (auto& n : optional) {
    if (PyObject_HasAttrString(module, n.name)) {
      *n.slot = PyRef::steal(PyObject_GetAttrString(module, n.name));
      if (!*n.slot) return false;
    }
    if (*n.slot && n.slot->get() == Py_None) n.slot->reset();
  }
  if (!loop || !answer || !partial) {
    loop.reset();
    answer.reset();
    partial.reset();
  }
  return true;
}

Dispatcher::Dispatcher(Codec& codec, size_t max_frame_size, Interrupts* interrupts)
    : codec_(codec), max_frame_size_(max_frame_size), interrupts_(interrupts) {
  // Without the erlang package (a bare interpreter) calls just cannot
  // schedule continuations.
  PyRef schedule = PyRef::steal(PyImport_ImportModule("erlang._schedule"));
  if (schedule) {
    marker_type_ = PyRef::steal(PyObject_GetAttrString(schedule.get(), "ScheduleMarker"));
    park_ = PyRef::steal(PyObject_GetAttrString(schedule.get(), "park"));
  }
  if (!marker_type_ || !park_) {
    marker_type_.reset();
    park_.reset();
  }
  PyErr_Clear();
}

void Dispatcher::handle_frame(const uint8_t* payload, size_t size, ByteBuffer& out) {
  if (size == 0) return frame_error(0, "empty frame", out);
  mp::Reader r(payload, size);
  uint32_t fields;
  uint64_t kind, id = 0;
  if (!r.read_array_header(fields, "frame")) return frame_error(0, r.error(), out);
  if (fields < 2) {
    return frame_error(0, "frame has " + std::to_string(fields) + " elements, needs Kind and Id",
                       out);
  }
  if (!r.read_uint(kind, "Kind")) {
    recover_id(payload, size, id);  // answer for the id if it is readable
    return frame_error(id, r.error(), out);
  }
  if (!r.read_uint(id, "Id")) return frame_error(0, r.error(), out);
  dispatch(r, kind, id, fields, out);
}

void Dispatcher::dispatch(mp::Reader& r, uint64_t kind, uint64_t id, uint32_t fields,
                          ByteBuffer& out) {
  switch (kind) {
    case kCall:
    case kCast:
    case kEval:
    case kExec:
    case kControl:
    case kInterrupt:
    case kCancel:
    case kStreamStart:
    case kStreamCredit:
    case kShutdown:
    case kWith:
    case kLent:
      break;
    case kReply:
    case kMessage:
      // Well-formed ones went to their mailbox on the input thread.
      return frame_error(0,
                         std::string(kind == kReply ? "REPLY" : "MESSAGE") + " frame for id " +
                             std::to_string(id) + " has " + std::to_string(fields) +
                             " elements, expected " + (kind == kReply ? "4" : "3") +
                             (id == 0 ? ", and its id must not be 0" : ""),
                         out);
    case kBatch:
      // Well-formed ones were taken apart by the input reader.
      return frame_error(0,
                         "malformed BATCH frame: expected [12, 0, Frames], Frames an array of "
                         "bins each holding one frame that is not a BATCH",
                         out);
    default:
      return frame_error(id, "unknown frame kind " + std::to_string(kind), out);
  }
  // 0 is the id of frames that answer nothing, so no request may use it.
  if (kind == kShutdown && id != 0) return frame_error(id, "SHUTDOWN must have Id 0", out);
  if (kind != kShutdown && id == 0) {
    return frame_error(0, std::string(kind_name(kind)) + " frame needs a non-zero Id", out);
  }
  if (fields != expected_fields(kind)) {
    return frame_error(id,
                       std::string(kind_name(kind)) + " frame has " + std::to_string(fields) +
                           " elements, expected " + std::to_string(expected_fields(kind)),
                       out);
  }
  switch (kind) {
    case kCall:
      return call(r, false, id, out);
    case kCast:
      return call(r, true, id, out);
    case kEval:
      return eval(r, id, out);
    case kExec:
      return exec(r, id, out);
    case kControl:
      return control(r, id, out);
    case kInterrupt:
      // Frames reach the dispatcher one after another, so the request this
      // names is not running Python code now (the input thread interrupted
      // it if it was, or it waits further up this stack and is about to see
      // its KeyboardInterrupt: no Python code may run here first, or it
      // would take it). If it became a task, the task is cancelled.
      if (is_task(id)) cancel(r, id, out);
      return;
    case kCancel:
      return cancel(r, id, out);
    case kStreamStart:
      return stream_start(r, id, out);
    case kStreamCredit:
      return stream_credit(r, id, out);
    case kWith:
      return with_options(r, id, out);
    case kLent:
      return lent(r, id, out);
    default:
      shutdown_ = true;
  }
}

PyRef Dispatcher::run_call(mp::Reader& r, uint64_t id, const char* what, std::string* ferr,
                           std::string_view* module, std::string_view* function,
                           bool* interrupted) {
  if (!read_text(r, *module, "Module") || !read_text(r, *function, "Function")) {
    *ferr = r.error();
    return {};
  }
  size_t args_at = r.offset();
  uint32_t nargs;
  if (!r.read_array_header(nargs, "Args")) {
    *ferr = r.error();
    return {};
  }
  PyRef args = codec_.decode_tuple(r, nargs, args_at);
  if (!args) {
    decode_failure("Args", ferr);
    return {};
  }
  PyRef kwargs = decode_str_map(r, "Kwargs", ferr);
  if (!ferr->empty()) return {};
  if (!kwargs) {
    decode_failure("Kwargs", ferr);
    return {};
  }
  if (!r.at_end()) {
    *ferr = std::string("trailing bytes after the ") + what + " frame";
    return {};
  }
  RunScope running(interrupts_, id);
  if (!running.started()) {
    *interrupted = true;
    return {};
  }
  PyRef fn = lookup_function(*module, *function);
  if (!fn) return {};
  PyObject* kw = PyDict_GET_SIZE(kwargs.get()) ? kwargs.get() : nullptr;
  return PyRef::steal(PyObject_Call(fn.get(), args.get(), kw));
}

PyRef Dispatcher::run_eval(mp::Reader& r, uint64_t id, const char* what, std::string* ferr,
                           bool* interrupted) {
  std::string_view code;
  if (!read_text(r, code, "Code")) {
    *ferr = r.error();
    return {};
  }
  PyRef locals;
  if (!r.read_nil()) {
    locals = decode_str_map(r, "Locals", ferr);
    if (!ferr->empty()) return {};
    if (!locals) {
      decode_failure("Locals", ferr);
      return {};
    }
  }
  uint64_t ns;
  if (!r.read_uint(ns, "Namespace")) {
    *ferr = r.error();
    return {};
  }
  if (!r.at_end()) {
    *ferr = std::string("trailing bytes after the ") + what + " frame";
    return {};
  }
  RunScope running(interrupts_, id);
  if (!running.started()) {
    *interrupted = true;
    return {};
  }
  PyRef globals = namespace_globals(ns);
  // Compiled alone first: syntax errors name the user's text, not a wrapper.
  PyRef compiled_code = globals ? compiled(code, Py_eval_input) : PyRef();
  if (!compiled_code) return {};
  if (!locals || !PyDict_GET_SIZE(locals.get())) {
    return PyRef::steal(PyEval_EvalCode(compiled_code.get(), globals.get(), globals.get()));
  }
  // Locals become keyword-only parameters of a lambda around the
  // expression: nested scopes (comprehensions, lambdas) see them, and the
  // namespace's globals never do. Keys that cannot be parameter names
  // could not be referred to by the expression either.
  std::vector<std::string> names;
  PyRef kwargs = PyRef::steal(PyDict_New());
  if (!kwargs) return {};
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(locals.get(), &pos, &key, &value)) {
    int usable = is_parameter_name(key);
    if (usable < 0) return {};
    if (!usable) continue;
    Py_ssize_t n;
    const char* s = PyUnicode_AsUTF8AndSize(key, &n);
    if (!s || PyDict_SetItem(kwargs.get(), key, value) < 0) return {};
    names.emplace_back(s, size_t(n));
  }
  std::sort(names.begin(), names.end());
  PyRef wrapped = compiled_with_locals(code, names);
  PyRef fn = wrapped ? PyRef::steal(PyEval_EvalCode(wrapped.get(), globals.get(), globals.get()))
                     : PyRef();
  PyRef noargs = fn ? PyRef::steal(PyTuple_New(0)) : PyRef();
  if (!noargs) return {};
  return PyRef::steal(PyObject_Call(fn.get(), noargs.get(), kwargs.get()));
}

void Dispatcher::call(mp::Reader& r, bool is_cast, uint64_t id, ByteBuffer& out) {
  std::string ferr;
  std::string_view module, function;
  bool interrupted = false;
  PyRef result =
      run_call(r, id, is_cast ? "CAST" : "CALL", &ferr, &module, &function, &interrupted);
  if (!ferr.empty()) return frame_error(id, ferr, out);
  if (interrupted) return is_cast ? void() : interrupted_before_start(id, out);
  // A request that keeps its value keeps a marker too.
  bool keeping =
      with_options_ && with_id_ == id && PyDict_GetItemString(with_options_.get(), "keep");
  if (result && marker_type_ && !keeping &&
      PyObject_TypeCheck(result.get(), reinterpret_cast<PyTypeObject*>(marker_type_.get()))) {
    return schedule(result.get(), is_cast, id, out);
  }
  if (is_cast) {
    if (result && hooks_.start_task && is_awaitable(result.get())) {
      PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
      result = rid ? PyRef::steal(PyObject_CallFunctionObjArgs(hooks_.start_task.get(), rid.get(),
                                                               result.get(), Py_False, nullptr))
                   : PyRef();
    }
    if (!result) report_cast_error(module, function);
    return;
  }
  if (!result) return python_error(id, out);
  deliver(id, std::move(result), out);
}

void Dispatcher::schedule(PyObject* marker, bool is_cast, uint64_t id, ByteBuffer& out) {
  PyRef how = PyRef::steal(PyObject_GetAttrString(marker, "how"));
  const char* how_s = how && PyUnicode_Check(how.get()) ? PyUnicode_AsUTF8(how.get()) : nullptr;
  if (!how_s) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "ScheduleMarker.how must be a str");
    return is_cast ? report_cast_error("erlang", "schedule") : python_error(id, out);
  }
  std::string_view kind = how_s;
  size_t start = begin_frame(out);
  if (kind == "erlang") {
    PyRef what = PyRef::steal(PyObject_GetAttrString(marker, "target"));
    mp::write_array_header(out, 4);
    mp::write_uint(out, kSchedule);
    mp::write_uint(out, id);
    mp::write_str(out, "erlang");
    EncodeResult rc = what ? codec_.encode(what.get(), out, max_frame_size_ - (out.size() - start))
                           : EncodeResult::kError;
    if (rc == EncodeResult::kOk) {
      end_frame(out, start);
      return;
    }
    out.truncate(start);
    if (rc == EncodeResult::kTooLarge) {
      PyErr_SetString(PyExc_ValueError,
                      "the arguments of erlang.schedule do not fit in max_frame_size");
    }
    return is_cast ? report_cast_error("erlang", "schedule") : python_error(id, out);
  }
  out.truncate(start);
  if (kind != "py" && kind != "inline") {
    PyErr_Format(PyExc_ValueError, "unknown ScheduleMarker.how '%s'", how_s);
    return is_cast ? report_cast_error("erlang", "schedule") : python_error(id, out);
  }
  PyRef cid = PyRef::steal(PyObject_CallOneArg(park_.get(), marker));
  uint64_t n = cid ? PyLong_AsUnsignedLongLong(cid.get()) : 0;
  if (!cid || PyErr_Occurred()) {
    return is_cast ? report_cast_error("erlang", "schedule") : python_error(id, out);
  }
  // The continuation's CALL (or CAST) payload.
  ByteBuffer call;
  mp::write_array_header(call, 6);
  mp::write_uint(call, is_cast ? kCast : kCall);
  mp::write_uint(call, id);
  mp::write_str(call, "erlang._schedule");
  mp::write_str(call, "resume");
  mp::write_array_header(call, 1);
  mp::write_uint(call, n);
  mp::write_map_header(call, 0);
  if (kind == "inline") return requeued_.add_frame(call.data(), call.size());
  start = begin_frame(out);
  mp::write_array_header(out, 4);
  mp::write_uint(out, kSchedule);
  mp::write_uint(out, id);
  mp::write_str(out, "py");
  mp::write_bin_header(out, uint32_t(call.size()));
  out.append(call.data(), call.size());
  end_frame(out, start);
}

void Dispatcher::eval(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  std::string ferr;
  bool interrupted = false;
  PyRef result = run_eval(r, id, "EVAL", &ferr, &interrupted);
  if (!ferr.empty()) return frame_error(id, ferr, out);
  if (interrupted) return interrupted_before_start(id, out);
  if (!result) return python_error(id, out);
  // erlang.schedule*() markers work from an expression as from a call
  // (unless the request keeps its value in the worker).
  bool keeping =
      with_options_ && with_id_ == id && PyDict_GetItemString(with_options_.get(), "keep");
  if (marker_type_ && !keeping &&
      PyObject_TypeCheck(result.get(), reinterpret_cast<PyTypeObject*>(marker_type_.get()))) {
    return schedule(result.get(), false, id, out);
  }
  deliver(id, std::move(result), out);
}

// A dict lookup of an int key: no Python code runs.
bool Dispatcher::is_task(uint64_t id) {
  if (!hooks_.tasks || !PyDict_Check(hooks_.tasks.get())) return false;
  PyRef key = PyRef::steal(PyLong_FromUnsignedLongLong(id));
  int found = key ? PyDict_Contains(hooks_.tasks.get(), key.get()) : -1;
  if (found < 0) PyErr_Clear();
  return found > 0;
}

bool Dispatcher::is_awaitable(PyObject* value) {
  if (PyCoro_CheckExact(value)) return true;
  // The usual results cannot be awaited: no need to ask Python.
  if (value == Py_None || PyBool_Check(value) || PyLong_CheckExact(value) ||
      PyFloat_CheckExact(value) || PyUnicode_CheckExact(value) || PyBytes_CheckExact(value) ||
      PyList_CheckExact(value) || PyTuple_CheckExact(value) || PyDict_CheckExact(value)) {
    return false;
  }
  PyRef answer = PyRef::steal(PyObject_CallOneArg(hooks_.is_awaitable.get(), value));
  int yes = answer ? PyObject_IsTrue(answer.get()) : -1;
  if (yes < 0) {
    PyErr_Clear();  // an object that breaks the check is sent as it is
    return false;
  }
  return yes;
}

void Dispatcher::with_options(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  if (with_options_) return frame_error(id, "a WITH frame cannot hold another WITH", out);
  std::string ferr;
  PyRef options = decode_str_map(r, "Options", &ferr);
  if (!ferr.empty()) return frame_error(id, ferr, out);
  if (!options) return decode_error(id, "Options", out);
  std::string_view inner;
  if (!r.read_string(inner, "Frame")) return frame_error(id, r.error(), out);
  if (!r.at_end()) return frame_error(id, "trailing bytes after the WITH frame", out);
  auto* p = reinterpret_cast<const uint8_t*>(inner.data());
  uint64_t kind = 0;
  if (!wrapped_kind(p, inner.size(), id, "WITH Frame", &kind) || (kind != kCall && kind != kEval)) {
    return frame_error(id, "the Frame of a WITH must be a CALL or an EVAL with the same Id", out);
  }
  if (!objects_apply_) {
    PyRef mod = PyRef::steal(PyImport_ImportModule("erlang._objects"));
    objects_apply_ = mod ? PyRef::steal(PyObject_GetAttrString(mod.get(), "apply")) : PyRef();
    if (!objects_apply_) return python_error(id, out);
  }
  with_options_ = std::move(options);
  with_id_ = id;
  handle_frame(p, inner.size(), out);
  with_options_.reset();
}

// LENT: [14, Id, Token, Base, Frame]. The request in Frame (same Id) has
// its big binaries in the payload file's region at Base (payloads.hpp).
void Dispatcher::lent(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  uint64_t token = 0, base = 0;
  std::string_view inner;
  if (!r.read_uint(token, "Token") || !r.read_uint(base, "Base") ||
      !r.read_string(inner, "Frame")) {
    return frame_error(id, r.error(), out);
  }
  if (!r.at_end()) return frame_error(id, "trailing bytes after the LENT frame", out);
  auto* p = reinterpret_cast<const uint8_t*>(inner.data());
  uint64_t kind = 0;
  if (!wrapped_kind(p, inner.size(), id, "LENT Frame", &kind) ||
      (kind != kCall && kind != kCast && kind != kEval && kind != kWith)) {
    return frame_error(
        id, "the Frame of a LENT must be a CALL, CAST, EVAL or WITH with the same Id", out);
  }
  std::string why;
  Payloads& payloads = Payloads::instance();
  if (!payloads.lend(token, base, &why)) return frame_error_typed(id, "PayloadError", why, out);
  // The region is this request's only: ended however handle_frame leaves.
  struct EndLend {
    Payloads& payloads;
    ~EndLend() { payloads.end_lend(); }
  } end_lend{payloads};
  handle_frame(p, inner.size(), out);
}

// CONTROL payloads: [Path, Token, SlotSize, InSlots, OutSlots, Threshold].
PyRef Dispatcher::open_payloads(PyObject* arg) {
  unsigned long long token = 0, slot = 0, in = 0, outs = 0, threshold = 0;
  const char* path = nullptr;
  if (!PyList_Check(arg) || PyList_GET_SIZE(arg) != 6) {
    PyErr_SetString(PyExc_ValueError,
                    "payloads needs [Path, Token, SlotSize, InSlots, OutSlots, Threshold]");
    return {};
  }
  PyRef t = PyRef::steal(PyList_AsTuple(arg));
  if (!t || !PyArg_ParseTuple(t.get(), "sKKKKK", &path, &token, &slot, &in, &outs, &threshold)) {
    return {};
  }
  std::string why;
  if (in > 1024 || outs > 1024 ||
      !Payloads::instance().open(path, token, slot, uint32_t(in), uint32_t(outs), threshold,
                                 &why)) {
    PyErr_SetString(PyExc_OSError, why.empty() ? "bad payload layout" : why.c_str());
    return {};
  }
  return PyRef::borrow(Py_True);
}

void Dispatcher::deliver(uint64_t id, PyRef value, ByteBuffer& out) {
  if (with_options_ && with_id_ == id) {
    PyRef options = std::move(with_options_);
    with_options_.reset();
    value = PyRef::steal(
        PyObject_CallFunctionObjArgs(objects_apply_.get(), value.get(), options.get(), nullptr));
    if (!value) return python_error(id, out);
  }
  if (hooks_.loop && PyCoro_CheckExact(value.get())) return start_coroutine(id, value.get(), out);
  if (hooks_.start_task && is_awaitable(value.get())) {
    PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
    PyRef done = rid ? PyRef::steal(PyObject_CallFunctionObjArgs(hooks_.start_task.get(), rid.get(),
                                                                 value.get(), Py_True, nullptr))
                     : PyRef();
    if (!done) python_error(id, out);
    return;  // the task answers when it ends
  }
  write_result(id, value.get(), out);
}

// What erlang._worker_async.start_task does for a coroutine that answers:
// loop.create_task(coro), kept in the tasks dict (for CANCEL and
// INTERRUPT), answered by answer_future when done.
void Dispatcher::start_coroutine(uint64_t id, PyObject* coro, ByteBuffer& out) {
  if (!create_task_name_) {
    create_task_name_ = PyRef::steal(PyUnicode_InternFromString("create_task"));
    add_done_callback_name_ = PyRef::steal(PyUnicode_InternFromString("add_done_callback"));
    cancel_name_ = PyRef::steal(PyUnicode_InternFromString("cancel"));
    if (!create_task_name_ || !add_done_callback_name_ || !cancel_name_) {
      create_task_name_.reset();
      return python_error(id, out);
    }
  }
  PyRef task =
      PyRef::steal(PyObject_CallMethodOneArg(hooks_.loop.get(), create_task_name_.get(), coro));
  if (!task) return python_error(id, out);
  PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
  PyRef done = rid ? PyRef::steal(PyObject_CallFunctionObjArgs(
                         hooks_.partial.get(), hooks_.answer.get(), rid.get(), nullptr))
                   : PyRef();
  if (done && PyDict_SetItem(hooks_.tasks.get(), rid.get(), task.get()) == 0) {
    PyRef added = PyRef::steal(
        PyObject_CallMethodOneArg(task.get(), add_done_callback_name_.get(), done.get()));
    if (added) return;  // the task answers when it ends
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyDict_DelItem(hooks_.tasks.get(), rid.get()) < 0) PyErr_Clear();
    PyErr_Restore(type, value, tb);
  }
  // Nothing would answer the task: it is cancelled, the request answered
  // with the error.
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyRef cancelled = PyRef::steal(PyObject_CallMethodNoArgs(task.get(), cancel_name_.get()));
  if (!cancelled) PyErr_Clear();
  PyErr_Restore(type, value, tb);
  python_error(id, out);
}

void Dispatcher::cancel(mp::Reader&, uint64_t id, ByteBuffer& out) {
  if (!hooks_.cancel) return frame_error(id, "CANCEL needs the worker's event loop", out);
  PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
  PyRef done = rid ? PyRef::steal(PyObject_CallOneArg(hooks_.cancel.get(), rid.get())) : PyRef();
  // CANCEL is answered by the request it cancels, never by itself.
  if (!done) PyErr_WriteUnraisable(hooks_.cancel.get());
}

void Dispatcher::stream_start(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  if (!hooks_.start_stream)
    return frame_error(id, "STREAM_START needs the worker's event loop", out);
  uint64_t credit, sub;
  uint32_t n;
  if (!r.read_uint(credit, "Credit") || !r.read_array_header(n, "Request")) {
    return frame_error(id, r.error(), out);
  }
  if (n < 1 || !r.read_uint(sub, "Request kind")) {
    return frame_error(id, n < 1 ? std::string("STREAM_START Request is empty") : r.error(), out);
  }
  std::string ferr;
  std::string_view module, function;
  bool interrupted = false;
  PyRef source;
  if (sub == kCall && n == 5) {
    source = run_call(r, id, "STREAM_START", &ferr, &module, &function, &interrupted);
  } else if (sub == kEval && n == 4) {
    source = run_eval(r, id, "STREAM_START", &ferr, &interrupted);
  } else {
    return frame_error(id,
                       "STREAM_START Request must be [1, Module, Function, Args, Kwargs] or "
                       "[3, Code, Locals, Namespace]",
                       out);
  }
  if (!ferr.empty()) return frame_error(id, ferr, out);
  if (interrupted) return interrupted_before_start(id, out);
  if (!source) return python_error(id, out);
  PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
  PyRef rcredit = PyRef::steal(PyLong_FromUnsignedLongLong(credit));
  PyRef done =
      rid && rcredit
          ? PyRef::steal(PyObject_CallFunctionObjArgs(hooks_.start_stream.get(), rid.get(),
                                                      source.get(), rcredit.get(), nullptr))
          : PyRef();
  if (!done) python_error(id, out);
}

void Dispatcher::stream_credit(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  if (!hooks_.stream_credit) {
    return frame_error(id, "STREAM_CREDIT needs the worker's event loop", out);
  }
  uint64_t n;
  if (!r.read_uint(n, "Credit")) return frame_error(id, r.error(), out);
  PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
  PyRef rn = PyRef::steal(PyLong_FromUnsignedLongLong(n));
  PyRef done = rid && rn ? PyRef::steal(PyObject_CallFunctionObjArgs(hooks_.stream_credit.get(),
                                                                     rid.get(), rn.get(), nullptr))
                         : PyRef();
  if (!done) PyErr_WriteUnraisable(hooks_.stream_credit.get());
}

bool Dispatcher::answer_future(uint64_t id, PyObject* future, ByteBuffer& out) {
  if (hooks_.loop) {
    // A task start_coroutine made leaves the tasks dict as it is answered
    // (callers from Python removed theirs already).
    PyRef rid = PyRef::steal(PyLong_FromUnsignedLongLong(id));
    if (!rid) return false;
    PyObject* task = PyDict_GetItemWithError(hooks_.tasks.get(), rid.get());  // borrowed
    if (!task && PyErr_Occurred()) return false;
    if (task == future && PyDict_DelItem(hooks_.tasks.get(), rid.get()) < 0) return false;
  }
  if (!cancelled_name_) {
    cancelled_name_ = PyRef::steal(PyUnicode_InternFromString("cancelled"));
    exception_name_ = PyRef::steal(PyUnicode_InternFromString("exception"));
    result_name_ = PyRef::steal(PyUnicode_InternFromString("result"));
    if (!cancelled_name_ || !exception_name_ || !result_name_) {
      cancelled_name_.reset();
      return false;
    }
  }
  PyRef cancelled = PyRef::steal(PyObject_CallMethodNoArgs(future, cancelled_name_.get()));
  int is_cancelled = cancelled ? PyObject_IsTrue(cancelled.get()) : -1;
  if (is_cancelled < 0) return false;
  if (is_cancelled) {
    write_error_frame(out, id, "CancelledError", "the request was cancelled", "", max_frame_size_);
    return true;
  }
  PyRef exc = PyRef::steal(PyObject_CallMethodNoArgs(future, exception_name_.get()));
  if (!exc) return false;
  if (exc.get() != Py_None) {
    ExceptionText t = describe(exc.get());
    write_error_frame(out, id, t.type, t.message, t.traceback, max_frame_size_);
    return true;
  }
  PyRef result = PyRef::steal(PyObject_CallMethodNoArgs(future, result_name_.get()));
  if (!result) return false;
  write_result(id, result.get(), out);
  return true;
}

bool Dispatcher::stream_chunk(uint64_t id, PyObject* value, ByteBuffer& out) {
  switch (write_value_frame(kStreamChunk, id, value, out)) {
    case EncodeResult::kOk:
      return true;
    case EncodeResult::kTooLarge:
      PyErr_Format(PyExc_ValueError, "a stream item does not fit in max_frame_size (%zu bytes)",
                   max_frame_size_);
      return false;
    case EncodeResult::kError:
      break;
  }
  return false;
}

void Dispatcher::stream_end(uint64_t id, ByteBuffer& out) {
  size_t start = begin_frame(out);
  mp::write_array_header(out, 2);
  mp::write_uint(out, kStreamEnd);
  mp::write_uint(out, id);
  end_frame(out, start);
}

int Dispatcher::is_parameter_name(PyObject* name) {
  int ident = PyUnicode_IsIdentifier(name);
  if (ident <= 0) return ident;
  if (!keywords_) {
    PyRef kw = PyRef::steal(PyImport_ImportModule("keyword"));
    PyRef list = kw ? PyRef::steal(PyObject_GetAttrString(kw.get(), "kwlist")) : PyRef();
    keywords_ = list ? PyRef::steal(PyFrozenSet_New(list.get())) : PyRef();
    if (!keywords_) return -1;
  }
  int kw = PySet_Contains(keywords_.get(), name);
  return kw < 0 ? -1 : !kw;
}

void Dispatcher::exec(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  std::string_view code;
  uint64_t ns;
  if (!read_text(r, code, "Code") || !r.read_uint(ns, "Namespace")) {
    return frame_error(id, r.error(), out);
  }
  if (!r.at_end()) return frame_error(id, "trailing bytes after the EXEC frame", out);

  RunScope running(interrupts_, id);
  if (!running.started()) return interrupted_before_start(id, out);
  PyRef globals = namespace_globals(ns);
  PyRef compiled_code = globals ? compiled(code, Py_file_input) : PyRef();
  if (!compiled_code) return python_error(id, out);
  PyRef result = PyRef::steal(PyEval_EvalCode(compiled_code.get(), globals.get(), globals.get()));
  running.done();
  if (!result) return python_error(id, out);
  write_result(id, Py_None, out);
}

// CONTROL: [11, Id, Op, Arg]. Operations on the worker itself rather than
// on user code; see PROTOCOL.md for each Op.
void Dispatcher::control(mp::Reader& r, uint64_t id, ByteBuffer& out) {
  std::string_view op;
  if (!read_text(r, op, "Op")) return frame_error(id, r.error(), out);
  PyRef arg = codec_.decode(r);
  if (!arg) return decode_error(id, "Arg", out);
  if (!r.at_end()) return frame_error(id, "trailing bytes after the CONTROL frame", out);

  PyRef result;
  if (op == "drop_namespace") {
    if (!PyLong_Check(arg.get()) || Py_SIZE(arg.get()) < 0) {
      return frame_error(id, "drop_namespace needs a namespace number", out);
    }
    uint64_t ns = PyLong_AsUnsignedLongLong(arg.get());
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return frame_error(id, "drop_namespace needs a namespace number below 2^64", out);
    }
    // Dropping the globals frees what only they refer to.
    result = PyRef::borrow(drop_namespace(ns) ? Py_True : Py_False);
  } else if (op == "gc" || op == "memory_stats" || op == "reload") {
    if (op == "reload" && !PyUnicode_Check(arg.get())) {
      return frame_error(id, "reload needs a module name", out);
    }
    const char* fn_name = op == "gc" ? "collect" : op == "memory_stats" ? "memory_stats" : "reload";
    PyRef fn = runtime_function(fn_name);
    if (fn) result = PyRef::steal(PyObject_CallOneArg(fn.get(), arg.get()));
    if (result && op == "memory_stats") {
      PyRef count = PyRef::steal(PyLong_FromSize_t(namespaces_.size()));
      if (!count || PyDict_SetItemString(result.get(), "namespaces", count.get()) < 0) {
        result.reset();
      }
    }
  } else if (op == "payloads") {
    result = open_payloads(arg.get());
  } else {
    return frame_error(id, "unknown CONTROL operation '" + std::string(op) + "'", out);
  }
  if (!result) return python_error(id, out);
  write_result(id, result.get(), out);
}

PyRef Dispatcher::decode_str_map(mp::Reader& r, const char* what, std::string* error) {
  size_t start = r.offset();
  uint32_t n;
  if (!r.read_map_header(n, what)) {
    *error = r.error();
    return {};
  }
  if (n > r.remaining() / 2) {
    *error = std::string("truncated input: ") + what + " of " + std::to_string(n) +
             " entries has only " + std::to_string(r.remaining()) + " bytes left at byte " +
             std::to_string(start);
    return {};
  }
  PyRef dict = PyRef::steal(PyDict_New());
  if (!dict) return {};
  for (uint32_t i = 0; i < n; ++i) {
    size_t key_at = r.offset();
    PyRef key = codec_.decode(r, 1);  // the map is one level, as for any value
    if (!key) return {};
    if (!PyUnicode_Check(key.get())) {
      *error = std::string(what) + " key at byte " + std::to_string(key_at) + " is not a string";
      return {};
    }
    // Names must be exact str: an erlang.Atom key becomes its plain name.
    if (!PyUnicode_CheckExact(key.get())) {
      key = PyRef::steal(PyUnicode_FromObject(key.get()));
      if (!key) return {};
    }
    PyRef value = codec_.decode(r, 1);
    if (!value || PyDict_SetItem(dict.get(), key.get(), value.get()) < 0) return {};
  }
  return dict;
}

// The first request for a module imports it. A KeyboardInterrupt (the
// INTERRUPT of a request whose caller gave up) landing inside that import
// would leave the module, or packages it imports such as asyncio,
// half-initialised in sys.modules for every later request. So SIGINT is
// held back while the worker imports: an interrupt that came before is
// raised here, one that comes meanwhile right after the import. A module
// whose import never ends is ended by the owner's kill_after.
PyRef Dispatcher::import_uninterrupted(PyObject* module) {
  sigset_t sigint, held;
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigint, &held);
  PyRef obj;
  if (PyErr_CheckSignals() == 0) obj = PyRef::steal(PyImport_Import(module));
  pthread_sigmask(SIG_SETMASK, &held, nullptr);
  return obj;
}

// A CALL names its function by strings. Making str objects from them costs
// more than many calls do, so the names are cached; the objects they name
// are not: the module comes from sys.modules and the attributes are read
// on every call, which is a few dict lookups, so a function replaced by
// importlib.reload or by monkeypatching is the one that runs.
PyRef Dispatcher::lookup_function(std::string_view module, std::string_view function) {
  std::string key;
  key.reserve(module.size() + function.size() + 1);
  key.append(module).push_back('\0');
  key.append(function);
  auto it = names_.find(key);
  if (it == names_.end()) {
    if (module.find('\0') != std::string_view::npos) {
      PyErr_SetString(PyExc_ModuleNotFoundError, "module name contains a NUL byte");
      return {};
    }
    FunctionNames names;
    names.module =
        PyRef::steal(PyUnicode_FromStringAndSize(module.data(), Py_ssize_t(module.size())));
    if (!names.module) return {};
    size_t pos = 0;
    for (;;) {
      size_t dot = function.find('.', pos);
      std::string_view part = function.substr(pos, dot == std::string_view::npos ? dot : dot - pos);
      PyObject* name = PyUnicode_FromStringAndSize(part.data(), Py_ssize_t(part.size()));
      if (!name) return {};
      PyUnicode_InternInPlace(&name);  // attribute lookups compare by identity first
      names.path.push_back(PyRef::steal(name));
      if (dot == std::string_view::npos) break;
      pos = dot + 1;
    }
    if (names_.size() >= kMaxCachedNames) names_.clear();
    it = names_.emplace(std::move(key), std::move(names)).first;
  }
  const FunctionNames& names = it->second;
  PyRef obj = PyRef::steal(PyImport_GetModule(names.module.get()));
  if (!obj) {
    if (PyErr_Occurred()) return {};
    obj = import_uninterrupted(names.module.get());
  }
  for (const PyRef& attr : names.path) {
    if (!obj) break;
    obj = PyRef::steal(PyObject_GetAttr(obj.get(), attr.get()));
  }
  return obj;
}

// Compiling costs far more than running a typical expression, and
// owners send the same code strings again and again.
PyRef Dispatcher::compiled(std::string_view code, int mode) {
  std::string key;
  key.reserve(code.size() + 1);
  key.push_back(mode == Py_eval_input ? 'e' : 'x');
  key.append(code);
  auto it = code_.find(key);
  if (it != code_.end()) {
    lru_.splice(lru_.end(), lru_, it->second.lru);  // now most recently used
    return it->second.code;
  }
  if (code.find('\0') != std::string_view::npos) {
    PyErr_SetString(PyExc_SyntaxError, "source code contains a NUL byte");
    return {};
  }
  PyRef obj = PyRef::steal(
      Py_CompileString(key.c_str() + 1, mode == Py_eval_input ? "<eval>" : "<exec>", mode));
  if (!obj) return {};
  return cache_code(std::move(key), std::move(obj));
}

// The source must already have compiled alone (see eval()).
PyRef Dispatcher::compiled_with_locals(std::string_view code,
                                       const std::vector<std::string>& names) {
  std::string key = "l";
  for (const std::string& n : names)
    key.append(n).push_back(',');
  key.push_back('\0');
  key.append(code);
  auto it = code_.find(key);
  if (it != code_.end()) {
    lru_.splice(lru_.end(), lru_, it->second.lru);
    return it->second.code;
  }
  PyRef fn = runtime_function("compile_with_locals");
  PyRef source =
      fn ? PyRef::steal(PyUnicode_FromStringAndSize(code.data(), Py_ssize_t(code.size())))
         : PyRef();
  PyRef list = source ? PyRef::steal(PyList_New(Py_ssize_t(names.size()))) : PyRef();
  if (!list) return {};
  for (size_t i = 0; i < names.size(); ++i) {
    PyObject* n = PyUnicode_FromStringAndSize(names[i].data(), Py_ssize_t(names[i].size()));
    if (!n) return {};
    PyList_SET_ITEM(list.get(), Py_ssize_t(i), n);  // steals n
  }
  PyRef obj =
      PyRef::steal(PyObject_CallFunctionObjArgs(fn.get(), source.get(), list.get(), nullptr));
  if (!obj) return {};
  return cache_code(std::move(key), std::move(obj));
}

PyRef Dispatcher::cache_code(std::string key, PyRef code) {
  if (code_.size() >= kMaxCachedCode) {
    code_.erase(*lru_.front());
    lru_.pop_front();
  }
  auto [entry, inserted] = code_.emplace(std::move(key), CodeEntry{code, {}});
  entry->second.lru = lru_.insert(lru_.end(), &entry->first);
  return code;
}

PyRef Dispatcher::runtime_function(const char* name) {
  if (!runtime_) {
    runtime_ = PyRef::steal(PyImport_ImportModule("pyport_runtime.worker"));
    if (!runtime_) return {};
  }
  return PyRef::steal(PyObject_GetAttrString(runtime_.get(), name));
}

PyRef Dispatcher::namespace_globals(uint64_t ns) {
  auto it = namespaces_.find(ns);
  if (it != namespaces_.end()) return it->second;
  // A namespace is a module of erlang._namespaces (registered in
  // sys.modules, `erlang` bound); a bare interpreter gets a plain dict.
  PyRef globals;
  PyRef make = namespaces_module("create");
  if (make) {
    PyRef n = PyRef::steal(PyLong_FromUnsignedLongLong(ns));
    globals = n ? PyRef::steal(PyObject_CallOneArg(make.get(), n.get())) : PyRef();
    if (!globals) return {};
    if (!PyDict_Check(globals.get())) {
      PyErr_SetString(PyExc_TypeError, "erlang._namespaces.create must return a dict");
      return {};
    }
  } else {
    PyErr_Clear();
    globals = PyRef::steal(PyDict_New());
    PyRef name = PyRef::steal(PyUnicode_FromString("__pyport__"));
    if (!globals || !name ||
        PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins()) < 0 ||
        PyDict_SetItemString(globals.get(), "__name__", name.get()) < 0) {
      return {};
    }
  }
  namespaces_.emplace(ns, globals);
  return globals;
}

bool Dispatcher::drop_namespace(uint64_t ns) {
  if (!namespaces_.erase(ns)) return false;
  PyRef drop = namespaces_module("drop");
  PyRef n = drop ? PyRef::steal(PyLong_FromUnsignedLongLong(ns)) : PyRef();
  PyRef done = n ? PyRef::steal(PyObject_CallOneArg(drop.get(), n.get())) : PyRef();
  if (!done) PyErr_Clear();  // a bare interpreter: the dict alone held it
  return true;
}

PyRef Dispatcher::namespaces_module(const char* name) {
  if (!namespaces_mod_) {
    namespaces_mod_ = PyRef::steal(PyImport_ImportModule("erlang._namespaces"));
    if (!namespaces_mod_) return {};
  }
  return PyRef::steal(PyObject_GetAttrString(namespaces_mod_.get(), name));
}

EncodeResult Dispatcher::write_value_frame(uint8_t kind, uint64_t id, PyObject* value,
                                           ByteBuffer& out) {
  size_t start = begin_frame(out);
  mp::write_array_header(out, 3);
  mp::write_uint(out, kind);
  mp::write_uint(out, id);
  size_t head = out.size() - start - 4;
  EncodeResult rc = codec_.encode(value, out, max_frame_size_ - head);
  if (rc == EncodeResult::kOk) {
    end_frame(out, start);
  } else {
    out.truncate(start);
  }
  return rc;
}

void Dispatcher::write_result(uint64_t id, PyObject* value, ByteBuffer& out) {
  // Big binaries of a RESULT may go off the pipe (payloads.hpp).
  PayloadAnswer answer;
  switch (write_value_frame(kResult, id, value, out)) {
    case EncodeResult::kOk:
      answer.sent();
      return;
    case EncodeResult::kTooLarge:
      return frame_error_typed(id, "FrameTooLarge",
                               "the result does not fit in max_frame_size (" +
                                   std::to_string(max_frame_size_) + " bytes)",
                               out);
    case EncodeResult::kError:
      return python_error(id, out);
  }
}

void Dispatcher::frame_too_large(uint64_t id, size_t size, ByteBuffer& out) {
  frame_error_typed(id, "FrameTooLarge",
                    "frame of " + std::to_string(size) + " bytes exceeds max_frame_size (" +
                        std::to_string(max_frame_size_) + " bytes)",
                    out);
}

void Dispatcher::interrupted_before_start(uint64_t id, ByteBuffer& out) {
  write_error_frame(out, id, "KeyboardInterrupt",
                    "request " + std::to_string(id) + " was interrupted before it started", "",
                    max_frame_size_);
}

void Dispatcher::frame_error(uint64_t id, const std::string& message, ByteBuffer& out) {
  frame_error_typed(id, "FrameError", message, out);
}

void Dispatcher::frame_error_typed(uint64_t id, std::string_view type, const std::string& message,
                                   ByteBuffer& out) {
  write_error_frame(out, id, type, message, "", max_frame_size_);
}

void Dispatcher::decode_failure(const char* field, std::string* ferr) {
  if (!PyErr_ExceptionMatches(PyExc_ValueError)) return;
  PyError e = PyError::fetch();
  PyRef text = PyRef::steal(PyObject_Str(e.value.get()));
  *ferr = std::string("in ") + field + ": " +
          (text ? utf8_of(text.get()) : std::string("undecodable value"));
  PyErr_Clear();
}

void Dispatcher::decode_error(uint64_t id, const char* field, ByteBuffer& out) {
  std::string ferr;
  decode_failure(field, &ferr);
  if (!ferr.empty()) return frame_error(id, ferr, out);
  python_error(id, out);
}

void Dispatcher::python_error(uint64_t id, ByteBuffer& out) {
  PyError e = PyError::fetch();
  ExceptionText t = describe(e.value.get());
  write_error_frame(out, id, t.type, t.message, t.traceback, max_frame_size_);
}

void Dispatcher::report_cast_error(std::string_view module, std::string_view function) {
  PyError e = PyError::fetch();
  ExceptionText t = describe(e.value.get());
  std::string text = "pyport: cast to " + std::string(module) + "." + std::string(function) +
                     " failed:\n" +
                     (t.traceback.empty() ? t.type + ": " + t.message + "\n" : t.traceback);
  PyObject* err = PySys_GetObject("stderr");  // borrowed
  PyRef str = PyRef::steal(PyUnicode_DecodeUTF8(text.data(), Py_ssize_t(text.size()), "replace"));
  if (err && err != Py_None && str && PyFile_WriteObject(str.get(), err, Py_PRINT_RAW) == 0) {
    return;
  }
  PyErr_Clear();  // no usable sys.stderr: nothing else can be done
}

Dispatcher::ExceptionText Dispatcher::describe(PyObject* exc) {
  ExceptionText t;
  PyRef name = PyRef::steal(PyType_GetName(Py_TYPE(exc)));
  t.type = name ? utf8_of(name.get()) : Py_TYPE(exc)->tp_name;
  PyRef str = PyRef::steal(PyObject_Str(exc));
  t.message = str ? utf8_of(str.get()) : "<str() of the exception failed>";
  if (!format_exception_) {
    PyRef tb = PyRef::steal(PyImport_ImportModule("traceback"));
    if (tb) format_exception_ = PyRef::steal(PyObject_GetAttrString(tb.get(), "format_exception"));
  }
  PyRef lines =
      format_exception_ ? PyRef::steal(PyObject_CallOneArg(format_exception_.get(), exc)) : PyRef();
  PyRef empty = PyRef::steal(PyUnicode_FromStringAndSize("", 0));
  PyRef joined = lines && empty ? PyRef::steal(PyUnicode_Join(empty.get(), lines.get())) : PyRef();
  if (joined) t.traceback = utf8_of(joined.get());
  PyErr_Clear();  // a failure to format only costs the traceback
  return t;
}

}  // namespace pyport
