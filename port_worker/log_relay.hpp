// The thread that turns what the worker's fds 1 and 2 receive (print(),
// tracebacks, C extensions, child processes) into LOG frames, line by line.
// A thread rather than the loop: Python printing a megabyte while the loop
// thread is busy running it must not block on a full pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "frame_writer.hpp"

namespace pyport {

// Output admitted per second: a token bucket holding one second of rate.
// What does not fit is counted, and said in one note once tokens are back.
class LogRate {
 public:
  using Clock = std::chrono::steady_clock;

  // 0 is no limit.
  LogRate(uint64_t lines_per_second = 0, uint64_t bytes_per_second = 0,
          Clock::time_point now = Clock::now());

  // Takes a line of `bytes` if the bucket has room for it, else counts it
  // as dropped.
  bool admit(size_t bytes, Clock::time_point now);
  // Takes a line of `bytes` if the bucket has room for it.
  bool take(size_t bytes, Clock::time_point now);
  // Lines and bytes dropped since the last take_dropped().
  uint64_t dropped_lines() const { return dropped_lines_; }
  uint64_t dropped_bytes() const { return dropped_bytes_; }
  void take_dropped() { dropped_lines_ = dropped_bytes_ = 0; }
  // Milliseconds until a line of `bytes` fits (0: now).
  int ms_until(size_t bytes, Clock::time_point now);
  uint64_t lines_per_second() const { return lines_per_second_; }
  uint64_t bytes_per_second() const { return bytes_per_second_; }

 private:
  void refill(Clock::time_point now);
  // A line longer than the whole bucket needs only a full bucket.
  double cost(size_t bytes) const;

  uint64_t lines_per_second_, bytes_per_second_;
  double lines_, bytes_;
  Clock::time_point at_;
  uint64_t dropped_lines_ = 0, dropped_bytes_ = 0;
};

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
  // LOG frame fits in max_frame_size. At most `rate` lines and bytes a
  // second are sent (a worker printing as fast as it can must not crowd
  // the channel its answers share); the rest is dropped and counted in a
  // "N lines (B bytes) of output dropped" note. Returns 0 or an errno value.
  int start(FrameWriter& writer, int out_fd, int err_fd, size_t max_frame_size,
            LogRate rate = LogRate());

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
  // Sends the note of what was dropped, once the rate lets it through and
  // at most once a second (or always, when `force`). Returns the poll
  // timeout until it can be sent: -1 when nothing is left to say.
  int send_note(bool force);

  FrameWriter* writer_ = nullptr;
  size_t max_line_ = kMaxLine;
  LogRate rate_;
  LogRate::Clock::time_point next_note_{};
  Stream streams_[2];
  int wake_[2] = {-1, -1};  // a byte on this pipe asks the thread to drain and stop
  std::thread thread_;
};

}  // namespace pyport
