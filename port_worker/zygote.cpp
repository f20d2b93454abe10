#include "zygote.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "keeper.hpp"

namespace pyport {

namespace {

// The init_code the zygote reads from its stdin, at most this long.
constexpr uint32_t kMaxInitCode = 16u << 20;
// How long the zygote waits for a connected port process's descriptors.
constexpr int kReceiveTimeoutSeconds = 2;

bool read_exact(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

void write_line(int fd, std::string line) {
  // One line: the owner reads line by line.
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  line += '\n';
  const char* p = line.data();
  size_t n = line.size();
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= size_t(w);
  }
}

// Threads of this process other than the caller, by name ("" if only one).
std::string other_threads() {
  std::string names;
  int count = 0;
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return "";
  std::string self = std::to_string(gettid());
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.' || self == e->d_name) continue;
    ++count;
    char comm[64] = "?";
    std::string path = std::string("/proc/self/task/") + e->d_name + "/comm";
    if (FILE* f = fopen(path.c_str(), "re")) {
      if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\n")] = '\0';
      fclose(f);
    }
    if (count <= 8) names += std::string(names.empty() ? "" : ", ") + comm;
  }
  closedir(dir);
  if (count == 0) return "";
  return std::to_string(count) + " (" + names + ")";
}

// The names of Python's threads other than the main one, if threading is
// imported ("" if none), for the message that refuses them.
std::string python_threads() {
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  PyObject* threading = modules ? PyDict_GetItemString(modules, "threading") : nullptr;
  if (!threading) return "";
  PyRef names =
      PyRef::steal(PyRun_String("', '.join(t.name for t in enumerate() if t is not main_thread())",
                                // Run in threading's own namespace: its enumerate and main_thread.
                                Py_eval_input, PyModule_GetDict(threading), nullptr));
  const char* text = names ? PyUnicode_AsUTF8(names.get()) : nullptr;
  std::string out = text ? text : "";
  PyErr_Clear();
  return out;
}

// In a warm worker's keeper: the connection to the worker's port process.
class WarmHooks : public KeeperHooks {
 public:
  explicit WarmHooks(int conn) : conn_(conn) {}
  int fd() const override { return open_ ? conn_ : -1; }
  void on_readable() override {
    char buf[16];
    ssize_t n = recv(conn_, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) return;
    // The port process is gone or asks for the end: the keeper's SIGTERM
    // path kills the worker's tree.
    open_ = false;
    raise(SIGTERM);
  }
  bool dies_with_parent() const override { return false; }
  void on_exit(int status) override {
    int32_t s = status;
    send(conn_, &s, sizeof s, MSG_NOSIGNAL);
  }

 private:
  int conn_;
  bool open_ = true;
};

// In the zygote's child for one connection: becomes that worker's keeper.
// Returns only in the worker.
void become_keeper(int conn, int fds[3]) {
  for (int i = 0; i < 3; ++i) {
    if (dup2(fds[i], i) < 0) _exit(1);
  }
  for (int i = 0; i < 3; ++i)
    if (fds[i] > 2) close(fds[i]);
  int32_t pid = getpid();
  if (send(conn, &pid, sizeof pid, MSG_NOSIGNAL) != ssize_t(sizeof pid)) _exit(1);
  // The keeper never returns: its hooks live as long as it does.
  auto* hooks = new WarmHooks(conn);
  std::string error = start_keeper("", hooks);
  if (!error.empty()) {
    std::fprintf(stderr, "pyport_worker: warm_start: %s\n", error.c_str());
    _exit(1);
  }
  close(conn);
}

struct Received {
  int conn = -1;
  int fds[3] = {-1, -1, -1};
};

// Takes one connection: the port process's descriptors, from a process
// of our own uid only.
bool receive(int listen_fd, Received& r) {
  r.conn = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (r.conn < 0) return false;
  ucred cred{};
  socklen_t len = sizeof cred;
  timeval tv{kReceiveTimeoutSeconds, 0};
  setsockopt(r.conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (getsockopt(r.conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != getuid()) {
    close(r.conn);
    return false;
  }
  char byte;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = recvmsg(r.conn, &msg, MSG_CMSG_CLOEXEC);
  cmsghdr* c = n == 1 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
      c->cmsg_len != CMSG_LEN(3 * sizeof(int)) || (msg.msg_flags & MSG_CTRUNC)) {
    if (c && c->cmsg_type == SCM_RIGHTS) {
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int* got = reinterpret_cast<int*>(CMSG_DATA(c));
      for (size_t i = 0; i < k && i < 3; ++i)
        close(got[i]);
    }
    close(r.conn);
    return false;
  }
  std::memcpy(r.fds, CMSG_DATA(c), sizeof r.fds);
  return true;
}

void close_received(Received& r) {
  for (int fd : r.fds)
    if (fd >= 0) close(fd);
  if (r.conn >= 0) close(r.conn);
}

}  // namespace

int run_warm_zygote(Worker& worker) {
  // Out of the node's session; ends with the node's child-setup process.
  setsid();
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
  // fd 1 says READY or ERROR; Python's own stdout and stderr go nowhere
  // (a forked worker gets its log pipes on fds 1 and 2 before it runs).
  int say = fcntl(1, F_DUPFD_CLOEXEC, 3);
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (say < 0 || null_fd < 0) return 1;
  dup2(null_fd, 1);
  dup2(null_fd, 2);
  close(null_fd);

  // Two texts, each a 4-byte big-endian length and the text: the venv's
  // activation (or nothing), then the init_code.
  std::string texts[2];
  for (std::string& text : texts) {
    uint8_t head[4];
    if (!read_exact(0, head, 4)) {
      write_line(say, "ERROR cannot read the init_code from stdin");
      return 1;
    }
    uint32_t size = uint32_t(head[0]) << 24 | uint32_t(head[1]) << 16 | uint32_t(head[2]) << 8 |
                    uint32_t(head[3]);
    if (size > kMaxInitCode) {
      write_line(say, "ERROR init_code too large: " + std::to_string(size) + " bytes");
      return 1;
    }
    text.assign(size, '\0');
    if (size && !read_exact(0, &text[0], size)) {
      write_line(say, "ERROR cannot read the init_code from stdin");
      return 1;
    }
  }

  std::string error = worker.prepare_warm(texts[0], texts[1]);
  if (!error.empty()) {
    write_line(say, "ERROR " + error);
    return 1;
  }
  std::string threads = other_threads();
  if (!threads.empty()) {
    std::string named = python_threads();
    if (!named.empty()) threads += ", Python threads: " + named;
    write_line(say, "ERROR threads running in the zygote after imports and init_code: " + threads +
                        "; threads do not survive a fork, so a warm_start pool needs a "
                        "single-threaded zygote (start threads lazily, in each worker)");
    return 1;
  }

  // The socket in a directory only our uid can enter.
  const char* tmp = getenv("TMPDIR");
  std::string dir = std::string(tmp && tmp[0] == '/' ? tmp : "/tmp") + "/pyport-warm-XXXXXX";
  if (!mkdtemp(&dir[0])) {
    write_line(say, "ERROR cannot make the socket's directory: " + std::string(strerror(errno)));
    return 1;
  }
  std::string path = dir + "/s";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  int listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (path.size() >= sizeof addr.sun_path || listen_fd < 0) {
    rmdir(dir.c_str());
    write_line(say, "ERROR cannot make the zygote's socket at " + path);
    return 1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
      listen(listen_fd, 64) < 0) {
    write_line(say, "ERROR cannot listen on " + path + ": " + strerror(errno));
    rmdir(dir.c_str());
    return 1;
  }
  write_line(say, "READY " + path);

  int status = 0;
  for (;;) {
    pollfd fds[2] = {{0, POLLIN, 0}, {listen_fd, POLLIN, 0}};
    int rc = poll(fds, 2, 1000);
    // Keepers that ended (those of workers started before are ours to reap).
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    if (rc < 0 && errno != EINTR) break;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[256];
      ssize_t n = read(0, buf, sizeof buf);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;  // the owner is gone
    }
    if (!(fds[1].revents & POLLIN)) continue;
    Received r;
    if (!receive(listen_fd, r)) continue;
    PyOS_BeforeFork();
    pid_t child = fork();
    if (child == 0) {
      close(listen_fd);
      close(say);
      become_keeper(r.conn, r.fds);
      // The worker: Python as the zygote left it.
      PyOS_AfterFork_Child();
      return -1;
    }
    PyOS_AfterFork_Parent();
    close_received(r);  // a failed fork closes the connection: the port process says so
  }
  unlink(path.c_str());
  rmdir(dir.c_str());
  return status;
}

void run_warm_port(const std::string& socket_path) {
  setsid();
  signal(SIGPIPE, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  int sfd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
  // The node gone (its child-setup process, our parent): end the worker.
  prctl(PR_SET_PDEATHSIG, SIGTERM);

  auto fail = [](const std::string& why) {
    report_start_failure(1, "warm_start: " + why, "warm_start");
    std::fprintf(stderr, "pyport_worker: warm_start: %s\n", why.c_str());
    _exit(1);
  };
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) fail("socket path too long: " + socket_path);
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  int conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (conn < 0 || connect(conn, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    fail("cannot reach the pool's zygote at " + socket_path + ": " + strerror(errno));
  }
  char byte = 'W';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(3 * sizeof(int));
  int fds[3] = {0, 1, 2};
  std::memcpy(CMSG_DATA(c), fds, sizeof fds);
  if (sendmsg(conn, &msg, MSG_NOSIGNAL) != 1) {
    fail(std::string("cannot hand the port to the zygote: ") + strerror(errno));
  }
  // Until the worker's keeper answers, fd 1 can still carry a start error;
  // then this process holds no descriptor of the frame channel, so the
  // worker's end is the port's end.
  int out = fcntl(1, F_DUPFD_CLOEXEC, 3);
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    dup2(null_fd, 0);
    dup2(null_fd, 1);
    close(null_fd);
  }
  int32_t values[2];  // the keeper's pid, then the worker's status
  int got = 0;
  bool shut = false;
  for (;;) {
    pollfd p[2] = {{conn, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (poll(p, 2, -1) < 0 && errno != EINTR) break;
    if (p[1].revents & POLLIN) {
      signalfd_siginfo info;
      while (read(sfd, &info, sizeof info) == ssize_t(sizeof info)) {
      }
      // No keeper yet (a zygote that does not answer): nothing to wait for;
      // a keeper forked meanwhile sees the connection end and ends too.
      if (got == 0) exit_as(SIGKILL);
      // The keeper sees the end of the connection and kills the worker.
      if (!shut) shutdown(conn, SHUT_WR);
      shut = true;
    }
    if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    ssize_t n = recv(conn, &values[got], sizeof values[0], 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != ssize_t(sizeof values[0])) break;
    if (++got == 1 && out >= 0) {
      close(out);
      out = -1;
    }
    if (got == 2) exit_as(values[1]);
  }
  if (got == 0 && out >= 0) {
    report_start_failure(out, "warm_start: the pool's zygote did not start the worker",
                         "warm_start");
  }
  // The keeper died without a word (killed): as if the worker had been.
  exit_as(SIGKILL);
}

}  // namespace pyport
