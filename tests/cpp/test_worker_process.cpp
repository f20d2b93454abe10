// The real pyport_worker process, driven through its pipes: hello, calls,
// log relay, oversized and malformed frames, shutdown, end of input, parent
// death and fatal signals. Waits have a generous bound so a broken worker
// fails the test instead of hanging it; no test asserts a duration.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <tuple>

#include "helpers.hpp"
#include "msgpack_rw.hpp"

extern char** environ;

using namespace testing;

namespace {

pid_t parent_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(text.substr(close + 1));
  std::string state;
  pid_t ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

constexpr int kHangGuardMs = 30000;

template <typename... T>
Bytes pack(const T&... fields) {
  msgpack::sbuffer sb;
  msgpack::pack(sb, std::make_tuple(fields...));
  return Bytes(sb.data(), sb.data() + sb.size());
}
using NoKwargs = std::map<std::string, int>;
const msgpack::type::nil_t kNil{};

struct Frame {
  std::shared_ptr<msgpack::object_handle> oh;
  const msgpack::object& field(size_t i) const { return oh->get().via.array.ptr[i]; }
  size_t fields() const { return oh->get().via.array.size; }
  int kind() const { return field(0).as<int>(); }
  uint64_t id() const { return field(1).as<uint64_t>(); }
  std::string str(size_t i) const { return field(i).as<std::string>(); }
};

class Process {
 public:
  // argv[0] is the program; the worker unless given.
  explicit Process(std::vector<std::string> args, bool worker = true) {
    if (worker) args.insert(args.begin(), PYPORT_WORKER_PATH);
    int in[2], out[2], err[2];
    BOOST_REQUIRE(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0 &&
                  pipe2(err, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    BOOST_REQUIRE_MESSAGE(rc == 0, "posix_spawn " << args[0] << ": " << strerror(rc));
    close(in[0]);
    close(out[1]);
    close(err[1]);
    in_ = in[1];
    out_ = out[0];
    err_ = err[0];
    fcntl(err_, F_SETFL, O_NONBLOCK);
  }

  ~Process() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    for (int fd : {in_, out_, err_}) {
      if (fd >= 0) close(fd);
    }
  }

  pid_t pid() const { return pid_; }

  void send_raw(const Bytes& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = write(in_, bytes.data() + done, bytes.size() - done);
      BOOST_REQUIRE_MESSAGE(n > 0, "writing to the worker: " << strerror(errno));
      done += size_t(n);
    }
  }
  static Bytes framed(const Bytes& payload) {
    Bytes out(4);
    pyport::mp::store_be32(out.data(), uint32_t(payload.size()));
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
  }
  void send(const Bytes& payload) { send_raw(framed(payload)); }

  void close_stdin() {
    close(in_);
    in_ = -1;
  }
  void close_stdout() {
    close(out_);
    out_ = -1;
  }

  // The next frame; false at end of output.
  bool next_frame(Frame& f) {
    for (;;) {
      if (buf_.size() >= 4) {
        size_t n = pyport::mp::load_be32(buf_.data());
        if (buf_.size() >= 4 + n) {
          std::string why;
          BOOST_REQUIRE_MESSAGE(msgpack_c_parses(buf_.data() + 4, n, why), why);
          f.oh = std::make_shared<msgpack::object_handle>(
              msgpack::unpack(reinterpret_cast<const char*>(buf_.data() + 4), n));
          BOOST_REQUIRE(f.oh->get().type == msgpack::type::ARRAY);
          buf_.erase(buf_.begin(), buf_.begin() + long(4 + n));
          return true;
        }
      }
      if (!fill()) {
        BOOST_REQUIRE_MESSAGE(buf_.empty(), "output ends inside a frame");
        return false;
      }
    }
  }

  // The next frame that is not a LOG; LOG lines are kept in logs.
  Frame answer() {
    Frame f;
    for (;;) {
      BOOST_REQUIRE_MESSAGE(next_frame(f), "the worker's output ended; stderr: " << stderr_text());
      if (f.kind() != 18) return f;
      logs.emplace_back(f.str(2), f.str(3));
    }
  }

  // Reads frames (keeping LOG lines) until `done` holds for the logs.
  template <typename Pred>
  void wait_for_logs(Pred done) {
    while (!done()) {
      Frame f;
      BOOST_REQUIRE_MESSAGE(next_frame(f), "output ended while waiting for log lines");
      BOOST_REQUIRE_MESSAGE(f.kind() == 18, "unexpected frame " << f.oh->get());
      logs.emplace_back(f.str(2), f.str(3));
    }
  }

  // Reads the remaining output until end of file (keeping LOG lines).
  std::vector<Frame> rest() {
    std::vector<Frame> frames;
    Frame f;
    while (next_frame(f)) {
      if (f.kind() == 18) {
        logs.emplace_back(f.str(2), f.str(3));
      } else {
        frames.push_back(f);
      }
    }
    return frames;
  }

  // The wait status, waiting at most the hang guard.
  int wait() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kHangGuardMs);
    int status = 0;
    for (;;) {
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return status;
      }
      BOOST_REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "the worker did not exit");
      usleep(2000);
    }
  }

  std::string stderr_text() {
    char chunk[4096];
    ssize_t n;
    while ((n = read(err_, chunk, sizeof chunk)) > 0)
      err_text_.append(chunk, size_t(n));
    return err_text_;
  }

  std::vector<std::pair<std::string, std::string>> logs;  // (level, line)

  bool logged(const std::string& level, const std::string& line) const {
    for (auto& l : logs) {
      if (l.first == level && l.second == line) return true;
    }
    return false;
  }

 private:
  bool fill() {
    pollfd p = {out_, POLLIN, 0};
    int n = poll(&p, 1, kHangGuardMs);
    BOOST_REQUIRE_MESSAGE(n == 1, "no output from the worker; stderr: " << stderr_text());
    uint8_t chunk[65536];
    ssize_t r = read(out_, chunk, sizeof chunk);
    if (r <= 0) return false;
    buf_.insert(buf_.end(), chunk, chunk + r);
    return true;
  }

  pid_t pid_ = -1;
  int in_ = -1, out_ = -1, err_ = -1;
  Bytes buf_;
  std::string err_text_;
};

Frame hello(Process& p) {
  Frame f = p.answer();
  BOOST_REQUIRE_EQUAL(f.kind(), 0);
  return f;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(worker_process)

BOOST_AUTO_TEST_CASE(hello_call_and_exit_0_at_end_of_input) {
  Process p({});
  Frame h = hello(p);
  BOOST_REQUIRE_EQUAL(h.fields(), 6u);
  BOOST_TEST(h.id() == 0u);
  BOOST_TEST(h.field(2).as<int>() == 1);
  BOOST_TEST(h.str(3).rfind("3.", 0) == 0u);
  // The Python process is the child of the one started (its keeper).
  BOOST_TEST(parent_of(h.field(4).as<pid_t>()) == p.pid());
  std::ostringstream caps;
  caps << h.field(5);
  BOOST_TEST(caps.str() ==
             "{\"max_frame_size\":67108864,\"features\":[\"call\",\"cast\",\"eval\",\"exec\","
             "\"log\",\"interrupt\",\"control\",\"request\",\"message\",\"schedule\","
             "\"asyncio\",\"stream\",\"cancel\"]}");
  p.send(pack(1, 1, "math", "sqrt", std::vector<double>{16.0}, NoKwargs{}));
  Frame r = p.answer();
  BOOST_TEST(r.kind() == 16);
  BOOST_TEST(r.id() == 1u);
  BOOST_TEST(r.field(2).as<double>() == 4.0);
  // sys.path starts with the runtime; stdin is /dev/null; sys.executable is
  // the system python.
  p.send(pack(3, 2,
              "[__import__('sys').path[0].endswith('python_runtime'), "
              "__import__('sys').stdin.read(), __import__('sys').executable]",
              kNil, 0));
  r = p.answer();
  std::ostringstream v;
  v << r.field(2);
  BOOST_TEST(v.str() == "[true,\"\",\"\\/usr\\/bin\\/python3\"]");  // msgpack-c escapes /
  p.close_stdin();
  BOOST_TEST(p.rest().empty());
  int status = p.wait();
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0);
}

BOOST_AUTO_TEST_CASE(paths_and_max_frame_size_options) {
  Process p({"--path", "/tmp/pyport-a", "--path=/tmp/pyport-b", "--max-frame-size", "4096"});
  Frame h = hello(p);
  std::ostringstream caps;
  caps << h.field(5);
  BOOST_TEST(contains(caps.str(), "\"max_frame_size\":4096"));
  p.send(pack(3, 1, "__import__('sys').path[1:3]", kNil, 0));
  Frame r = p.answer();
  BOOST_TEST((r.field(2).as<std::vector<std::string>>() ==
              std::vector<std::string>{"/tmp/pyport-a", "/tmp/pyport-b"}));
}

BOOST_AUTO_TEST_CASE(output_of_python_and_children_becomes_log_lines) {
  Process p({});
  hello(p);
  p.send(pack(4, 1,
              "import sys, os\n"
              "print('out line')\n"
              "print('err line', file=sys.stderr)\n"
              "os.write(1, b'raw \\xff bytes\\r\\n')\n"
              "os.system('echo from-child; echo child-err >&2')\n",
              0));
  Frame r = p.answer();
  BOOST_TEST(r.kind() == 16);
  p.wait_for_logs([&] { return p.logs.size() >= 5; });
  BOOST_TEST(p.logged("info", "out line"));
  BOOST_TEST(p.logged("warning", "err line"));
  BOOST_TEST(p.logged("info", "raw \xef\xbf\xbd bytes"));  // invalid UTF-8 replaced, \r dropped
  BOOST_TEST(p.logged("info", "from-child"));
  BOOST_TEST(p.logged("warning", "child-err"));
}

BOOST_AUTO_TEST_CASE(long_lines_are_cut_and_a_megabyte_printed_mid_call_cannot_block) {
  Process p({});
  hello(p);
  p.send(pack(4, 1, "print('z' * 200000)", 0));
  BOOST_TEST(p.answer().kind() == 16);
  std::string joined;
  p.wait_for_logs([&] {
    joined.clear();
    for (auto& l : p.logs)
      joined += l.second;
    return joined.size() >= 200000;
  });
  BOOST_TEST(p.logs.size() == 4u);
  for (auto& l : p.logs)
    BOOST_TEST(l.second.size() <= 65536u);
  BOOST_TEST(joined == std::string(200000, 'z'));

  // 2 MB of output while the loop thread is busy in Python: the relay
  // thread keeps the pipe drained.
  p.logs.clear();
  p.send(pack(4, 2, "for i in range(40000): print('x' * 50)", 0));
  Frame r = p.answer();
  BOOST_TEST(r.kind() == 16);
  BOOST_TEST(r.id() == 2u);
  p.wait_for_logs([&] { return p.logs.size() >= 40000; });
  BOOST_TEST(p.logs.size() == 40000u);
  BOOST_TEST(p.logs.back().second == std::string(50, 'x'));
}

BOOST_AUTO_TEST_CASE(output_streams_while_the_loop_thread_is_busy_in_python) {
  Process p({});
  hello(p);
  char dir[] = "/tmp/pyport-test-XXXXXX";
  BOOST_REQUIRE(mkdtemp(dir));
  std::string go = std::string(dir) + "/go";
  p.send(pack(4, 1,
              "import os, time\n"
              "print('working')\n"
              "while not os.path.exists(" +
                  std::string("'") + go +
                  "'):\n"
                  "    time.sleep(0.005)\n",
              0));
  // The line arrives while the call still runs: nothing else can come first.
  Frame f;
  BOOST_REQUIRE(p.next_frame(f));
  BOOST_TEST(f.kind() == 18);
  BOOST_TEST(f.str(3) == "working");
  int fd = open(go.c_str(), O_CREAT | O_WRONLY, 0600);
  close(fd);
  BOOST_TEST(p.answer().kind() == 16);
  unlink(go.c_str());
  rmdir(dir);
}

BOOST_AUTO_TEST_CASE(python_threads_run_while_the_loop_waits) {
  // The loop waits for input without the GIL: a thread's output arrives
  // with no request in flight.
  Process p({});
  hello(p);
  p.send(pack(4, 1,
              "import threading, time\n"
              "def tick():\n"
              "    for i in range(3):\n"
              "        time.sleep(0.01)\n"
              "        print('tick', i)\n"
              "threading.Thread(target=tick, daemon=True).start()\n",
              0));
  BOOST_TEST(p.answer().kind() == 16);
  p.wait_for_logs([&] { return p.logs.size() >= 3; });
  BOOST_TEST(p.logged("info", "tick 2"));
}

BOOST_AUTO_TEST_CASE(log_lines_fit_a_small_max_frame_size) {
  Process p({"--max-frame-size", "256"});
  hello(p);
  p.send(pack(4, 1, "print('\\xe9' * 1000)\nimport os\nos.write(1, b'\\xff' * 500 + b'\\n')", 0));
  BOOST_TEST(p.answer().kind() == 16);
  std::string joined;
  p.wait_for_logs([&] {
    joined.clear();
    for (auto& l : p.logs)
      joined += l.second;
    return joined.size() >= 2000 + 1500;
  });
  std::string expected;
  for (int i = 0; i < 1000; ++i)
    expected += "\xc3\xa9";
  for (int i = 0; i < 500; ++i)
    expected += "\xef\xbf\xbd";
  BOOST_TEST(joined == expected);
  for (auto& l : p.logs)
    BOOST_TEST(l.second.size() <= 256u - 16u);
}

BOOST_AUTO_TEST_CASE(pipelined_requests_and_a_big_frame) {
  Process p({});
  hello(p);
  Bytes all;
  for (int i = 1; i <= 1000; ++i) {
    Bytes f = Process::framed(pack(1, i, "operator", "mul", std::make_tuple(i, 2), NoKwargs{}));
    all.insert(all.end(), f.begin(), f.end());
  }
  p.send_raw(all);
  for (int i = 1; i <= 1000; ++i) {
    Frame r = p.answer();
    BOOST_REQUIRE_EQUAL(r.kind(), 16);
    BOOST_TEST(r.id() == uint64_t(i));
    BOOST_TEST(r.field(2).as<int>() == 2 * i);
  }
  // A 10 MB argument and a 10 MB result.
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_array(6).pack(1).pack(2000).pack(std::string("builtins")).pack(std::string("bytes"));
  std::string big(10 << 20, '\xfe');
  pk.pack_array(1).pack_bin(uint32_t(big.size())).pack_bin_body(big.data(), uint32_t(big.size()));
  pk.pack_map(0);
  p.send(Bytes(sb.data(), sb.data() + sb.size()));
  Frame r = p.answer();
  BOOST_REQUIRE_EQUAL(r.kind(), 16);
  BOOST_TEST(r.field(2).type == msgpack::type::BIN);
  BOOST_TEST(r.field(2).via.bin.size == big.size());
  BOOST_TEST(std::memcmp(r.field(2).via.bin.ptr, big.data(), big.size()) == 0);
}

BOOST_AUTO_TEST_CASE(oversized_and_malformed_frames_leave_the_stream_in_sync) {
  Process p({"--max-frame-size", "4096"});
  hello(p);
  // A 1 MB frame, sent in pieces: answered FrameTooLarge for its id.
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_array(6).pack(1).pack(9).pack(std::string("builtins")).pack(std::string("len"));
  std::string big(1 << 20, 'q');
  pk.pack_array(1).pack(big).pack_map(0);
  Bytes frame = Process::framed(Bytes(sb.data(), sb.data() + sb.size()));
  for (size_t pos = 0; pos < frame.size(); pos += 100000) {
    p.send_raw(Bytes(frame.begin() + long(pos),
                     frame.begin() + long(std::min(frame.size(), pos + 100000))));
  }
  Frame r = p.answer();
  BOOST_TEST(r.kind() == 17);
  BOOST_TEST(r.id() == 9u);
  BOOST_TEST(r.str(2) == "FrameTooLarge");
  BOOST_TEST(r.str(3) == "frame of " + std::to_string(frame.size() - 4) +
                             " bytes exceeds max_frame_size (4096 bytes)");
  // A result over the maximum.
  p.send(pack(3, 10, "'r' * 5000", kNil, 0));
  r = p.answer();
  BOOST_TEST(r.id() == 10u);
  BOOST_TEST(r.str(2) == "FrameTooLarge");
  // Garbage that is still one frame.
  p.send({0xc1, 0xc1});
  r = p.answer();
  BOOST_TEST(r.id() == 0u);
  BOOST_TEST(r.str(2) == "FrameError");
  p.send(pack(1, 11, "math", "sqrt", std::vector<double>{81.0}, NoKwargs{}));
  r = p.answer();
  BOOST_TEST(r.kind() == 16);
  BOOST_TEST(r.id() == 11u);
  BOOST_TEST(r.field(2).as<double>() == 9.0);
}

BOOST_AUTO_TEST_CASE(shutdown_answers_what_came_before_and_exits_0) {
  Process p({});
  hello(p);
  Bytes all;
  for (const Bytes& f : {Process::framed(pack(3, 1, "6 * 7", kNil, 0)),
                         Process::framed(pack(15, 0)), Process::framed(pack(3, 2, "1", kNil, 0))}) {
    all.insert(all.end(), f.begin(), f.end());
  }
  p.send_raw(all);
  auto frames = p.rest();
  BOOST_REQUIRE_EQUAL(frames.size(), 1u);
  BOOST_TEST(frames[0].id() == 1u);
  BOOST_TEST(frames[0].field(2).as<int>() == 42);
  int status = p.wait();
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0);
}

BOOST_AUTO_TEST_CASE(atexit_output_is_sent_and_a_lingering_thread_cannot_hold_the_exit) {
  Process p({});
  hello(p);
  p.send(pack(4, 1,
              "import atexit, threading, time\n"
              "atexit.register(print, 'atexit ran')\n"
              "threading.Thread(target=time.sleep, args=(3600,)).start()\n",
              0));
  BOOST_TEST(p.answer().kind() == 16);
  p.close_stdin();
  p.rest();
  int status = p.wait();
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0);
  BOOST_TEST(contains(p.stderr_text(), "did not finish within"), p.stderr_text());

  Process q({});
  hello(q);
  q.send(pack(4, 1, "import atexit\natexit.register(print, 'atexit ran')\n", 0));
  BOOST_TEST(q.answer().kind() == 16);
  q.close_stdin();
  q.rest();
  BOOST_TEST(q.logged("info", "atexit ran"));
  status = q.wait();
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0);
}

BOOST_AUTO_TEST_CASE(a_worker_whose_output_is_closed_exits) {
  Process p({});
  hello(p);
  p.close_stdout();
  p.send(pack(1, 1, "math", "sqrt", std::vector<double>{4.0}, NoKwargs{}));
  int status = p.wait();  // the answer fails with EPIPE: the owner is gone
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0);
  BOOST_TEST(p.stderr_text() == "");
}

BOOST_AUTO_TEST_CASE(bad_arguments_exit_2_with_a_message) {
  Process p({"--frobnicate"});
  // Instead of its HELLO the worker says why it cannot start (PROTOCOL.md).
  std::vector<Frame> frames = p.rest();
  BOOST_REQUIRE_EQUAL(frames.size(), 1u);
  BOOST_TEST(frames[0].kind() == 17);
  BOOST_TEST(frames[0].id() == 0u);
  BOOST_TEST(frames[0].str(2) == "StartError");
  BOOST_TEST(frames[0].str(3) == "unknown argument '--frobnicate'");
  BOOST_TEST(frames[0].str(4) == "--frobnicate");
  int status = p.wait();
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 2);
  BOOST_TEST(contains(p.stderr_text(), "pyport_worker: unknown argument '--frobnicate'"));
  Process q({"--runtime", "/nonexistent"});
  q.rest();
  BOOST_TEST(WEXITSTATUS(q.wait()) == 2);
  BOOST_TEST(contains(q.stderr_text(), "runtime directory '/nonexistent' does not exist"));
}

BOOST_AUTO_TEST_CASE(a_busy_worker_dies_with_its_parent) {
  // sh is the worker's parent; the worker gets sh's stdin and stdout.
  Process sh({"/bin/sh", "-c", "exec 3<&0; \"$0\" <&3 3<&- & wait", PYPORT_WORKER_PATH}, false);
  Frame h = hello(sh);
  pid_t worker = h.field(4).as<pid_t>();
  sh.send(pack(4, 1, "while True: pass", 0));
  usleep(100000);  // let it start spinning (the test holds either way)
  kill(sh.pid(), SIGKILL);
  // The worker's end of the pipe closes only when it is gone.
  std::vector<Frame> frames = sh.rest();
  BOOST_TEST(frames.empty());
  kill(worker, SIGKILL);  // in case the test failed: no orphan either way
}

BOOST_AUTO_TEST_CASE(a_fatal_signal_is_reported_on_the_original_stderr) {
  Process p({});
  hello(p);
  p.send(pack(4, 1, "import ctypes\nctypes.string_at(0)\n", 0));
  p.rest();
  int status = p.wait();
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer takes over the re-raised signal and exits instead.
  BOOST_TEST((WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0)));
#else
  BOOST_TEST(WIFSIGNALED(status));
  BOOST_TEST(WTERMSIG(status) == SIGSEGV);
#endif
  std::string err = p.stderr_text();
  BOOST_TEST(contains(err, "Fatal Python error: Segmentation fault"), err);
  BOOST_TEST(contains(err, "File \"<exec>\", line 2"), err);
}

BOOST_AUTO_TEST_SUITE_END()
