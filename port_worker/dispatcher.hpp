// Runs the requests of PROTOCOL.md (CALL, CAST, EVAL, EXEC, CONTROL,
// SHUTDOWN, INTERRUPT, CANCEL, STREAM_START, STREAM_CREDIT) in the embedded
// interpreter and writes their answers. Fed one frame payload at a time and
// writing answer frames into a buffer, it needs no I/O, so it is tested
// in-process. Every method needs the GIL.
//
// A request whose value is a coroutine (or an asyncio future) is not
// answered at once: it is handed to the worker's event loop as a task
// (TaskHooks), which answers it through answer_future() when it is done.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "byte_buffer.hpp"
#include "codec.hpp"
#include "input_reader.hpp"
#include "interrupts.hpp"
#include "msgpack_rw.hpp"
#include "py_ref.hpp"

namespace pyport {

// The Python functions (erlang._worker) that run requests on the worker's
// event loop. Without them coroutines cannot be answered (TypeError) and
// CANCEL, STREAM_START and STREAM_CREDIT are refused.
struct TaskHooks {
  PyRef is_awaitable;   // is_awaitable_result(value) -> bool
  PyRef start_task;     // start_task(id, awaitable, answer: bool)
  PyRef start_stream;   // start_stream(id, source, credit)
  PyRef stream_credit;  // stream_credit(id, n)
  PyRef cancel;         // cancel(id)
  PyRef tasks;          // the dict of running tasks and streams, by request id
  // Optional (erlang._worker_async once the loop runs): the loop, whose
  // create_task runs a coroutine request, _pyport_loop.answer and
  // functools.partial, which make its done callback: then no Python code
  // of pyport's runs to start or answer such a request.
  PyRef loop;
  PyRef answer;
  PyRef partial;

  // Looks them up in `module`; false with a Python exception set.
  bool load(PyObject* module);
};

class Dispatcher {
 public:
  // Requests mark their running span in `interrupts` (if given), so that
  // INTERRUPT can reach them.
  Dispatcher(Codec& codec, size_t max_frame_size, Interrupts* interrupts = nullptr);

  void set_task_hooks(TaskHooks hooks) { hooks_ = std::move(hooks); }

  // Handles the payload of one frame; appends its answer (if it has one) to
  // out as complete frames: every request gets exactly one answer, CAST and
  // SHUTDOWN none. Throws std::bad_alloc only if out cannot grow to hold an
  // answer (Python's own allocation failures become MemoryError answers).
  void handle_frame(const uint8_t* payload, size_t size, ByteBuffer& out);
  // Answers a frame announced as `size` bytes, over the maximum.
  void frame_too_large(uint64_t id, size_t size, ByteBuffer& out);

  // Answers request id with the outcome of a done future: RESULT with its
  // result, or ERROR with its exception (CancelledError if it was
  // cancelled). False with a Python exception set if the future could not
  // be read.
  bool answer_future(uint64_t id, PyObject* future, ByteBuffer& out);
  // STREAM_CHUNK [24, Id, Value]: false with TypeError (unconvertible) or
  // ValueError (larger than max_frame_size) set, nothing written.
  bool stream_chunk(uint64_t id, PyObject* value, ByteBuffer& out);
  // STREAM_END [25, Id].
  void stream_end(uint64_t id, ByteBuffer& out);

  // True once a SHUTDOWN frame was handled.
  bool shutdown_requested() const { return shutdown_; }

  // Continuations of calls that returned erlang.schedule_inline(...): CALL
  // (or CAST) payloads to handle after the requests waiting now. The owner
  // of the dispatcher moves them to the back of its input.
  InputBatch& requeued() { return requeued_; }

  // How many namespaces (EVAL/EXEC globals) exist, the shared one included
  // once used.
  size_t namespace_count() const { return namespaces_.size(); }
  // The globals of namespace 0, where EXEC with Ns 0 runs (a warm pool's
  // zygote runs the pool's init_code there: zygote.hpp).
  PyRef shared_namespace() { return namespace_globals(0); }

  // Bounds of the caches (see the .cpp for why each exists).
  static constexpr size_t kMaxCachedCode = 512;
  static constexpr size_t kMaxCachedNames = 4096;

 private:
  void dispatch(mp::Reader& r, uint64_t kind, uint64_t id, uint32_t fields, ByteBuffer& out);
  void call(mp::Reader& r, bool is_cast, uint64_t id, ByteBuffer& out);
  void eval(mp::Reader& r, uint64_t id, ByteBuffer& out);
  void exec(mp::Reader& r, uint64_t id, ByteBuffer& out);
  void control(mp::Reader& r, uint64_t id, ByteBuffer& out);
  void cancel(mp::Reader& r, uint64_t id, ByteBuffer& out);
  void stream_start(mp::Reader& r, uint64_t id, ByteBuffer& out);
  void stream_credit(mp::Reader& r, uint64_t id, ByteBuffer& out);
  // WITH: the inner CALL or EVAL, its value passed through
  // erlang._objects.apply(value, Options) (keep it, convert it).
  void with_options(mp::Reader& r, uint64_t id, ByteBuffer& out);
  // LENT: the inner request decoded with its region of the payload file.
  void lent(mp::Reader& r, uint64_t id, ByteBuffer& out);
  // CONTROL payloads: opens the payload file; True, or null with OSError.
  PyRef open_payloads(PyObject* arg);

  // What a CALL (from Module on) or an EVAL (from Code on) produces: its
  // value, or null with either *ferr set (the frame is malformed),
  // *interrupted set (interrupted before it started: it did not run) or a
  // Python exception set. `what` names the frame in messages.
  PyRef run_call(mp::Reader& r, uint64_t id, const char* what, std::string* ferr,
                 std::string_view* module, std::string_view* function, bool* interrupted);
  PyRef run_eval(mp::Reader& r, uint64_t id, const char* what, std::string* ferr,
                 bool* interrupted);
  // Answers id with value, or starts it as a task if it is awaitable.
  void deliver(uint64_t id, PyRef value, ByteBuffer& out);
  // deliver() of a coroutine once the loop runs: the task start_task
  // would make, made here.
  void start_coroutine(uint64_t id, PyObject* coro, ByteBuffer& out);
  bool is_awaitable(PyObject* value);
  // Whether request id runs as a task or stream now.
  bool is_task(uint64_t id);

  // A map of str keys (Kwargs, Locals) as a dict with exact str keys, or
  // null with *error set (FrameError text) or a Python exception set.
  PyRef decode_str_map(mp::Reader& r, const char* what, std::string* error);
  PyRef lookup_function(std::string_view module, std::string_view function);
  PyRef import_uninterrupted(PyObject* module);
  // Code compiled from source: Py_eval_input, Py_file_input, or an
  // expression wrapped to take `names` as keyword-only arguments.
  PyRef compiled(std::string_view code, int mode);
  PyRef compiled_with_locals(std::string_view code, const std::vector<std::string>& names);
  PyRef cache_code(std::string key, PyRef code);
  PyRef namespace_globals(uint64_t ns);
  // Forgets namespace ns here and in erlang._namespaces; false if unknown.
  bool drop_namespace(uint64_t ns);
  // A function of python_runtime/erlang/_namespaces.py (null if absent).
  PyRef namespaces_module(const char* name);
  // 1 if name can be a parameter name (an identifier, not a keyword), 0 if
  // not, -1 with an exception set.
  int is_parameter_name(PyObject* name);
  // A function of python_runtime/pyport_runtime/worker.py.
  PyRef runtime_function(const char* name);

  void write_result(uint64_t id, PyObject* value, ByteBuffer& out);
  // Writes [kind, Id, Value]; on failure writes nothing (kError: a Python
  // exception is set).
  EncodeResult write_value_frame(uint8_t kind, uint64_t id, PyObject* value, ByteBuffer& out);
  // A call returned a ScheduleMarker (erlang/_schedule.py): answers with a
  // SCHEDULE frame, or requeues the continuation.
  void schedule(PyObject* marker, bool is_cast, uint64_t id, ByteBuffer& out);
  void frame_error(uint64_t id, const std::string& message, ByteBuffer& out);
  void interrupted_before_start(uint64_t id, ByteBuffer& out);
  void frame_error_typed(uint64_t id, std::string_view type, const std::string& message,
                         ByteBuffer& out);
  // Answers id with the current Python exception (which it clears).
  void python_error(uint64_t id, ByteBuffer& out);
  // A failed decode of a field: FrameError for malformed input.
  void decode_error(uint64_t id, const char* field, ByteBuffer& out);
  // The FrameError text for a failed decode of a field into *ferr, if the
  // codec found malformed input (ValueError, which it clears); else the
  // Python exception stays set.
  void decode_failure(const char* field, std::string* ferr);
  // Writes the current Python exception, with traceback, to sys.stderr.
  void report_cast_error(std::string_view module, std::string_view function);

  struct ExceptionText {
    std::string type, message, traceback;
  };
  ExceptionText describe(PyObject* exc);

  Codec& codec_;
  size_t max_frame_size_;
  Interrupts* interrupts_;
  TaskHooks hooks_;
  bool shutdown_ = false;

  // The str objects naming a CALL's module and attribute path, by
  // "module\0function". Only names are cached: the module is looked up in
  // sys.modules and the attributes read on every call, so a reloaded or
  // monkeypatched function is what runs.
  struct FunctionNames {
    PyRef module;
    std::vector<PyRef> path;
  };
  std::unordered_map<std::string, FunctionNames> names_;
  std::unordered_map<uint64_t, PyRef> namespaces_;
  PyRef namespaces_mod_;

  // Compiled code by mode + source, least recently used first in lru_.
  struct CodeEntry {
    PyRef code;
    std::list<const std::string*>::iterator lru;
  };
  std::unordered_map<std::string, CodeEntry> code_;
  std::list<const std::string*> lru_;

  PyRef format_exception_;  // traceback.format_exception, imported on first use
  PyRef runtime_;           // pyport_runtime.worker, imported on first use
  PyRef keywords_;          // frozenset(keyword.kwlist), made on first use
  PyRef cancelled_name_, exception_name_, result_name_;            // future methods, interned
  PyRef create_task_name_, add_done_callback_name_, cancel_name_;  // interned on first use
  // erlang._schedule: ScheduleMarker, and park(marker) -> continuation id.
  PyRef marker_type_, park_;
  InputBatch requeued_;
  // The Options of the WITH request being handled (its inner frame runs
  // synchronously inside with_options()), and erlang._objects.apply.
  PyRef with_options_, objects_apply_;
  uint64_t with_id_ = 0;
};

}  // namespace pyport
