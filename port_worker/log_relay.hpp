// The thread that turns what the worker's fds 1 and 2 receive (print(),
// tracebacks, C extensions, child processes) into LOG frames, line by line.
// A thread rather than the loop: Python printing a megabyte while the loop
// thread is busy running it must not block on a full pipe.
#pragma once

#include <string>
#include <thread>

#include "frame_writer.hpp"

namespace pyport {

class LogRelay {
 public:
  // Lines longer than this are cut into several LOG frames.
  static constexpr size_t kMaxLine = 64 * 1024;

  LogRelay() = default;
  ~LogRelay() { stop(); }
  LogRelay(const LogRelay&) = delete;
  LogRelay& operator=(const LogRelay&) = delete;

  // Takes ownership of the read ends of the two pipes: out_fd's lines are
  // logged at "info", err_fd's at "warning". Lines are cut so that every
  // LOG frame fits in max_frame_size. Returns 0 or an errno value.
  int start(FrameWriter& writer, int out_fd, int err_fd, size_t max_frame_size);

  // Reads what the pipes hold now, sends it (a last partial line too), and
  // ends the thread. Call after the write ends are closed or redirected.
  void stop();

 private:
  struct Stream {
    int fd = -1;
    const char* level = "";
    std::string partial;  // bytes of an unfinished line
  };

  void run();
  // Reads once from s; false at end of file or error (or EAGAIN when draining).
  bool read_some(Stream& s);
  // Appends LOG frames for the complete lines in s.partial (all of it when
  // `all`), then submits them.
  void emit(Stream& s, bool all);
  // emit(s, true), for end of file: the last line may lack its newline.
  void flush(Stream& s);
  // Appends LOG frames for one line of valid UTF-8, cut to max_line_.
  void add_line(ByteBuffer& frames, const char* level, const std::string& line);

  FrameWriter* writer_ = nullptr;
  size_t max_line_ = kMaxLine;
  Stream streams_[2];
  int wake_[2] = {-1, -1};  // a byte on this pipe asks the thread to drain and stop
  std::thread thread_;
};

}  // namespace pyport
