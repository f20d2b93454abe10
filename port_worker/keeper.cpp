#include "keeper.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace pyport {

namespace {

// What the keeper copies from the worker's diagnostics pipe to the node's
// stderr, per second at most; the rest is dropped and counted.
constexpr size_t kDiagBytesPerSecond = 64 * 1024;
// Rounds of "kill every child, reap" before the keeper gives up on a tree
// that keeps forking faster than it can be killed.
constexpr int kMaxKillRounds = 10000;

// Removes the tree under dir_fd/name without following symbolic links, so
// whatever a job left there (links to elsewhere included) cannot redirect
// the removal. A directory made unreadable (mode 000: an unprivileged
// keeper could not descend) is opened by O_PATH, which needs no right, and
// given back its owner's rights through its /proc/self/fd link: the exact
// inode, never a path a job could swap for a link.
void remove_tree_at(int dir_fd, const char* name, int depth) {
  if (unlinkat(dir_fd, name, 0) == 0 || errno == ENOENT) return;
  if (depth > 256) return;
  int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == EACCES) {
    int path_fd = openat(dir_fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (path_fd >= 0) {
      std::string link = "/proc/self/fd/" + std::to_string(path_fd);
      chmod(link.c_str(), 0700);
      close(path_fd);
    }
    fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  }
  if (fd < 0) return;
  // Its entries go only if it may be written and searched.
  fchmod(fd, 0700);
  DIR* dir = fdopendir(fd);
  if (!dir) {
    close(fd);
    return;
  }
  while (dirent* e = readdir(dir)) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    remove_tree_at(dirfd(dir), e->d_name, depth + 1);
  }
  closedir(dir);
  unlinkat(dir_fd, name, AT_REMOVEDIR);
}

void remove_workdir(const std::string& workdir) {
  if (workdir.empty()) return;
  size_t slash = workdir.rfind('/');
  if (slash == std::string::npos) return;
  int parent =
      open(slash == 0 ? "/" : workdir.substr(0, slash).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (parent < 0) return;
  remove_tree_at(parent, workdir.c_str() + slash + 1, 0);
  close(parent);
}

// The direct children of the calling (single-threaded) process: from
// /proc/self/task/<pid>/children where the kernel has it, else by
// scanning every process's parent in /proc.
std::vector<pid_t> children_of_self() {
  std::vector<pid_t> found;
  pid_t self = getpid();
  std::string path = "/proc/self/task/" + std::to_string(self) + "/children";
  if (FILE* f = fopen(path.c_str(), "re")) {
    long pid;
    while (fscanf(f, "%ld", &pid) == 1)
      found.push_back(pid_t(pid));
    fclose(f);
    return found;
  }
  DIR* proc = opendir("/proc");
  if (!proc) return found;
  while (dirent* e = readdir(proc)) {
    char* end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end || pid <= 0) continue;
    char stat_path[64], buf[512];
    snprintf(stat_path, sizeof stat_path, "/proc/%ld/stat", pid);
    int fd = open(stat_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    const char* after = strrchr(buf, ')');
    char state;
    long ppid;
    if (after && sscanf(after + 1, " %c %ld", &state, &ppid) == 2 && ppid == self) {
      found.push_back(pid_t(pid));
    }
  }
  closedir(proc);
  return found;
}

// Kills the worker's process group, then every process that is (or
// becomes, as its ancestors die) a child of the keeper, and reaps them.
void kill_descendants(pid_t worker) {
  kill(-worker, SIGKILL);
  for (int round = 0; round < kMaxKillRounds; ++round) {
    std::vector<pid_t> left = children_of_self();
    if (left.empty()) break;
    for (pid_t pid : left)
      kill(pid, SIGKILL);
    while (waitpid(-1, nullptr, 0) > 0) {
    }
  }
}

// Copies the worker's diagnostics to the node's stderr: control bytes
// (escape sequences above all) become '?', and at most
// kDiagBytesPerSecond pass per second.
class DiagCopier {
 public:
  DiagCopier(int from, int to) : from_(from), to_(to) {}

  // Reads what is there; false at end of file.
  bool pump() {
    char buf[4096];
    ssize_t n = read(from_, buf, sizeof buf);
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    if (n == 0) return false;
    copy(buf, size_t(n));
    return true;
  }

  // After the worker exited: what its pipe still holds, without waiting
  // (a child of the worker may hold the pipe open).
  void drain() {
    int flags = fcntl(from_, F_GETFL);
    if (flags >= 0) fcntl(from_, F_SETFL, flags | O_NONBLOCK);
    for (int i = 0; i < 64 && pump();) {
      ++i;
    }
    note_dropped();
  }

 private:
  void copy(char* buf, size_t n) {
    time_t now = time(nullptr);
    if (now != second_) {
      note_dropped();
      second_ = now;
      sent_ = 0;
    }
    if (sent_ >= kDiagBytesPerSecond) {
      dropped_ += n;
      return;
    }
    if (n > kDiagBytesPerSecond - sent_) {
      dropped_ += n - (kDiagBytesPerSecond - sent_);
      n = kDiagBytesPerSecond - sent_;
    }
    for (size_t i = 0; i < n; ++i) {
      unsigned char c = static_cast<unsigned char>(buf[i]);
      if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) buf[i] = '?';
    }
    sent_ += n;
    write_all(buf, n);
  }

  void note_dropped() {
    if (dropped_ == 0) return;
    char note[96];
    int len = snprintf(note, sizeof note, "\npyport_worker: %zu bytes of diagnostics dropped\n",
                       dropped_);
    dropped_ = 0;
    if (len > 0) write_all(note, size_t(len));
  }

  void write_all(const char* p, size_t n) {
    if (to_ < 0) return;
    while (n > 0) {
      ssize_t w = write(to_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return;
      p += w;
      n -= size_t(w);
    }
  }

  int from_;
  int to_;
  time_t second_ = 0;
  size_t sent_ = 0;
  size_t dropped_ = 0;
};

// The keeper's pid as the worker saw it right after the fork (0 from
// inside a new pid namespace).
pid_t g_keeper_seen = -1;

// Closes every descriptor from 3 up except `a`, `b` and `c` (-1: none).
void close_all_but(int a, int b, int c = -1) {
  int keeps[3] = {a, b, c};
  std::sort(keeps, keeps + 3);
  unsigned from = 3;
  for (int keep : keeps) {
    if (keep < int(from)) continue;
    if (keep > int(from)) syscall(SYS_close_range, from, unsigned(keep - 1), 0u);
    from = unsigned(keep) + 1;
  }
  syscall(SYS_close_range, from, ~0u, 0u);
}

// The keeper's life after the fork. `signals` are blocked already.
[[noreturn]] void run_keeper(pid_t worker, const sigset_t& signals, int diag_read,
                             const std::string& workdir, KeeperHooks* hooks) {
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  // The node gone (its child-setup process, our parent): end the worker.
  if (!hooks || hooks->dies_with_parent()) prctl(PR_SET_PDEATHSIG, SIGTERM);
  // Diagnostics are copied to the node's stderr when that is a file or a
  // pipe (a log); a terminal is never kept, so nothing can reach it.
  int node_stderr = isatty(2) ? -1 : fcntl(2, F_DUPFD_CLOEXEC, 3);
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    for (int fd = 0; fd <= 2; ++fd)
      dup2(null_fd, fd);
  }
  // Only what the loop uses stays open: no descriptor of the frame channel.
  close_all_but(diag_read, node_stderr, hooks ? hooks->fd() : -1);

  int sfd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
  DiagCopier diag(diag_read, node_stderr);
  bool diag_open = diag_read >= 0;
  int status = 0;
  bool done = false;
  time_t checked = time(nullptr);
  while (!done) {
    int hook_fd = hooks ? hooks->fd() : -1;
    pollfd fds[3] = {
        {sfd, POLLIN, 0}, {diag_open ? diag_read : -1, POLLIN, 0}, {hook_fd, POLLIN, 0}};
    int rc = poll(fds, 3, sfd >= 0 && !hooks ? -1 : hooks ? 1000 : 100);
    if (rc < 0 && errno != EINTR) break;
    if (hook_fd >= 0 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) hooks->on_readable();
    if (hooks && time(nullptr) != checked) {
      checked = time(nullptr);
      std::string wrong = hooks->check();
      if (!wrong.empty()) {
        dprintf(node_stderr, "pyport_worker: keeper: ending the worker: %s\n", wrong.c_str());
        kill(worker, SIGKILL);
      }
    }
    if (diag_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) diag_open = diag.pump();
    if (sfd >= 0 && (fds[0].revents & POLLIN)) {
      signalfd_siginfo info;
      while (read(sfd, &info, sizeof info) == ssize_t(sizeof info)) {
        if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGHUP) {
          kill(worker, SIGKILL);
          kill(-worker, SIGKILL);
        }
      }
    }
    // Reap whatever ended (orphans included), noting the worker's status.
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
      if (pid == worker) status = st, done = true;
    }
    if (pid < 0 && errno == ECHILD) done = true;
  }
  if (diag_open) diag.drain();
  kill_descendants(worker);
  remove_workdir(workdir);
  if (hooks) hooks->after_worker();
  if (hooks) hooks->on_exit(status);
  exit_as(status);
}

}  // namespace

[[noreturn]] void exit_as(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    sigprocmask(SIG_UNBLOCK, &one, nullptr);
    raise(sig);
    _exit(128 + sig);
  }
  _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

std::string start_keeper(const std::string& workdir, KeeperHooks* hooks) {
  // The worker's stderr until it has its own relay: a pipe to the keeper.
  int diag[2];
  if (pipe2(diag, O_CLOEXEC) != 0) {
    return std::string("cannot create the diagnostics pipe: ") + strerror(errno);
  }
  // Out of the node's session: no controlling terminal, no job-control
  // signals from the node's terminal (fails harmlessly if already a leader).
  setsid();
  // Signals are blocked before the fork so that none arrives before the
  // keeper is ready for it; the worker restores the mask.
  sigset_t signals, old;
  sigemptyset(&signals);
  for (int sig : {SIGCHLD, SIGTERM, SIGHUP})
    sigaddset(&signals, sig);
  sigprocmask(SIG_BLOCK, &signals, &old);
  pid_t keeper = getpid();
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  pid_t child = fork();
  if (child < 0) {
    int err = errno;
    sigprocmask(SIG_SETMASK, &old, nullptr);
    close(diag[0]);
    close(diag[1]);
    return std::string("cannot fork the worker from its keeper: ") + strerror(err);
  }
  if (child > 0) {
    close(diag[1]);
    run_keeper(child, signals, diag[0], workdir, hooks);
  }
  // The worker.
  sigprocmask(SIG_SETMASK, &old, nullptr);
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  // 0 from inside a new pid namespace: the keeper is outside it.
  g_keeper_seen = getppid() == 0 ? 0 : keeper;
  if (!die_with_keeper()) _exit(1);
  close(diag[0]);
  if (dup2(diag[1], 2) < 0) _exit(1);
  close(diag[1]);
  // A session and process group of its own: the keeper kills the group.
  setsid();
  return "";
}

void keeper_is_now(pid_t parent) {
  g_keeper_seen = parent;
}

bool die_with_keeper() {
  // The keeper gone (killed from outside): the worker goes too.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  return getppid() == g_keeper_seen;
}

}  // namespace pyport
