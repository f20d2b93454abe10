// pyport_worker: one Python context as an Erlang port program.
// main() prepares the process (the keeper, private frame channel, log
// pipes) and hands over to Worker. See proto/PROTOCOL.md.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "keeper.hpp"
#include "options.hpp"
#include "reaper.hpp"
#include "sandbox.hpp"
#include "worker.hpp"
#include "zygote.hpp"

namespace {

// Makes sure 0, 1 and 2 are open, so new descriptors never land on them.
bool open_standard_fds(std::string& error) {
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) < 0) {
      int null_fd = open("/dev/null", O_RDWR);
      if (null_fd < 0) return error = "cannot open /dev/null", false;
      if (null_fd != fd) {
        dup2(null_fd, fd);
        close(null_fd);
      }
    }
  }
  return true;
}

// Moves the frame channel off fds 0 and 1, so that nothing Python, a C
// extension or a child process does with the standard descriptors can
// corrupt a frame: fd 0 becomes /dev/null, fds 1 and 2 pipes to the relay.
// fd 2 was the pipe to the keeper (keeper.hpp): it stays as diag_fd.
bool take_channel(pyport::Channel& ch, std::string& error) {
  ch.in_fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
  ch.out_fd = fcntl(1, F_DUPFD_CLOEXEC, 3);
  ch.diag_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
  if (ch.in_fd < 0 || ch.out_fd < 0 || ch.diag_fd < 0) {
    return error = std::string("cannot duplicate the standard descriptors: ") + strerror(errno),
           false;
  }
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out_pipe[2], err_pipe[2];
  if (null_fd < 0 || pipe2(out_pipe, O_CLOEXEC) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0) {
    return error = std::string("cannot create the log pipes: ") + strerror(errno), false;
  }
  // dup2 clears close-on-exec: children inherit fds 0-2 as usual.
  dup2(null_fd, 0);
  dup2(out_pipe[1], 1);
  dup2(err_pipe[1], 2);
  close(null_fd);
  close(out_pipe[1]);
  close(err_pipe[1]);
  ch.log_out_fd = out_pipe[0];
  ch.log_err_fd = err_pipe[0];
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // The node's process killer (reaper.hpp), not a worker.
  if (argc == 2 && std::strcmp(argv[1], "--reaper") == 0) return pyport::run_reaper();
  pyport::Options options;
  std::string error = pyport::parse_options(argc, argv, options);
  if (options.help) {
    std::fputs(pyport::kUsage, stdout);
    return 0;
  }
  if (!error.empty()) {
    // fd 1 is still the frame channel: the owner learns why.
    pyport::report_start_failure(1, error, "options");
    std::fprintf(stderr, "pyport_worker: %s\n%s", error.c_str(), pyport::kUsage);
    return 2;
  }

  if (!open_standard_fds(error)) {
    std::fprintf(stderr, "pyport_worker: %s\n", error.c_str());
    return 1;
  }
  // A warm worker's port process: its keeper is the zygote's (zygote.hpp).
  if (!options.warm_from.empty()) pyport::run_warm_port(options.warm_from);
  std::unique_ptr<pyport::Worker> warm;
  if (options.warm_zygote) {
    warm = std::make_unique<pyport::Worker>(options);
    int status = pyport::run_warm_zygote(*warm);
    // The zygote ends as it is: no Python to finalise for anyone.
    if (status >= 0) _exit(status);
    // A worker forked by the zygote, under its keeper: goes on below.
  }
  // Every worker runs in a child of the process the owner started, its
  // keeper (keeper.hpp). A sandboxed worker starts confining itself while
  // it has one thread, and forks its keeper on the way.
  std::unique_ptr<pyport::Sandbox> sandbox;
  if (options.sandbox) {
    // The values of --env are the job's, not every local user's: blank
    // them in /proc/<pid>/cmdline (options holds copies).
    for (int i = 1; i < argc; ++i) {
      char* value = nullptr;
      if (std::strncmp(argv[i], "--env=", 6) == 0) {
        value = std::strchr(argv[i] + 6, '=');
      } else if (std::strcmp(argv[i], "--env") == 0 && i + 1 < argc) {
        value = std::strchr(argv[++i], '=');
      }
      if (value) std::memset(value + 1, 0, std::strlen(value + 1));
    }
    sandbox = std::make_unique<pyport::Sandbox>(options);
    error = sandbox->enter_early();
    if (!error.empty()) {
      pyport::report_start_failure(1, "sandbox: " + error, "sandbox");
      std::fprintf(stderr, "pyport_worker: sandbox: %s\n", error.c_str());
      return 1;
    }
    // The uid drop cleared the parent-death signal.
    if (!pyport::die_with_keeper()) return 1;
  } else if (!warm) {
    error = pyport::start_keeper("");
    if (!error.empty()) {
      std::fprintf(stderr, "pyport_worker: %s\n", error.c_str());
      return 1;
    }
  }
  // The keeper set the parent-death signal (the worker dies with it, even
  // while Python is busy in a loop that never returns to read end of
  // input) and put the worker in a session and process group of its own:
  // a Ctrl-C at the terminal of the VM never reaches a worker; SIGINT
  // comes only as an INTERRUPT of one request (PROTOCOL.md).
  signal(SIGPIPE, SIG_IGN);

  error = pyport::apply_limits(
      options, options.sandbox ? pyport::LimitScope::kProcess : pyport::LimitScope::kAll);
  if (!error.empty()) {
    pyport::report_start_failure(1, error, "limits");
    std::fprintf(stderr, "pyport_worker: %s\n", error.c_str());
    return 1;
  }
  // A big frame passes through several buffers per request (the read,
  // the decoded bytes, the encoded answer). glibc's defaults give those
  // back to the kernel as soon as they are freed (mmap and trim above
  // 128 KiB at first), so every request page-faulted them in again:
  // measured, half of the worker's time in a 1 MiB round trip
  // (docs/performance.md). Blocks up to kHeapBlock come from the heap and
  // are reused; at most kHeapKeep of free heap top is kept. Larger blocks
  // are still mmap'd and returned, so a rare huge payload leaves no
  // lasting RSS behind.
  constexpr int kHeapBlock = 4 << 20;
  constexpr int kHeapKeep = 16 << 20;
  mallopt(M_MMAP_THRESHOLD, kHeapBlock);
  mallopt(M_TRIM_THRESHOLD, kHeapKeep);
  if (options.max_memory) {
    // glibc reserves 64 MiB of address space per thread arena; under an
    // address-space limit those reservations, not Python's data, would
    // decide when MemoryError comes.
    mallopt(M_ARENA_MAX, 2);
  }

  pyport::Channel channel;
  if (!take_channel(channel, error)) {
    std::fprintf(stderr, "pyport_worker: %s\n", error.c_str());
    return 1;
  }
  if (warm) return warm->run(channel);
  pyport::Worker worker(options, sandbox.get());
  return worker.run(channel);
}
