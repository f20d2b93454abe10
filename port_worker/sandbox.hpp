// The sandbox of a worker started with --sandbox or --zygote: kernel
// confinement applied before any untrusted code runs.
//
// In order (docs/pyport-run.md, "Worker flags"):
//  1. enter_early(), first thing in main(), while the process has a single
//     thread (unshare(CLONE_NEWUSER) requires it): a scrubbed environment,
//     the private working directory, the keeper (keeper.hpp: a parent that waits
//     for the worker, removes the working directory and exits with the
//     worker's status), the unprivileged uid, the namespaces.
//  2. resource limits (main.cpp, apply_limits).
//  3. enter_late(), after Python started and the --preload modules were
//     imported, before any other thread exists (Landlock binds the calling
//     thread and the threads it starts later): no_new_privs, Landlock, and
//     the seccomp filter last.
//  4. In a zygote, enter_job() in each job's child: its own descriptors,
//     working directory, rlimits, a nested Landlock layer and a second
//     seccomp filter forbidding process creation.
//
// A layer the kernel refuses is reported (report(): HELLO's `sandbox` map),
// never silently skipped.
#pragma once

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
  // Step 4, in the child of a zygote, right after fork(). The child's fd 0
  // becomes /dev/null, 1 and 2 out_fd and err_fd, 3 result_fd; every other
  // descriptor is closed (the frame channel above all). Returns an empty
  // string and the job's directory in `job_dir`, or what failed.
  // `job_name` names the job's directory inside the working directory.
  std::string enter_job(int result_fd, int out_fd, int err_fd, pid_t zygote,
                        const std::string& job_name, std::string& job_dir);

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
  std::string apply_landlock(const std::vector<std::string>& read_paths);
  std::string apply_seccomp(bool forbid_fork, bool job_layer);

  Options options_;
  SandboxReport report_;
  pid_t host_pid_ = 0;
};

// Before Py_Initialize: makes `import _pyport_sandbox` work (the Python
// side of the sandbox, used by erlang._jobs). False if it failed.
bool register_sandbox_module();
// With the GIL: binds the module to the worker's sandbox (null: no
// sandbox) and codec. False with a Python exception set on failure.
bool bind_sandbox_module(Sandbox* sandbox, Codec* codec, size_t max_frame_size);

}  // namespace pyport
