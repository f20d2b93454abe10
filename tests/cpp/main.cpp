// The C++ test runner: one embedded interpreter for all tests (CPython
// cannot be re-initialised reliably), with the python_runtime and the
// shared vectors importable.
#define BOOST_TEST_MODULE pyport_cpp_tests
#include <Python.h>

#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <string>

struct PythonFixture {
  PythonFixture() {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;
    config.install_signal_handlers = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, "/usr/bin/python3");
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
      std::fprintf(stderr, "cannot start Python: %s\n", status.err_msg ? status.err_msg : "?");
      std::exit(1);
    }
    PyObject* path = PySys_GetObject("path");
    const std::string source = PYPORT_SOURCE_DIR;
    const std::string dirs[] = {source + "/python_runtime", source + "/proto/vectors"};
    for (int i = 0; i < 2; ++i) {
      PyObject* entry = PyUnicode_FromString(dirs[i].c_str());
      PyList_Insert(path, i, entry);
      Py_DECREF(entry);
    }
  }
  ~PythonFixture() { Py_FinalizeEx(); }
};

BOOST_TEST_GLOBAL_FIXTURE(PythonFixture);
