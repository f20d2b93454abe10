// Command line of pyport_worker.
#pragma once

#include <sys/types.h>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyport {

// What --sandbox-allow relaxes, one restriction each (see docs/pyport-run.md).
enum SandboxAllow : unsigned {
  kAllowNetwork = 1u << 0,     // AF_INET/AF_INET6 sockets, the host's network namespace
  kAllowExec = 1u << 1,        // execve, execveat
  kAllowFork = 1u << 2,        // process creation (threads are always allowed)
  kAllowFilesystem = 1u << 3,  // no Landlock
  kAllowNamespaces = 1u << 4,  // no user/net/ipc/mount/pid namespaces
  kAllowSeccomp = 1u << 5,     // no syscall filter at all
  kAllowPrivileges = 1u << 6,  // keep the uid (root stays root)
};

// The names of the SandboxAllow bits, in bit order.
extern const char* const kSandboxAllowNames[7];

// The --spin-us default and bound (pyport_config.erl checks the same).
constexpr uint64_t kDefaultSpinUs = 100;
constexpr uint64_t kMaxSpinUs = 10000;

struct Options {
  std::string runtime_dir;         // the python_runtime directory
  std::vector<std::string> paths;  // --path entries, in order
  size_t max_frame_size = 0;       // set by parse_options
  // Resource limits; 0 is no limit. A warm worker applies all of them to
  // itself at start; a zygote applies memory and descriptors to itself and
  // the rest to each job's child only.
  uint64_t max_memory = 0;      // bytes of address space (RLIMIT_AS)
  uint64_t cpu_seconds = 0;     // CPU time (RLIMIT_CPU)
  uint64_t max_open_files = 0;  // descriptors (RLIMIT_NOFILE)
  uint64_t max_file_size = 0;   // bytes a file may grow to (RLIMIT_FSIZE)
  uint64_t max_processes = 0;   // processes and threads of the uid (RLIMIT_NPROC)
  // The sandbox (port_worker/sandbox.hpp).
  bool sandbox = false;               // --sandbox, or --zygote
  bool zygote = false;                // --zygote
  unsigned sandbox_allow = 0;         // SandboxAllow bits
  std::vector<std::string> preload;   // modules imported before confinement
  std::string workdir_parent;         // empty: $TMPDIR, else /tmp
  std::vector<std::string> env;       // NAME=VALUE
  std::vector<std::string> env_keep;  // NAME
  uint64_t max_output = 1 << 20;      // bytes of stdout+stderr per job
  // Bytes of the private working directory (a tmpfs of this size in the
  // worker's mount namespace); 0: no tmpfs, the host directory as before.
  uint64_t max_disk = 0;
  // --env-stdin: the NAME=VALUE pairs come in one {packet,4} frame on stdin
  // before anything else (never on argv, which /proc shows to everyone).
  bool env_stdin = false;
  // What the log relay sends a second (--log-lines, --log-bytes); 0 is no limit.
  uint64_t log_lines = 0;
  uint64_t log_bytes = 0;
  // --spin-us: how long the main thread may poll for the next frame before
  // it sleeps, while frames follow closely (input_reader.hpp, SpinBudget).
  uint64_t spin_us = kDefaultSpinUs;
  // Test only (--spin-test-always): spin while traffic flows without
  // measuring first whether it pays.
  bool spin_test_always = false;
  // Test only (--sandbox-test-unavailable): act as if the kernel lacked
  // this layer ("landlock", "namespaces", "seccomp").
  std::vector<std::string> test_unavailable;
  // Warm pools (zygote.hpp): --warm-zygote makes this process a pool's
  // zygote; --warm-from SOCKET makes it a warm worker's port process.
  bool warm_zygote = false;
  std::string warm_from;
  bool help = false;
};

// Which resource limits apply_limits sets.
enum class LimitScope {
  kAll,      // a plain worker: every limit, on itself
  kProcess,  // a sandboxed worker (jobs run in runners): address space and descriptors
  kJob,      // a job's runner: CPU, file size, processes
};

// Applies the resource limits of `options` in `scope`, hard limit = soft
// limit (RLIMIT_CPU: hard = soft + 1 s, for SIGXCPU before SIGKILL), so the
// limited process cannot raise them. Returns an empty string, or what could
// not be applied.
std::string apply_limits(const Options& options, LimitScope scope = LimitScope::kAll);

// Whether process `pid`'s limits in `scope` still are what apply_limits
// gave it, starting from `inherited` (the limits it started with, in the
// order of the resources below: AS, CPU, NOFILE, FSIZE, NPROC). Returns an
// empty string, or the first limit that differs.
struct InheritedLimits {
  struct rlimit_pair {
    uint64_t cur, max;
  } values[5];
};
InheritedLimits current_limits();
std::string limits_changed(pid_t pid, const Options& options, LimitScope scope,
                           const InheritedLimits& inherited);

extern const char* const kUsage;

// Fills `out` from argv. Returns an empty string, or a message naming what
// is wrong. A missing --runtime becomes default_runtime_dir().
std::string parse_options(int argc, const char* const* argv, Options& out);

// <directory of the executable>/python_runtime if it exists, else the
// source tree's python_runtime (compiled in).
std::string default_runtime_dir();

}  // namespace pyport
