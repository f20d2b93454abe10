// The worker process once its descriptors are in place: the libuv loop on
// the frame channel, the embedded interpreter, and the orderly shutdown.
#pragma once

#include <Python.h>
#include <uv.h>

#include <memory>
#include <string>

#include "byte_buffer.hpp"
#include "codec.hpp"
#include "dispatcher.hpp"
#include "frame_writer.hpp"
#include "frames.hpp"
#include "interrupts.hpp"
#include "log_relay.hpp"
#include "options.hpp"

namespace pyport {

// The descriptors main() prepared (see main.cpp).
struct Channel {
  int in_fd = -1;       // frames from the owner (private, close-on-exec)
  int out_fd = -1;      // frames to the owner (private, close-on-exec)
  int log_out_fd = -1;  // read end of the pipe behind fd 1
  int log_err_fd = -1;  // read end of the pipe behind fd 2
  int diag_fd = -1;     // the stderr inherited from the owner, or -1
};

// Writes "pyport_worker: <message>\n" to fd (the inherited stderr), if open.
void write_diag(int fd, const std::string& message);

class Worker {
 public:
  // Shutdown (sending the last answers, finalising Python, which waits for
  // non-daemon threads and runs atexit handlers) may take this long; past
  // it the worker exits anyway, since its owner expects it gone.
  static constexpr int kExitGraceMs = 3000;

  explicit Worker(const Options& options) : options_(options), assembler_(options.max_frame_size) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs until end of input, SHUTDOWN or a failed write; returns the exit
  // status. Call once.
  int run(const Channel& channel);

 private:
  bool init_python();
  void begin_shutdown();
  void drain_writes();
  void process_input();
  void diag(const std::string& message) { write_diag(channel_.diag_fd, message); }

  static void on_alloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_write_error(void* ctx, int status);

  Options options_;
  Channel channel_;
  // First: it blocks SIGINT before any thread exists (see Interrupts).
  Interrupts interrupts_;

  uv_loop_t loop_{};
  uv_pipe_t in_{};
  FrameWriter writer_;
  LogRelay relay_;
  FrameAssembler assembler_;
  ByteBuffer replies_;
  bool stopping_ = false;

  // Python state, used on the loop thread with the GIL.
  std::unique_ptr<Codec> codec_;
  std::unique_ptr<Dispatcher> dispatcher_;
  PyThreadState* main_thread_ = nullptr;  // saved while the loop waits
};

}  // namespace pyport
