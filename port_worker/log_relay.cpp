#include "log_relay.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "frames.hpp"
#include "utf8.hpp"

namespace pyport {

namespace {

// The note's size as the rate counts it.
constexpr size_t kNoteBytes = 100;

}  // namespace

LogRate::LogRate(uint64_t lines_per_second, uint64_t bytes_per_second, Clock::time_point now)
    : lines_per_second_(lines_per_second),
      bytes_per_second_(bytes_per_second),
      lines_(double(lines_per_second)),
      bytes_(double(bytes_per_second)),
      at_(now) {}

void LogRate::refill(Clock::time_point now) {
  if (now <= at_) return;
  double seconds = std::chrono::duration<double>(now - at_).count();
  lines_ = std::min(double(lines_per_second_), lines_ + seconds * double(lines_per_second_));
  bytes_ = std::min(double(bytes_per_second_), bytes_ + seconds * double(bytes_per_second_));
  at_ = now;
}

double LogRate::cost(size_t bytes) const {
  return std::min(double(bytes), double(bytes_per_second_));
}

bool LogRate::take(size_t bytes, Clock::time_point now) {
  refill(now);
  bool lines_ok = lines_per_second_ == 0 || lines_ >= 1.0;
  bool bytes_ok = bytes_per_second_ == 0 || bytes_ >= cost(bytes);
  if (!lines_ok || !bytes_ok) return false;
  if (lines_per_second_) lines_ -= 1.0;
  if (bytes_per_second_) bytes_ -= cost(bytes);
  return true;
}

bool LogRate::admit(size_t bytes, Clock::time_point now) {
  if (take(bytes, now)) return true;
  ++dropped_lines_;
  dropped_bytes_ += bytes;
  return false;
}

int LogRate::ms_until(size_t bytes, Clock::time_point now) {
  refill(now);
  double seconds = 0;
  if (lines_per_second_ && lines_ < 1.0) {
    seconds = std::max(seconds, (1.0 - lines_) / double(lines_per_second_));
  }
  if (bytes_per_second_ && bytes_ < cost(bytes)) {
    seconds = std::max(seconds, (cost(bytes) - bytes_) / double(bytes_per_second_));
  }
  return int(std::min(seconds * 1000.0 + 1.0, 1000.0));
}

int LogRelay::start(FrameWriter& writer, int out_fd, int err_fd, size_t max_frame_size,
                    LogRate rate) {
  writer_ = &writer;
  rate_ = rate;
  // A LOG frame is at most 16 bytes besides its text: array header, kind,
  // id, the level (at most "warning") and a str32 header.
  max_line_ = std::min(kMaxLine, max_frame_size - 16);
  streams_[0].fd = out_fd;
  streams_[0].level = "info";
  streams_[1].fd = err_fd;
  streams_[1].level = "warning";
  if (pipe2(wake_, O_CLOEXEC) < 0) return errno;
  try {
    thread_ = std::thread(&LogRelay::run, this);
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

void LogRelay::stop() {
  if (!thread_.joinable()) return;
  char byte = 0;
  while (write(wake_[1], &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
  for (int fd : {wake_[0], wake_[1], streams_[0].fd, streams_[1].fd}) {
    if (fd >= 0) close(fd);
  }
  wake_[0] = wake_[1] = streams_[0].fd = streams_[1].fd = -1;
}

void LogRelay::run() {
  bool open[2] = {true, true};
  int timeout = -1;  // the note of dropped output waits for the rate
  for (;;) {
    // poll() skips a negative fd: a stream at end of file.
    pollfd fds[3] = {{open[0] ? streams_[0].fd : -1, POLLIN, 0},
                     {open[1] ? streams_[1].fd : -1, POLLIN, 0},
                     {wake_[0], POLLIN, 0}};
    int n = poll(fds, 3, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    timeout = send_note(false);
    if (n == 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (open[i] && (fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
        if (!read_some(streams_[i])) {
          open[i] = false;
          flush(streams_[i]);
        }
      }
    }
    if (fds[2].revents) break;
  }
  // Asked to stop: take what the pipes hold now without waiting for more,
  // since a child process may keep a write end open forever.
  for (int i = 0; i < 2; ++i) {
    if (!open[i]) continue;
    fcntl(streams_[i].fd, F_SETFL, fcntl(streams_[i].fd, F_GETFL) | O_NONBLOCK);
    while (read_some(streams_[i])) {
    }
    flush(streams_[i]);
  }
  send_note(true);
}

int LogRelay::send_note(bool force) {
  if (!rate_.dropped_lines()) return -1;
  auto now = LogRate::Clock::now();
  if (!force && now < next_note_) {
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_note_ - now);
    return int(wait.count()) + 1;
  }
  if (!force && !rate_.take(kNoteBytes, now)) return rate_.ms_until(kNoteBytes, now);
  next_note_ = now + std::chrono::seconds(1);
  std::string note = "pyport: " + std::to_string(rate_.dropped_lines()) + " lines (" +
                     std::to_string(rate_.dropped_bytes()) +
                     " bytes) of output dropped: above the log rate of " +
                     std::to_string(rate_.lines_per_second()) + " lines and " +
                     std::to_string(rate_.bytes_per_second()) + " bytes a second";
  rate_.take_dropped();
  try {
    ByteBuffer frame;
    write_log_frame(frame, "warning", note);
    writer_->submit(frame.data(), frame.size());
  } catch (const std::bad_alloc&) {
  }
  return -1;
}

bool LogRelay::read_some(Stream& s) {
  char chunk[64 * 1024];
  ssize_t n;
  do {
    n = read(s.fd, chunk, sizeof chunk);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  try {
    s.partial.append(chunk, size_t(n));
    emit(s, false);
  } catch (const std::bad_alloc&) {
    s.partial.clear();  // out of memory: these lines are lost, later ones are not
  }
  return true;
}

void LogRelay::flush(Stream& s) {
  try {
    emit(s, true);
  } catch (const std::bad_alloc&) {
    s.partial.clear();
  }
}

void LogRelay::emit(Stream& s, bool all) {
  auto now = LogRate::Clock::now();
  ByteBuffer frames;
  std::string line;
  auto* p = reinterpret_cast<const uint8_t*>(s.partial.data());
  size_t pos = 0, size = s.partial.size();
  while (pos < size) {
    const void* nl = std::memchr(p + pos, '\n', size - pos);
    size_t end = nl ? size_t(static_cast<const uint8_t*>(nl) - p) : size;
    size_t len = end - pos;
    if (!nl && !all && len <= max_line_) break;  // wait for the rest of the line
    size_t take = len > max_line_ ? utf8::cut_point(p + pos, len, max_line_) : len;
    bool line_end = take == len && nl;
    size_t text = take;
    if (line_end && text && p[pos + text - 1] == '\r') --text;
    // Above the rate a line costs only the search for its end.
    if (rate_.admit(text, now)) {
      line.clear();
      utf8::append_sanitized(line, p + pos, text);
      add_line(frames, s.level, line);
    }
    pos += take + (line_end ? 1 : 0);
  }
  s.partial.erase(0, pos);
  if (!frames.empty()) writer_->submit(frames.data(), frames.size());
}

void LogRelay::add_line(ByteBuffer& frames, const char* level, const std::string& line) {
  // Replacement characters can make the text longer than the raw bytes it
  // came from, so the text itself is cut again.
  auto* p = reinterpret_cast<const uint8_t*>(line.data());
  size_t pos = 0;
  do {
    size_t n = utf8::cut_point(p + pos, line.size() - pos, max_line_);
    write_log_frame(frames, level, std::string_view(line).substr(pos, n));
    pos += n;
  } while (pos < line.size());
}

}  // namespace pyport
