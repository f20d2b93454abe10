// Reading the frame channel, whatever the main thread is doing.
//
// Two threads may read the channel, one at a time, under one lock:
//
// - the main thread, whenever it waits (idle in its loop, or waiting for an
//   answer from Erlang): a request then runs without a thread hop, as fast
//   as if the main thread were the only reader;
// - the input thread, while the main thread is busy running Python: it
//   starts reading when a batch of requests has kept the main thread busy
//   for about kTakeOverMs, and leaves the channel to the main thread again
//   once that is back to waiting.
//
// Whoever reads routes each frame as it arrives:
//
// - requests for Python (CALL, CAST, EVAL, EXEC, SHUTDOWN, frames that do
//   not parse, oversized frames) go, in order, to the main thread, which
//   takes them all at once with take();
// - frames of a kind with a registered handler go to that handler at once
//   (replies to the worker's own requests to Erlang; control frames that
//   must act on running Python), see set_handler();
// - end of input (or a read error) comes after the last frame, so the main
//   thread answers what it has and then exits.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "byte_buffer.hpp"
#include "frames.hpp"

namespace pyport {

// Frames read and not yet handled, in arrival order.
class InputBatch {
 public:
  struct Entry {
    enum Type : uint8_t { kFrame, kOversized } type;
    uint64_t id;             // kOversized: the id recovered from its first bytes (or 0)
    const uint8_t* payload;  // kFrame: the msgpack array; valid until the batch changes
    size_t size;             // payload size (kOversized: the announced size)
  };

  void add_frame(const uint8_t* payload, size_t size) { add(Entry::kFrame, 0, payload, size); }
  void add_oversized(uint64_t id, size_t size) { add(Entry::kOversized, id, nullptr, size); }
  // Moves other's entries to the end of this batch (other ends up empty).
  void append(InputBatch& other);

  // Iterates: the next entry not yet returned, or false.
  bool next(Entry& e);
  // Entries added since the last clear().
  size_t count() const { return count_; }
  // Entries next() has not returned yet.
  size_t remaining() const { return count_ - taken_; }
  bool empty() const { return count_ == 0; }
  void clear();
  void swap(InputBatch& other) noexcept;

 private:
  void add(Entry::Type type, uint64_t id, const uint8_t* payload, size_t size);

  // Entries back to back: type (1 byte), id (8), size (8), payload bytes.
  ByteBuffer data_;
  size_t read_pos_ = 0;
  size_t count_ = 0;
  size_t taken_ = 0;
};

// A frame as a handler sees it: kind and id already read.
struct InputFrame {
  uint64_t kind;
  uint64_t id;
  uint32_t fields;         // elements of the frame's array, Kind and Id included
  const uint8_t* payload;  // the whole msgpack array
  size_t size;
  size_t rest;  // offset in payload of the first field after Id
};

// Whether the main thread polls for input before it sleeps, and how long.
//
// On a VM, a thread that sleeps and is woken by a write to its pipe may
// cost tens of µs when its virtual CPU went idle meanwhile (the host must
// run it again): the "slow wake-up mode" of docs/performance.md, where a
// sequential round trip pays it on each side. While frames follow each
// other closely, the main thread can then poll the channel for a while
// before it blocks, so that the next frame finds it awake. When wake-ups
// are cheap, spinning gains nothing and takes a CPU the owner may need (a
// 2-CPU machine, or several workers of a pool spinning at once): it made
// round trips slower, not faster. So the worker measures rather than
// guesses (docs/performance.md, "Where a sequential round trip waits
// (worker side)"): the gap from the start of each wait to the input that
// ended it, over kProbe waits that block. Only if their median shows a
// slow wake-up (kSlowWakeNs) does it try kProbe waits that spin, and it
// spins for the next kCycle waits only if that shortened the cycles (from
// one input to the next) by a quarter (their means without the two
// longest, so stalls count but a single hiccup does not), and only as
// long as it keeps doing so. Gaps longer than the maximum (traffic paused)
// are not samples of a blocking wait; two in a row stop any spinning until
// the next probe, so a worker whose traffic stopped spins at most twice
// the maximum and an idle one never.
class SpinBudget {
 public:
  static constexpr int kProbe = 16;
  static constexpr int kCycle = 2048;
  // Conditions change (wake-ups get slow or fast, the machine gets busy,
  // the owner needs the CPU): the median gap of every kWindow waits is
  // checked, and spinning that stopped paying stops at once, as blocking
  // waits that became slow lead to a new probe (after fewer windows the
  // more often probes found spinning useless).
  static constexpr int kWindow = 64;
  static constexpr uint64_t kSlowWakeNs = 20000;

  // max_ns 0: never spin. always: skip the probes and spin whenever
  // traffic flows (tests: --spin-test-always), still stopping after two
  // long gaps.
  explicit SpinBudget(uint64_t max_ns = 0, bool always = false) : max_ns_(max_ns), always_(always) {
    if (always_) restart();
  }
  // How long the next wait may spin (0: block at once).
  uint64_t budget_ns() const {
    return phase_ == kProbeSpin || (phase_ == kDecided && spin_) ? max_ns_ : 0;
  }
  // The wait ended with input waited_ns after it began, cycle_ns after
  // the input that ended the previous wait (the request's work and the
  // wait: what throughput depends on, which may suffer from spinning
  // even where the wait alone looks shorter).
  void input_after(uint64_t waited_ns, uint64_t cycle_ns);
  void input_after(uint64_t waited_ns) { input_after(waited_ns, waited_ns); }
  // Whether the last probe chose to spin (tests, diagnostics).
  bool spinning() const { return phase_ == kDecided && spin_; }

 private:
  enum Phase { kProbeBlock, kProbeSpin, kDecided };
  void restart();
  void decide(bool spin);

  uint64_t max_ns_;
  bool always_;
  Phase phase_ = kProbeBlock;
  bool spin_ = false;
  int count_ = 0;                         // waits sampled in this phase
  int long_gaps_ = 0;                     // gaps above max_ns_ in a row
  uint64_t reference_ns_ = 0;             // the blocking probe's cycle, once spinning
  uint64_t window_waits_[kWindow] = {};   // this window's waits
  uint64_t window_cycles_[kWindow] = {};  // and cycles
  int backoff_ = 1;                       // windows of slow blocking waits before a probe
  uint64_t blocked_wait_[kProbe] = {};    // the blocking probe's waits
  uint64_t blocked_[kProbe] = {};         // and cycles
  uint64_t spun_[kProbe] = {};            // the spinning probe's cycles
};

class InputReader {
 public:
  // Called for each frame of the kind it was registered for, by the thread
  // that read it: the input thread while Python runs on the main thread, or
  // the main thread while it waits, never with the GIL held by the caller.
  // Returns true when it has handled the frame; false queues the frame for
  // the main thread like any request (which then answers it, e.g. with a
  // FrameError). Every frame read before it is already queued when it runs.
  // It must return quickly, since nothing is read meanwhile, and must not
  // take the GIL (the main thread may hold it for as long as Python runs);
  // it may do what needs no GIL: PyErr_SetInterruptEx, signalling a waiting
  // thread, wake_main().
  using Handler = bool (*)(void* ctx, const InputFrame& frame);
  // Called once, by the input thread, when reading ended (end of input or
  // a read error) kEndInterruptMs ago and the main thread still runs
  // Python: the owner is gone, so what runs should stop. Same constraints
  // as a Handler.
  using EndHandler = void (*)(void* ctx);
  // Kinds are positive fixints (PROTOCOL.md).
  static constexpr size_t kMaxKinds = 128;
  // How long one batch of requests keeps the main thread busy before the
  // input thread reads in its place.
  static constexpr int kTakeOverMs = 1;
  // After reading ended: when Python still running is interrupted (the
  // main thread gets this long to notice the end by itself), and when the
  // input thread kills the process (SIGKILL; the keeper then ends its
  // children): Python that ignores its KeyboardInterrupt must not outlive
  // its owner.
  static constexpr int kEndInterruptMs = 100;
  static constexpr int kEndGraceMs = 1000;

  explicit InputReader(size_t max_frame_size) : assembler_(max_frame_size) {}
  ~InputReader();
  InputReader(const InputReader&) = delete;
  InputReader& operator=(const InputReader&) = delete;

  // Before start(): frames of `kind` go to fn(ctx, frame).
  void set_handler(uint8_t kind, Handler fn, void* ctx);
  // Before start(): fn(ctx) runs after reading ended (see EndHandler), and
  // the process is killed kEndGraceMs after the end unless stop() came
  // first. Without it, reading ends with no such consequence.
  void set_end_handler(EndHandler fn, void* ctx) { end_handler_ = {fn, ctx}; }

  // Takes fd (made non-blocking; the reader does not close it) and starts
  // the input thread. The main thread counts as busy until main_idle().
  // Returns 0 or an errno value.
  int start(int fd);
  // Ends the input thread and joins it.
  void stop();

  // What the main thread watches while it waits: the channel itself (when
  // readable, take() reads it) and the doorbell rung when the input thread
  // queued frames or a handler called wake_main().
  int fd() const { return fd_; }
  int wake_fd() const { return wake_fd_; }

  // Main thread, when wake_fd() is readable: clears it. Call before take().
  void clear_doorbell();
  // Main thread: appends to batch every queued entry, then what the channel
  // holds now (without blocking), in arrival order. Once *eof is true no
  // more entries will come; *error then holds why reading stopped (empty at
  // a plain end of file). Throws std::bad_alloc when memory runs out.
  void take(InputBatch& batch, bool* eof, std::string* error);
  // Main thread: it is about to run Python, or back to waiting.
  void main_busy();
  void main_idle();
  // Main thread: puts frames (ending up empty) at the back of the queue,
  // behind what the channel holds now, and rings the doorbell.
  void requeue(InputBatch& frames);
  // Makes wake_fd() readable (any thread).
  void wake_main();
  // Main thread, without the GIL, before it blocks: polls the channel (if
  // `channel`) and the doorbell without blocking, for up to budget_ns
  // (SpinBudget says how long). True as soon as either is readable (the
  // wait that follows returns at once).
  bool spin_for_input(uint64_t budget_ns, bool channel = true) const;
  // Whether requests are waiting for the main thread: queued, or still
  // unread in the channel.
  bool requests_waiting() const;
  // Frames queued for the main thread and not taken yet.
  size_t queued() const { return queued_.load(std::memory_order_relaxed); }
  // Reading has ended (end of input or an error), whether or not the main
  // thread has taken everything yet.
  bool ended() const { return ended_.load(); }

 private:
  void run();
  // With read_mu_ held: reads what the channel holds now, routing requests
  // into `requests`. Returns false at end of input or on an error (eof_ is
  // then set).
  bool read_locked(InputBatch& requests);
  // From_input: requests is staged_, published before a handler runs.
  void route(InputBatch& requests, bool from_input);
  // One frame (f: its head, or null if it has none that parses) to its
  // handler or into requests.
  void route_frame(const uint8_t* payload, size_t size, const InputFrame* f, InputBatch& requests,
                   bool from_input);
  // The frames of a BATCH, each routed as if it had come on its own; false
  // (nothing routed) if the BATCH is malformed.
  bool route_batch(const InputFrame& batch, InputBatch& requests, bool from_input);
  // Input thread, with read_mu_ held: hands staged_ to the main thread.
  void publish();
  void finish_locked(std::string error);
  void arm_timer();
  void on_tick();
  void arm_end_timer(int ms);
  void on_end();

  struct HandlerEntry {
    Handler fn = nullptr;
    void* ctx = nullptr;
  };
  HandlerEntry handlers_[kMaxKinds];
  struct {
    EndHandler fn = nullptr;
    void* ctx = nullptr;
  } end_handler_;

  int fd_ = -1;
  int wake_fd_ = -1;   // eventfd: the main thread's doorbell
  int stop_fd_ = -1;   // eventfd: asks the input thread to end
  int timer_fd_ = -1;  // timerfd: when to check whether the main thread is stuck busy
  int end_fd_ = -1;    // timerfd: armed when reading ends; the process dies when it fires
  std::thread thread_;

  // Reading and routing, by either thread, and what the input thread hands
  // to the main thread.
  std::mutex read_mu_;
  FrameAssembler assembler_;
  InputBatch staged_;  // input thread: what one read produced
  InputBatch shared_;  // queued for the main thread
  bool eof_ = false;
  bool grown_ = false;  // grow_pipe() was tried on fd_ (frame_writer.hpp)
  std::string error_;
  std::atomic<size_t> queued_{0};
  std::atomic<bool> ended_{false};
  std::atomic<bool> rung_{false};  // wake_fd_ holds an unread ring

  // The main thread's state, and the input thread's view of it.
  std::atomic<bool> main_busy_{true};
  std::atomic<uint64_t> busy_seq_{0};  // batches started
  std::atomic<bool> timer_armed_{false};
  std::atomic<bool> taken_over_{false};  // input thread reads in the main thread's place
  uint64_t tick_seq_ = 0;                // input thread: busy_seq_ at the previous tick
  bool end_interrupted_ = false;         // input thread: on_end() has run once
};

}  // namespace pyport
