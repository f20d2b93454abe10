// Python objects <-> msgpack, per the term mapping of PROTOCOL.md. Decoding
// builds Python objects straight from the bytes and encoding writes bytes
// straight from Python objects; there is no intermediate tree.
// All methods need the GIL.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>

#include "byte_buffer.hpp"
#include "msgpack_rw.hpp"
#include "py_ref.hpp"

namespace pyport {

// Containers (array, map, tuple) nest at most this deep, in both directions.
constexpr int kMaxDepth = 512;

enum class EncodeResult {
  kOk,
  kError,     // a Python exception is set (TypeError for an unconvertible value)
  kTooLarge,  // the encoding would pass the given limit; no exception is set
};

class Codec {
 public:
  // Imports erlang._types (the python_runtime must be on sys.path). Returns
  // null with a Python exception set when that fails.
  static std::unique_ptr<Codec> create();

  // Decodes the value at the reader's position. On failure returns null with
  // a Python exception set: ValueError for malformed input (its message is
  // the reader's error: what is wrong, at which byte), else whatever Python
  // raised (MemoryError). `depth` is how many containers enclose the value
  // (nesting is limited to kMaxDepth containers in all).
  PyRef decode(mp::Reader& reader, int depth = 0);
  // Decodes the `count` elements of an array whose header (at offset
  // `array_at`) the caller has read, straight into a tuple: call arguments.
  // The array counts as one level of nesting.
  PyRef decode_tuple(mp::Reader& reader, uint32_t count, size_t array_at);
  // Decodes a buffer that must hold exactly one value.
  PyRef decode_exact(const uint8_t* data, size_t size);

  // Appends the encoding of obj to out. The encoding may make out grow to at
  // most `limit` bytes past its size at the call, else kTooLarge. On any
  // failure out is restored to its size at the call.
  EncodeResult encode(PyObject* obj, ByteBuffer& out, size_t limit = SIZE_MAX);

  PyObject* atom_type() const { return atom_type_.get(); }

 private:
  class Decoder;
  class Encoder;
  Codec() = default;

  // The erlang.Atom for a UTF-8 name: cached, since atoms are few and
  // decoding them must be fast. Returns null with an exception set.
  PyRef atom(const char* name, size_t size);

  // The object an ext 6 names, from erlang._objects's table; null with
  // StaleRefError set when the worker does not hold it.
  PyRef kept_object(uint64_t id);

  PyRef atom_type_, term_type_, pid_type_, ref_type_;
  PyRef objects_, stale_error_;  // erlang._objects._table and StaleRefError
  PyRef etf_name_;               // interned "etf"
  std::unordered_map<std::string, PyRef> atoms_;
};

}  // namespace pyport
