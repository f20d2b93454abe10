#include "sandbox.hpp"

#include <Python.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "codec.hpp"
#include "erlang_module.hpp"
#include "keeper.hpp"
#include "msgpack_rw.hpp"

extern char** environ;

namespace pyport {

namespace {

// ---- Landlock (its uapi, spelled out: Debian 12's headers predate ABI 4) ----

constexpr uint64_t kFsExecute = 1ull << 0;
constexpr uint64_t kFsWriteFile = 1ull << 1;
constexpr uint64_t kFsReadFile = 1ull << 2;
constexpr uint64_t kFsReadDir = 1ull << 3;
constexpr uint64_t kFsRemoveDir = 1ull << 4;
constexpr uint64_t kFsRemoveFile = 1ull << 5;
constexpr uint64_t kFsMakeChar = 1ull << 6;
constexpr uint64_t kFsMakeDir = 1ull << 7;
constexpr uint64_t kFsMakeReg = 1ull << 8;
constexpr uint64_t kFsMakeSock = 1ull << 9;
constexpr uint64_t kFsMakeFifo = 1ull << 10;
constexpr uint64_t kFsMakeBlock = 1ull << 11;
constexpr uint64_t kFsMakeSym = 1ull << 12;
constexpr uint64_t kFsRefer = 1ull << 13;     // ABI 2
constexpr uint64_t kFsTruncate = 1ull << 14;  // ABI 3
constexpr uint64_t kFsIoctlDev = 1ull << 15;  // ABI 5
constexpr uint64_t kNetBindTcp = 1ull << 0;   // ABI 4
constexpr uint64_t kNetConnectTcp = 1ull << 1;
constexpr uint64_t kScopeAbstractUnix = 1ull << 0;  // ABI 6
constexpr uint64_t kScopeSignal = 1ull << 1;
constexpr int kRulePathBeneath = 1;
constexpr unsigned kCreateRulesetVersion = 1u << 0;

struct RulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};

struct __attribute__((packed)) PathBeneathAttr {
  uint64_t allowed_access;
  int32_t parent_fd;
};

int landlock_abi() {
  long v = syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  return v < 0 ? -errno : int(v);
}

// Every filesystem right the kernel's ABI knows.
uint64_t fs_rights(int abi) {
  uint64_t all = (kFsMakeSym << 1) - 1;
  if (abi >= 2) all |= kFsRefer;
  if (abi >= 3) all |= kFsTruncate;
  if (abi >= 5) all |= kFsIoctlDev;
  return all;
}

constexpr uint64_t kFsWriteRights = kFsWriteFile | kFsRemoveDir | kFsRemoveFile | kFsMakeChar |
                                    kFsMakeDir | kFsMakeReg | kFsMakeSock | kFsMakeFifo |
                                    kFsMakeBlock | kFsMakeSym | kFsRefer | kFsTruncate;
constexpr uint64_t kFsFileRights =
    kFsExecute | kFsWriteFile | kFsReadFile | kFsTruncate | kFsIoctlDev;

class Ruleset {
 public:
  Ruleset(int abi, uint64_t fs, uint64_t net, uint64_t scoped) : fs_(fs) {
    RulesetAttr attr{fs, abi >= 4 ? net : 0, abi >= 6 ? scoped : 0};
    size_t size = abi >= 6 ? sizeof attr : abi >= 4 ? 2 * sizeof(uint64_t) : sizeof(uint64_t);
    fd_ = int(syscall(SYS_landlock_create_ruleset, &attr, size, 0));
  }
  ~Ruleset() {
    if (fd_ >= 0) close(fd_);
  }
  Ruleset(const Ruleset&) = delete;
  Ruleset& operator=(const Ruleset&) = delete;
  int fd() const { return fd_; }

  // Allows `access` beneath path. A path that does not exist is skipped
  // (/lib64 on some systems); any other failure is an error.
  std::string allow(const std::string& path, uint64_t access) {
    int pfd = open(path.c_str(), O_PATH | O_CLOEXEC);
    if (pfd < 0) {
      if (errno == ENOENT || errno == ENOTDIR) return "";
      return "Landlock: cannot open " + path + ": " + strerror(errno);
    }
    struct stat st;
    if (fstat(pfd, &st) == 0 && !S_ISDIR(st.st_mode)) access &= kFsFileRights;
    PathBeneathAttr rule{access & fs_, pfd};
    long rc = syscall(SYS_landlock_add_rule, fd_, kRulePathBeneath, &rule, 0);
    int err = errno;
    close(pfd);
    if (rc < 0) return "Landlock: cannot add a rule for " + path + ": " + strerror(err);
    return "";
  }

  std::string restrict_self() {
    if (syscall(SYS_landlock_restrict_self, fd_, 0) < 0) {
      return std::string("Landlock: restrict_self: ") + strerror(errno);
    }
    return "";
  }

 private:
  int fd_ = -1;
  uint64_t fs_;
};

// ---- seccomp: refusals are named through SIGSYS ----

// The first syscall refused since the last take_forbidden(): written by the
// SIGSYS handler, so a lock-free global is the only possible shape.
std::atomic<int> g_forbidden{-1};

void on_sigsys(int, siginfo_t* info, void* context) {
  int none = -1;
  g_forbidden.compare_exchange_strong(none, info->si_syscall);
  // The syscall was not made: its result is what the handler leaves in the
  // return register.
  auto* uc = static_cast<ucontext_t*>(context);
#if defined(__x86_64__)
  uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
#elif defined(__aarch64__)
  uc->uc_mcontext.regs[0] = uint64_t(-EPERM);
#else
#error "the SIGSYS handler needs the return register of this architecture"
#endif
}

// A libseccomp filter under construction.
class Filter {
 public:
  Filter() : ctx_(seccomp_init(SCMP_ACT_ALLOW)) {}
  ~Filter() {
    if (ctx_) seccomp_release(ctx_);
  }
  Filter(const Filter&) = delete;
  Filter& operator=(const Filter&) = delete;
  bool ok() const { return ctx_ && error_.empty(); }
  const std::string& error() const { return error_; }
  scmp_filter_ctx ctx() const { return ctx_; }

  template <typename... Args>
  void rule(uint32_t action, const char* name, Args... args) {
    if (!ctx_ || !error_.empty()) return;
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) return;  // not a syscall of this architecture
    const scmp_arg_cmp cmps[] = {args..., scmp_arg_cmp{}};
    int rc = seccomp_rule_add_array(ctx_, action, nr, unsigned(sizeof...(Args)), cmps);
    if (rc < 0) error_ = std::string("seccomp: rule for ") + name + ": " + strerror(-rc);
  }
  template <typename... Args>
  void trap(const char* name, Args... args) {
    rule(SCMP_ACT_TRAP, name, args...);
  }

 private:
  scmp_filter_ctx ctx_;
  std::string error_;
};

// ---- the sandbox's side of the keeper (keeper.hpp) ----

std::string errno_text(const char* what) {
  return std::string(what) + ": " + strerror(errno);
}

bool write_file(const char* path, const std::string& text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == ssize_t(text.size());
  close(fd);
  return ok;
}

std::string read_small_file(const std::string& path) {
  std::string text;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    text.append(buf, size_t(n));
  close(fd);
  return text;
}

// ---- the worker's cgroup (made by the keeper while it is privileged) ----

// One cgroup per worker, in the memory and pids controllers (cgroup v1, as
// mounted at /sys/fs/cgroup/{memory,pids}, or v2's unified tree): it counts
// every page the worker and its jobs charge (anonymous memory, memfd, SysV
// and POSIX shared memory, tmpfs files, page cache) and every task. The
// keeper joins it before the fork, so everything the worker starts is in
// it, and leaves it only to remove it. The limits are the pool's
// max_memory and max_processes for the worker and all its jobs together.
class WorkerCgroup {
 public:
  // Returns an empty string, or why there is none (the rlimits then stand
  // alone).
  std::string create(const Options& options, const std::string& name) {
    if (!options.max_memory && !options.max_processes) return "no memory or process limit to count";
    std::string v2 = own_path("0::");
    std::string controllers = read_small_file("/sys/fs/cgroup/cgroup.controllers");
    if (!controllers.empty()) {
      if (controllers.find("memory") == std::string::npos) return "cgroup v2 without memory";
      std::string parent = "/sys/fs/cgroup" + v2;
      // The controllers must be enabled for the node's cgroup's children
      // (v2 allows that only where no process sits in the parent itself:
      // put the node in a cgroup of its own).
      write_file((parent + "/cgroup.subtree_control").c_str(), "+memory +pids");
      std::string dir = parent + "/" + name;
      if (mkdir(dir.c_str(), 0755) != 0) return errno_text(("cannot create " + dir).c_str());
      dirs_.push_back(dir);
      if (access((dir + "/memory.max").c_str(), W_OK) != 0)
        return "cgroup v2: " + parent + " does not delegate the memory controller";
      version_ = 2;
      if (options.max_memory) {
        if (!write_file((dir + "/memory.max").c_str(), std::to_string(options.max_memory)))
          return fail("memory.max");
        write_file((dir + "/memory.swap.max").c_str(), "0");
      }
      if (options.max_processes &&
          !write_file((dir + "/pids.max").c_str(), std::to_string(pids_max(options))))
        return fail("pids.max");
      return "";
    }
    std::string mem_parent = "/sys/fs/cgroup/memory" + own_path("memory");
    std::string pids_parent = "/sys/fs/cgroup/pids" + own_path("pids");
    if (access((mem_parent + "/cgroup.procs").c_str(), W_OK) != 0)
      return "no writable cgroup v1 memory controller (" + mem_parent + ")";
    std::string mem = mem_parent + "/" + name;
    if (mkdir(mem.c_str(), 0755) != 0) return errno_text(("cannot create " + mem).c_str());
    dirs_.push_back(mem);
    version_ = 1;
    if (options.max_memory) {
      if (!write_file((mem + "/memory.limit_in_bytes").c_str(), std::to_string(options.max_memory)))
        return fail("memory.limit_in_bytes");
      // Swap may not extend it (the file exists with swap accounting only).
      write_file((mem + "/memory.memsw.limit_in_bytes").c_str(),
                 std::to_string(options.max_memory));
    }
    if (options.max_processes) {
      std::string pids = pids_parent + "/" + name;
      if (access((pids_parent + "/cgroup.procs").c_str(), W_OK) == 0 &&
          mkdir(pids.c_str(), 0755) == 0) {
        dirs_.push_back(pids);
        if (!write_file((pids + "/pids.max").c_str(), std::to_string(pids_max(options))))
          return fail("pids.max");
        pids_ = true;
      }
    }
    return "";
  }
  int version() const { return version_; }
  bool counts_pids() const { return version_ == 2 || pids_; }
  // Moves process `pid` (all its threads) in.
  bool move(pid_t pid) {
    bool ok = true;
    for (const std::string& dir : dirs_)
      ok = write_file((dir + "/cgroup.procs").c_str(), std::to_string(pid)) && ok;
    return ok;
  }
  // Once every task in it is gone.
  void remove() {
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
      for (int i = 0; i < 100 && rmdir(it->c_str()) != 0 && errno == EBUSY; ++i)
        usleep(1000);
    }
    dirs_.clear();
  }

 private:
  // This process's cgroup path in one hierarchy ("memory", or "0::" for v2).
  static std::string own_path(const std::string& controller) {
    std::string text = read_small_file("/proc/self/cgroup");
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      if (controller == "0::") {
        if (line.rfind("0::", 0) == 0) return trim(line.substr(3));
        continue;
      }
      size_t a = line.find(':'), b = line.find(':', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      std::string list = "," + line.substr(a + 1, b - a - 1) + ",";
      if (list.find("," + controller + ",") != std::string::npos) return trim(line.substr(b + 1));
    }
    return "";
  }
  static std::string trim(std::string p) {
    if (p == "/") return "";
    while (!p.empty() && p.back() == '/')
      p.pop_back();
    return p;
  }
  // max_processes counts the worker's processes and threads (the keeper,
  // the relay and the pid namespace's init stay out of the cgroup).
  static uint64_t pids_max(const Options& options) { return options.max_processes; }
  std::string fail(const char* file) {
    std::string why = errno_text((std::string("cannot write ") + file).c_str());
    return why;
  }

  std::vector<std::string> dirs_;
  int version_ = 0;
  bool pids_ = false;
};

// ---- the keeper's watch over the worker's limits ----

// A job that lowers its worker's limits (descriptors to 4, CPU to 1 s) or
// its priority breaks the worker for every later job: the keeper, outside
// the sandbox, checks them every second and replaces a worker whose limits
// are not what it started with (the pool starts a new one).
struct LimitWatch {
  const Options* options = nullptr;
  LimitScope scope = LimitScope::kAll;
  InheritedLimits inherited{};
  int nice = 0;
  int policy = SCHED_OTHER;
  pid_t worker = 0;  // set once the worker is confined

  // What is wrong with the worker, or an empty string.
  std::string check() const {
    if (worker <= 0) return "";
    std::string changed = limits_changed(worker, *options, scope, inherited);
    if (!changed.empty()) return changed;
    errno = 0;
    int now = getpriority(PRIO_PROCESS, id_t(worker));
    if (errno == 0 && now != nice) return "its nice value is " + std::to_string(now);
    int pol = sched_getscheduler(worker);
    if (pol >= 0 && (pol & ~SCHED_RESET_ON_FORK) != policy)
      return "its scheduling policy is " + std::to_string(pol);
    return "";
  }
};

// The keeper's side of a sandbox. The worker speaks on a socketpair:
// "P<pid>" as soon as it exists (its host pid: the keeper moves it into
// the cgroup and answers one byte, while the worker starts Python, so the
// move's RCU grace period costs no start time), "C" once it is confined
// with its limits applied (the limit watch starts).
class SandboxKeeper : public KeeperHooks {
 public:
  WorkerCgroup cgroup;
  LimitWatch watch;
  int channel = -1;

  int fd() const override { return channel; }
  std::string check() override { return watch.check(); }
  void on_readable() override {
    char buf[64];
    ssize_t n = read(channel, buf, sizeof buf - 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {  // the worker closed it (confined) or is gone
      close(channel);
      channel = -1;
      return;
    }
    buf[n] = '\0';
    for (char* p = buf; *p; ++p) {
      if (*p == 'P') {
        pid = pid_t(strtol(p + 1, &p, 10));
        --p;
        // Not in its cgroup: no answer, the worker gives up (never a
        // worker that the report says is counted and is not).
        if (cgroup.version() && !cgroup.move(pid)) {
          close(channel);
          channel = -1;
          return;
        }
        (void)!write(channel, "k", 1);
      } else if (*p == 'C') {
        watch.worker = pid;
      }
    }
  }
  void after_worker() override { cgroup.remove(); }

 private:
  pid_t pid = 0;
};

// Points fds 0 and 1 at /dev/null, moves `fd` to 3 and closes every other
// descriptor but 2: a process that only waits holds no end of the frame
// channel (the owner sees end of file as soon as the worker is gone).
void keep_only(int fd) {
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    dup2(null_fd, 0);
    dup2(null_fd, 1);
  }
  if (fd != 3) {
    dup2(fd, 3);
  }
  syscall(SYS_close_range, 4u, ~0u, 0u);
}

// Between the keeper and the worker, in the sandbox's user namespace: made
// the pid namespace, whose init is its only child. Exits as the worker did:
// the status comes on `status_fd` from a warm worker's init (an init cannot
// re-raise a signal on itself), else is the child's own.
[[noreturn]] void run_relay(pid_t child, int status_fd) {
  keep_only(status_fd);
  status_fd = 3;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  int status = 0;
  for (;;) {
    pid_t pid = waitpid(child, &status, 0);
    if (pid == child || (pid < 0 && errno != EINTR)) break;
  }
  int reported;
  if (status_fd >= 0 && read(status_fd, &reported, sizeof reported) == ssize_t(sizeof reported))
    status = reported;
  exit_as(status);
}

// A warm worker's pid namespace's init (pid 1; the worker is pid 2, so the
// kernel sends it RLIMIT_CPU's SIGXCPU, which it would not send an init):
// reaps whatever is orphaned in the namespace, and when the worker exits
// passes its status to the relay and exits, which ends every process left
// in the namespace.
[[noreturn]] void run_ns_init(pid_t worker, int status_fd) {
  sigset_t set;
  sigfillset(&set);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  keep_only(status_fd);  // nothing of the worker's: no channel, no pipe
  status_fd = 3;
  for (;;) {
    int st;
    pid_t pid = waitpid(-1, &st, 0);
    if (pid == worker) {
      (void)!write(status_fd, &st, sizeof st);
      _exit(0);
    }
    if (pid < 0 && errno != EINTR) _exit(1);
  }
}

bool drop_capabilities() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  return syscall(SYS_capset, &header, data) == 0;
}

void write_atom(ByteBuffer& out, std::string_view name) {
  mp::write_ext_header(out, mp::kExtAtom, uint32_t(name.size()));
  out.append(name.data(), name.size());
}

// The pool's environment, sent by the owner as one {packet,4} frame on
// stdin before anything else: NAME=VALUE entries separated by NUL bytes.
std::string read_env_frame(std::vector<std::string>& env) {
  auto read_all = [](void* buf, size_t len) {
    auto* p = static_cast<char*>(buf);
    while (len > 0) {
      ssize_t n = read(0, p, len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      p += n;
      len -= size_t(n);
    }
    return true;
  };
  uint8_t head[4];
  if (!read_all(head, 4)) return "--env-stdin: no environment frame on stdin";
  uint32_t size =
      uint32_t(head[0]) << 24 | uint32_t(head[1]) << 16 | uint32_t(head[2]) << 8 | head[3];
  if (size > (1u << 20)) return "--env-stdin: the environment frame passes 1 MiB";
  std::string payload(size, '\0');
  if (size && !read_all(payload.data(), size)) return "--env-stdin: the environment frame is cut";
  size_t pos = 0;
  while (pos < payload.size()) {
    size_t end = payload.find('\0', pos);
    if (end == std::string::npos) end = payload.size();
    std::string kv = payload.substr(pos, end - pos);
    pos = end + 1;
    if (kv.empty()) continue;
    size_t eq = kv.find('=');
    if (eq == 0 || eq == std::string::npos)
      return "--env-stdin: an entry is not NAME=VALUE: '" + kv.substr(0, 64) + "'";
    env.push_back(kv);
  }
  // Not left in this process's memory longer than needed.
  explicit_bzero(payload.data(), payload.size());
  return "";
}

// ---- the job's view of the filesystem ----

struct MountAttr {
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};
constexpr uint64_t kMountAttrRdonly = 0x1, kMountAttrNosuid = 0x2, kMountAttrNodev = 0x4,
                   kMountAttrNoexec = 0x8;

// Sets flags on the mount at `path` (and every mount below it): flags are
// only added, so flags the host locked stay as they are.
std::string set_mount_attr(const std::string& path, uint64_t attrs, bool recursive) {
  MountAttr attr{attrs, 0, 0, 0};
  if (syscall(SYS_mount_setattr, AT_FDCWD, path.c_str(), recursive ? unsigned(AT_RECURSIVE) : 0u,
              &attr, sizeof attr) != 0) {
    return errno_text(("mount_setattr " + path).c_str());
  }
  return "";
}

// The BPF program of a filter, as seccomp(SECCOMP_SET_MODE_FILTER) takes it.
std::string export_filter(scmp_filter_ctx ctx, std::vector<uint8_t>& out) {
  int fd = int(syscall(SYS_memfd_create, "seccomp", unsigned(MFD_CLOEXEC)));
  if (fd < 0) return errno_text("memfd_create");
  int rc = seccomp_export_bpf(ctx, fd);
  off_t size = rc == 0 ? lseek(fd, 0, SEEK_END) : -1;
  out.resize(size > 0 ? size_t(size) : 0);
  bool ok = size > 0 && pread(fd, out.data(), out.size(), 0) == ssize_t(out.size());
  close(fd);
  if (!ok) {
    out.clear();
    return rc < 0 ? std::string("seccomp_export_bpf: ") + strerror(-rc) : "cannot read the filter";
  }
  return "";
}

// Makes every missing directory of `path` (absolute, below the new root's
// tmpfs; never below a bind mount, see build_view).
std::string make_dirs(const std::string& path, mode_t mode = 0755) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string part = path.substr(0, pos);
    if (mkdir(part.c_str(), mode) != 0 && errno != EEXIST)
      return errno_text(("cannot create " + part).c_str());
  }
  return "";
}

bool is_below(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         (dir == "/" || path[dir.size()] == '/'));
}

}  // namespace

bool Sandbox::simulated_missing(const char* layer) const {
  for (const std::string& l : options_.test_unavailable)
    if (l == layer) return true;
  return false;
}

// A uid and gid of its own for each worker of a node that runs as root:
// the base plus the keeper's pid (unique while the worker lives; nothing
// it owns outlives it). Above the ranges that SSSD/AD id mapping and
// useradd hand out, below 2^31 for tools that read ids as signed.
constexpr uint32_t kIsolatedIdBase = 0x7F000000u;

std::string Sandbox::enter_early() {
  if (options_.env_stdin) {
    std::string error = read_env_frame(options_.env);
    if (!error.empty()) return error;
  }
  // The environment: only what was named (read before it is cleared).
  const char* tmpdir = getenv("TMPDIR");
  std::string parent = !options_.workdir_parent.empty() ? options_.workdir_parent
                       : tmpdir && *tmpdir              ? tmpdir
                                                        : "/tmp";
  std::vector<std::string> env;
  for (const std::string& name : options_.env_keep) {
    if (const char* v = getenv(name.c_str())) env.push_back(name + "=" + v);
  }
  env.insert(env.end(), options_.env.begin(), options_.env.end());
  // clearenv() forgets the strings but they stay in the initial stack
  // (and /proc/self/environ shows that memory): wipe them first.
  for (char** e = environ; e && *e; ++e)
    memset(*e, 0, strlen(*e));
  if (clearenv() != 0) return "cannot clear the environment";
  for (const std::string& kv : env)
    putenv(strdup(kv.c_str()));
  for (std::string& kv : options_.env)
    explicit_bzero(kv.data(), kv.size());
  options_.env.clear();
  if (!getenv("PATH")) setenv("PATH", "/usr/local/bin:/usr/bin:/bin", 1);

  // The sandbox's uid: root gives each worker an identity of its own (no
  // other process on the host has it, so no uid-based permission check
  // lets a job act on another pool's worker or the node), unless
  // privileges are allowed. Without root, the node's uid.
  uid_t uid = getuid();
  gid_t gid = getgid();
  bool drop = geteuid() == 0 && !(options_.sandbox_allow & kAllowPrivileges);
  if (drop) uid = gid = kIsolatedIdBase + uint32_t(getpid());

  // The private working directory, owned by the sandbox's uid.
  std::string templ = parent + (parent.back() == '/' ? "" : "/") + "pyport-job-XXXXXX";
  std::vector<char> path(templ.begin(), templ.end());
  path.push_back('\0');
  if (!mkdtemp(path.data())) {
    return "cannot create the working directory in " + parent + ": " + strerror(errno);
  }
  report_.workdir = path.data();
  if (drop && chown(path.data(), uid, gid) != 0) {
    rmdir(path.data());
    return errno_text("cannot give the working directory to the sandbox's uid");
  }

  // The cgroup, while the keeper still may make one.
  WorkerCgroup cgroup;
  std::string why = cgroup.create(options_, report_.workdir.substr(report_.workdir.rfind('/') + 1));
  if (!why.empty()) {
    cgroup.remove();
    cgroup = WorkerCgroup();
    unavailable("cgroup", why + " (the rlimits stand alone)");
  }
  report_.cgroup = cgroup.version();
  if (cgroup.version() && options_.max_processes && !cgroup.counts_pids())
    unavailable("cgroup_pids", "no writable pids controller: RLIMIT_NPROC stands alone");

  // The keeper (keeper.hpp) stays the parent; the worker goes on in the
  // child, still root until the uid drop below, so the keeper can remove
  // the working directory whatever the sandbox's uid left in it. It
  // watches the worker's limits, and removes the cgroup at the end.
  SandboxKeeper hooks;
  hooks.cgroup = std::move(cgroup);
  LimitWatch& watch = hooks.watch;
  watch.options = &options_;
  // What main.cpp applies to a sandboxed worker itself (the rest is per job).
  watch.scope = LimitScope::kProcess;
  watch.inherited = current_limits();
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, 0);
  watch.nice = errno ? 0 : nice;
  watch.policy = sched_getscheduler(0) & ~SCHED_RESET_ON_FORK;
  int channel[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) != 0)
    return errno_text("socketpair");
  hooks.channel = channel[0];
  fcntl(channel[0], F_SETFL, O_NONBLOCK);
  // It read the pool's environment: no process of its uid reads its memory.
  prctl(PR_SET_DUMPABLE, 0);
  std::string error = start_keeper(report_.workdir, &hooks);
  if (!error.empty()) {
    rmdir(path.data());
    hooks.after_worker();
    return error;
  }
  close(channel[0]);
  keeper_fd_ = channel[1];
  // The pid the owner knows, were this the worker (/proc is the host's).
  char self[32] = {};
  host_pid_ = readlink("/proc/self", self, sizeof self - 1) > 0 ? pid_t(atol(self)) : getpid();

  if (drop) {
    if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0) {
      return errno_text("cannot switch to the sandbox's uid");
    }
    // The uid switch cleared the parent-death signal: this process (the
    // relay, or the worker) must still die with its keeper.
    if (!die_with_keeper()) _exit(1);
  }
  report_.uid = long(getuid());
  error = enter_namespaces(uid, gid);
  if (!error.empty()) return error;
  error = enter_pid_namespace();
  if (!error.empty()) return error;
  announce_to_keeper();
  if (chdir(report_.workdir.c_str()) != 0) return errno_text("cannot enter the working directory");
  setenv("TMPDIR", report_.workdir.c_str(), 1);
  setenv("HOME", report_.workdir.c_str(), 1);
  setenv("PWD", report_.workdir.c_str(), 1);
  return "";
}

void Sandbox::announce_to_keeper() {
  if (keeper_fd_ < 0) return;
  std::string message = "P" + std::to_string(host_pid_) + "\n";
  (void)!write(keeper_fd_, message.data(), message.size());
}

// Every worker in a pid namespace of its own, made in the sandbox's user
// namespace (so the worker may mount a /proc of it): the process that
// makes it stays outside as a relay; its child is the namespace's init. A
// zygote is that init itself (jobs cannot signal it, and it reaps their
// orphans); a warm worker is the init's child, pid 2 (an init would not
// get RLIMIT_CPU's SIGXCPU). Whatever is left in the namespace dies with
// its init.
std::string Sandbox::enter_pid_namespace() {
  if (options_.sandbox_allow & kAllowNamespaces) return "";
  if (simulated_missing("namespaces")) {
    unavailable("pid_ns", "simulated for a test (--sandbox-test-unavailable namespaces)");
    return "";
  }
  if (unshare(CLONE_NEWPID) != 0) {
    unavailable("pid_ns", std::string("unshare(CLONE_NEWPID): ") + strerror(errno));
    return "";
  }
  report_.pid_ns = true;
  int status_pipe[2];
  if (pipe2(status_pipe, O_CLOEXEC) != 0) return errno_text("pipe");
  pid_t relay = getpid();
  pid_t init = fork();
  if (init < 0) return errno_text("cannot fork the pid namespace's init");
  if (init > 0) {
    close(status_pipe[1]);
    close(keeper_fd_);
    run_relay(init, status_pipe[0]);
  }
  close(status_pipe[0]);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != 0 && getppid() != relay) _exit(1);
  // A session and process group of its own (a warm worker ends the rest of
  // its group after a job: never its relay).
  setsid();
  keeper_is_now(0);  // the relay, outside the namespace
  if (options_.zygote) {
    close(status_pipe[1]);
    char self[32] = {};
    host_pid_ = readlink("/proc/self", self, sizeof self - 1) > 0 ? pid_t(atol(self)) : getpid();
    return "";
  }
  pid_t worker = fork();
  if (worker < 0) return errno_text("cannot fork the worker in its pid namespace");
  if (worker > 0) run_ns_init(worker, status_pipe[1]);
  close(status_pipe[1]);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != 1) _exit(1);
  setsid();
  keeper_is_now(1);  // the namespace's init
  char self[32] = {};
  host_pid_ = readlink("/proc/self", self, sizeof self - 1) > 0 ? pid_t(atol(self)) : getpid();
  return "";
}

std::string Sandbox::enter_namespaces(uid_t uid, gid_t gid) {
  if (options_.sandbox_allow & kAllowNamespaces) return "";
  int others = CLONE_NEWIPC | CLONE_NEWNS;
  if (!(options_.sandbox_allow & kAllowNetwork)) others |= CLONE_NEWNET;
  const char* const kNamespaces[] = {"user_ns", "net_ns", "ipc_ns", "mount_ns"};
  auto missing = [&](const std::string& why, bool user_too) {
    for (const char* ns : kNamespaces) {
      std::string name = ns;
      if ((name == "user_ns" && !user_too) || (name == "net_ns" && !(others & CLONE_NEWNET)))
        continue;
      unavailable(ns, why);
    }
  };
  if (simulated_missing("namespaces")) {
    missing("simulated for a test (--sandbox-test-unavailable namespaces)", true);
    return "";
  }
  // /proc/self/uid_map belongs to root once the uid changed, unless the
  // process is dumpable.
  prctl(PR_SET_DUMPABLE, 1);
  bool user_ns = unshare(CLONE_NEWUSER | others) == 0;
  int user_errno = errno;
  if (user_ns) {
    // Inside, the same ids as outside: files the job writes belong to the
    // sandbox's uid on the host too.
    std::string um = std::to_string(uid) + " " + std::to_string(uid) + " 1";
    std::string gm = std::to_string(gid) + " " + std::to_string(gid) + " 1";
    if (!write_file("/proc/self/setgroups", "deny") || !write_file("/proc/self/uid_map", um) ||
        !write_file("/proc/self/gid_map", gm)) {
      prctl(PR_SET_DUMPABLE, 0);
      return errno_text("cannot map the sandbox's uid in its user namespace");
    }
    report_.user_ns = report_.ipc_ns = report_.mount_ns = true;
    report_.net_ns = others & CLONE_NEWNET;
  } else {
    unavailable("user_ns", std::string("unshare(CLONE_NEWUSER): ") + strerror(user_errno));
    // Without a user namespace only a privileged process may make the others.
    if (unshare(others) == 0) {
      report_.ipc_ns = report_.mount_ns = true;
      report_.net_ns = others & CLONE_NEWNET;
    } else {
      missing(std::string("unshare: ") + strerror(errno), false);
    }
  }
  prctl(PR_SET_DUMPABLE, 0);
  // Mounts made in the worker's namespace never reach the host's.
  if (report_.mount_ns && mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return errno_text("cannot make the mount namespace private");
  }
  return "";
}

std::string Sandbox::enter_late(const std::vector<std::string>& read_paths) {
  if (keeper_fd_ >= 0) {
    // The keeper moved the worker into its cgroup meanwhile (its answer).
    char ack;
    if (read(keeper_fd_, &ack, 1) != 1) return "the keeper did not move the worker into its cgroup";
  }
  // Its own cgroup namespace: /proc/self/cgroup shows "/", not the host's
  // cgroup tree.
  if (report_.cgroup && report_.user_ns && unshare(CLONE_NEWCGROUP) != 0)
    return errno_text("unshare(CLONE_NEWCGROUP)");
  // The filesystem view needs the capabilities the user namespace gave;
  // none is kept past it.
  std::string error = build_view(read_paths);
  if (!error.empty()) return error;
  if (!(options_.sandbox_allow & kAllowPrivileges) && !drop_capabilities())
    return errno_text("cannot drop capabilities");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno_text("PR_SET_NO_NEW_PRIVS");
  report_.no_new_privs = true;
  error = apply_landlock(read_paths);
  // Jobs run in runners forked by a template made now: under the worker's
  // Landlock domain, with a filter of its own (it must fork).
  if (error.empty()) error = start_template(read_paths);
  if (error.empty())
    error = apply_seccomp(!options_.zygote && !(options_.sandbox_allow & kAllowFork), false);
  if (error.empty() && keeper_fd_ >= 0) {
    // Confined, limits applied: the keeper watches them from now on.
    (void)!write(keeper_fd_, "C", 1);
    close(keeper_fd_);
    keeper_fd_ = -1;
  }
  return error;
}

// The job's filesystem: a new root holding only what a job needs, so
// nothing else of the host can be named (no host /tmp, /run, /home, UNIX
// sockets, other users' files): a small read-only tmpfs with the system
// directories and the pool's Python paths bound read-only, /dev with
// null, zero, full, random and urandom, a /proc of the worker's own pid
// namespace, and the working directory, a tmpfs of --max-disk bytes (which
// the memory cgroup counts too).
std::string Sandbox::build_view(const std::vector<std::string>& read_paths) {
  // `filesystem` relaxes the whole filesystem restriction: the host's
  // files, as the uid may reach them (no view, no Landlock).
  if (options_.sandbox_allow & kAllowFilesystem) return "";
  if (!report_.mount_ns) {
    if (!(options_.sandbox_allow & kAllowNamespaces)) {
      unavailable("mount_view", "no mount namespace: the host's filesystem stays visible");
      if (options_.max_disk) unavailable("max_disk", "no mount namespace for a tmpfs");
    }
    return "";
  }
  const std::string& work = report_.workdir;
  // The new root is built on the working directory's mount point (an empty
  // host directory only this worker uses), then made /.
  const std::string& root = work;
  if (mount("pyport-root", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755") != 0)
    return errno_text("cannot mount the new root");
  auto bind = [&](const std::string& src, bool recursive) -> std::string {
    struct stat st;
    if (lstat(src.c_str(), &st) != 0) return "";  // not on this system
    std::string target = root + src;
    std::string error = make_dirs(target.substr(0, target.rfind('/')));
    if (!error.empty()) return error;
    if (S_ISLNK(st.st_mode)) {
      char link[4096];
      ssize_t n = readlink(src.c_str(), link, sizeof link - 1);
      if (n <= 0) return "";
      link[n] = 0;
      if (symlink(link, target.c_str()) != 0 && errno != EEXIST)
        return errno_text(("cannot link " + target).c_str());
      return "";
    }
    if (S_ISDIR(st.st_mode)) {
      if (mkdir(target.c_str(), 0755) != 0 && errno != EEXIST)
        return errno_text(("cannot create " + target).c_str());
    } else {
      int fd = open(target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return errno_text(("cannot create " + target).c_str());
      close(fd);
    }
    if (mount(src.c_str(), target.c_str(), nullptr, MS_BIND | (recursive ? MS_REC : 0), nullptr) !=
        0)
      return errno_text(("cannot bind " + src).c_str());
    uint64_t attrs = kMountAttrRdonly | kMountAttrNosuid;
    if (!S_ISCHR(st.st_mode)) attrs |= kMountAttrNodev;
    return set_mount_attr(target, attrs, recursive);
  };
  std::string error;
  std::vector<std::string> bound;
  for (const char* dir : {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"}) {
    if (error.empty()) error = bind(dir, true);
    bound.emplace_back(dir);
  }
  // Secrets of the host in /etc (password hashes, host keys, TLS keys):
  // covered by an empty file or directory, not even their size shows.
  if (error.empty()) error = make_dirs(root + "/.hidden");
  if (error.empty()) {
    int fd = open((root + "/.hidden-file").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
    if (fd < 0) error = errno_text("cannot create the empty file");
    if (fd >= 0) close(fd);
  }
  for (const char* secret : {"/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                             "/etc/ssh", "/etc/ssl/private", "/etc/sudoers", "/etc/sudoers.d"}) {
    struct stat st;
    if (!error.empty() || lstat(secret, &st) != 0 || S_ISLNK(st.st_mode)) continue;
    std::string empty = root + (S_ISDIR(st.st_mode) ? "/.hidden" : "/.hidden-file");
    if (mount(empty.c_str(), (root + secret).c_str(), nullptr, MS_BIND, nullptr) != 0)
      error = errno_text(("cannot hide " + std::string(secret)).c_str());
    if (error.empty()) error = set_mount_attr(root + secret, kMountAttrRdonly, false);
  }
  // The Python paths: each at its own path, unless a directory bound
  // already holds it (binding inside a bind would write to the host).
  std::vector<std::string> extra;
  std::vector<std::string> wanted = read_paths;
  // With exec allowed, the programs on PATH too (a venv's bin/).
  const char* path_env = getenv("PATH");
  if ((options_.sandbox_allow & kAllowExec) && path_env) {
    std::string list = path_env;
    for (size_t pos = 0; pos <= list.size();) {
      size_t end = list.find(':', pos);
      if (end == std::string::npos) end = list.size();
      std::string dir = list.substr(pos, end - pos);
      if (!dir.empty() && dir[0] == '/') wanted.push_back(dir);
      pos = end + 1;
    }
  }
  for (const std::string& p : wanted) {
    char real[PATH_MAX];
    if (!realpath(p.c_str(), real)) continue;
    extra.emplace_back(p);
    if (p != real) extra.emplace_back(real);
  }
  std::sort(extra.begin(), extra.end());
  for (const std::string& p : extra) {
    bool covered = false;
    for (const std::string& b : bound)
      covered = covered || is_below(p, b);
    char real[PATH_MAX];
    if (!covered && realpath(p.c_str(), real)) {
      for (const std::string& b : bound)
        covered = covered || is_below(real, b);
    }
    if (covered || is_below(work, p) || is_below(p, work)) continue;
    if (error.empty()) error = bind(p, true);
    bound.push_back(p);
  }
  if (error.empty()) error = make_dirs(root + "/dev");
  for (const char* dev : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}) {
    if (error.empty()) error = bind(dev, false);
  }
  for (const auto& [link, to] : std::initializer_list<std::pair<const char*, const char*>>{
           {"/dev/fd", "/proc/self/fd"},
           {"/dev/stdin", "/proc/self/fd/0"},
           {"/dev/stdout", "/proc/self/fd/1"},
           {"/dev/stderr", "/proc/self/fd/2"},
           {"/dev/shm", work.c_str()}}) {
    if (error.empty() && symlink(to, (root + link).c_str()) != 0)
      error = errno_text(("cannot link " + std::string(link)).c_str());
  }
  // The CPU topology (os.cpu_count, BLAS libraries); nothing else of /sys.
  if (error.empty()) error = bind("/sys/devices/system/cpu", false);
  if (error.empty() && report_.pid_ns) {
    error = make_dirs(root + "/proc");
    if (error.empty() && mount("proc", (root + "/proc").c_str(), "proc",
                               MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
      error = errno_text("cannot mount /proc");
  }
  if (error.empty() && !report_.pid_ns) {
    unavailable("proc", "no pid namespace of its own: the view has no /proc");
  }
  if (error.empty()) error = make_dirs(root + work);
  if (error.empty()) {
    std::string opts = "mode=0700";
    if (options_.max_disk) opts += ",size=" + std::to_string(options_.max_disk);
    unsigned long flags = MS_NOSUID | MS_NODEV;
    if (!(options_.sandbox_allow & kAllowExec)) flags |= MS_NOEXEC;
    if (mount("pyport-work", (root + work).c_str(), "tmpfs", flags, opts.c_str()) != 0)
      error = errno_text("cannot mount the working directory");
  }
  if (error.empty()) error = set_mount_attr(root, kMountAttrRdonly, false);
  if (!error.empty()) return error;
  // pivot_root(".", "."): the old root stays stacked under the new one
  // until it is detached.
  if (chdir(root.c_str()) != 0) return errno_text("chdir to the new root");
  if (syscall(SYS_pivot_root, ".", ".") != 0) return errno_text("pivot_root");
  if (umount2(".", MNT_DETACH) != 0) return errno_text("cannot detach the host's root");
  if (chdir(work.c_str()) != 0) return errno_text("cannot enter the working directory");
  report_.mount_view = true;
  report_.max_disk = options_.max_disk;
  return "";
}

std::string Sandbox::apply_landlock(const std::vector<std::string>& read_paths) {
  if (options_.sandbox_allow & kAllowFilesystem) return "";
  int abi = simulated_missing("landlock") ? -ENOSYS : landlock_abi();
  if (abi <= 0) {
    std::string why = simulated_missing("landlock")
                          ? "simulated for a test (--sandbox-test-unavailable landlock)"
                      : abi == -ENOSYS     ? "the kernel has no Landlock"
                      : abi == -EOPNOTSUPP ? "Landlock is disabled (boot parameter lsm=)"
                                           : std::string(strerror(-abi));
    unavailable("landlock", why);
    return "";
  }
  uint64_t fs = fs_rights(abi);
  uint64_t net = (options_.sandbox_allow & kAllowNetwork) ? 0 : kNetBindTcp | kNetConnectTcp;
  Ruleset rules(abi, fs, net, kScopeAbstractUnix | kScopeSignal);
  if (rules.fd() < 0) return errno_text("Landlock: create_ruleset");
  constexpr uint64_t kRead = kFsReadFile | kFsReadDir | kFsExecute;
  std::vector<std::string> readable = {"/usr",  "/lib", "/lib32", "/lib64", "/libx32", "/bin",
                                       "/sbin", "/etc", "/proc",  "/sys",   "/dev"};
  readable.insert(readable.end(), read_paths.begin(), read_paths.end());
  uint64_t own = fs & ~(kFsMakeChar | kFsMakeBlock);
  if (!(options_.sandbox_allow & kAllowExec)) own &= ~kFsExecute;
  std::string error;
  for (const std::string& p : readable) {
    if (error.empty()) error = rules.allow(p, kRead);
  }
  if (error.empty()) error = rules.allow("/dev/null", kFsFileRights & ~kFsExecute);
  if (error.empty()) error = rules.allow(report_.workdir, own);
  if (error.empty()) error = rules.restrict_self();
  if (!error.empty()) return error;
  report_.landlock = abi;
  if (abi < 6)
    unavailable("landlock_scope", "Landlock ABI " + std::to_string(abi) +
                                      " < 6: signals and abstract sockets are not scoped");
  if (abi < 4 && net)
    unavailable("landlock_net", "Landlock ABI " + std::to_string(abi) +
                                    " < 4: TCP bind/connect are not restricted by Landlock");
  return "";
}

std::string Sandbox::apply_seccomp(bool forbid_fork, bool job_layer,
                                   std::vector<uint8_t>* exported) {
  if (options_.sandbox_allow & kAllowSeccomp) return "";
  if (simulated_missing("seccomp")) {
    if (!job_layer)
      unavailable("seccomp", "simulated for a test (--sandbox-test-unavailable seccomp)");
    return "";
  }
  if (!job_layer) {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, nullptr) != 0) return errno_text("cannot handle SIGSYS");
  }
  Filter f;
  seccomp_attr_set(f.ctx(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
  seccomp_attr_set(f.ctx(), SCMP_FLTATR_CTL_TSYNC, 1);
  if (!job_layer) {
    for (const char* name : {"ptrace",
                             "process_vm_readv",
                             "process_vm_writev",
                             "pidfd_getfd",
                             "mount",
                             "umount2",
                             "pivot_root",
                             "chroot",
                             "setns",
                             "open_tree",
                             "move_mount",
                             "fsopen",
                             "fsmount",
                             "fspick",
                             "fsconfig",
                             "mount_setattr",
                             "init_module",
                             "finit_module",
                             "delete_module",
                             "kexec_load",
                             "kexec_file_load",
                             "add_key",
                             "request_key",
                             "keyctl",
                             "bpf",
                             "perf_event_open",
                             "userfaultfd",
                             "io_uring_setup",
                             "io_uring_enter",
                             "io_uring_register",
                             "reboot",
                             "swapon",
                             "swapoff",
                             "acct",
                             "open_by_handle_at",
                             "name_to_handle_at",
                             "iopl",
                             "ioperm",
                             "syslog",
                             "quotactl",
                             "vhangup"}) {
      f.trap(name);
    }
    // The template's runners make their own IPC namespace (and the user
    // namespace it needs) before their job layer, which refuses unshare.
    if (template_) {
      f.trap("unshare", SCMP_A0_32(SCMP_CMP_NE, uint32_t(CLONE_NEWUSER | CLONE_NEWIPC)));
    } else {
      f.trap("unshare");
    }
    for (uint64_t ns : {CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC,
                        CLONE_NEWUTS, CLONE_NEWCGROUP}) {
      f.trap("clone", SCMP_A0(SCMP_CMP_MASKED_EQ, ns, ns));
    }
    // clone3's flags are in memory a filter cannot read: ENOSYS makes glibc
    // fall back to clone, whose flags it can.
    f.rule(SCMP_ACT_ERRNO(ENOSYS), "clone3");
    // The SIGSYS handler stays: it names refusals. EPERM, not a trap: a
    // vfork child resets every handler with all signals blocked.
    f.rule(SCMP_ACT_ERRNO(EPERM), "rt_sigaction", SCMP_A0_32(SCMP_CMP_EQ, SIGSYS),
           SCMP_A1(SCMP_CMP_NE, 0));
    // Calls that act on a process named by pid: the caller only (0). A job
    // reaches no other tenant's worker, zygote, or the node, whatever the
    // uids and namespaces would allow.
    for (const char* name : {"prlimit64", "sched_setscheduler", "sched_setparam",
                             "sched_setaffinity", "sched_setattr", "migrate_pages", "move_pages"}) {
      f.trap(name, SCMP_A0_32(SCMP_CMP_NE, 0));
    }
    // Priorities: of the calling process only (PRIO_PROCESS, who 0;
    // PRIO_USER would reach every process of the uid).
    f.trap("setpriority", SCMP_A0_32(SCMP_CMP_NE, PRIO_PROCESS));
    f.trap("setpriority", SCMP_A1_32(SCMP_CMP_NE, 0));
    constexpr uint32_t kIoprioWhoProcess = 1;
    f.trap("ioprio_set", SCMP_A0_32(SCMP_CMP_NE, kIoprioWhoProcess));
    f.trap("ioprio_set", SCMP_A1_32(SCMP_CMP_NE, 0));
    for (const char* name : {"process_madvise", "process_mrelease", "kcmp"})
      f.trap(name);
    // Without a cgroup nothing counts the pages of a memfd, a SysV shared
    // memory segment or message queue once they are not mapped (RLIMIT_AS
    // counts only mappings): none may be made. (POSIX shared memory is
    // files in /dev/shm, the working directory's tmpfs: max_disk.)
    if (!report_.cgroup && options_.max_memory) {
      for (const char* name : {"memfd_create", "shmget", "msgget"})
        f.trap(name);
    }
    f.trap("ioctl", SCMP_A1_32(SCMP_CMP_EQ, TIOCSTI));
    f.trap("ioctl", SCMP_A1_32(SCMP_CMP_EQ, TIOCLINUX));
    if (!(options_.sandbox_allow & kAllowNetwork)) {
      f.trap("socket", SCMP_A0_32(SCMP_CMP_NE, AF_UNIX));
      f.trap("socketpair", SCMP_A0_32(SCMP_CMP_NE, AF_UNIX));
    } else {
      f.trap("socket", SCMP_A0_32(SCMP_CMP_EQ, AF_PACKET));
    }
    if (!(options_.sandbox_allow & kAllowExec)) {
      f.trap("execve");
      f.trap("execveat");
    }
  }
  // What a job forks stays in the group that is ended after it: the job's
  // own group in a fresh child, the worker's in a warm worker.
  // Without Landlock's signal scoping (ABI < 6), a process that creates
  // none may signal only itself: not the keeper, the VM, or another worker
  // of the same uid. (Fresh jobs are in a pid namespace besides, where
  // there is one.)
  if (forbid_fork && report_.landlock < 6) {
    uint64_t self = uint64_t(getpid());
    for (const char* name :
         {"kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open"}) {
      f.trap(name, SCMP_A0_32(SCMP_CMP_GT, self));
      f.trap(name, SCMP_A0_32(SCMP_CMP_LT, self));
    }
  }
  if (job_layer) f.trap("unshare");
  if (job_layer || (!template_ && !options_.zygote && (options_.sandbox_allow & kAllowFork))) {
    f.trap("setsid");
    f.trap("setpgid");
  }
  if (forbid_fork) {
    // Process creation fails with EPERM rather than trapping: libc and
    // CPython create processes with every signal blocked (posix_spawn,
    // vfork, subprocess's fork fallback), where SIGSYS would kill the whole
    // process. erlang._jobs names these refusals from Python's audit events.
    const uint32_t refuse = SCMP_ACT_ERRNO(EPERM);
    f.rule(refuse, "fork");
    f.rule(refuse, "vfork");
    f.rule(refuse, "clone", SCMP_A0(SCMP_CMP_MASKED_EQ, uint64_t(CLONE_THREAD), 0));
  }
  if (!f.ok()) return f.error().empty() ? "seccomp: cannot create a filter" : f.error();
  if (exported) return export_filter(f.ctx(), *exported);
  int rc = seccomp_load(f.ctx());
  if (rc < 0) {
    if (job_layer) return std::string("seccomp: load: ") + strerror(-rc);
    unavailable("seccomp", std::string("seccomp_load: ") + strerror(-rc));
    return "";
  }
  if (!job_layer) report_.seccomp = true;
  return "";
}

// ---- job runners ----

// Directories every job may read (and execute from), besides the pool's
// Python paths: the worker's own Landlock layer narrows them further.
const char* const kJobReadable[] = {"/usr",  "/lib", "/lib32", "/lib64", "/libx32", "/bin",
                                    "/sbin", "/etc", "/proc",  "/sys",   "/dev"};

std::string Sandbox::start_template(const std::vector<std::string>& read_paths) {
  // What a runner may read: never the working directory as a whole (other
  // jobs' directories are in it), so no path at or above it.
  const std::string& work = report_.workdir;
  for (const char* p : kJobReadable)
    job_read_paths_.emplace_back(p);
  for (const std::string& p : read_paths) {
    bool above = work.compare(0, p.size(), p) == 0 &&
                 (work.size() == p.size() || p.back() == '/' || work[p.size()] == '/');
    if (!above) job_read_paths_.push_back(p);
  }
  // A user namespace of its own lets each runner make an IPC namespace of
  // its own; where the worker could not make one, neither can a runner.
  // Not with `privileges`: the job would lose the node's uid (unmapped).
  job_ipc_ns_ = report_.user_ns && !(options_.sandbox_allow & kAllowPrivileges);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return errno_text("cannot create the job template's socket");
  }
  pid_t worker = getpid();
  PyOS_BeforeFork();
  pid_t pid = fork();
  if (pid == 0) {
    PyOS_AfterFork_Child();
    close(sv[0]);
    run_template(sv[1], worker);
  }
  PyOS_AfterFork_Parent();
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return errno_text("cannot fork the job template");
  }
  template_fd_ = sv[0];
  // Runners are the worker's children (the template forks them as its
  // siblings, or through a middle process, and the worker adopts them):
  // wait4, pidfd, rusage; and the orphans of jobs that fork come here.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return errno_text("PR_SET_CHILD_SUBREAPER");
  // The first runners start now, while the worker says HELLO.
  PyRef module = PyRef::steal(PyImport_ImportModule("erlang._runner"));
  PyRef done =
      module ? PyRef::steal(PyObject_CallMethod(module.get(), "prestart", nullptr)) : PyRef();
  if (!done) {
    std::string why = "cannot start the job runners";
    PyErr_Print();
    return why;
  }
  return "";
}

void Sandbox::run_template(int fd, pid_t worker) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != worker) _exit(1);
  // Nothing of the frame channel, the owner's stderr or the log pipes'
  // read ends: the socket (fd 3), /dev/null, and stderr for diagnostics.
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 || dup2(fd, 3) < 0 ||
      syscall(SYS_close_range, 4u, ~0u, 0u) != 0) {
    std::fprintf(stderr, "pyport_worker: job template: %s\n", strerror(errno));
    _exit(1);
  }
  template_ = true;
  std::string error = apply_seccomp(false, false);
  // Every runner's job layer is the same filter (unless it names the
  // runner's pid: no Landlock signal scoping): compiled once, here.
  bool job_forbid_fork = !(options_.sandbox_allow & kAllowFork);
  if (error.empty() && report_.seccomp && !(job_forbid_fork && report_.landlock < 6) &&
      !apply_seccomp(job_forbid_fork, true, &job_filter_).empty()) {
    job_filter_.clear();  // each runner compiles its own
  }
  if (error.empty()) {
    PyRef module = PyRef::steal(PyImport_ImportModule("erlang._runner"));
    PyRef done =
        module ? PyRef::steal(PyObject_CallMethod(module.get(), "template", "ii", 3, int(worker)))
               : PyRef();
    PyErr_Print();
    error = "erlang._runner.template returned";
  }
  std::fprintf(stderr, "pyport_worker: job template: %s\n", error.c_str());
  _exit(1);
}

std::string Sandbox::enter_job(int job_fd, int result_fd, int out_fd, int err_fd, pid_t worker,
                               const std::string& job_name, std::string& job_dir) {
  // The descriptors first: from here on nothing but the job's own pipes.
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) return errno_text("cannot open /dev/null");
  // Out of the way of 0-4 before they are assigned.
  int fds[4] = {fcntl(job_fd, F_DUPFD_CLOEXEC, 10), fcntl(result_fd, F_DUPFD_CLOEXEC, 10),
                fcntl(out_fd, F_DUPFD_CLOEXEC, 10), fcntl(err_fd, F_DUPFD_CLOEXEC, 10)};
  for (int fd : fds)
    if (fd < 0) return errno_text("cannot move the job's pipes");
  if (dup2(null_fd, 0) < 0 || dup2(fds[2], 1) < 0 || dup2(fds[3], 2) < 0 || dup2(fds[1], 3) < 0 ||
      dup2(fds[0], 4) < 0) {
    return errno_text("cannot set up the job's descriptors");
  }
  if (syscall(SYS_close_range, 5u, ~0u, 0u) != 0) return errno_text("close_range");
  // A process group of its own, which the job cannot leave (the job's
  // filter refuses setsid and setpgid): the worker ends it whole.
  if (setpgid(0, 0) != 0) return errno_text("setpgid");
  g_forbidden.store(-1);

  if (job_name.empty() || job_name.find('/') != std::string::npos || job_name[0] == '.') {
    return "bad job directory name '" + job_name + "'";
  }
  job_dir = report_.workdir + "/" + job_name;
  if (mkdir(job_dir.c_str(), 0700) != 0) return errno_text("cannot create the job's directory");
  if (chdir(job_dir.c_str()) != 0) return errno_text("cannot enter the job's directory");
  setenv("TMPDIR", job_dir.c_str(), 1);
  setenv("HOME", job_dir.c_str(), 1);
  setenv("PWD", job_dir.c_str(), 1);
  // SysV IPC objects and POSIX message queues of its own, gone with it.
  // (The uid stays unmapped in the new user namespace: the kernel's ids
  // are unchanged, the job sees 65534. Its capabilities there go at once.)
  if (job_ipc_ns_) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWIPC) != 0) {
      return errno_text("cannot make the job's IPC namespace (unshare)");
    }
    if (!drop_capabilities()) return errno_text("cannot drop capabilities");
  }
  std::string error = apply_limits(options_, LimitScope::kJob);
  if (!error.empty()) return error;
  if (report_.landlock > 0) {
    // A nested layer (layers intersect): reads of the system directories
    // and the pool's paths, everything in the job's own directory, nothing
    // of the rest of the working directory (other jobs'); a domain of its
    // own, so the job cannot signal the worker or another job.
    uint64_t fs = fs_rights(report_.landlock);
    Ruleset rules(report_.landlock, fs, 0, kScopeAbstractUnix | kScopeSignal);
    if (rules.fd() < 0) return errno_text("Landlock: create_ruleset");
    constexpr uint64_t kRead = kFsReadFile | kFsReadDir | kFsExecute;
    uint64_t own = fs & ~(kFsMakeChar | kFsMakeBlock);
    if (!(options_.sandbox_allow & kAllowExec)) own &= ~kFsExecute;
    for (const std::string& p : job_read_paths_) {
      if (error.empty()) error = rules.allow(p, kRead);
    }
    if (error.empty()) error = rules.allow(job_dir, own);
    if (error.empty()) error = rules.allow("/dev/null", kFsFileRights & ~kFsExecute);
    if (error.empty()) error = rules.restrict_self();
    if (!error.empty()) return error;
  }
  // The template's child that forked this runner exits at once: wait to be
  // the worker's, then die with it.
  for (int i = 0; getppid() != worker; ++i) {
    if (i > 20000) return "the worker did not adopt the job's runner";
    usleep(50);
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != worker) _exit(1);
  if (report_.seccomp && !job_filter_.empty()) {
    sock_fprog prog{uint16_t(job_filter_.size() / sizeof(sock_filter)),
                    reinterpret_cast<sock_filter*>(job_filter_.data())};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0u, &prog) != 0) {
      return errno_text("seccomp: the job layer");
    }
  } else if (report_.seccomp) {
    error = apply_seccomp(!(options_.sandbox_allow & kAllowFork), true);
  }
  return error;
}

std::string Sandbox::take_forbidden() {
  int nr = g_forbidden.exchange(-1);
  if (nr < 0) return "";
  char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
  std::string result = name ? name : "syscall " + std::to_string(nr);
  free(name);
  return result;
}

void Sandbox::write_report(ByteBuffer& out) const {
  mp::write_map_header(out, 17);
  write_atom(out, "mode");
  write_atom(out, options_.zygote ? "zygote" : "worker");
  auto flag = [&](const char* key, bool value) {
    write_atom(out, key);
    mp::write_bool(out, value);
  };
  flag("seccomp", report_.seccomp);
  write_atom(out, "landlock");
  if (report_.landlock > 0) {
    mp::write_uint(out, uint64_t(report_.landlock));
  } else {
    mp::write_bool(out, false);
  }
  flag("no_new_privs", report_.no_new_privs);
  flag("user_ns", report_.user_ns);
  flag("net_ns", report_.net_ns);
  flag("pid_ns", report_.pid_ns);
  flag("ipc_ns", report_.ipc_ns);
  flag("mount_ns", report_.mount_ns);
  write_atom(out, "uid");
  mp::write_int(out, report_.uid);
  write_atom(out, "workdir");
  mp::write_str(out, report_.workdir);
  // What counts the job's memory and processes: a cgroup, else rlimits.
  write_atom(out, "cgroup");
  if (report_.cgroup) {
    write_atom(out, report_.cgroup == 2 ? "v2" : "v1");
  } else {
    mp::write_bool(out, false);
  }
  flag("mount_view", report_.mount_view);
  write_atom(out, "max_disk");
  if (report_.max_disk) {
    mp::write_uint(out, report_.max_disk);
  } else {
    mp::write_bool(out, false);
  }
  write_atom(out, "rlimits");
  const std::pair<const char*, uint64_t> limits[] = {{"as", options_.max_memory},
                                                     {"cpu", options_.cpu_seconds},
                                                     {"nofile", options_.max_open_files},
                                                     {"fsize", options_.max_file_size},
                                                     {"nproc", options_.max_processes}};
  mp::write_map_header(out, 5);
  for (const auto& [key, value] : limits) {
    write_atom(out, key);
    if (value) {
      mp::write_uint(out, value);
    } else {
      write_atom(out, "infinity");
    }
  }
  write_atom(out, "allowed");
  uint32_t n = 0;
  for (unsigned b = 0; b < 7; ++b)
    n += (options_.sandbox_allow >> b) & 1;
  mp::write_array_header(out, n);
  for (unsigned b = 0; b < 7; ++b)
    if (options_.sandbox_allow & (1u << b)) write_atom(out, kSandboxAllowNames[b]);
  write_atom(out, "unavailable");
  mp::write_array_header(out, uint32_t(report_.unavailable.size()));
  for (const auto& [layer, why] : report_.unavailable) {
    // A tuple is ext 2 whose payload is the msgpack array of its elements.
    ByteBuffer tuple;
    mp::write_array_header(tuple, 2);
    write_atom(tuple, layer);
    mp::write_str(tuple, why);
    mp::write_ext_header(out, mp::kExtTuple, uint32_t(tuple.size()));
    out.append(tuple.data(), tuple.size());
  }
}

// ---- the _pyport_sandbox module ----

namespace {

struct ModuleState {
  Sandbox* sandbox;
  Codec* codec;
  size_t max_frame_size;
};

ModuleState* state_of(PyObject* module) {
  return static_cast<ModuleState*>(PyModule_GetState(module));
}

Sandbox* sandbox_of(PyObject* module) {
  ModuleState* s = state_of(module);
  if (!s || !s->sandbox) {
    PyErr_SetString(PyExc_RuntimeError,
                    "this worker is not sandboxed (start it with --sandbox or --zygote)");
    return nullptr;
  }
  return s->sandbox;
}

Codec* codec_of(PyObject* module) {
  ModuleState* s = state_of(module);
  if (!s || !s->codec) {
    PyErr_SetString(PyExc_RuntimeError, "this needs a pyport worker");
    return nullptr;
  }
  return s->codec;
}

PyObject* report(PyObject* module, PyObject*) {
  ModuleState* s = state_of(module);
  if (!s || !s->sandbox) Py_RETURN_NONE;
  Codec* codec = codec_of(module);
  if (!codec) return nullptr;
  ByteBuffer out;
  s->sandbox->write_report(out);
  return codec->decode_exact(out.data(), out.size()).release();
}

PyObject* settings(PyObject* module, PyObject*) {
  ModuleState* s = state_of(module);
  if (!s || !s->sandbox) Py_RETURN_NONE;
  const Options& o = s->sandbox->options();
  return Py_BuildValue(
      "{s:O,s:K,s:K,s:K,s:K,s:K,s:n,s:s}", "zygote", o.zygote ? Py_True : Py_False, "max_output",
      (unsigned long long)o.max_output, "max_memory", (unsigned long long)o.max_memory,
      "cpu_seconds", (unsigned long long)o.cpu_seconds, "max_file_size",
      (unsigned long long)o.max_file_size, "max_processes", (unsigned long long)o.max_processes,
      "max_frame_size", Py_ssize_t(s->max_frame_size), "workdir",
      s->sandbox->report().workdir.c_str());
}

PyObject* take_forbidden(PyObject*, PyObject*) {
  std::string name = Sandbox::take_forbidden();
  if (name.empty()) Py_RETURN_NONE;
  return PyUnicode_FromStringAndSize(name.data(), Py_ssize_t(name.size()));
}

PyObject* enter_job(PyObject* module, PyObject* args) {
  int job_fd, result_fd, out_fd, err_fd, worker;
  const char* name;
  if (!PyArg_ParseTuple(args, "iiiiis:enter_job", &job_fd, &result_fd, &out_fd, &err_fd, &worker,
                        &name)) {
    return nullptr;
  }
  Sandbox* sandbox = sandbox_of(module);
  if (!sandbox) return nullptr;
  // A runner has no channel to Erlang: the erlang API says so at once.
  if (!bind_erlang_module(nullptr)) return nullptr;
  std::string job_dir;
  std::string error =
      sandbox->enter_job(job_fd, result_fd, out_fd, err_fd, pid_t(worker), name, job_dir);
  if (!error.empty()) {
    PyErr_SetString(PyExc_OSError, error.c_str());
    return nullptr;
  }
  return PyUnicode_DecodeFSDefault(job_dir.c_str());
}

void close_all(std::initializer_list<int> fds) {
  for (int fd : fds)
    if (fd >= 0) close(fd);
}

// In the worker: asks the template for a runner. Returns the worker's ends
// of the runner's pipes (job in, result, stdout, stderr), close-on-exec.
PyObject* start_runner(PyObject* module, PyObject* arg) {
  Sandbox* sandbox = sandbox_of(module);
  if (!sandbox) return nullptr;
  if (sandbox->template_fd() < 0) {
    PyErr_SetString(PyExc_RuntimeError, "this worker has no job template");
    return nullptr;
  }
  Py_ssize_t size;
  const char* name = PyUnicode_AsUTF8AndSize(arg, &size);
  if (!name) return nullptr;
  int job[2] = {-1, -1}, result[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if (pipe2(job, O_CLOEXEC) != 0 || pipe2(result, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
      pipe2(err, O_CLOEXEC) != 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    close_all({job[0], job[1], result[0], result[1], out[0], out[1], err[0], err[1]});
    return nullptr;
  }
  int theirs[4] = {job[0], result[1], out[1], err[1]};
  union {
    char buf[CMSG_SPACE(sizeof theirs)];
    cmsghdr align;
  } control{};
  iovec iov{const_cast<char*>(name), size_t(size)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof theirs);
  std::memcpy(CMSG_DATA(cmsg), theirs, sizeof theirs);
  ssize_t sent;
  Py_BEGIN_ALLOW_THREADS;
  do {
    sent = sendmsg(sandbox->template_fd(), &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  Py_END_ALLOW_THREADS;
  int send_errno = errno;
  close_all({job[0], result[1], out[1], err[1]});
  if (sent < 0) {
    close_all({job[1], result[0], out[0], err[0]});
    errno = send_errno;
    PyErr_SetFromErrno(PyExc_OSError);
    return nullptr;
  }
  return Py_BuildValue("(iiii)", job[1], result[0], out[0], err[0]);
}

// glibc's record of the calling thread's id (what its fork() sets in the
// child), located through libthread_db's description of struct pthread and
// checked against gettid(); null where that does not hold.
pid_t* own_tid_record() {
  static pid_t* record = []() -> pid_t* {
    const auto* desc = static_cast<const uint32_t*>(dlsym(RTLD_DEFAULT, "_thread_db_pthread_tid"));
    if (!desc || desc[0] != 8 * sizeof(pid_t) || desc[1] != 1) return nullptr;
    auto* at = reinterpret_cast<pid_t*>(reinterpret_cast<char*>(pthread_self()) + desc[2]);
    return *at == pid_t(syscall(SYS_gettid)) ? at : nullptr;
  }();
  return record;
}

// In the (single-threaded) template: forks a runner as its sibling, the
// worker's child (CLONE_PARENT), so the worker reaps it: one fork, no
// middle process. As fork() does, the child's glibc thread record gets its
// own id (CLONE_CHILD_SETTID). None where that record cannot be found (the
// caller then forks twice); 0 in the child, its pid in the template.
PyObject* fork_sibling(PyObject*, PyObject*) {
  pid_t* tid = own_tid_record();
  if (!tid) Py_RETURN_NONE;
  PyOS_BeforeFork();
  unsigned long flags = CLONE_PARENT | CLONE_CHILD_SETTID | SIGCHLD;
#if defined(__x86_64__)
  long pid = syscall(SYS_clone, flags, nullptr, nullptr, tid, nullptr);
#elif defined(__aarch64__)
  long pid = syscall(SYS_clone, flags, nullptr, nullptr, nullptr, tid);
#else
#error "fork_sibling needs the clone argument order of this architecture"
#endif
  if (pid == 0) {
    PyOS_AfterFork_Child();
    return PyLong_FromLong(0);
  }
  int err = errno;
  PyOS_AfterFork_Parent();
  if (pid < 0) {
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  return PyLong_FromLong(pid);
}

// In the template: the next request, as (name, (job, result, out, err)),
// or None when the worker is gone.
PyObject* next_runner_request(PyObject*, PyObject* arg) {
  int fd = PyLong_AsLong(arg);
  if (fd < 0 && PyErr_Occurred()) return nullptr;
  for (;;) {
    char name[256];
    int fds[4];
    union {
      char buf[CMSG_SPACE(sizeof fds)];
      cmsghdr align;
    } control{};
    iovec iov{name, sizeof name - 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS;
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    Py_END_ALLOW_THREADS;
    if (n < 0 && errno == EINTR) {
      if (PyErr_CheckSignals() < 0) return nullptr;
      continue;
    }
    if (n <= 0) Py_RETURN_NONE;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    size_t count = 0;
    if (cmsg && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
      count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      std::memcpy(fds, CMSG_DATA(cmsg), std::min(count, size_t(4)) * sizeof(int));
    }
    if (count != 4 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
      for (size_t i = 0; i < std::min(count, size_t(4)); ++i)
        close(fds[i]);
      continue;  // not a request of the worker's: nothing to start
    }
    PyObject* text = PyUnicode_DecodeUTF8(name, Py_ssize_t(n), "replace");
    if (!text) {
      for (int f : fds)
        close(f);
      return nullptr;
    }
    return Py_BuildValue("(N(iiii))", text, fds[0], fds[1], fds[2], fds[3]);
  }
}

PyObject* encode(PyObject* module, PyObject* obj) {
  Codec* codec = codec_of(module);
  if (!codec) return nullptr;
  ByteBuffer out;
  EncodeResult r = codec->encode(obj, out, state_of(module)->max_frame_size);
  if (r == EncodeResult::kError) return nullptr;
  if (r == EncodeResult::kTooLarge) {
    PyErr_Format(PyExc_ValueError, "the value's encoding passes %zu bytes",
                 state_of(module)->max_frame_size);
    return nullptr;
  }
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(out.data()),
                                   Py_ssize_t(out.size()));
}

// Untrusted bytes (from a job's child): a codec of its own, so whatever
// atoms they name do not stay cached in the zygote.
PyObject* decode(PyObject*, PyObject* data) {
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  std::unique_ptr<Codec> codec = Codec::create();
  PyRef value = codec ? codec->decode_exact(static_cast<const uint8_t*>(view.buf), size_t(view.len))
                      : PyRef();
  PyBuffer_Release(&view);
  return value.release();
}

PyMethodDef kMethods[] = {
    {"report", report, METH_NOARGS, "the sandbox report of HELLO (a dict), or None"},
    {"settings", settings, METH_NOARGS, "the worker's job limits (a dict), or None"},
    {"take_forbidden", take_forbidden, METH_NOARGS,
     "the first syscall the filter refused since the last call, or None"},
    {"enter_job", enter_job, METH_VARARGS,
     "enter_job(job_fd, result_fd, out_fd, err_fd, worker_pid, name) -> the job's directory "
     "(in a runner)"},
    {"start_runner", start_runner, METH_O,
     "start_runner(name) -> (job_w, result_r, out_r, err_r): asks the template for a runner"},
    {"fork_sibling", fork_sibling, METH_NOARGS,
     "fork_sibling() -> 0 in the child, its pid, or None (in the template)"},
    {"next_runner_request", next_runner_request, METH_O,
     "next_runner_request(fd) -> (name, fds) or None (in the template)"},
    {"encode", encode, METH_O, "encode(value) -> bytes, as a frame would carry it"},
    {"decode", decode, METH_O, "decode(bytes) -> value (one msgpack value, untrusted)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT,
    "_pyport_sandbox",
    "The worker's sandbox, for erlang._jobs (see port_worker/sandbox.hpp).",
    sizeof(ModuleState),
    kMethods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

PyObject* init_module() {
  PyObject* module = PyModule_Create(&kModule);
  if (module) *state_of(module) = ModuleState{nullptr, nullptr, 0};
  return module;
}

}  // namespace

bool register_sandbox_module() {
  return PyImport_AppendInittab("_pyport_sandbox", init_module) == 0;
}

bool bind_sandbox_module(Sandbox* sandbox, Codec* codec, size_t max_frame_size) {
  PyRef module = PyRef::steal(PyImport_ImportModule("_pyport_sandbox"));
  if (!module) return false;
  *state_of(module.get()) = ModuleState{sandbox, codec, max_frame_size};
  return true;
}

}  // namespace pyport
