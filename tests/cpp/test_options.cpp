// pyport_worker's command line.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <initializer_list>
#include <string>
#include <vector>

#include "options.hpp"

namespace {
std::string parse(std::initializer_list<const char*> args, pyport::Options& out) {
  std::vector<const char*> argv = {"pyport_worker"};
  argv.insert(argv.end(), args.begin(), args.end());
  return pyport::parse_options(int(argv.size()), argv.data(), out);
}
const std::string kRuntime = std::string(PYPORT_SOURCE_DIR) + "/python_runtime";
}  // namespace

BOOST_AUTO_TEST_SUITE(options)

BOOST_AUTO_TEST_CASE(defaults) {
  pyport::Options o;
  BOOST_TEST(parse({}, o) == "");
  BOOST_TEST(o.max_frame_size == 64u << 20);
  BOOST_TEST(o.paths.empty());
  // The test binary has no python_runtime beside it: the source tree's.
  BOOST_TEST(o.runtime_dir == kRuntime);
}

BOOST_AUTO_TEST_CASE(every_option_in_both_spellings) {
  pyport::Options o;
  BOOST_TEST(
      parse({"--runtime", kRuntime.c_str(), "--path", "/a", "--path=/b", "--max-frame-size=4096"},
            o) == "");
  BOOST_TEST(o.runtime_dir == kRuntime);
  BOOST_TEST((o.paths == std::vector<std::string>{"/a", "/b"}));
  BOOST_TEST(o.max_frame_size == 4096u);
  BOOST_TEST(parse({"--max-frame-size", "4294967295"}, o) == "");
  BOOST_TEST(o.max_frame_size == 4294967295u);
  BOOST_TEST(parse({"--help"}, o) == "");
  BOOST_TEST(o.help);
}

BOOST_AUTO_TEST_CASE(bad_arguments_are_named) {
  pyport::Options o;
  BOOST_TEST(parse({"--frobnicate"}, o) == "unknown argument '--frobnicate'");
  BOOST_TEST(parse({"--path"}, o) == "--path needs a value");
  BOOST_TEST(parse({"--path="}, o) == "--path needs a non-empty value");
  BOOST_TEST(parse({"--runtime", "/nonexistent/dir"}, o) ==
             "runtime directory '/nonexistent/dir' does not exist");
  for (const char* bad : {"abc", "-5", "255", "4294967296", "12k", "99999999999999999999999"}) {
    BOOST_TEST(parse({"--max-frame-size", bad}, o) ==
                   "--max-frame-size must be a number of bytes from 256 to 4294967295, not '" +
                       std::string(bad) + "'",
               bad);
  }
}

BOOST_AUTO_TEST_CASE(spin) {
  pyport::Options o;
  BOOST_TEST(parse({}, o) == "");
  BOOST_TEST(o.spin_us == 100u);
  BOOST_TEST(!o.spin_test_always);
  BOOST_TEST(parse({"--spin-us", "0", "--spin-test-always"}, o) == "");
  BOOST_TEST(o.spin_us == 0u);
  BOOST_TEST(o.spin_test_always);
  BOOST_TEST(parse({"--spin-us=10000"}, o) == "");
  BOOST_TEST(o.spin_us == 10000u);
  for (const char* bad : {"10001", "-1", "1.5", "x"}) {
    BOOST_TEST(parse({"--spin-us", bad}, o) ==
                   "--spin-us must be a number of microseconds from 0 to 10000, not '" +
                       std::string(bad) + "'",
               bad);
  }
}

BOOST_AUTO_TEST_CASE(limits) {
  pyport::Options o;
  BOOST_TEST(parse({}, o) == "");
  BOOST_TEST(o.max_memory == 0u);
  BOOST_TEST(o.cpu_seconds == 0u);
  BOOST_TEST(o.max_open_files == 0u);
  BOOST_TEST(parse({"--max-memory", "1073741824", "--cpu-seconds=30", "--max-open-files", "256"},
                   o) == "");
  BOOST_TEST(o.max_memory == 1073741824u);
  BOOST_TEST(o.cpu_seconds == 30u);
  BOOST_TEST(o.max_open_files == 256u);
  BOOST_TEST(
      parse({"--max-memory", "1000"}, o) ==
      "--max-memory must be a number of bytes from 33554432 to 4611686018427387904, not '1000'");
  BOOST_TEST(parse({"--cpu-seconds", "0"}, o) ==
             "--cpu-seconds must be a number of seconds from 1 to 4294967295, not '0'");
  BOOST_TEST(
      parse({"--max-open-files", "-1"}, o) ==
      "--max-open-files must be a number of descriptors from 16 to 4611686018427387904, not '-1'");
  BOOST_TEST(parse({"--max-open-files"}, o) == "--max-open-files needs a value");
  // Above 2^62 (or beyond 64 bits) is refused, not wrapped or taken as "no limit".
  BOOST_TEST(parse({"--max-memory", "4611686018427387904"}, o) == "");
  BOOST_TEST(parse({"--cpu-seconds", "4294967295"}, o) == "");
  BOOST_TEST(parse({"--cpu-seconds", "4294967296"}, o) ==
             "--cpu-seconds must be a number of seconds from 1 to 4294967295, not '4294967296'");
  BOOST_TEST(parse({"--max-memory", "36893488147419103232"}, o) ==
             "--max-memory must be a number of bytes from 33554432 to 4611686018427387904, not "
             "'36893488147419103232'");
}

BOOST_AUTO_TEST_CASE(sandbox_flags) {
  pyport::Options o;
  BOOST_TEST(parse({}, o) == "");
  BOOST_TEST(!o.sandbox);
  BOOST_TEST(!o.zygote);
  BOOST_TEST(o.max_output == 1u << 20);
  BOOST_TEST(
      parse({"--sandbox", "--sandbox-allow", "network", "--sandbox-allow=privileges", "--preload",
             "json", "--preload=numpy", "--workdir-parent", "/tmp", "--env", "A=1=2", "--env-keep",
             "LANG", "--max-output", "0", "--max-file-size", "4096", "--max-processes=8"},
            o) == "");
  BOOST_TEST(o.sandbox);
  BOOST_TEST(!o.zygote);
  BOOST_TEST(o.sandbox_allow == (pyport::kAllowNetwork | pyport::kAllowPrivileges));
  BOOST_TEST((o.preload == std::vector<std::string>{"json", "numpy"}));
  BOOST_TEST(o.workdir_parent == "/tmp");
  BOOST_TEST((o.env == std::vector<std::string>{"A=1=2"}));
  BOOST_TEST((o.env_keep == std::vector<std::string>{"LANG"}));
  BOOST_TEST(o.max_output == 0u);
  BOOST_TEST(o.max_file_size == 4096u);
  BOOST_TEST(o.max_processes == 8u);
  BOOST_TEST(parse({"--zygote"}, o) == "");
  BOOST_TEST((o.sandbox && o.zygote));
  BOOST_TEST(!o.env_stdin);
  BOOST_TEST(o.max_disk == 0u);
  BOOST_TEST(parse({"--sandbox", "--env-stdin", "--max-disk=1048576"}, o) == "");
  BOOST_TEST(o.env_stdin);
  BOOST_TEST(o.max_disk == 1048576u);
  for (unsigned b = 0; b < 7; ++b) {
    BOOST_TEST(parse({"--sandbox", "--sandbox-allow", pyport::kSandboxAllowNames[b]}, o) == "");
    BOOST_TEST(o.sandbox_allow == 1u << b);
  }
}

// In a child: apply_limits() sets hard = soft, so the limited process
// cannot raise them again (RLIMIT_CPU: hard = soft + 1 s); limits_changed()
// sees what was applied as unchanged, and a lowered limit as changed.
BOOST_AUTO_TEST_CASE(limits_are_hard) {
  pid_t child = fork();
  BOOST_REQUIRE(child >= 0);
  if (child == 0) {
    pyport::Options o;
    if (!parse({"--max-open-files", "64", "--cpu-seconds", "30", "--max-file-size", "65536"}, o)
             .empty())
      _exit(10);
    pyport::InheritedLimits before = pyport::current_limits();
    if (!pyport::apply_limits(o).empty()) _exit(11);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur != 64 || rl.rlim_max != 64) _exit(12);
    getrlimit(RLIMIT_CPU, &rl);
    if (rl.rlim_cur != 30 || rl.rlim_max != 31) _exit(13);
    struct rlimit up = {128, 128};
    if (geteuid() != 0 && setrlimit(RLIMIT_NOFILE, &up) == 0) _exit(14);
    if (!pyport::limits_changed(getpid(), o, pyport::LimitScope::kAll, before).empty()) _exit(15);
    struct rlimit down = {32, 32};
    setrlimit(RLIMIT_NOFILE, &down);
    if (pyport::limits_changed(getpid(), o, pyport::LimitScope::kAll, before)
            .find("--max-open-files is 32/32") != 0)
      _exit(16);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  BOOST_TEST(WIFEXITED(status));
  BOOST_TEST(WEXITSTATUS(status) == 0);
}

BOOST_AUTO_TEST_CASE(bad_sandbox_flags_are_named) {
  pyport::Options o;
  BOOST_TEST(parse({"--sandbox", "--sandbox-allow", "all"}, o) ==
             "--sandbox-allow takes network, exec, fork, filesystem, namespaces, seccomp or "
             "privileges, not 'all'");
  BOOST_TEST(parse({"--sandbox", "--env", "NOVALUE"}, o) ==
             "--env takes NAME=VALUE, not 'NOVALUE'");
  BOOST_TEST(parse({"--sandbox", "--env", "=x"}, o) == "--env takes NAME=VALUE, not '=x'");
  BOOST_TEST(parse({"--sandbox", "--env-keep", "A=B"}, o) ==
             "--env-keep takes a variable name, not 'A=B'");
  BOOST_TEST(parse({"--sandbox", "--workdir-parent", "tmp"}, o) ==
             "--workdir-parent must be an absolute path, not 'tmp'");
  BOOST_TEST(parse({"--sandbox", "--workdir-parent", "/nonexistent/dir"}, o) ==
             "--workdir-parent '/nonexistent/dir' is not a directory");
  BOOST_TEST(parse({"--sandbox", "--max-output", "lots"}, o) ==
             "--max-output must be a number of bytes, not 'lots'");
  BOOST_TEST(parse({"--max-file-size", "0"}, o) ==
             "--max-file-size must be a number of bytes from 1 to 4611686018427387904, not '0'");
  BOOST_TEST(parse({"--preload", "json"}, o) ==
             "--sandbox-allow, --preload, --workdir-parent, --env, --env-stdin, --env-keep and "
             "--max-disk need --sandbox or --zygote");
  BOOST_TEST(parse({"--env-stdin"}, o) ==
             "--sandbox-allow, --preload, --workdir-parent, --env, --env-stdin, --env-keep and "
             "--max-disk need --sandbox or --zygote");
  BOOST_TEST(parse({"--sandbox", "--max-disk", "1000"}, o) ==
             "--max-disk must be a number of bytes, at least 1048576, not '1000'");
  BOOST_TEST(parse({"--sandbox=yes"}, o) == "unknown argument '--sandbox=yes'");
  BOOST_TEST(parse({"--sandbox", "--sandbox-test-unavailable", "apparmor"}, o) ==
             "--sandbox-test-unavailable takes landlock, namespaces or seccomp, not 'apparmor'");
}

BOOST_AUTO_TEST_SUITE_END()
