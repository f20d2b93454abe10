// pyport_worker's command line.
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
  BOOST_TEST(parse({"--max-memory", "1000"}, o) ==
             "--max-memory must be a number of bytes, at least 33554432, not '1000'");
  BOOST_TEST(parse({"--cpu-seconds", "0"}, o) ==
             "--cpu-seconds must be a number of seconds, at least 1, not '0'");
  BOOST_TEST(parse({"--max-open-files", "-1"}, o) ==
             "--max-open-files must be a number of descriptors, at least 16, not '-1'");
  BOOST_TEST(parse({"--max-open-files"}, o) == "--max-open-files needs a value");
}

BOOST_AUTO_TEST_SUITE_END()
