// The worker's input: the main thread reads the channel itself while it
// waits, the input thread reads in its place while it is busy, and both
// route frames the same way (queue for the main thread, or a handler).
// Waits have a generous bound so that a broken reader fails a test instead
// of hanging it; no test asserts a duration.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "helpers.hpp"
#include "input_reader.hpp"
#include "msgpack_rw.hpp"

using namespace testing;
using pyport::InputBatch;
using pyport::InputFrame;
using pyport::InputReader;

namespace {

constexpr int kHangGuardMs = 30000;

// [Kind, Id, "filler"] as a frame.
Bytes kind_frame(uint64_t kind, uint64_t id, size_t filler = 3) {
  pyport::ByteBuffer b;
  size_t start = pyport::begin_frame(b);
  pyport::mp::write_array_header(b, 3);
  pyport::mp::write_uint(b, kind);
  pyport::mp::write_uint(b, id);
  pyport::mp::write_str(b, std::string(filler, 'f'));
  pyport::end_frame(b, start);
  return Bytes(b.data(), b.data() + b.size());
}

struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    BOOST_REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    r = fds[0];
    w = fds[1];
  }
  ~Pipe() {
    close_write();
    if (r >= 0) close(r);
  }
  void write_all(const Bytes& bytes) const {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(w, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      BOOST_REQUIRE(n > 0);
      done += size_t(n);
    }
  }
  void close_write() {
    if (w >= 0) close(w);
    w = -1;
  }
};

bool wait_readable(int fd) {
  pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, kHangGuardMs) == 1;
}

struct Taken {
  std::vector<InputBatch::Entry> entries;
  std::vector<Bytes> payloads;
  bool eof = false;
  std::string error;
};

// What one take() gives, copied out of the batch.
Taken take(InputReader& reader) {
  InputBatch batch;
  Taken t;
  reader.take(batch, &t.eof, &t.error);
  InputBatch::Entry e;
  while (batch.next(e)) {
    t.entries.push_back(e);
    t.payloads.push_back(e.payload ? Bytes(e.payload, e.payload + e.size) : Bytes());
  }
  return t;
}

// Takes as the main thread does while it waits: whenever the channel or the
// doorbell is readable, until `want` entries (or end of input) came.
Taken take_until(InputReader& reader, size_t want) {
  Taken all;
  while (all.entries.size() < want && !all.eof) {
    pollfd fds[2] = {{reader.fd(), POLLIN, 0}, {reader.wake_fd(), POLLIN, 0}};
    BOOST_REQUIRE_MESSAGE(poll(fds, 2, kHangGuardMs) > 0, "nothing to take");
    if (fds[1].revents) reader.clear_doorbell();
    Taken t = take(reader);
    all.entries.insert(all.entries.end(), t.entries.begin(), t.entries.end());
    all.payloads.insert(all.payloads.end(), t.payloads.begin(), t.payloads.end());
    all.eof = t.eof;
    all.error = t.error;
  }
  return all;
}

uint64_t id_of(const Bytes& payload) {
  uint64_t id = 0;
  BOOST_REQUIRE(pyport::recover_id(payload.data(), payload.size(), id));
  return id;
}

// Records the frames a handler saw, and from which thread.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint64_t> ids;
  std::vector<std::thread::id> threads;
  std::vector<bool> requests_waiting;
  InputReader* reader = nullptr;
  uint64_t decline_id = 0;  // returns false for this id

  static bool handle(void* ctx, const InputFrame& f) {
    auto* self = static_cast<Recorder*>(ctx);
    std::lock_guard<std::mutex> lock(self->mu);
    self->ids.push_back(f.id);
    self->threads.push_back(std::this_thread::get_id());
    self->requests_waiting.push_back(self->reader->requests_waiting());
    self->cv.notify_all();
    return f.id != self->decline_id;
  }

  bool wait_for(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::milliseconds(kHangGuardMs),
                       [&] { return ids.size() >= n; });
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(input_reader)

BOOST_AUTO_TEST_CASE(waiting_main_thread_reads_the_channel_itself_in_order) {
  Pipe pipe;
  InputReader reader(1 << 20);
  BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
  reader.main_idle();
  Bytes data;
  for (uint64_t id : {1, 2, 3}) {
    Bytes f = kind_frame(1, id);
    data.insert(data.end(), f.begin(), f.end());
  }
  pipe.write_all(data);
  BOOST_REQUIRE(wait_readable(reader.fd()));
  BOOST_TEST(reader.requests_waiting());
  Taken t = take(reader);
  BOOST_REQUIRE_EQUAL(t.entries.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    BOOST_TEST(t.entries[i].type == InputBatch::Entry::kFrame);
    BOOST_TEST(id_of(t.payloads[i]) == i + 1);
  }
  BOOST_TEST(!t.eof);
  BOOST_TEST(!reader.requests_waiting());
}

BOOST_AUTO_TEST_CASE(input_thread_reads_while_the_main_thread_is_busy) {
  Pipe pipe;
  InputReader reader(1 << 20);
  Recorder rec;
  rec.reader = &reader;
  reader.set_handler(9, &Recorder::handle, &rec);
  BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
  reader.main_busy();  // and never waits again in this test
  // More than a pipe holds: only a reader that runs while the main thread
  // is busy lets the writer finish.
  Bytes data;
  for (uint64_t id = 1; id <= 64; ++id) {
    Bytes f = kind_frame(1, id, 4096);
    data.insert(data.end(), f.begin(), f.end());
  }
  Bytes reply = kind_frame(9, 1000);
  data.insert(data.end(), reply.begin(), reply.end());
  pipe.write_all(data);
  BOOST_REQUIRE_MESSAGE(rec.wait_for(1), "the handler never ran while the main thread was busy");
  BOOST_TEST(rec.ids[0] == 1000u);
  BOOST_TEST((rec.threads[0] != std::this_thread::get_id()));
  // The requests read before it were queued before it ran.
  BOOST_TEST(rec.requests_waiting[0]);
  BOOST_REQUIRE(wait_readable(reader.wake_fd()));
  reader.clear_doorbell();
  Taken t = take(reader);
  BOOST_REQUIRE_EQUAL(t.entries.size(), 64u);
  for (size_t i = 0; i < 64; ++i)
    BOOST_TEST(id_of(t.payloads[i]) == i + 1);
}

BOOST_AUTO_TEST_CASE(a_declined_frame_is_queued_in_its_place) {
  Pipe pipe;
  InputReader reader(1 << 20);
  Recorder rec;
  rec.reader = &reader;
  rec.decline_id = 2;
  reader.set_handler(9, &Recorder::handle, &rec);
  BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
  reader.main_idle();
  Bytes data;
  for (auto [kind, id] : {std::pair{1, 10}, {9, 1}, {9, 2}, {1, 11}}) {
    Bytes f = kind_frame(uint64_t(kind), uint64_t(id));
    data.insert(data.end(), f.begin(), f.end());
  }
  pipe.write_all(data);
  Taken t = take_until(reader, 3);
  BOOST_REQUIRE_EQUAL(t.entries.size(), 3u);
  BOOST_TEST(id_of(t.payloads[0]) == 10u);
  BOOST_TEST(id_of(t.payloads[1]) == 2u);  // declined: goes to the main thread
  BOOST_TEST(id_of(t.payloads[2]) == 11u);
  BOOST_REQUIRE(rec.wait_for(2));
  BOOST_TEST(rec.ids == (std::vector<uint64_t>{1, 2}));
}

BOOST_AUTO_TEST_CASE(oversized_frames_are_reported_and_skipped) {
  Pipe pipe;
  InputReader reader(256);
  BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
  reader.main_busy();
  Bytes big = kind_frame(1, 7, 100000);
  Bytes after = kind_frame(1, 8);
  Bytes data = big;
  data.insert(data.end(), after.begin(), after.end());
  pipe.write_all(data);
  Taken t = take_until(reader, 2);
  BOOST_REQUIRE_EQUAL(t.entries.size(), 2u);
  BOOST_TEST(t.entries[0].type == InputBatch::Entry::kOversized);
  BOOST_TEST(t.entries[0].id == 7u);
  BOOST_TEST(t.entries[0].size == big.size() - 4);
  BOOST_TEST(t.entries[1].type == InputBatch::Entry::kFrame);
  BOOST_TEST(id_of(t.payloads[1]) == 8u);
}

BOOST_AUTO_TEST_CASE(end_of_input_comes_after_the_last_frame) {
  for (bool busy : {false, true}) {
    BOOST_TEST_CONTEXT("main thread " << (busy ? "busy" : "waiting")) {
      Pipe pipe;
      InputReader reader(1 << 20);
      BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
      busy ? reader.main_busy() : reader.main_idle();
      pipe.write_all(kind_frame(1, 5));
      pipe.close_write();
      Taken t = take_until(reader, 2);
      BOOST_REQUIRE_EQUAL(t.entries.size(), 1u);
      BOOST_TEST(id_of(t.payloads[0]) == 5u);
      BOOST_TEST(t.eof);
      BOOST_TEST(t.error.empty());
    }
  }
}

BOOST_AUTO_TEST_CASE(stop_ends_a_reader_waiting_for_input) {
  Pipe pipe;
  InputReader reader(1 << 20);
  BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
  reader.main_busy();
  pipe.write_all(kind_frame(1, 1));
  BOOST_REQUIRE(wait_readable(reader.wake_fd()));  // the input thread has taken over
  reader.stop();                                   // returns although no input comes
  BOOST_TEST(pipe.w >= 0);
}

BOOST_AUTO_TEST_CASE(wake_main_rings_the_doorbell_until_cleared) {
  Pipe pipe;
  InputReader reader(1 << 20);
  BOOST_REQUIRE_EQUAL(reader.start(pipe.r), 0);
  reader.wake_main();
  reader.wake_main();
  BOOST_REQUIRE(wait_readable(reader.wake_fd()));
  reader.clear_doorbell();
  pollfd p = {reader.wake_fd(), POLLIN, 0};
  BOOST_TEST(poll(&p, 1, 0) == 0);
  reader.wake_main();
  BOOST_TEST(wait_readable(reader.wake_fd()));
}

// SpinBudget (input_reader.hpp): spins only where blocking measured slow
// and spinning measured faster, and stops when traffic pauses.
namespace {
constexpr uint64_t kUs = 1000;
void feed(pyport::SpinBudget& b, int n, uint64_t gap_ns) {
  for (int i = 0; i < n; ++i)
    b.input_after(gap_ns);
}
}  // namespace

BOOST_AUTO_TEST_CASE(spin_budget_never_spins_where_wake_ups_are_cheap) {
  pyport::SpinBudget b(100 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);  // first it measures waits that block
  feed(b, 10 * pyport::SpinBudget::kProbe, 8 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);
  BOOST_TEST(!b.spinning());
}

BOOST_AUTO_TEST_CASE(spin_budget_spins_where_spinning_pays) {
  pyport::SpinBudget b(100 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 50 * kUs);  // slow wake-ups
  BOOST_TEST(b.budget_ns() == 100 * kUs);         // so it tries spinning
  feed(b, pyport::SpinBudget::kProbe, 12 * kUs);  // which is faster
  BOOST_TEST(b.spinning());
  BOOST_TEST(b.budget_ns() == 100 * kUs);
  // The next probe starts after kCycle waits, blocking again.
  feed(b, pyport::SpinBudget::kCycle, 12 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);
}

BOOST_AUTO_TEST_CASE(spin_budget_stops_where_spinning_does_not_pay) {
  pyport::SpinBudget b(100 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 50 * kUs);
  // Spinning, the gaps stay as long (the owner lost a CPU to it), or a
  // few spins run out: no quarter gained.
  feed(b, pyport::SpinBudget::kProbe - 3, 45 * kUs);
  feed(b, 3, 150 * kUs);
  BOOST_TEST(!b.spinning());
  BOOST_TEST(b.budget_ns() == 0u);
}

BOOST_AUTO_TEST_CASE(spin_budget_judges_by_cycles_not_waits) {
  // Spinning shortens the waits but the owner, short of a CPU, sends the
  // next request no sooner (the worker's own work got slower instead).
  pyport::SpinBudget b(100 * kUs);
  for (int i = 0; i < pyport::SpinBudget::kProbe; ++i)
    b.input_after(40 * kUs, 60 * kUs);
  for (int i = 0; i < pyport::SpinBudget::kProbe; ++i)
    b.input_after(5 * kUs, 58 * kUs);
  BOOST_TEST(!b.spinning());
}

BOOST_AUTO_TEST_CASE(spin_budget_stops_after_two_long_gaps) {
  pyport::SpinBudget b(100 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 50 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 10 * kUs);
  BOOST_TEST(b.spinning());
  b.input_after(5000 * kUs);  // one hiccup: still spinning
  BOOST_TEST(b.spinning());
  b.input_after(10 * kUs);
  b.input_after(5000 * kUs);
  b.input_after(900000 * kUs);  // traffic paused
  BOOST_TEST(!b.spinning());
  BOOST_TEST(b.budget_ns() == 0u);
  // Long gaps are no samples of a blocking wait: an idle worker never
  // gets to a probe that spins.
  feed(b, 100, 1000000 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);
}

BOOST_AUTO_TEST_CASE(spin_budget_stops_when_spinning_stops_paying) {
  pyport::SpinBudget b(100 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 50 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 10 * kUs);
  BOOST_TEST(b.spinning());
  feed(b, 3 * pyport::SpinBudget::kWindow, 12 * kUs);  // still paying
  BOOST_TEST(b.spinning());
  // The machine got busy: spinning, the gaps are as long as blocking.
  feed(b, pyport::SpinBudget::kWindow, 45 * kUs);
  BOOST_TEST(!b.spinning());
  BOOST_TEST(b.budget_ns() == 0u);
}

BOOST_AUTO_TEST_CASE(spin_budget_probes_again_when_wake_ups_get_slow) {
  pyport::SpinBudget b(100 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 8 * kUs);  // fast: blocks
  feed(b, pyport::SpinBudget::kWindow, 8 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);
  // The mode changed: within a window it tries spinning again.
  feed(b, pyport::SpinBudget::kWindow, 50 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 50 * kUs);
  BOOST_TEST(b.budget_ns() == 100 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 12 * kUs);
  BOOST_TEST(b.spinning());
}

BOOST_AUTO_TEST_CASE(spin_budget_zero_never_spins) {
  pyport::SpinBudget b(0);
  feed(b, pyport::SpinBudget::kProbe, 50 * kUs);
  feed(b, pyport::SpinBudget::kProbe, 1 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);
  pyport::SpinBudget always(0, true);
  BOOST_TEST(always.budget_ns() == 0u);
}

BOOST_AUTO_TEST_CASE(spin_budget_always_spins_until_traffic_pauses) {
  pyport::SpinBudget b(100 * kUs, true);
  BOOST_TEST(b.budget_ns() == 100 * kUs);
  feed(b, 2, 1000 * kUs);
  BOOST_TEST(b.budget_ns() == 0u);
  b.input_after(10 * kUs);  // traffic again
  BOOST_TEST(b.budget_ns() == 100 * kUs);
}

BOOST_AUTO_TEST_CASE(spin_for_input_returns_when_a_frame_comes) {
  Pipe p;
  InputReader reader(1 << 20);
  BOOST_REQUIRE(reader.start(p.r) == 0);
  reader.main_idle();
  // Nothing comes: the spin runs out.
  BOOST_TEST(!reader.spin_for_input(2 * 1000 * kUs));
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    p.write_all(kind_frame(1, 7));
  });
  BOOST_TEST(reader.spin_for_input(uint64_t(kHangGuardMs) * 1000 * kUs));
  writer.join();
  // The doorbell counts too.
  InputBatch batch;
  bool eof = false;
  std::string error;
  reader.take(batch, &eof, &error);
  BOOST_TEST(batch.count() == 1u);
  BOOST_TEST(!reader.spin_for_input(1000 * kUs));
  reader.wake_main();
  BOOST_TEST(reader.spin_for_input(uint64_t(kHangGuardMs) * 1000 * kUs));
  reader.stop();
}

BOOST_AUTO_TEST_SUITE_END()
