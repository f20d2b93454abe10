#include "options.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "frames.hpp"

#ifndef PYPORT_SOURCE_RUNTIME
#error "PYPORT_SOURCE_RUNTIME must name the source tree's python_runtime directory"
#endif

namespace pyport {

const char* const kUsage =
    "usage: pyport_worker [--runtime DIR] [--path DIR]... [--max-frame-size BYTES]\n"
    "  --runtime DIR          the python_runtime directory (default: next to the\n"
    "                         executable, else the source tree's)\n"
    "  --path DIR             put DIR on sys.path (after the runtime); repeatable\n"
    "  --max-frame-size N     largest frame taken or sent, in bytes (default 67108864)\n"
    "Speaks {packet,4} msgpack frames on stdin/stdout; see proto/PROTOCOL.md.\n";

namespace {

bool is_dir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

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
    std::string value;
    size_t eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    if (name != "--runtime" && name != "--path" && name != "--max-frame-size") {
      return "unknown argument '" + arg + "'";
    }
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
    } else {
      errno = 0;
      char* end = nullptr;
      unsigned long long n = std::strtoull(value.c_str(), &end, 10);
      if (value[0] < '0' || value[0] > '9' || *end || errno == ERANGE || n < kMinMaxFrameSize ||
          n > kMaxMaxFrameSize) {
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
  return "";
}

}  // namespace pyport
