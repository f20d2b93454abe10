// Command line of pyport_worker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyport {

struct Options {
  std::string runtime_dir;         // the python_runtime directory
  std::vector<std::string> paths;  // --path entries, in order
  size_t max_frame_size = 0;       // set by parse_options
  // Resource limits the worker applies to itself at start; 0 is no limit.
  uint64_t max_memory = 0;      // bytes of address space (RLIMIT_AS)
  uint64_t cpu_seconds = 0;     // CPU time (RLIMIT_CPU)
  uint64_t max_open_files = 0;  // descriptors (RLIMIT_NOFILE)
  bool help = false;
};

// Applies the resource limits of `options`. Returns an empty string, or
// what could not be applied.
std::string apply_limits(const Options& options);

extern const char* const kUsage;

// Fills `out` from argv. Returns an empty string, or a message naming what
// is wrong. A missing --runtime becomes default_runtime_dir().
std::string parse_options(int argc, const char* const* argv, Options& out);

// <directory of the executable>/python_runtime if it exists, else the
// source tree's python_runtime (compiled in).
std::string default_runtime_dir();

}  // namespace pyport
