// The sandbox of a worker started with --sandbox or --zygote: kernel
// confinement applied before any untrusted code runs.
//
// In order (docs/design.md, "The sandbox inside a worker"):
//  1. enter_early(), first thing in main(), while the process has a single
//     thread (unshare(CLONE_NEWUSER) requires it): the pool's environment
//     (--env-stdin), a scrubbed environment, the private working directory,
//     the worker's cgroup, the keeper (keeper.hpp, with the sandbox's
//     hooks: it moves the worker into the cgroup, watches its limits,
//     removes the working directory and the cgroup, exits with the
//     worker's status), the worker's own uid, the user, network, IPC and
//     mount namespaces, then a pid namespace: a relay stays outside, the
//     zygote is its init, a warm worker is pid 2 under a minimal init.
//  2. resource limits, hard = soft (main.cpp, apply_limits).
//  3. enter_late(), after Python started and the --preload modules were
//     imported, before any other thread exists (Landlock binds the calling
//     thread and the threads it starts later): the cgroup namespace, the
//     private root (pivot_root; the --max-disk tmpfs; its own /proc), no
//     capabilities, no_new_privs, Landlock, and the seccomp filter last.
//  4. Within enter_late, between Landlock and seccomp, the job template is
//     forked (start_template): a copy of the worker that never reads a frame
//     nor holds the frame channel, and forks one runner per job on request
//     (python_runtime/erlang/_runner.py). The worker sees no job's code run.
//  5. enter_job() in each runner: its own descriptors, working directory,
//     IPC (and user) namespace, rlimits, a nested Landlock layer and a
//     second seccomp filter.
//
// A layer the kernel refuses is reported (report(): HELLO's `sandbox` map),
// never silently skipped.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "byte_buffer.hpp"
#include "options.hpp"

namespace pyport {

class Codec;

struct SandboxReport {
  bool seccomp = false;
  int landlock = 0;  // the ABI version in force, 0 for none
  bool no_new_privs = false;
  bool user_ns = false, net_ns = false, pid_ns = false, ipc_ns = false, mount_ns = false;
  long uid = -1;
  std::string workdir;
  int cgroup = 0;            // the cgroup version counting memory (1 or 2), 0 for none
  bool mount_view = false;   // the job's own root (pivot_root), no host path beyond it
  uint64_t max_disk = 0;     // bytes of the working directory's tmpfs, 0 for none
  // Layer name (an atom on the wire) and why it is not in force.
  std::vector<std::pair<std::string, std::string>> unavailable;
};

class Sandbox {
 public:
  explicit Sandbox(const Options& options) : options_(options) {}
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  // Step 1 (see above). Returns an empty string or what failed. Only the
  // worker returns: the keeper exits with the worker's status.
  std::string enter_early();
  // Step 3. `read_paths` are directories Python reads modules from
  // (sys.path), readable besides the system directories.
  std::string enter_late(const std::vector<std::string>& read_paths);
  // Step 5, in a job runner (a grandchild of the template, adopted by the
  // worker, whose pid is `worker`). The runner's fd 0 becomes /dev/null,
  // 1 and 2 out_fd and err_fd, 3 result_fd, 4 job_fd; every other
  // descriptor is closed. Returns an empty string and the job's directory
  // in `job_dir`, or what failed. `job_name` names the job's directory
  // inside the working directory.
  std::string enter_job(int job_fd, int result_fd, int out_fd, int err_fd, pid_t worker,
                        const std::string& job_name, std::string& job_dir);
  // The worker's end of the socket to its job template (-1: none).
  int template_fd() const { return template_fd_; }

  const Options& options() const { return options_; }
  // The worker's pid as its owner sees it (a zygote is 1 in its own pid
  // namespace).
  pid_t host_pid() const { return host_pid_; }
  const SandboxReport& report() const { return report_; }
  // The report as a msgpack map with atom keys (PROTOCOL.md, HELLO).
  void write_report(ByteBuffer& out) const;

  // The first syscall the filter refused since the last call (its name),
  // or an empty string. Async-signal-safe recording, read from Python.
  static std::string take_forbidden();

 private:
  bool simulated_missing(const char* layer) const;
  void unavailable(const char* layer, std::string why) {
    report_.unavailable.emplace_back(layer, std::move(why));
  }
  std::string enter_namespaces(uid_t uid, gid_t gid);
  std::string enter_pid_namespace();
  std::string build_view(const std::vector<std::string>& read_paths);
  std::string apply_landlock(const std::vector<std::string>& read_paths);
  // With `exported`, the filter's BPF program goes there instead of being
  // loaded (a runner's job layer, compiled once by the template).
  std::string apply_seccomp(bool forbid_fork, bool job_layer,
                            std::vector<uint8_t>* exported = nullptr);
  std::string start_template(const std::vector<std::string>& read_paths);
  [[noreturn]] void run_template(int fd, pid_t worker);

  Options options_;
  SandboxReport report_;
  pid_t host_pid_ = 0;
  int keeper_fd_ = -1;  // the socketpair to the keeper (SandboxKeeper in sandbox.cpp)
  // Tells the keeper the worker's host pid (it moves it into the cgroup).
  void announce_to_keeper();
  // Job runners: what their Landlock layer lets them read (besides their
  // own directory), whether each gets its own IPC namespace, the socket
  // to the template, and whether this process is the template.
  std::vector<std::string> job_read_paths_;
  bool job_ipc_ns_ = false;
  int template_fd_ = -1;
  bool template_ = false;
  std::vector<uint8_t> job_filter_;  // the job layer's BPF, when it is the same for every runner
};

// Before Py_Initialize: makes `import _pyport_sandbox` work (the Python
// side of the sandbox, used by erlang._jobs). False if it failed.
bool register_sandbox_module();
// With the GIL: binds the module to the worker's sandbox (null: no
// sandbox) and codec. False with a Python exception set on failure.
bool bind_sandbox_module(Sandbox* sandbox, Codec* codec, size_t max_frame_size);

}  // namespace pyport
