// The shared vectors of proto/vectors: the C++ codec must match them byte
// for byte, and msgpack-c must read every file.
#include <dirent.h>

#include "helpers.hpp"

using namespace testing;
using pyport::PyRef;

BOOST_AUTO_TEST_SUITE(vectors)

BOOST_AUTO_TEST_CASE(every_python_vector_decodes_and_encodes_exactly) {
  PyRef mod = PyRef::steal(PyImport_ImportModule("vectors"));
  BOOST_REQUIRE_MESSAGE(mod, "import vectors: " << take_error());
  PyRef list = PyRef::steal(PyObject_GetAttrString(mod.get(), "VECTORS"));
  BOOST_REQUIRE(list && PyList_Check(list.get()));
  Py_ssize_t n = PyList_GET_SIZE(list.get());
  BOOST_REQUIRE_GE(n, 50);
  int decoded = 0, encoded = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* entry = PyList_GET_ITEM(list.get(), i);
    std::string name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(entry, 0));
    std::string direction = PyUnicode_AsUTF8(PyTuple_GET_ITEM(entry, 1));
    PyObject* value = PyTuple_GET_ITEM(entry, 2);
    BOOST_TEST_CONTEXT("vector " << name << " (" << direction << ")") {
      Bytes bytes = read_file(source_path("proto/vectors/" + name + ".msgpack"));
      std::string why;
      BOOST_TEST(msgpack_c_parses(bytes.data(), bytes.size(), why), why);
      if (direction == "both" || direction == "decode") {
        PyRef got = codec().decode_exact(bytes.data(), bytes.size());
        BOOST_REQUIRE_MESSAGE(got, "decode failed: " << take_error());
        BOOST_TEST(same_value(got.get(), value, why), why);
        ++decoded;
      }
      if (direction == "both" || direction == "encode") {
        pyport::ByteBuffer out;
        BOOST_REQUIRE(codec().encode(value, out) == pyport::EncodeResult::kOk);
        BOOST_TEST(hex(out.data(), out.size()) == hex(bytes));
        ++encoded;
      }
    }
  }
  BOOST_TEST(decoded >= 40);
  BOOST_TEST(encoded >= 40);
}

BOOST_AUTO_TEST_CASE(msgpack_c_reads_every_vector_file) {
  DIR* dir = opendir(source_path("proto/vectors").c_str());
  BOOST_REQUIRE(dir);
  int files = 0;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name.size() < 8 || name.substr(name.size() - 8) != ".msgpack") continue;
    Bytes bytes = read_file(source_path("proto/vectors/" + name));
    std::string why;
    BOOST_TEST(msgpack_c_parses(bytes.data(), bytes.size(), why), name << ": " << why);
    ++files;
  }
  closedir(dir);
  BOOST_TEST(files >= 50);
}

BOOST_AUTO_TEST_SUITE_END()
