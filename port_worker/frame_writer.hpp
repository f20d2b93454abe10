// The worker's output channel. Any thread may submit complete frames; the
// loop thread writes everything queued in one uv_write, and while a write
// is in flight new frames collect for the next one. Frames are never
// interleaved: each submit appends whole frames under the mutex.
#pragma once

#include <uv.h>

#include <mutex>

#include "byte_buffer.hpp"

namespace pyport {

class FrameWriter {
 public:
  // Called on the loop thread when a write fails (the owner went away);
  // after it, the writer drops everything.
  using ErrorCallback = void (*)(void* ctx, int uv_status);

  FrameWriter() = default;
  FrameWriter(const FrameWriter&) = delete;
  FrameWriter& operator=(const FrameWriter&) = delete;

  // Opens fd on the loop. Holds all frames until start() so that the
  // HELLO frame goes first. Returns a libuv error code (0 on success).
  int open(uv_loop_t* loop, int fd, ErrorCallback on_error, void* ctx);

  // Loop thread: puts `first` (the HELLO) ahead of everything queued so far
  // and starts writing.
  void start(ByteBuffer& first);

  // Any thread: queues complete frames and wakes the loop.
  void submit(const uint8_t* frames, size_t size);
  // Loop thread: queues the frames in `frames` (leaving it empty, its memory
  // swapped rather than copied when nothing else is queued) and writes.
  void submit_from_loop(ByteBuffer& frames);

  // Loop thread: nothing queued and nothing being written (or writing failed).
  bool idle();
  bool failed() const { return failed_; }

  // Loop thread: closes the handles; queued frames are dropped. The writer
  // must live until the loop has run the close callbacks.
  void close();

 private:
  static void on_wake(uv_async_t* handle);
  static void on_written(uv_write_t* req, int status);
  void flush();

  uv_pipe_t pipe_{};
  uv_async_t wake_{};
  uv_write_t req_{};
  ErrorCallback on_error_ = nullptr;
  void* ctx_ = nullptr;

  std::mutex mu_;
  ByteBuffer pending_;   // guarded by mu_
  bool closed_ = false;  // guarded by mu_

  // Loop thread only.
  ByteBuffer inflight_;
  bool started_ = false;
  bool writing_ = false;
  bool failed_ = false;
};

}  // namespace pyport
