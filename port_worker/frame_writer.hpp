// The worker's output channel, shared by every thread that writes frames:
// the loop thread (answers), the log relay, and later Python threads.
//
// Frames go out with non-blocking write()s under one mutex, from whichever
// thread submits them, so output streams even while the loop thread is
// busy running Python. Each submit appends whole frames, so frames never
// interleave. When the pipe is full the loop thread never waits: what is
// left is written when libuv reports the pipe writable. Other threads wait
// for the pipe instead, which gives them backpressure and bounds memory.
#pragma once

#include <uv.h>

#include <cstdint>
#include <mutex>

#include "byte_buffer.hpp"

namespace pyport {

// The frame channel's pipes hold 64 KiB by default, so a frame of a few
// MiB crossed them in 64 KiB steps, each a wake-up of both sides (measured:
// a third of a 1 MiB round trip, docs/performance.md). Once a frame larger
// than that crosses a direction, its pipe is grown to kBigPipeBytes, best
// effort: the kernel refuses past /proc/sys/fs/pipe-max-size or the user's
// pipe-user-pages-soft, and then the pipe simply stays as it was. Workers
// that never move big frames keep the default size and cost the user's
// pipe budget nothing extra.
constexpr size_t kDefaultPipeBytes = 64 * 1024;
constexpr size_t kBigPipeBytes = 1 << 20;
void grow_pipe(int fd);

class FrameWriter {
 public:
  // Called on the loop thread, once, after a write failed (the owner went
  // away); the writer drops everything from then on.
  using ErrorCallback = void (*)(void* ctx, int error);

  FrameWriter() = default;
  FrameWriter(const FrameWriter&) = delete;
  FrameWriter& operator=(const FrameWriter&) = delete;

  // Takes over fd (made non-blocking) on the loop. Holds every frame until
  // start(), so that the HELLO goes first. Returns a libuv error code.
  int open(uv_loop_t* loop, int fd, ErrorCallback on_error, void* ctx);

  // Loop thread: puts `first` (the HELLO) ahead of everything submitted so
  // far and starts writing.
  void start(ByteBuffer& first);

  // Loop thread only: queues the frames in `frames` (leaving it empty; its
  // memory is swapped rather than copied when nothing is queued) and writes
  // what the pipe takes now. Never blocks.
  void submit_from_loop(ByteBuffer& frames);

  // Any thread but the loop thread: queues the frames and returns once they
  // are written (or the channel failed, or the writer closed).
  void submit(const uint8_t* frames, size_t size);

  // Nothing waits to be written (or writing failed).
  bool idle();
  // Loop thread, while it waits outside the loop (Python waiting for
  // Erlang): writes what the pipe takes now of what is queued.
  void write_from_loop();
  int fd() const { return fd_; }

  // Loop thread: drops what is queued and closes the handles and the fd.
  // The writer must live until the loop has run the close callbacks.
  void close();

 private:
  static void on_writable(uv_poll_t* handle, int status, int events);
  static void on_wake(uv_async_t* handle);
  static void on_closed(uv_handle_t* handle);

  // With mu_ held: writes what the pipe takes. Sets failed_ on an error.
  void write_locked();
  // With mu_ held, on the loop thread: waits for writability if needed.
  void arm_locked();
  void fail_locked(int error);

  int fd_ = -1;
  uv_poll_t poll_{};
  uv_async_t wake_{};  // tells the loop thread about a failure
  ErrorCallback on_error_ = nullptr;
  void* ctx_ = nullptr;
  int open_handles_ = 0;

  std::mutex mu_;
  ByteBuffer pending_;  // bytes [sent_, size) still to write
  size_t sent_ = 0;
  uint64_t queued_total_ = 0;   // bytes ever queued
  uint64_t written_total_ = 0;  // bytes ever written
  bool started_ = false;
  bool closed_ = false;
  int error_ = 0;  // first write error (a negated errno), 0 if none
  bool error_reported_ = false;

  bool polling_ = false;  // loop thread only
  bool grown_ = false;    // grow_pipe() was tried (with mu_ held)
};

}  // namespace pyport
