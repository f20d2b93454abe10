#include "options.hpp"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "frames.hpp"

#ifndef PYPORT_SOURCE_RUNTIME
#error "PYPORT_SOURCE_RUNTIME must name the source tree's python_runtime directory"
#endif

namespace pyport {

const char* const kSandboxAllowNames[7] = {"network",    "exec",    "fork",      "filesystem",
                                           "namespaces", "seccomp", "privileges"};

const char* const kUsage =
    "usage: pyport_worker [--runtime DIR] [--path DIR]... [--max-frame-size BYTES]\n"
    "                     [--max-memory BYTES] [--cpu-seconds N] [--max-open-files N]\n"
    "                     [--max-file-size BYTES] [--max-processes N]\n"
    "                     [--sandbox | --zygote] [--sandbox-allow WHAT]... [--preload MODULE]...\n"
    "                     [--workdir-parent DIR] [--env NAME=VALUE]... [--env-keep NAME]...\n"
    "                     [--max-output BYTES] [--max-disk BYTES] [--env-stdin]\n"
    "                     [--log-lines N] [--log-bytes BYTES] [--spin-us N]\n"
    "                     [--warm-zygote | --warm-from SOCKET]\n"
    "  --runtime DIR          the python_runtime directory (default: next to the\n"
    "                         executable, else the source tree's)\n"
    "  --path DIR             put DIR on sys.path (after the runtime); repeatable\n"
    "  --max-frame-size N     largest frame taken or sent, in bytes (default 67108864)\n"
    "  --max-memory BYTES     address-space limit (RLIMIT_AS): Python raises MemoryError\n"
    "  --cpu-seconds N        CPU-time limit (RLIMIT_CPU): the worker dies with SIGXCPU\n"
    "  --max-open-files N     descriptor limit (RLIMIT_NOFILE)\n"
    "  --max-file-size BYTES  largest file the worker may write (RLIMIT_FSIZE)\n"
    "  --max-processes N      processes and threads of the worker's uid (RLIMIT_NPROC)\n"
    "  --sandbox              confine the worker before it says HELLO (docs/pyport-run.md)\n"
    "  --zygote               a sandboxed worker that forks a confined child per fresh job\n"
    "  --sandbox-allow WHAT   relax one restriction: network, exec, fork, filesystem,\n"
    "                         namespaces, seccomp or privileges; repeatable\n"
    "  --preload MODULE       import MODULE before confinement; repeatable\n"
    "  --workdir-parent DIR   where the private working directory goes ($TMPDIR or /tmp)\n"
    "  --env NAME=VALUE       set in the sandbox's otherwise empty environment; repeatable\n"
    "  --env-keep NAME        keep NAME from the inherited environment; repeatable\n"
    "  --max-output BYTES     stdout+stderr a job may print (default 1048576)\n"
    "  --max-disk BYTES       size of the private working directory (a tmpfs)\n"
    "  --env-stdin            read NAME=VALUE pairs (NUL-separated, in one {packet,4}\n"
    "                         frame) from stdin before anything else\n"
    "  --log-lines N          lines of stdout+stderr sent as LOG frames a second, the\n"
    "                         rest dropped and counted (default: no limit)\n"
    "  --log-bytes BYTES      bytes of them a second (default: no limit)\n"
    "  --spin-us N            microseconds the main thread may poll for the next frame\n"
    "                         before it sleeps, while frames follow closely\n"
    "                         (default 100; 0: never)\n"
    "  --warm-zygote          a warm pool's zygote: reads a prelude and init_code (each\n"
    "                         {packet,4}) on stdin, imports the --preload modules,\n"
    "                         says READY <socket>\n"
    "  --warm-from SOCKET     a warm worker's port process: the zygote at SOCKET forks\n"
    "                         the worker on this process's stdin and stdout\n"
    "Speaks {packet,4} msgpack frames on stdin/stdout; see proto/PROTOCOL.md.\n";

namespace {

bool is_dir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A decimal number in [min, max], digits only.
bool parse_number(const std::string& value, uint64_t min, uint64_t max, uint64_t& out) {
  if (value.empty() || value[0] < '0' || value[0] > '9') return false;
  errno = 0;
  char* end = nullptr;
  unsigned long long n = std::strtoull(value.c_str(), &end, 10);
  if (*end || errno == ERANGE || n < min || n > max) return false;
  out = n;
  return true;
}

struct Limit {
  const char* option;
  int resource;
  uint64_t Options::*field;
  uint64_t min;
  uint64_t max;
  const char* unit;
};

// The largest value of a limit: below RLIM_INFINITY (which would lift the
// limit). CPU seconds stop sooner: the kernel counts them in nanoseconds
// in 64 bits, and a larger value wraps into an instant SIGXCPU. The owner
// checks the same bounds (pyport_config.erl).
constexpr uint64_t kMaxLimit = uint64_t(1) << 62;
constexpr uint64_t kMaxCpuSeconds = 0xffffffffu;

// The smallest values still let Python start and run.
const Limit kLimits[] = {
    {"--max-memory", RLIMIT_AS, &Options::max_memory, uint64_t(32) << 20, kMaxLimit, "bytes"},
    {"--cpu-seconds", RLIMIT_CPU, &Options::cpu_seconds, 1, kMaxCpuSeconds, "seconds"},
    {"--max-open-files", RLIMIT_NOFILE, &Options::max_open_files, 16, kMaxLimit, "descriptors"},
    {"--max-file-size", RLIMIT_FSIZE, &Options::max_file_size, 1, kMaxLimit, "bytes"},
    {"--max-processes", RLIMIT_NPROC, &Options::max_processes, 1, kMaxLimit, "processes"},
};

bool in_scope(int resource, LimitScope scope) {
  bool per_job = resource == RLIMIT_CPU || resource == RLIMIT_FSIZE || resource == RLIMIT_NPROC;
  return scope == LimitScope::kAll || (scope == LimitScope::kJob) == per_job;
}

// An environment variable name: no '=', not empty.
bool valid_env_name(const std::string& name) {
  return !name.empty() && name.find('=') == std::string::npos;
}

// Options that take a value, besides the limits.
const char* const kValued[] = {"--runtime",
                               "--path",
                               "--max-frame-size",
                               "--sandbox-allow",
                               "--preload",
                               "--workdir-parent",
                               "--env",
                               "--env-keep",
                               "--max-output",
                               "--max-disk",
                               "--sandbox-test-unavailable",
                               "--log-lines",
                               "--log-bytes",
                               "--spin-us",
                               "--warm-from"};

}  // namespace

std::string default_runtime_dir() {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    std::string path(exe, size_t(n));
    std::string candidate = path.substr(0, path.rfind('/') + 1) + "python_runtime";
    if (is_dir(candidate)) return candidate;
  }
  return PYPORT_SOURCE_RUNTIME;
}

std::string parse_options(int argc, const char* const* argv, Options& out) {
  out = Options();
  out.max_frame_size = kDefaultMaxFrameSize;
  bool have_runtime = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
      return "";
    }
    size_t eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    if (eq == std::string::npos && name == "--warm-zygote") {
      out.warm_zygote = true;
      continue;
    }
    if (eq == std::string::npos && name == "--env-stdin") {
      out.env_stdin = true;
      continue;
    }
    if (eq == std::string::npos && name == "--spin-test-always") {
      out.spin_test_always = true;
      continue;
    }
    if (eq == std::string::npos && (name == "--sandbox" || name == "--zygote")) {
      out.sandbox = true;
      if (name == "--zygote") out.zygote = true;
      continue;
    }
    const Limit* limit = nullptr;
    for (const Limit& l : kLimits)
      if (name == l.option) limit = &l;
    bool valued = false;
    for (const char* v : kValued)
      if (name == v) valued = true;
    if (!limit && !valued) return "unknown argument '" + arg + "'";
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return name + " needs a value";
    }
    if (value.empty()) return name + " needs a non-empty value";
    if (name == "--runtime") {
      out.runtime_dir = value;
      have_runtime = true;
    } else if (name == "--path") {
      out.paths.push_back(value);
    } else if (limit) {
      if (!parse_number(value, limit->min, limit->max, out.*(limit->field))) {
        return std::string(limit->option) + " must be a number of " + limit->unit + " from " +
               std::to_string(limit->min) + " to " + std::to_string(limit->max) + ", not '" +
               value + "'";
      }
    } else if (name == "--sandbox-allow") {
      unsigned bit = 0;
      for (unsigned b = 0; b < 7; ++b)
        if (value == kSandboxAllowNames[b]) bit = 1u << b;
      if (!bit) {
        return "--sandbox-allow takes network, exec, fork, filesystem, namespaces, seccomp or "
               "privileges, not '" +
               value + "'";
      }
      out.sandbox_allow |= bit;
    } else if (name == "--preload") {
      out.preload.push_back(value);
    } else if (name == "--warm-from") {
      if (value[0] != '/') return "--warm-from must be an absolute path, not '" + value + "'";
      out.warm_from = value;
    } else if (name == "--workdir-parent") {
      if (value[0] != '/') return "--workdir-parent must be an absolute path, not '" + value + "'";
      out.workdir_parent = value;
    } else if (name == "--env") {
      size_t at = value.find('=');
      if (at == std::string::npos || !valid_env_name(value.substr(0, at))) {
        return "--env takes NAME=VALUE, not '" + value + "'";
      }
      out.env.push_back(value);
    } else if (name == "--env-keep") {
      if (!valid_env_name(value)) return "--env-keep takes a variable name, not '" + value + "'";
      out.env_keep.push_back(value);
    } else if (name == "--max-output") {
      if (!parse_number(value, 0, UINT64_MAX, out.max_output)) {
        return "--max-output must be a number of bytes, not '" + value + "'";
      }
    } else if (name == "--max-disk") {
      // Room for Python's own small files (bytecode caches, a job's dir).
      if (!parse_number(value, 1 << 20, UINT64_MAX, out.max_disk)) {
        return "--max-disk must be a number of bytes, at least 1048576, not '" + value + "'";
      }
    } else if (name == "--log-lines" || name == "--log-bytes") {
      if (!parse_number(value, 1, UINT64_MAX,
                        name == "--log-lines" ? out.log_lines : out.log_bytes)) {
        return name + " must be a positive number, not '" + value + "'";
      }
    } else if (name == "--spin-us") {
      if (!parse_number(value, 0, kMaxSpinUs, out.spin_us)) {
        return "--spin-us must be a number of microseconds from 0 to " +
               std::to_string(kMaxSpinUs) + ", not '" + value + "'";
      }
    } else if (name == "--sandbox-test-unavailable") {
      if (value != "landlock" && value != "namespaces" && value != "seccomp") {
        return "--sandbox-test-unavailable takes landlock, namespaces or seccomp, not '" + value +
               "'";
      }
      out.test_unavailable.push_back(value);
    } else {
      uint64_t n;
      if (!parse_number(value, kMinMaxFrameSize, kMaxMaxFrameSize, n)) {
        return "--max-frame-size must be a number of bytes from " +
               std::to_string(kMinMaxFrameSize) + " to " + std::to_string(kMaxMaxFrameSize) +
               ", not '" + value + "'";
      }
      out.max_frame_size = size_t(n);
    }
  }
  if (!have_runtime) out.runtime_dir = default_runtime_dir();
  if (!is_dir(out.runtime_dir)) {
    return "runtime directory '" + out.runtime_dir + "' does not exist";
  }
  if (out.warm_zygote && out.sandbox) return "--warm-zygote cannot be combined with --sandbox";
  if (!out.sandbox) {
    if (out.sandbox_allow || (!out.preload.empty() && !out.warm_zygote) ||
        !out.workdir_parent.empty() || !out.env.empty() || !out.env_keep.empty() ||
        !out.test_unavailable.empty() || out.max_disk || out.env_stdin) {
      return "--sandbox-allow, --preload, --workdir-parent, --env, "
             "--env-stdin, --env-keep and "
             "--max-disk need --sandbox or --zygote";
    }
  }
  if (!out.workdir_parent.empty() && !is_dir(out.workdir_parent)) {
    return "--workdir-parent '" + out.workdir_parent + "' is not a directory";
  }
  return "";
}

namespace {

// The limit apply_limits sets for `l`, given the limit inherited.
struct rlimit wanted_limit(const Limit& l, uint64_t value, struct rlimit rl) {
  rlim_t want = rlim_t(value);
  // An unprivileged process cannot raise its hard limit: stay below it.
  if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max) want = rl.rlim_max;
  struct rlimit out = {want, want};
  // RLIMIT_CPU: SIGXCPU at the soft limit (fatal: Python does not handle
  // it), SIGKILL a second later should the process catch it. The one
  // second is all a job can add by raising its soft limit.
  if (l.resource == RLIMIT_CPU && (rl.rlim_max == RLIM_INFINITY || want < rl.rlim_max)) {
    out.rlim_max = want + 1;
  }
  return out;
}

}  // namespace

std::string apply_limits(const Options& options, LimitScope scope) {
  for (const Limit& l : kLimits) {
    uint64_t value = options.*(l.field);
    if (!value || !in_scope(l.resource, scope)) continue;
    struct rlimit rl;
    if (getrlimit(l.resource, &rl) != 0) return std::string("getrlimit: ") + strerror(errno);
    // Hard = soft: a job that raises its soft limit gets EPERM (a soft
    // limit alone is only advice to the process it limits).
    struct rlimit want = wanted_limit(l, value, rl);
    if (setrlimit(l.resource, &want) != 0) {
      return std::string("cannot apply ") + l.option + " " + std::to_string(value) + ": " +
             strerror(errno);
    }
  }
  return "";
}

InheritedLimits current_limits() {
  InheritedLimits out{};
  for (size_t i = 0; i < 5; ++i) {
    struct rlimit rl {
      RLIM_INFINITY, RLIM_INFINITY
    };
    getrlimit(kLimits[i].resource, &rl);
    out.values[i] = {uint64_t(rl.rlim_cur), uint64_t(rl.rlim_max)};
  }
  return out;
}

namespace {

// A process's limits from /proc/<pid>/limits, which anyone may read (a
// root keeper in a container often lacks CAP_SYS_RESOURCE, which
// prlimit() on another uid's process needs). False if it is gone.
bool read_proc_limits(pid_t pid, struct rlimit (&out)[5]) {
  static const char* const kLabels[5] = {"Max address space", "Max cpu time", "Max open files",
                                         "Max file size", "Max processes"};
  std::string path = "/proc/" + std::to_string(pid) + "/limits";
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return false;
  char line[256];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    for (size_t i = 0; i < 5; ++i) {
      size_t n = strlen(kLabels[i]);
      if (strncmp(line, kLabels[i], n) != 0 || line[n] != ' ') continue;
      char soft[32] = {}, hard[32] = {};
      if (sscanf(line + 26, "%31s %31s", soft, hard) != 2) continue;
      auto value = [](const char* v) {
        return strcmp(v, "unlimited") == 0 ? RLIM_INFINITY : rlim_t(strtoull(v, nullptr, 10));
      };
      out[i] = {value(soft), value(hard)};
      ++found;
    }
  }
  fclose(f);
  return found == 5;
}

}  // namespace

std::string limits_changed(pid_t pid, const Options& options, LimitScope scope,
                           const InheritedLimits& inherited) {
  struct rlimit now[5];
  if (!read_proc_limits(pid, now)) return "";  // gone
  for (size_t i = 0; i < 5; ++i) {
    const Limit& l = kLimits[i];
    struct rlimit expect = {rlim_t(inherited.values[i].cur), rlim_t(inherited.values[i].max)};
    uint64_t value = options.*(l.field);
    if (value && in_scope(l.resource, scope)) expect = wanted_limit(l, value, expect);
    if (now[i].rlim_cur != expect.rlim_cur || now[i].rlim_max != expect.rlim_max) {
      return std::string(l.option) + " is " + std::to_string(now[i].rlim_cur) + "/" +
             std::to_string(now[i].rlim_max) + ", not " + std::to_string(expect.rlim_cur) + "/" +
             std::to_string(expect.rlim_max);
    }
  }
  return "";
}

}  // namespace pyport
