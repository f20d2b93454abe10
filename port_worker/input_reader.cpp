#include "input_reader.hpp"

#include "frame_writer.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>

#include "msgpack_rw.hpp"

namespace pyport {

namespace {

constexpr size_t kEntryHead = 1 + 8 + 8;  // type, id, size
constexpr size_t kKeepCapacity = 1 << 20;

void ring(int fd) {
  uint64_t one = 1;
  while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

void clear_ring(int fd) {
  uint64_t count;
  while (read(fd, &count, sizeof count) < 0 && errno == EINTR) {
  }
}

bool parse_head(const uint8_t* payload, size_t size, InputFrame& f) {
  mp::Reader r(payload, size);
  if (!r.read_array_header(f.fields, "frame") || f.fields < 2 || !r.read_uint(f.kind, "Kind") ||
      !r.read_uint(f.id, "Id")) {
    return false;
  }
  f.payload = payload;
  f.size = size;
  f.rest = r.offset();
  return true;
}

}  // namespace

// ---- InputBatch ---------------------------------------------------------------

void InputBatch::add(Entry::Type type, uint64_t id, const uint8_t* payload, size_t size) {
  uint8_t* p = data_.grow(kEntryHead + (payload ? size : 0));
  p[0] = type;
  mp::store_be64(p + 1, id);
  mp::store_be64(p + 9, size);
  if (payload && size) std::memcpy(p + kEntryHead, payload, size);
  ++count_;
}

void InputBatch::append(InputBatch& other) {
  if (other.empty()) return;
  if (empty()) {
    swap(other);
  } else {
    data_.append(other.data_.data(), other.data_.size());
    count_ += other.count_;
  }
  other.clear();
}

bool InputBatch::next(Entry& e) {
  if (read_pos_ >= data_.size()) return false;
  const uint8_t* p = data_.data() + read_pos_;
  e.type = Entry::Type(p[0]);
  e.id = mp::load_be64(p + 1);
  e.size = size_t(mp::load_be64(p + 9));
  e.payload = e.type == Entry::kFrame ? p + kEntryHead : nullptr;
  read_pos_ += kEntryHead + (e.type == Entry::kFrame ? e.size : 0);
  ++taken_;
  return true;
}

void InputBatch::clear() {
  data_.clear();
  data_.trim(kKeepCapacity);
  read_pos_ = 0;
  count_ = 0;
  taken_ = 0;
}

void InputBatch::swap(InputBatch& other) noexcept {
  data_.swap(other.data_);
  std::swap(read_pos_, other.read_pos_);
  std::swap(count_, other.count_);
  std::swap(taken_, other.taken_);
}

// ---- SpinBudget ---------------------------------------------------------------

namespace {

uint64_t median(uint64_t* v, int n) {
  std::nth_element(v, v + n / 2, v + n);
  return v[n / 2];
}

// The mean without the two largest values.
uint64_t trimmed_mean(uint64_t* v, int n) {
  std::sort(v, v + n);
  uint64_t sum = 0;
  for (int i = 0; i < n - 2; ++i)
    sum += v[i];
  return sum / uint64_t(n - 2);
}

}  // namespace

void SpinBudget::restart() {
  phase_ = always_ ? kDecided : kProbeBlock;
  spin_ = always_;
  count_ = 0;
}

void SpinBudget::decide(bool spin) {
  spin_ = spin;
  phase_ = kDecided;
  count_ = 0;
}

void SpinBudget::input_after(uint64_t waited_ns, uint64_t cycle_ns) {
  if (max_ns_ == 0) return;
  if (cycle_ns < waited_ns) cycle_ns = waited_ns;
  bool long_gap = waited_ns > max_ns_;
  if (long_gap) {
    // No spin of ours bridges such a gap. One may be a hiccup; two in a
    // row mean the traffic paused: block, and measure again when it
    // resumes (a probe that blocks costs nothing).
    if (++long_gaps_ >= 2 && phase_ != kProbeBlock) {
      restart();
      // Spinning resumes only once traffic does: a wait that blocks first.
      if (always_) spin_ = false;
      return;
    }
  } else {
    long_gaps_ = 0;
  }
  // A single long stall weighs twice the maximum at most.
  uint64_t wait = std::min(waited_ns, 2 * max_ns_);
  uint64_t cycle = cycle_ns - waited_ns + wait;
  switch (phase_) {
    case kProbeBlock:
      if (long_gap) break;
      blocked_wait_[count_] = waited_ns;
      blocked_[count_++] = cycle;
      if (count_ == kProbe) {
        if (median(blocked_wait_, kProbe) < kSlowWakeNs) {
          decide(false);  // wake-ups are cheap: nothing to gain
          backoff_ = 1;
        } else {
          phase_ = kProbeSpin;
          count_ = 0;
        }
      }
      break;
    case kProbeSpin:
      // A spin that ran out counts against spinning.
      spun_[count_++] = cycle;
      if (count_ == kProbe) {
        reference_ns_ = trimmed_mean(blocked_, kProbe);
        decide(trimmed_mean(spun_, kProbe) * 4 <= reference_ns_ * 3);
        // Slow wake-ups that spinning does not cure: look again later
        // and later, since each look spins kProbe waits in vain.
        backoff_ = spin_ ? 1 : std::min(backoff_ * 2, kCycle / kWindow);
      }
      break;
    case kDecided:
      if (always_) {
        spin_ = true;
        break;
      }
      if (++count_ >= kCycle) return restart();
      window_waits_[(count_ - 1) % kWindow] = wait;
      window_cycles_[(count_ - 1) % kWindow] = cycle;
      if (count_ % kWindow == 0) {
        // Spinning that stopped paying stops; blocking waits that became
        // slow (the mode changed) are measured again. Medians: on a busy
        // machine a few waits are long whatever the worker does.
        if (spin_ ? median(window_cycles_, kWindow) * 4 > reference_ns_ * 3
                  : count_ / kWindow >= backoff_ && median(window_waits_, kWindow) >= kSlowWakeNs) {
          return restart();
        }
      }
      break;
  }
}

// ---- InputReader --------------------------------------------------------------

InputReader::~InputReader() {
  stop();
  for (int fd : {wake_fd_, stop_fd_, timer_fd_, end_fd_}) {
    if (fd >= 0) close(fd);
  }
}

void InputReader::set_handler(uint8_t kind, Handler fn, void* ctx) {
  if (kind < kMaxKinds) handlers_[kind] = {fn, ctx};
}

int InputReader::start(int fd) {
  fd_ = fd;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return errno;
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return errno;
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) return errno;
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (timer_fd_ < 0) return errno;
  end_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (end_fd_ < 0) return errno;
  try {
    thread_ = std::thread(&InputReader::run, this);
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

void InputReader::stop() {
  if (!thread_.joinable()) return;
  ring(stop_fd_);
  thread_.join();
}

void InputReader::clear_doorbell() {
  // Cleared before taking, so that a frame queued after the take rings
  // again (publish() rings after queueing).
  clear_ring(wake_fd_);
  rung_.store(false);
}

void InputReader::take(InputBatch& batch, bool* eof, std::string* error) {
  std::lock_guard<std::mutex> lock(read_mu_);
  batch.append(shared_);
  queued_.store(0, std::memory_order_relaxed);
  if (!eof_) read_locked(batch);
  *eof = eof_;
  if (eof_) *error = error_;
}

void InputReader::main_busy() {
  busy_seq_.fetch_add(1, std::memory_order_relaxed);
  main_busy_.store(true);
  if (!timer_armed_.exchange(true)) arm_timer();
}

void InputReader::main_idle() {
  main_busy_.store(false);
}

void InputReader::requeue(InputBatch& frames) {
  std::lock_guard<std::mutex> lock(read_mu_);
  if (!eof_) read_locked(shared_);
  shared_.append(frames);
  queued_.store(shared_.count(), std::memory_order_relaxed);
  wake_main();
}

void InputReader::wake_main() {
  if (!rung_.exchange(true)) ring(wake_fd_);
}

bool InputReader::spin_for_input(uint64_t budget_ns, bool channel) const {
  if (budget_ns == 0) return false;
  auto end = std::chrono::steady_clock::now() + std::chrono::nanoseconds(budget_ns);
  pollfd fds[2] = {{channel ? fd_ : -1, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  // No sched_yield() between polls: the owner's scheduler threads yield
  // while they spin too, and two yielding spinners hand the CPU back and
  // forth (measured: a round trip 2x slower). SpinBudget stops spinning
  // where it does not pay.
  for (;;) {
    if (rung_.load(std::memory_order_relaxed) || poll(fds, 2, 0) > 0) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
  }
}

bool InputReader::requests_waiting() const {
  if (queued_.load(std::memory_order_relaxed) > 0) return true;
  int unread = 0;
  return ioctl(fd_, FIONREAD, &unread) == 0 && unread > 0;
}

void InputReader::arm_timer() {
  itimerspec spec{};
  spec.it_value.tv_nsec = long(kTakeOverMs) * 1000000L;
  timerfd_settime(timer_fd_, 0, &spec, nullptr);
}

// The timer is armed when the main thread starts a batch (if it is not
// armed already) and re-armed here while the main thread stays busy, so a
// worker that is busy with short requests costs one tick per kTakeOverMs
// and an idle worker none.
void InputReader::on_tick() {
  uint64_t expirations;
  while (read(timer_fd_, &expirations, sizeof expirations) < 0 && errno == EINTR) {
  }
  timer_armed_.store(false);
  if (!main_busy_.load()) return;  // main_busy() arms it again
  uint64_t seq = busy_seq_.load(std::memory_order_relaxed);
  if (seq == tick_seq_) {
    // Busy with the same batch since the previous tick: read in its place.
    taken_over_.store(true);
    return;
  }
  tick_seq_ = seq;
  if (!timer_armed_.exchange(true)) arm_timer();
}

void InputReader::arm_end_timer(int ms) {
  itimerspec spec{};
  spec.it_value.tv_sec = ms / 1000;
  spec.it_value.tv_nsec = long(ms % 1000) * 1000000L;
  timerfd_settime(end_fd_, 0, &spec, nullptr);
}

// Reading ended and the worker is still here (stop() not called): first,
// kEndInterruptMs after, the Python still running is interrupted (a main
// thread that is back to waiting is on its way out and is left alone);
// then, kEndGraceMs after the end, the process is killed: Python that
// ignores KeyboardInterrupt, a thread that never ends. Nobody can use its
// answers any more.
void InputReader::on_end() {
  uint64_t expirations;
  while (read(end_fd_, &expirations, sizeof expirations) < 0 && errno == EINTR) {
  }
  if (!end_interrupted_) {
    end_interrupted_ = true;
    if (end_handler_.fn && main_busy_.load()) end_handler_.fn(end_handler_.ctx);
    arm_end_timer(kEndGraceMs - kEndInterruptMs);
    return;
  }
  kill(getpid(), SIGKILL);
}

void InputReader::run() {
  for (;;) {
    bool reading = taken_over_.load();
    pollfd fds[4] = {{stop_fd_, POLLIN, 0},
                     {timer_fd_, POLLIN, 0},
                     {reading ? fd_ : -1, POLLIN, 0},
                     {end_fd_, POLLIN, 0}};
    if (poll(fds, 4, -1) < 0) {
      if (errno == EINTR) continue;
      std::lock_guard<std::mutex> lock(read_mu_);
      finish_locked(std::string("waiting for frames failed: ") + std::strerror(errno));
      return;
    }
    if (fds[0].revents) return;
    if (fds[3].revents) on_end();
    if (fds[1].revents) on_tick();
    if (fds[2].revents) {
      std::lock_guard<std::mutex> lock(read_mu_);
      if (!eof_) {
        try {
          read_locked(staged_);
          publish();
        } catch (const std::bad_alloc&) {
          finish_locked("out of memory reading frames");
        }
      }
      // At end of input the channel stays readable: stop watching it.
      if (eof_ || !main_busy_.load()) taken_over_.store(false);
    }
  }
}

bool InputReader::read_locked(InputBatch& requests) {
  bool from_input = &requests == &staged_;
  for (;;) {
    auto [p, room] = assembler_.prepare();
    ssize_t n = read(fd_, p, room);
    if (n > 0) {
      if (!grown_ && size_t(n) >= kDefaultPipeBytes) {
        // The pipe was full: big frames come this way, let the owner
        // write them in fewer steps.
        grown_ = true;
        grow_pipe(fd_);
      }
      assembler_.commit(size_t(n));
      route(requests, from_input);
      if (size_t(n) < room) return true;  // probably all there is
      continue;
    }
    if (n == 0) {
      finish_locked("");
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    finish_locked(std::string("reading frames failed: ") + std::strerror(errno));
    return false;
  }
}

void InputReader::route(InputBatch& requests, bool from_input) {
  FrameAssembler::Event ev;
  while (assembler_.next(ev)) {
    if (ev.type == FrameAssembler::Event::kOversized) {
      requests.add_oversized(ev.id, ev.size);
      continue;
    }
    InputFrame f;
    bool parsed = parse_head(ev.payload, ev.size, f);
    if (parsed && f.kind == kBatch && route_batch(f, requests, from_input)) continue;
    route_frame(ev.payload, ev.size, parsed ? &f : nullptr, requests, from_input);
  }
  assembler_.compact();
}

void InputReader::route_frame(const uint8_t* payload, size_t size, const InputFrame* f,
                              InputBatch& requests, bool from_input) {
  if (f && f->kind < kMaxKinds && handlers_[f->kind].fn) {
    if (from_input) publish();  // the frames before this one first
    if (handlers_[f->kind].fn(handlers_[f->kind].ctx, *f)) return;
  }
  requests.add_frame(payload, size);
}

bool InputReader::route_batch(const InputFrame& batch, InputBatch& requests, bool from_input) {
  if (batch.id != 0 || batch.fields != 3) return false;
  // Checked whole before anything is routed: a malformed BATCH goes to the
  // dispatcher as it is (a FrameError), never half-handled.
  for (int pass = 0; pass < 2; ++pass) {
    mp::Reader r(batch.payload + batch.rest, batch.size - batch.rest);
    uint32_t n = 0;
    if (!r.read_array_header(n, "Frames")) return false;
    for (uint32_t i = 0; i < n; ++i) {
      std::string_view frame;
      InputFrame f;
      if (!r.read_string(frame, "Frame")) return false;
      auto* p = reinterpret_cast<const uint8_t*>(frame.data());
      bool parsed = parse_head(p, frame.size(), f);
      if (pass == 0) {
        if (parsed && f.kind == kBatch) return false;
      } else {
        route_frame(p, frame.size(), parsed ? &f : nullptr, requests, from_input);
      }
    }
    if (r.offset() != batch.size - batch.rest) return false;
  }
  return true;
}

// Hands what the input thread read to the main thread in one go: one lock
// and at most one doorbell ring however many frames a read brought.
void InputReader::publish() {
  if (staged_.empty()) return;
  shared_.append(staged_);
  queued_.store(shared_.count(), std::memory_order_relaxed);
  wake_main();
}

void InputReader::finish_locked(std::string error) {
  if (eof_) return;
  eof_ = true;
  ended_.store(true);
  error_ = std::move(error);
  try {
    publish();
  } catch (const std::bad_alloc&) {
    error_ = "out of memory queueing frames";
  }
  // Rung even when nothing was queued: the main thread must learn of it.
  rung_.store(true);
  ring(wake_fd_);
  // The input thread acts on it (on_end()), whoever saw it.
  if (end_handler_.fn) arm_end_timer(kEndInterruptMs);
}

}  // namespace pyport
