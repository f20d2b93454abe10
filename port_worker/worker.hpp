// The worker process once its descriptors are in place: the libuv loop on
// the frame channel, the embedded interpreter, and the orderly shutdown.
#pragma once

#include <Python.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "byte_buffer.hpp"
#include "codec.hpp"
#include "dispatcher.hpp"
#include "erlang_link.hpp"
#include "erlang_module.hpp"
#include "event_loop.hpp"
#include "frame_writer.hpp"
#include "frames.hpp"
#include "input_reader.hpp"
#include "interrupts.hpp"
#include "log_relay.hpp"
#include "options.hpp"
#include "sandbox.hpp"
#include "task_interrupter.hpp"

namespace pyport {

// The descriptors main() prepared (see main.cpp).
struct Channel {
  int in_fd = -1;       // frames from the owner (private, close-on-exec)
  int out_fd = -1;      // frames to the owner (private, close-on-exec)
  int log_out_fd = -1;  // read end of the pipe behind fd 1
  int log_err_fd = -1;  // read end of the pipe behind fd 2
  int diag_fd = -1;     // the pipe to the keeper (keeper.hpp), or -1
};

// Writes "pyport_worker: <message>\n" to fd (the inherited stderr), if open.
void write_diag(int fd, const std::string& message);

// Before its HELLO, tells the owner why the worker cannot start: an ERROR
// frame with id 0, type "StartError", the message, and in the traceback
// field what is at fault: `stage` if it is an option ("--preload"), else
// the option the message names ("--max-memory"), else `stage` ("python",
// "sandbox").
// Written at once to fd (the frame channel), which nothing else writes yet.
void report_start_failure(int fd, const std::string& message, const std::string& stage);

// The main thread idles in a plain libuv loop (idle()) and answers requests
// from there until something needs asyncio; then the worker's asyncio loop
// (erlang._worker.serve) takes over, whose Poller waits on the same libuv
// loop: Worker is its LoopHost. Python waiting for Erlang (erlang.call)
// waits through it too: it is the link's MainThread.
class Worker : public LoopHost, public MainThread {
 public:
  // Shutdown (sending the last answers, finalising Python, which waits for
  // non-daemon threads and runs atexit handlers) may take this long; past
  // it the worker exits anyway, since its owner expects it gone.
  static constexpr int kExitGraceMs = 3000;
  // Python waiting for Erlang handles requests that arrive meanwhile, each
  // one level deeper, up to this depth; deeper waits only wait (their
  // requests are handled once the waits above them end), so a crowd of
  // callers cannot exhaust the stack.
  static constexpr int kMaxNesting = 100;

  // `sandbox`: the sandbox main() began (enter_early), or null.
  explicit Worker(const Options& options, Sandbox* sandbox = nullptr)
      : options_(options),
        sandbox_(sandbox),
        reader_(options.max_frame_size),
        idle_spin_(options.spin_us * 1000, options.spin_test_always),
        reply_spin_(options.spin_us * 1000, options.spin_test_always) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs until end of input, SHUTDOWN or a failed write; returns the exit
  // status. Call once.
  int run(const Channel& channel);

  // A warm pool's zygote (zygote.hpp), before any fork: starts Python,
  // runs `prelude` (a venv's activation), imports the --preload modules and
  // runs `init_code`, both in namespace 0. Returns an empty string, or why
  // the zygote cannot serve. run() in a process forked afterwards skips
  // what was done here.
  std::string prepare_warm(const std::string& prelude, const std::string& init_code);

  // LoopHost (loop thread, GIL held).
  uv_loop_t* uv_loop() override { return &loop_; }
  bool on_loop_thread() const override;
  void before_wait() override;
  void after_wait() override;
  bool input_ready() override { return input_ready_; }
  bool spin_for_input(double timeout) override;
  bool process_input(bool* more) override;
  bool answer_future(uint64_t id, PyObject* future) override;
  bool stream_chunk(uint64_t id, PyObject* value) override;
  bool stream_end(uint64_t id) override;
  void loop_started() override { loop_started_ = true; }
  void request_loop() override;

  // MainThread (erlang_link.hpp), for Python on the main thread.
  void send(ByteBuffer& frames) override;
  WaitResult wait(const std::function<bool()>& ready, Clock::time_point deadline) override;
  bool requests_waiting() const override;
  void loop_completions_posted() override;

 private:
  bool init_python();
  // Sends fatal crash reports to the keeper (channel_.diag_fd).
  void enable_faulthandler();
  // Imports the --preload modules, then confines the process (sandbox.hpp).
  bool enter_sandbox();
  // Waits and handles requests on the plain libuv loop until the worker's
  // asyncio loop exists or the worker must stop.
  void idle();
  // Without the GIL, before the main thread's loop blocks: polls for input
  // for up to budget_ns; true (input_ready_ set) when some came.
  bool spin_idle(uint64_t budget_ns);
  // Takes what the reader has without the GIL, for a wait for Erlang:
  // replies go to their mailboxes at once; true when requests (or the end
  // of input) were taken and need handle_frames().
  bool take_for_wait();
  // Starts the worker's asyncio loop if a thread asked for it.
  void start_requested_loop();
  // Clears asyncio's running loop for the requests handle_frames() runs;
  // returns the previous one (null when none, or asyncio not imported).
  PyRef clear_running_loop();
  // Hands the tokens posted for the worker's event loop (ErlangLink::
  // watch_on_loop) to erlang._async, which completes their futures.
  void run_loop_completions();
  void stop_input();
  void drain_writes();
  void fail(const std::string& message);
  template <typename Write>
  bool answering(Write&& write) noexcept;
  // Takes what the reader has and handles every waiting frame, with no
  // running asyncio loop (requests are plain synchronous code). Ends the
  // process if it runs out of memory, since an answer could be lost.
  void handle_frames() noexcept;
  // The end of input, a SHUTDOWN or a failed write has been seen: the worker
  // loop's input callback stops the loop.
  bool stopping() const;
  void diag(const std::string& message) {
    last_diag_ = message;
    write_diag(channel_.diag_fd, message);
  }

  static void on_input(uv_poll_t* handle, int status, int events);
  static void on_write_error(void* ctx, int status);
  static bool on_interrupt_frame(void* ctx, const InputFrame& frame);

  Options options_;
  Sandbox* sandbox_;
  Channel channel_;
  // First: it blocks SIGINT before any thread exists (see Interrupts).
  Interrupts interrupts_;

  uv_loop_t loop_{};
  // Watched while the loop waits: the frame channel, and the input thread's
  // doorbell (see InputReader).
  uv_poll_t input_polls_[2]{};  // [0] the channel, [1] the doorbell
  int input_polls_open_ = 0;
  FrameWriter writer_;
  LogRelay relay_;
  InputReader reader_;
  // Interrupts task steps of the worker's event loop, once it runs.
  TaskInterrupter task_interrupter_;
  // Frames taken from the reader and not yet handled. One batch for every
  // nesting level: a request that runs the loop (erlang.sleep) lets the
  // frames queued behind it run meanwhile.
  InputBatch batch_;
  int depth_ = 0;
  // How long the main thread polls before it sleeps (input_reader.hpp):
  // between requests in the idle loop, and for replies from Erlang.
  SpinBudget idle_spin_;
  SpinBudget reply_spin_;
  // The loop's current wait began then, with no input ready: measured.
  std::chrono::steady_clock::time_point wait_began_;
  std::chrono::steady_clock::time_point last_input_, last_reply_input_;
  bool measuring_wait_ = false;
  ByteBuffer replies_;         // answers not yet handed to the writer
  bool input_ready_ = false;   // the reader has frames, or end of input, for process_input
  bool input_done_ = false;    // end of input, a failed read or write: the worker stops
  bool loop_started_ = false;  // the worker's asyncio loop exists (erlang._worker)
  std::atomic<bool> loop_requested_{false};  // a thread waits for it to exist
  bool loop_completions_ = false;            // the main thread posted some for itself
  int exit_status_ = 0;
  bool warm_ = false;          // Python started by prepare_warm() before a fork
  std::string last_diag_;      // the reason a start failed, for report_start_failure
  std::string failed_option_;  // the option at fault in last_diag_, if the message does not say
  unsigned long loop_thread_ = 0;

  // Python state, used on the loop thread with the GIL.
  std::unique_ptr<Codec> codec_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<ErlangLink> link_;
  PyRef get_running_loop_, set_running_loop_;  // asyncio's, once it is imported
  PyRef asyncio_events_name_;
  PyRef serve_, ensure_loop_;             // erlang._worker's
  PyRef complete_on_loop_;                // erlang._async._complete_on_loop
  PyThreadState* main_thread_ = nullptr;  // saved while the loop waits
};

}  // namespace pyport
