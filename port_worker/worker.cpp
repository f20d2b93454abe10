#include "worker.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#ifndef PYPORT_PYTHON_PROGRAM
#define PYPORT_PYTHON_PROGRAM "/usr/bin/python3"
#endif

namespace pyport {

void write_diag(int fd, const std::string& message) {
  if (fd < 0) return;
  std::string line = "pyport_worker: " + message + "\n";
  const char* p = line.data();
  size_t left = line.size();
  while (left) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= size_t(n);
  }
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
  rc = relay_.start(writer_, channel_.log_out_fd, channel_.log_err_fd, options_.max_frame_size);
  if (rc) {
    diag(std::string("cannot start the log relay: ") + std::strerror(rc));
    return 1;
  }
  if (!init_python()) return 1;

  ByteBuffer hello;
  std::string version = Py_GetVersion();
  version = version.substr(0, version.find(' '));
  write_hello_frame(hello, version, uint64_t(getpid()), options_.max_frame_size,
                    {"call", "cast", "eval", "exec", "log"});
  writer_.start(hello);

  uv_pipe_init(&loop_, &in_, 0);
  in_.data = this;
  rc = uv_pipe_open(&in_, channel_.in_fd);
  if (rc == 0) rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&in_), on_alloc, on_read);
  if (rc) {
    diag(std::string("cannot read frames from stdin: ") + uv_strerror(rc));
    return 1;
  }

  // The loop waits without the GIL, so Python threads run meanwhile.
  main_thread_ = PyEval_SaveThread();
  uv_run(&loop_, UV_RUN_DEFAULT);  // until begin_shutdown() stops it

  {
    ExitWatchdog watchdog(kExitGraceMs, channel_.diag_fd);
    drain_writes();  // answers first, while the owner still reads them
    PyEval_RestoreThread(main_thread_);
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
  return 0;
}

bool Worker::init_python() {
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
    diag(std::string("cannot start Python: ") + (status.err_msg ? status.err_msg : "unknown"));
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

  // Fatal crash reports go to the owner's stderr, which outlives the worker.
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

  codec_ = Codec::create();
  if (!codec_) {
    diag("cannot load the erlang package from '" + options_.runtime_dir +
         "': " + current_exception_text());
    return false;
  }
  dispatcher_ = std::make_unique<Dispatcher>(*codec_, options_.max_frame_size, &interrupts_);
  return true;
}

void Worker::begin_shutdown() {
  if (stopping_) return;
  stopping_ = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&in_));
  uv_close(reinterpret_cast<uv_handle_t*>(&in_), nullptr);
  uv_stop(&loop_);
}

void Worker::drain_writes() {
  while (!writer_.idle())
    uv_run(&loop_, UV_RUN_ONCE);
}

void Worker::on_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* self = static_cast<Worker*>(handle->data);
  try {
    auto [p, n] = self->assembler_.prepare();
    *buf = uv_buf_init(reinterpret_cast<char*>(p), static_cast<unsigned>(n));
  } catch (const std::bad_alloc&) {
    *buf = uv_buf_init(nullptr, 0);  // libuv reports UV_ENOBUFS to on_read
  }
}

void Worker::on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
  auto* self = static_cast<Worker*>(stream->data);
  if (nread < 0) {
    // End of input (the owner closed the port) or a broken channel.
    if (nread != UV_EOF)
      self->diag(std::string("reading frames failed: ") + uv_strerror(int(nread)));
    self->begin_shutdown();
    return;
  }
  if (nread == 0) return;
  self->assembler_.commit(size_t(nread));
  try {
    self->process_input();
  } catch (const std::exception& e) {
    // Only allocation can fail here. An answer may be lost, so the worker
    // must not go on: its owner answers every open request when it exits.
    self->diag(std::string("cannot handle frames: ") + e.what() + "; exiting");
    _exit(1);
  }
}

void Worker::process_input() {
  FrameAssembler::Event ev;
  if (assembler_.next(ev)) {
    GilScope gil;
    do {
      // The dispatcher decodes a frame completely before running any Python
      // code, so ev.payload is not needed once Python runs.
      if (ev.type == FrameAssembler::Event::kFrame) {
        dispatcher_->handle_frame(ev.payload, ev.size, replies_);
      } else {
        dispatcher_->frame_too_large(ev.id, ev.size, replies_);
      }
    } while (!dispatcher_->shutdown_requested() && assembler_.next(ev));
  }
  assembler_.compact();
  writer_.submit_from_loop(replies_);
  if (dispatcher_->shutdown_requested()) begin_shutdown();
}

void Worker::on_write_error(void* ctx, int status) {
  auto* self = static_cast<Worker*>(ctx);
  if (status != UV_EPIPE) self->diag(std::string("writing frames failed: ") + uv_strerror(status));
  self->begin_shutdown();
}

}  // namespace pyport
