// Python's side of talking to Erlang: requests the worker makes (REQUEST,
// answered by REPLY), notices it sends (NOTIFY), and mailboxes that receive
// terms from Erlang (MESSAGE), per proto/PROTOCOL.md.
//
// A request or a subscription owns a mailbox, named by a worker-chosen id.
// REPLY and MESSAGE frames are put into their mailbox by whichever thread
// reads them (InputReader handlers, no GIL), so an answer reaches its waiter
// while Python runs. Waiting depends on the thread:
//
// - the main thread waits through MainThread::wait(), which keeps handling
//   requests from Erlang meanwhile (so an Erlang function may call back into
//   this worker, to any depth);
// - any other thread waits on a condition variable with the GIL released;
// - asyncio code watches a mailbox: its next frame posts a token that a
//   Python thread collects with next_completion() (see erlang/_async.py),
//   or, for the worker's own event loop, that the main thread takes in the
//   loop's input callback (watch_on_loop(), take_loop_completions()): no
//   thread hop.
#pragma once

#include <Python.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "byte_buffer.hpp"
#include "codec.hpp"
#include "frame_writer.hpp"
#include "input_reader.hpp"
#include "py_ref.hpp"

namespace pyport {

// What the link needs from the worker's main thread (the loop thread).
class MainThread {
 public:
  using Clock = std::chrono::steady_clock;
  virtual ~MainThread() = default;
  // Main thread: sends frames now, without blocking; frames ends up empty.
  virtual void send(ByteBuffer& frames) = 0;
  enum class WaitResult {
    kReady,        // ready() is true
    kTimeout,      // the deadline passed
    kClosed,       // no more input can come
    kInterrupted,  // a signal handler raised (KeyboardInterrupt): the exception is set
  };
  // Main thread, GIL held (released while it waits): handles what arrives
  // until ready() (called without the GIL) is true, the deadline passes, no
  // more input can come, or a signal handler raises.
  virtual WaitResult wait(const std::function<bool()>& ready, Clock::time_point deadline) = 0;
  // Whether requests from Erlang are waiting to be handled.
  virtual bool requests_waiting() const = 0;
  // Tokens were posted for the main thread (watch_on_loop): it must take
  // them soon. Any thread, without the GIL.
  virtual void loop_completions_posted() = 0;
};

class ErlangLink {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr Clock::time_point kForever = Clock::time_point::max();

  ErlangLink(Codec& codec, FrameWriter& writer, size_t max_frame_size);
  ErlangLink(const ErlangLink&) = delete;
  ErlangLink& operator=(const ErlangLink&) = delete;

  // Binds the main thread (the calling thread) and its waiting.
  void bind_main(MainThread* main);
  // Registers the REPLY and MESSAGE handlers with the reader.
  void install(InputReader& reader);

  // ---- with the GIL ----

  uint64_t open_mailbox();
  void close_mailbox(uint64_t id);

  // Sends [19, Id, op, args] and waits for the REPLY: the value of an "ok"
  // reply, else null with the exception the error factory made (or
  // ConnectionError when no reply can come). args: a list or tuple.
  PyRef request(PyObject* op, PyObject* args);
  // Sends [19, Id, op, args] and returns the mailbox id the REPLY will go
  // to; collect it with take_reply() once a frame is there.
  bool start_request(PyObject* op, PyObject* args, uint64_t* id);
  // The decoded REPLY in mailbox id (closing it): as request() returns.
  PyRef take_reply(uint64_t id);
  // Sends [20, 0, op, args]. False with an exception set on failure.
  bool notify(PyObject* op, PyObject* args);
  // Python gave up on request id: closes its mailbox and sends
  // [20, 0, "cancel", [id]] so that Erlang ends whatever serves it. Safe
  // with an exception set (it calls no Python).
  void cancel_request(uint64_t id);

  // The next term in mailbox id, waiting until the deadline: (True, term),
  // or (False, None) when none came. Null with an exception on error.
  PyRef receive(uint64_t id, Clock::time_point deadline);
  // The next frame of mailbox id posts `token` to the completions (at once
  // if one is there already).
  bool watch(uint64_t id, uint64_t token);
  // Waits (GIL released) for a posted token; 0 once the link is closed.
  uint64_t next_completion();
  // As watch(), but the token is posted for the main thread, which takes
  // it with take_loop_completions() (the worker's event loop's waiters).
  bool watch_on_loop(uint64_t id, uint64_t token);
  // Main thread: the tokens posted for it since the last call (all watched
  // ones once the link is closed: no frame can come for them any more).
  void take_loop_completions(std::vector<uint64_t>& out);
  // Whether completions for the loop wait (take_loop_completions would give some).
  bool loop_completions_waiting();

  // Counts `percent` of the current request's time slice as used; true
  // when it is all used and requests are waiting (the count starts over).
  bool consume_time_slice(long percent);
  void start_request_slice() { slice_used_.store(0, std::memory_order_relaxed); }

  // ---- any thread ----

  // No more frames will come (end of input, exit): every wait ends; returns
  // once no thread is inside a wait any more.
  void close();
  bool closed();

 private:
  struct Mailbox {
    std::deque<ByteBuffer> frames;  // REPLY or MESSAGE payloads
    std::condition_variable cv;
    uint64_t watch = 0;          // token posted on the next frame
    bool watch_on_loop = false;  // ... for the main thread
    bool main_waiting = false;
  };
  using Box = std::shared_ptr<Mailbox>;

  static bool on_frame(void* ctx, const InputFrame& frame);
  void deliver(const InputFrame& frame);

  // Encodes [kind, id, op, args] into out; false with an exception set.
  bool encode_frame(ByteBuffer& out, uint8_t kind, uint64_t id, PyObject* op, PyObject* args);
  // Sends whole frames from any thread; GIL held (released meanwhile).
  void send(ByteBuffer& frames);
  Box find(uint64_t id);
  // Waits for a frame in box and takes it into *frame: 1 when it came, 0
  // when none did (deadline, or the link closed), -1 with an exception set
  // (the wait was interrupted). GIL held on entry and exit.
  int wait_frame(const Box& box, Clock::time_point deadline, ByteBuffer* frame);
  PyRef decode_reply(const ByteBuffer& frame);
  // Posts a mailbox's watch token where it belongs; true when it went to
  // the main thread (which must then be told, after the lock is released).
  bool post_watch_locked(Mailbox& box);
  void post_locked(uint64_t token);
  void leave_locked();

  Codec& codec_;
  FrameWriter& writer_;
  size_t max_frame_size_;
  MainThread* main_ = nullptr;
  std::thread::id main_id_;
  InputReader* reader_ = nullptr;
  PyRef error_factory_;  // erlang._errors.from_reply, imported on first use
  // Percent of the current request's slice used; any Python thread may
  // count, the main thread's requests reset it.
  std::atomic<long> slice_used_{0};

  std::mutex mu_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Box> boxes_;
  std::deque<uint64_t> completions_;
  std::vector<uint64_t> loop_completions_;  // for the main thread
  std::condition_variable completions_cv_;
  bool closed_ = false;
  // Threads waiting without the GIL: close() lets them all leave before the
  // link may go away.
  int inside_ = 0;
  std::condition_variable left_cv_;
};

}  // namespace pyport
