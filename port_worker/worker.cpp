#include "worker.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "utf8.hpp"
#include "uv_transports.hpp"
#include "http_request_parser.hpp"
#include "http_websocket.hpp"
#include "wsgi_pool.hpp"

#ifndef PYPORT_PYTHON_PROGRAM
#define PYPORT_PYTHON_PROGRAM "/usr/bin/python3"
#endif

namespace pyport {

namespace {

uint64_t nanos(std::chrono::steady_clock::duration d) {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

// Best effort: the descriptor may be gone or full, and nobody can be told.
void write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    size -= size_t(n);
  }
}

}  // namespace

void write_diag(int fd, const std::string& message) {
  if (fd < 0) return;
  std::string line = "pyport_worker: " + message + "\n";
  write_all(fd, line.data(), line.size());
}

void report_start_failure(int fd, const std::string& message, const std::string& stage) {
  if (fd < 0) return;
  // The option the message is about: given, or its first "--name".
  std::string where = stage;
  size_t at = message.find("--");
  if (stage.rfind("--", 0) != 0 && at != std::string::npos) {
    size_t end = message.find_first_of(" '=:", at);
    where = message.substr(at, end == std::string::npos ? std::string::npos : end - at);
  }
  // Paths and environment values in it may be any bytes.
  std::string text, at_fault;
  utf8::append_sanitized(text, reinterpret_cast<const uint8_t*>(message.data()), message.size());
  utf8::append_sanitized(at_fault, reinterpret_cast<const uint8_t*>(where.data()), where.size());
  ByteBuffer frame;
  write_error_frame(frame, 0, "StartError", text, at_fault, kMinMaxFrameSize * 16);
  write_all(fd, frame.data(), frame.size());
}

namespace {

// Ends the process if shutdown takes longer than the grace period (Python
// waiting on a non-daemon thread, an atexit handler that hangs).
class ExitWatchdog {
 public:
  ExitWatchdog(int grace_ms, int diag_fd) {
    thread_ = std::thread([this, grace_ms, diag_fd] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::milliseconds(grace_ms), [this] { return done_; })) {
        write_diag(diag_fd, "Python did not finish within " + std::to_string(grace_ms) +
                                " ms of shutdown (a non-daemon thread?); exiting anyway");
        _exit(0);
      }
    });
  }
  ~ExitWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// The text of the current Python exception, for startup diagnostics.
std::string current_exception_text() {
  PyError e = PyError::fetch();
  PyRef type = PyRef::steal(PyType_GetName(Py_TYPE(e.value.get())));
  PyRef str = PyRef::steal(PyObject_Str(e.value.get()));
  const char* t = type ? PyUnicode_AsUTF8(type.get()) : nullptr;
  const char* s = str ? PyUnicode_AsUTF8(str.get()) : nullptr;
  std::string text = std::string(t ? t : "exception") + ": " + (s ? s : "");
  PyErr_Clear();
  return text;
}

}  // namespace

int Worker::run(const Channel& channel) {
  channel_ = channel;
  int rc = uv_loop_init(&loop_);
  if (rc) {
    diag(std::string("cannot start the event loop: ") + uv_strerror(rc));
    return 1;
  }
  rc = writer_.open(&loop_, channel_.out_fd, on_write_error, this);
  if (rc) {
    diag(std::string("cannot use stdout as the frame channel: ") + uv_strerror(rc));
    return 1;
  }
  // The relay runs from the start so nothing Python prints while starting
  // can fill a pipe; the writer holds its lines until the HELLO is out.
  // A sandboxed worker starts it once confined, since Landlock binds only
  // the thread that restricts itself and those it starts later: its pipes
  // get room for what Python prints meanwhile.
  auto start_relay = [this] {
    int rc = relay_.start(writer_, channel_.log_out_fd, channel_.log_err_fd,
                          options_.max_frame_size, LogRate(options_.log_lines, options_.log_bytes));
    if (rc) diag(std::string("cannot start the log relay: ") + std::strerror(rc));
    return rc == 0;
  };
  if (sandbox_) {
    for (int fd : {1, 2})
      fcntl(fd, F_SETPIPE_SZ, 1 << 20);
  } else if (!start_relay()) {
    return 1;
  }
  loop_thread_ = PyThread_get_thread_ident();
  if (warm_) {
    enable_faulthandler();
  } else if (!init_python()) {
    report_start_failure(channel_.out_fd, last_diag_, "python");
    return 1;
  }
  if (sandbox_ && (!enter_sandbox() || !start_relay())) {
    report_start_failure(channel_.out_fd, last_diag_,
                         failed_option_.empty() ? "sandbox" : failed_option_);
    return 1;
  }
  link_->bind_main(this);
  link_->install(reader_);

  ByteBuffer hello;
  std::string version = Py_GetVersion();
  version = version.substr(0, version.find(' '));
  ByteBuffer report;
  if (sandbox_) sandbox_->write_report(report);
  write_hello_frame(hello, version, uint64_t(sandbox_ ? sandbox_->host_pid() : getpid()),
                    options_.max_frame_size,
                    {"call", "cast", "eval", "exec", "log", "interrupt", "control", "request",
                     "message", "schedule", "asyncio", "stream", "cancel"},
                    sandbox_ ? &report : nullptr);
  writer_.start(hello);

  // INTERRUPT must act while Python runs on this thread.
  reader_.set_handler(kInterrupt, on_interrupt_frame, this);
  // The owner gone: what runs is interrupted (the input thread kills the
  // worker if that is not enough, input_reader.hpp).
  reader_.set_end_handler([](void* ctx) { static_cast<Worker*>(ctx)->interrupts_.interrupt_all(); },
                          this);
  rc = reader_.start(channel_.in_fd);
  if (rc) {
    diag(std::string("cannot start the input thread: ") + std::strerror(rc));
    return 1;
  }
  // Watched whenever the worker's loop waits: the frame channel (the main
  // thread reads it itself) and the input thread's doorbell.
  for (int fd : {reader_.fd(), reader_.wake_fd()}) {
    uv_poll_t* handle = &input_polls_[input_polls_open_];
    rc = uv_poll_init(&loop_, handle, fd);
    if (rc == 0) {
      ++input_polls_open_;
      handle->data = this;
      rc = uv_poll_start(handle, UV_READABLE, on_input);
    }
    if (rc) {
      diag(std::string("cannot wait for frames: ") + uv_strerror(rc));
      return 1;
    }
  }

  // The main thread now idles until SHUTDOWN, end of input or a failed
  // write: in plain libuv while only synchronous requests come (asyncio is
  // not even imported), then in the worker's asyncio loop once something
  // started it. Both wait without the GIL, so Python threads run meanwhile.
  idle();
  interrupts_.idle();
  // A thread that waits for the loop gets it, and sees it end.
  start_requested_loop();
  if (loop_started_) {
    // From now on the dispatcher calls the loop's own functions (erlang.
    // _worker's check that the loop runs first).
    TaskHooks hooks;
    PyRef running = PyRef::steal(PyImport_ImportModule("erlang._worker_async"));
    if (running && hooks.load(running.get())) {
      dispatcher_->set_task_hooks(std::move(hooks));
    } else {
      PyErr_WriteUnraisable(nullptr);
    }
    PyRef check = running
                      ? PyRef::steal(PyObject_GetAttrString(running.get(), "_interrupt_running"))
                      : PyRef();
    if (!check) {
      PyErr_WriteUnraisable(nullptr);
    } else if (int err = task_interrupter_.start(std::move(check), loop_thread_)) {
      diag(std::string("cannot start the task interrupter: ") + std::strerror(err));
    }
    // Also when stopping: it answers the tasks still running.
    PyRef done = PyRef::steal(PyObject_CallNoArgs(serve_.get()));
    if (!done) {
      diag("the worker's event loop failed: " + current_exception_text());
      _exit(1);
    }
  }
  task_interrupter_.stop();
  serve_.reset();
  ensure_loop_.reset();
  complete_on_loop_.reset();
  stop_input();
  reader_.stop();
  link_->close();                      // Python threads waiting for Erlang stop waiting
  writer_.submit_from_loop(replies_);  // what the last tasks answered

  {
    ExitWatchdog watchdog(kExitGraceMs, channel_.diag_fd);
    main_thread_ = PyEval_SaveThread();
    drain_writes();  // answers first, while the owner still reads them
    PyEval_RestoreThread(main_thread_);
    loop_module::attach(nullptr);
    bind_erlang_module(nullptr);
    // The link holds Python objects: they must go before the interpreter
    // (no thread can be inside it: close() waited for them to leave, and
    // with the module unbound no new call reaches it).
    link_.reset();
    get_running_loop_.reset();
    set_running_loop_.reset();
    asyncio_events_name_.reset();
    dispatcher_.reset();
    codec_.reset();
    Py_FinalizeEx();
    // Close the worker's ends of the log pipes (children may keep theirs),
    // then send what the relay still has.
    int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd >= 0) {
      dup2(null_fd, 1);
      dup2(null_fd, 2);
      close(null_fd);
    }
    relay_.stop();
    drain_writes();
  }
  writer_.close();
  uv_run(&loop_, UV_RUN_DEFAULT);  // runs the close callbacks
  if (uv_loop_close(&loop_) != 0) diag("the event loop still had open handles at exit");
  return exit_status_;
}

bool Worker::init_python() {
  if (PyImport_AppendInittab(loop_module::kName, loop_module::init) < 0) {
    diag("cannot register the _pyport_loop module");
    return false;
  }
  if (PyImport_AppendInittab(transports_module::kName, transports_module::init) < 0) {
    diag("cannot register the _pyport_transports module");
    return false;
  }
  if (PyImport_AppendInittab(http_module::kName, http_module::init) < 0) {
    diag("cannot register the _pyport_http module");
    return false;
  }
  if (PyImport_AppendInittab(ws_module::kName, ws_module::init) < 0) {
    diag("cannot register the _pyport_ws module");
    return false;
  }
  if (PyImport_AppendInittab(wsgi_module::kName, wsgi_module::init) < 0) {
    diag("cannot register the _pyport_wsgi module");
    return false;
  }
  if (!register_erlang_module() || !register_sandbox_module()) {
    diag("cannot register the _erlang and _pyport_sandbox modules");
    return false;
  }
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.buffered_stdio = 0;  // print() reaches the relay, and the owner's log, at once
  config.parse_argv = 0;
  config.install_signal_handlers = 1;  // SIGINT raises KeyboardInterrupt
  // As if run as the system python3: sys.executable, prefixes and Debian's
  // dist-packages come out right.
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, PYPORT_PYTHON_PROGRAM);
  char arg0[] = "pyport_worker";
  char* argv[] = {arg0};
  if (!PyStatus_Exception(status)) status = PyConfig_SetBytesArgv(&config, 1, argv);
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    // Usually the environment's doing: say what it had.
    std::string env;
    for (const char* name : {"PYTHONHOME", "PYTHONPATH"}) {
      const char* value = getenv(name);
      if (value) env += std::string(env.empty() ? " (" : ", ") + name + "=" + value;
    }
    if (!env.empty()) env += ")";
    diag(std::string("cannot start Python: ") + (status.err_msg ? status.err_msg : "unknown") +
         env);
    return false;
  }

  PyObject* path = PySys_GetObject("path");  // borrowed
  std::vector<std::string> front = {options_.runtime_dir};
  front.insert(front.end(), options_.paths.begin(), options_.paths.end());
  for (size_t i = 0; i < front.size(); ++i) {
    PyRef entry = PyRef::steal(PyUnicode_DecodeFSDefault(front[i].c_str()));
    if (!path || !entry || PyList_Insert(path, Py_ssize_t(i), entry.get()) < 0) {
      diag("cannot set sys.path: " + current_exception_text());
      return false;
    }
  }

  enable_faulthandler();

  codec_ = Codec::create();
  if (!codec_) {
    diag("cannot load the erlang package from '" + options_.runtime_dir +
         "': " + current_exception_text());
    return false;
  }
  link_ = std::make_unique<ErlangLink>(*codec_, writer_, options_.max_frame_size);
  if (!bind_erlang_module(link_.get()) ||
      !bind_sandbox_module(sandbox_, codec_.get(), options_.max_frame_size)) {
    diag("cannot load the _erlang and _pyport_sandbox modules: " + current_exception_text());
    return false;
  }
  dispatcher_ = std::make_unique<Dispatcher>(*codec_, options_.max_frame_size, &interrupts_);
  // erlang._worker does not import asyncio: that happens when the worker's
  // asyncio loop is first needed.
  PyRef worker_module = PyRef::steal(PyImport_ImportModule("erlang._worker"));
  TaskHooks hooks;
  if (!loop_module::attach(this) || !worker_module || !hooks.load(worker_module.get()) ||
      !(serve_ = PyRef::steal(PyObject_GetAttrString(worker_module.get(), "serve"))) ||
      !(ensure_loop_ = PyRef::steal(PyObject_GetAttrString(worker_module.get(), "ensure_loop")))) {
    diag("cannot load the worker's event loop (erlang._worker): " + current_exception_text());
    return false;
  }
  dispatcher_->set_task_hooks(std::move(hooks));
  return true;
}

void Worker::enable_faulthandler() {
  // Fatal crash reports go to the keeper, which outlives the worker (and
  // copies them to the node's stderr, keeper.hpp).
  if (channel_.diag_fd >= 0) {
    PyRef fh = PyRef::steal(PyImport_ImportModule("faulthandler"));
    PyRef enable = fh ? PyRef::steal(PyObject_GetAttrString(fh.get(), "enable")) : PyRef();
    PyRef args = PyRef::steal(PyTuple_New(0));
    PyRef kwargs =
        PyRef::steal(Py_BuildValue("{s:i,s:O}", "file", channel_.diag_fd, "all_threads", Py_True));
    PyRef done = enable && args && kwargs
                     ? PyRef::steal(PyObject_Call(enable.get(), args.get(), kwargs.get()))
                     : PyRef();
    if (!done) diag("cannot enable faulthandler: " + current_exception_text());
  }
}

std::string Worker::prepare_warm(const std::string& prelude, const std::string& init_code) {
  loop_thread_ = PyThread_get_thread_ident();
  if (!init_python()) return last_diag_;
  auto run = [this](const std::string& text, const char* name) {
    if (text.empty()) return true;
    PyRef globals = dispatcher_->shared_namespace();
    PyRef code =
        globals ? PyRef::steal(Py_CompileString(text.c_str(), name, Py_file_input)) : PyRef();
    PyRef done =
        code ? PyRef::steal(PyEval_EvalCode(code.get(), globals.get(), globals.get())) : PyRef();
    return bool(done);
  };
  if (!run(prelude, "<venv>")) return "venv activation failed: " + current_exception_text();
  for (const std::string& name : options_.preload) {
    PyRef module = PyRef::steal(PyImport_ImportModule(name.c_str()));
    if (!module) return "cannot import " + name + ": " + current_exception_text();
  }
  if (!run(init_code, "<init_code>")) return "init_code failed: " + current_exception_text();
  // What exists now moves to the collector's permanent generation: a
  // collection in a forked worker then never writes to (and so copies)
  // the pages the zygote's objects share.
  PyRef gc = PyRef::steal(PyImport_ImportModule("gc"));
  PyRef frozen = gc ? PyRef::steal(PyObject_CallMethod(gc.get(), "freeze", nullptr)) : PyRef();
  if (!frozen) return "cannot freeze the zygote's objects: " + current_exception_text();
  warm_ = true;
  return "";
}

bool Worker::enter_sandbox() {
  for (const std::string& name : options_.preload) {
    PyRef module = PyRef::steal(PyImport_ImportModule(name.c_str()));
    if (!module) {
      diag("cannot preload " + name + ": " + current_exception_text());
      failed_option_ = "--preload";
      return false;
    }
  }
  // Python reads modules from sys.path (absolute directories) after this.
  std::vector<std::string> read_paths;
  PyObject* path = PySys_GetObject("path");  // borrowed
  for (Py_ssize_t i = 0; path && PyList_Check(path) && i < PyList_GET_SIZE(path); ++i) {
    PyObject* entry = PyList_GET_ITEM(path, i);
    const char* s = PyUnicode_Check(entry) ? PyUnicode_AsUTF8(entry) : nullptr;
    if (s && s[0] == '/') read_paths.emplace_back(s);
    PyErr_Clear();
  }
  std::string error = sandbox_->enter_late(read_paths);
  if (!error.empty()) {
    diag("sandbox: " + error);
    return false;
  }
  return true;
}

void Worker::idle() {
  while (!loop_started_ && !stopping()) {
    before_wait();
    if (!input_ready_ && !loop_requested_.load()) {
      main_thread_ = PyEval_SaveThread();
      if (!spin_idle(idle_spin_.budget_ns())) uv_run(&loop_, UV_RUN_ONCE);
      PyEval_RestoreThread(main_thread_);
    }
    after_wait();
    // Handlers that Python code installed with signal.signal().
    if (PyErr_CheckSignals() < 0) {
      std::string text = current_exception_text();
      diag(text + " reached the worker's idle loop; it goes on");
    }
    start_requested_loop();
    if (input_ready_) handle_frames();
  }
}

bool Worker::spin_idle(uint64_t budget_ns) {
  // A backlog of answers waits for the pipe: libuv must watch it.
  if (budget_ns == 0 || !writer_.idle()) return false;
  if (!reader_.spin_for_input(budget_ns)) return false;
  // As on_input() would: the doorbell is cleared before take().
  reader_.clear_doorbell();
  input_ready_ = true;
  return true;
}

void Worker::request_loop() {
  loop_requested_.store(true);
  reader_.wake_main();
}

void Worker::start_requested_loop() {
  if (!loop_requested_.exchange(false) || loop_started_) return;
  // The thread that asked waits for the outcome, which ensure_loop reports
  // to it (failures too): nothing to report here.
  PyRef loop = PyRef::steal(PyObject_CallNoArgs(ensure_loop_.get()));
  if (!loop) PyErr_WriteUnraisable(ensure_loop_.get());
}

PyRef Worker::clear_running_loop() {
  if (!get_running_loop_) {
    // A running loop needs asyncio: until it is imported there is none.
    if (!asyncio_events_name_) {
      asyncio_events_name_ = PyRef::steal(PyUnicode_InternFromString("asyncio.events"));
      if (!asyncio_events_name_) {
        PyErr_WriteUnraisable(nullptr);
        return {};
      }
    }
    PyObject* found = PyDict_GetItemWithError(PyImport_GetModuleDict(), asyncio_events_name_.get());
    if (!found) {
      if (PyErr_Occurred()) PyErr_WriteUnraisable(nullptr);
      return {};
    }
    PyRef events = PyRef::borrow(found);
    get_running_loop_ = PyRef::steal(PyObject_GetAttrString(events.get(), "_get_running_loop"));
    set_running_loop_ = PyRef::steal(PyObject_GetAttrString(events.get(), "_set_running_loop"));
    if (!get_running_loop_ || !set_running_loop_) {
      get_running_loop_.reset();
      set_running_loop_.reset();
      PyErr_WriteUnraisable(nullptr);
      return {};
    }
  }
  PyRef previous = PyRef::steal(PyObject_CallNoArgs(get_running_loop_.get()));
  if (!previous) {
    PyErr_WriteUnraisable(get_running_loop_.get());
    return {};
  }
  if (previous.get() == Py_None) return {};
  PyRef cleared = PyRef::steal(PyObject_CallOneArg(set_running_loop_.get(), Py_None));
  if (!cleared) PyErr_WriteUnraisable(set_running_loop_.get());
  return previous;
}

bool Worker::on_loop_thread() const {
  return PyThread_get_thread_ident() == loop_thread_;
}

void Worker::stop_input() {
  while (input_polls_open_)
    uv_close(reinterpret_cast<uv_handle_t*>(&input_polls_[--input_polls_open_]), nullptr);
}

void Worker::drain_writes() {
  while (!writer_.idle())
    uv_run(&loop_, UV_RUN_ONCE);
}

// Runs inside uv_run, without the GIL: it only notes that frames wait. They
// are taken and handled by the worker loop's input callback, in Python.
void Worker::on_input(uv_poll_t* handle, int status, int) {
  auto* self = static_cast<Worker*>(handle->data);
  if (status < 0) {
    self->fail(std::string("waiting for frames failed: ") + uv_strerror(status));
    self->stop_input();
    return;
  }
  if (handle == &self->input_polls_[1]) self->reader_.clear_doorbell();
  self->input_ready_ = true;
}

void Worker::fail(const std::string& message) {
  diag(message);
  exit_status_ = 1;
  input_done_ = true;
  input_ready_ = true;
  link_->close();  // no reply from Erlang can come any more
}

void Worker::before_wait() {
  // Everything answered since the last wait goes out in one write.
  if (!replies_.empty()) writer_.submit_from_loop(replies_);
  // Frames taken but not handled yet (a request ran the loop before those
  // behind it in its batch): handled in this wait's callback.
  if (batch_.remaining() > 0 || loop_completions_) input_ready_ = true;
  reader_.main_idle();
  measuring_wait_ = !input_ready_;
  if (measuring_wait_) wait_began_ = std::chrono::steady_clock::now();
}

bool Worker::spin_for_input(double timeout) {
  uint64_t budget = idle_spin_.budget_ns();
  if (timeout > 0 && timeout * 1e9 < double(budget)) budget = uint64_t(timeout * 1e9);
  if (budget == 0) return false;
  PyThreadState* ts = PyEval_SaveThread();
  bool got = spin_idle(budget);
  PyEval_RestoreThread(ts);
  return got;
}

void Worker::after_wait() {
  reader_.main_busy();
  // What the wait for the next frame took, spin or sleep, and the whole
  // cycle since the previous frame came (SpinBudget).
  if (measuring_wait_ && input_ready_) {
    auto now = std::chrono::steady_clock::now();
    idle_spin_.input_after(nanos(now - wait_began_), nanos(now - last_input_));
    last_input_ = now;
  }
  measuring_wait_ = false;
}

bool Worker::process_input(bool* more) {
  handle_frames();
  run_loop_completions();
  *more = !stopping();
  return true;
}

bool Worker::stopping() const {
  return dispatcher_->shutdown_requested() || input_done_;
}

void Worker::handle_frames() noexcept {
  input_ready_ = false;
  try {
    bool eof = false;
    std::string error;
    // Frame handlers (INTERRUPT, REPLY) run inside take() and must not be
    // called with the GIL held (see InputReader::Handler).
    Py_BEGIN_ALLOW_THREADS reader_.take(batch_, &eof, &error);
    Py_END_ALLOW_THREADS if (eof && !input_done_) {
      input_done_ = true;
      if (!error.empty()) {
        diag(error);
        exit_status_ = 1;
      }
      link_->close();  // no reply from Erlang can come any more
    }
    // The channel stays readable at its end: stop watching it.
    if (input_done_) stop_input();
    // Requests are synchronous code: no running loop while they run, so
    // they may run loops of their own (asyncio.run, erlang.run), whatever
    // runs further up the stack.
    PyRef previous = clear_running_loop();
    // Every level runs the frames of the one batch in order, so a request
    // that waits (erlang.sleep, erlang.call) does not hold up those queued
    // behind it.
    ++depth_;
    InputBatch::Entry e;
    while (!dispatcher_->shutdown_requested() && batch_.next(e)) {
      link_->start_request_slice();
      // The dispatcher decodes a frame completely before running any Python
      // code, so e.payload is not needed once Python runs (and a nested
      // take() may move it).
      if (e.type == InputBatch::Entry::kFrame) {
        dispatcher_->handle_frame(e.payload, e.size, replies_);
      } else {
        dispatcher_->frame_too_large(e.id, e.size, replies_);
      }
      if (!dispatcher_->requeued().empty()) reader_.requeue(dispatcher_->requeued());
    }
    if (--depth_ == 0) {
      batch_.clear();
      // The event loop's callbacks run next: no SIGINT for them. The plain
      // idle loop only waits, so SIGINT may stay unblocked (it checks for
      // signals after each wait).
      if (loop_started_) interrupts_.idle();
    }
    if (previous) {
      PyRef restored = PyRef::steal(PyObject_CallOneArg(set_running_loop_.get(), previous.get()));
      if (!restored) PyErr_WriteUnraisable(set_running_loop_.get());
    }
  } catch (const std::exception& e) {
    // Only allocation can fail here. An answer may be lost, so the worker
    // must not go on: its owner answers every open request when it exits.
    diag(std::string("cannot handle frames: ") + e.what() + "; exiting");
    _exit(1);
  }
  // A nested level (inside erlang.call) may have met the end: the worker
  // loop must see it to stop.
  if (stopping()) input_ready_ = true;
}

void Worker::send(ByteBuffer& frames) {
  writer_.submit_from_loop(frames);
}

MainThread::WaitResult Worker::wait(const std::function<bool()>& ready,
                                    Clock::time_point deadline) {
  // Answers of this turn so far go out first: whoever waits for them may be
  // what the Erlang side waits for.
  writer_.submit_from_loop(replies_);
  PyThreadState* ts = PyEval_SaveThread();
  // Too deep: only wait (the input thread takes over reading), and leave
  // requests for the levels above.
  bool handle_requests = depth_ < kMaxNesting;
  if (handle_requests) reader_.main_idle();
  // INTERRUPT of the request that waits sends SIGINT to this thread; it
  // must end the wait at once, not once Erlang answers. SIGINT stays blocked
  // but inside ppoll, so one that comes between the check and the wait is
  // not lost; ppoll gets the mask this wait began with, so a wait outside
  // any request (SIGINT blocked) stays deaf to it.
  sigset_t sigint, entry_mask;
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigint, &entry_mask);
  WaitResult result = WaitResult::kClosed;
  for (;;) {
    if (interrupts_.innermost_signalled()) {
      PyEval_RestoreThread(ts);
      int rc = PyErr_CheckSignals();
      ts = PyEval_SaveThread();
      if (rc < 0) {
        result = WaitResult::kInterrupted;
        break;
      }
    }
    // A wait that takes no requests cannot see end of input in them: it asks.
    if (input_done_ || (!handle_requests && reader_.ended())) break;
    if (ready()) {
      result = WaitResult::kReady;
      break;
    }
    timespec left_ts{};
    timespec* timeout = nullptr;
    if (deadline != Clock::time_point::max()) {
      auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        result = WaitResult::kTimeout;
        break;
      }
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      left_ts.tv_sec = time_t(ns / 1000000000);
      left_ts.tv_nsec = long(ns % 1000000000);
      timeout = &left_ts;
    }
    // Frames already taken but not handled yet (queued behind the request
    // that waits) are handled at once.
    bool queued = handle_requests && batch_.remaining() > 0;
    timespec zero{};
    // While replies come quickly, poll for the next one before sleeping
    // (SpinBudget). A wait that takes no requests does not read the
    // channel, and a backlog of frames to write needs ppoll.
    auto began = Clock::now();
    bool spun = !queued && handle_requests && writer_.idle() &&
                reader_.spin_for_input(std::min<uint64_t>(
                    reply_spin_.budget_ns(),
                    timeout ? uint64_t(left_ts.tv_sec) * 1000000000u + uint64_t(left_ts.tv_nsec)
                            : UINT64_MAX));
    pollfd fds[3] = {{handle_requests ? reader_.fd() : -1, POLLIN, 0},
                     {reader_.wake_fd(), POLLIN, 0},
                     {writer_.idle() ? -1 : writer_.fd(), POLLOUT, 0}};
    int n = ppoll(fds, 3, queued || spun ? &zero : timeout, &entry_mask);
    if (n < 0 && errno != EINTR) {
      diag(std::string("waiting for Erlang failed: ") + std::strerror(errno));
      break;
    }
    bool input = n > 0 && (fds[0].revents || fds[1].revents);
    if (input && handle_requests) {
      auto now = Clock::now();
      reply_spin_.input_after(nanos(now - began), nanos(now - last_reply_input_));
      last_reply_input_ = now;
    }
    if (n > 0) {
      if (fds[2].revents) writer_.write_from_loop();
      if (fds[1].revents) reader_.clear_doorbell();
    }
    // Replies are delivered to their mailboxes as they are read, without
    // the GIL; only requests from Erlang (or the end of input) need Python.
    if (handle_requests && (queued || (input && take_for_wait()))) {
      reader_.main_busy();
      PyEval_RestoreThread(ts);
      start_requested_loop();
      handle_frames();
      writer_.submit_from_loop(replies_);
      ts = PyEval_SaveThread();
      reader_.main_idle();
      pthread_sigmask(SIG_BLOCK, &sigint, nullptr);  // the requests that ran unblocked it
    }
  }
  pthread_sigmask(SIG_SETMASK, &entry_mask, nullptr);
  if (result == WaitResult::kClosed && ready()) result = WaitResult::kReady;
  // Completions another thread posted for the event loop rang the doorbell
  // this wait may have cleared: the loop's next wait must not sleep on them
  // (a task awaiting pub/sub while the loop thread made a blocking request).
  if (link_->loop_completions_waiting()) loop_completions_ = true;
  if (handle_requests) {
    reader_.main_busy();
  } else if (reader_.queued()) {
    // This wait cleared the doorbell for requests it did not take: ring it
    // again for the levels above, which will.
    reader_.wake_main();
  }
  PyEval_RestoreThread(ts);
  return result;
}

bool Worker::take_for_wait() {
  bool eof = false;
  std::string error;
  try {
    reader_.take(batch_, &eof, &error);
  } catch (const std::bad_alloc&) {
    // As in handle_frames(): an answer could be lost.
    diag("cannot handle frames: out of memory; exiting");
    _exit(1);
  }
  // handle_frames() takes again and sees the same end (it is sticky).
  return eof || batch_.remaining() > 0 || loop_requested_.load();
}

void Worker::loop_completions_posted() {
  // The main thread posts while it reads frames: it looks before it waits
  // (before_wait). Another thread rings its doorbell.
  if (on_loop_thread()) {
    loop_completions_ = true;
  } else {
    reader_.wake_main();
  }
}

void Worker::run_loop_completions() {
  loop_completions_ = false;
  std::vector<uint64_t> tokens;
  try {
    link_->take_loop_completions(tokens);
  } catch (const std::bad_alloc&) {
    diag("cannot hold the completions of the event loop: out of memory; exiting");
    _exit(1);
  }
  if (tokens.empty()) return;
  if (!complete_on_loop_) {
    PyRef module = PyRef::steal(PyImport_ImportModule("erlang._async"));
    complete_on_loop_ =
        module ? PyRef::steal(PyObject_GetAttrString(module.get(), "_complete_on_loop")) : PyRef();
    if (!complete_on_loop_) {
      PyErr_WriteUnraisable(nullptr);
      return;
    }
  }
  PyRef list = PyRef::steal(PyList_New(Py_ssize_t(tokens.size())));
  for (size_t i = 0; list && i < tokens.size(); ++i) {
    PyObject* token = PyLong_FromUnsignedLongLong(tokens[i]);
    if (!token) {
      list.reset();
      break;
    }
    PyList_SET_ITEM(list.get(), Py_ssize_t(i), token);
  }
  PyRef done =
      list ? PyRef::steal(PyObject_CallOneArg(complete_on_loop_.get(), list.get())) : PyRef();
  if (!done) PyErr_WriteUnraisable(complete_on_loop_.get());
}

bool Worker::requests_waiting() const {
  return reader_.requests_waiting() || batch_.remaining() > 0;
}

// Answers go into replies_, which may need to grow: out of memory an
// answer would be lost, so the worker exits (its owner answers everyone).
template <typename Write>
bool Worker::answering(Write&& write) noexcept {
  try {
    return write();
  } catch (const std::bad_alloc&) {
    diag("cannot hold an answer: out of memory; exiting");
    _exit(1);
  }
}

bool Worker::answer_future(uint64_t id, PyObject* future) {
  return answering([&] { return dispatcher_->answer_future(id, future, replies_); });
}

bool Worker::stream_chunk(uint64_t id, PyObject* value) {
  return answering([&] { return dispatcher_->stream_chunk(id, value, replies_); });
}

bool Worker::stream_end(uint64_t id) {
  return answering([&] {
    dispatcher_->stream_end(id, replies_);
    return true;
  });
}

// [8, Id]: Id names the request to interrupt. Anything else goes to the
// dispatcher, which answers it with a FrameError.
//
// The frame also goes on to the main thread: a request that became a task
// (its function returned a coroutine) runs no Python code of its own
// between steps, so the dispatcher cancels its task instead.
bool Worker::on_interrupt_frame(void* ctx, const InputFrame& frame) {
  if (frame.fields != 2 || frame.id == 0) return false;
  auto* self = static_cast<Worker*>(ctx);
  self->interrupts_.interrupt(frame.id);
  // A task step that runs on and on cannot be reached by SIGINT.
  self->task_interrupter_.request(frame.id);
  return false;
}

void Worker::on_write_error(void* ctx, int status) {
  auto* self = static_cast<Worker*>(ctx);
  if (status != UV_EPIPE) self->diag(std::string("writing frames failed: ") + uv_strerror(status));
  // The owner is gone: the worker loop's input callback stops the worker.
  self->input_done_ = true;
  self->input_ready_ = true;
}

}  // namespace pyport
