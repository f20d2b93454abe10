#include "reaper.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>

namespace pyport {

namespace {

struct Target {
  pid_t pid;
  int pidfd;                 // -1 without pidfd support
  unsigned long long start;  // the process's start time, 0 if unknown
};

// Field 22 of /proc/<pid>/stat: when the process started (clock ticks
// since boot); with the pid, it names one process.
unsigned long long start_time(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = strrchr(buf, ')');  // the command name may hold anything
  if (!p) return 0;
  // After ") ": state is field 3; start time is field 22.
  int field = 2;
  for (; *p && field < 22; ++p) {
    if (*p == ' ') ++field;
  }
  return strtoull(p, nullptr, 10);
}

void send(const Target& t, int sig) {
  if (t.pidfd >= 0) {
    syscall(SYS_pidfd_send_signal, t.pidfd, sig, nullptr, 0);
  } else if (t.start != 0 && start_time(t.pid) == t.start) {
    kill(t.pid, sig);
  }
}

void forget(std::unordered_map<unsigned long long, Target>& targets, unsigned long long id) {
  auto it = targets.find(id);
  if (it == targets.end()) return;
  if (it->second.pidfd >= 0) close(it->second.pidfd);
  targets.erase(it);
}

}  // namespace

int run_reaper() {
  signal(SIGPIPE, SIG_IGN);
  // One pidfd per worker of the node: as many as the hard limit allows.
  rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  // No tty: nothing to say, nowhere to say it.
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    dup2(null_fd, 2);
    if (null_fd != 2) close(null_fd);
  }
  std::unordered_map<unsigned long long, Target> targets;
  char line[128];
  while (fgets(line, sizeof line, stdin)) {
    unsigned long long id = 0;
    long pid = 0;
    if (sscanf(line, "w %llu %ld", &id, &pid) == 2 && pid > 1) {
      forget(targets, id);
      Target t{pid_t(pid), int(syscall(SYS_pidfd_open, pid_t(pid), 0)), 0};
      if (t.pidfd >= 0) fcntl(t.pidfd, F_SETFD, FD_CLOEXEC);
      if (t.pidfd < 0 && errno != ESRCH) t.start = start_time(t.pid);
      if (t.pidfd >= 0 || t.start != 0) targets.emplace(id, t);
    } else if (sscanf(line, "k %llu", &id) == 1) {
      auto it = targets.find(id);
      if (it == targets.end()) continue;
      // A stopped keeper must run to act on SIGTERM.
      send(it->second, SIGCONT);
      send(it->second, SIGTERM);
      forget(targets, id);
    } else if (sscanf(line, "x %llu", &id) == 1) {
      auto it = targets.find(id);
      if (it == targets.end()) continue;
      send(it->second, SIGKILL);
      forget(targets, id);
    } else if (sscanf(line, "f %llu", &id) == 1) {
      forget(targets, id);
    }
  }
  return 0;
}

}  // namespace pyport
