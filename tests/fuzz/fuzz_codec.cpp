// libFuzzer target: what a worker does with bytes from its owner before any
// Python code runs. The input is a byte stream cut into frames by the
// FrameAssembler (in chunks, so frames straddle reads); each frame's id is
// recovered and every value in it decoded by the Codec. A decoded value is
// encoded again, and that encoding must decode and re-encode to the same
// bytes (the encoder's output is canonical). A decode failure must be a
// ValueError (malformed input) or MemoryError, never anything else, and
// never a crash.
//
// "The same bytes" holds from the second round trip on: the first may
// change a value's wire form by design (Python bytes go out as bin, and a
// bin holding UTF-8 comes back as str; a set goes out as an array).
#include <Python.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "codec.hpp"
#include "frames.hpp"
#include "msgpack_rw.hpp"

namespace {

pyport::Codec* g_codec = nullptr;
// Small, so oversized frames and their skipping are exercised too.
constexpr size_t kMaxFrame = 4096;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_codec: %s\n", what);
  if (PyErr_Occurred()) PyErr_Print();
  std::abort();
}

// The only exceptions a failed decode may leave: a malformed or oversized
// value, or (LookupError: erlang._objects.StaleRefError) an object id this
// worker does not hold.
void expect_decode_error() {
  if (!PyErr_Occurred()) fail("decode failed without an exception");
  if (!PyErr_ExceptionMatches(PyExc_ValueError) && !PyErr_ExceptionMatches(PyExc_MemoryError) &&
      !PyErr_ExceptionMatches(PyExc_LookupError)) {
    fail("decode failed with an unexpected exception");
  }
  PyErr_Clear();
}

pyport::ByteBuffer encoded(PyObject* value, const char* what) {
  pyport::ByteBuffer out;
  if (g_codec->encode(value, out) != pyport::EncodeResult::kOk) fail(what);
  return out;
}

pyport::PyRef decoded(const pyport::ByteBuffer& bytes) {
  pyport::PyRef v = g_codec->decode_exact(bytes.data(), bytes.size());
  if (!v) fail("an encoding made by the codec does not decode");
  return v;
}

void check_value(PyObject* value) {
  pyport::ByteBuffer first = encoded(value, "a decoded value does not encode");
  pyport::PyRef v2 = decoded(first);
  pyport::ByteBuffer second = encoded(v2.get(), "a round-tripped value does not encode");
  pyport::PyRef v3 = decoded(second);
  pyport::ByteBuffer third = encoded(v3.get(), "a round-tripped value does not encode");
  if (second.size() != third.size() ||
      std::memcmp(second.data(), third.data(), second.size()) != 0) {
    fail("the wire form changes after its first round trip");
  }
}

void check_frame(const uint8_t* payload, size_t size) {
  uint64_t id;
  (void)pyport::recover_id(payload, size, id);
  pyport::mp::Reader r(payload, size);
  uint32_t n;
  if (!r.read_array_header(n, "frame")) return;
  for (uint32_t i = 0; i < n && !r.at_end(); ++i) {
    pyport::PyRef v = g_codec->decode(r, 1);
    if (!v) return expect_decode_error();
    check_value(v.get());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.parse_argv = 0;
  config.install_signal_handlers = 0;
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, "/usr/bin/python3");
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) fail("cannot start Python");
  PyObject* path = PySys_GetObject("path");
  PyObject* runtime = PyUnicode_FromString(PYPORT_SOURCE_RUNTIME);
  if (!path || !runtime || PyList_Insert(path, 0, runtime) < 0) fail("cannot set sys.path");
  Py_DECREF(runtime);
  g_codec = pyport::Codec::create().release();  // lives for the whole run
  if (!g_codec) fail("cannot load the erlang package");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pyport::FrameAssembler assembler(kMaxFrame);
  // The first byte picks the read size: 1 to 256 bytes per read.
  size_t chunk = size ? size_t(data[0]) + 1 : 1;
  size_t pos = size ? 1 : 0;
  while (pos < size) {
    size_t n = std::min(chunk, size - pos);
    auto [buf, room] = assembler.prepare();
    n = std::min(n, room);
    std::memcpy(buf, data + pos, n);
    assembler.commit(n);
    pos += n;
    pyport::FrameAssembler::Event ev;
    while (assembler.next(ev)) {
      if (ev.type == pyport::FrameAssembler::Event::kFrame) {
        check_frame(ev.payload, ev.size);
      } else if (ev.size <= kMaxFrame) {
        fail("an oversized event for a frame within the limit");
      }
    }
    assembler.compact();
  }
  if (PyErr_Occurred()) fail("an exception was left set");
  return 0;
}
