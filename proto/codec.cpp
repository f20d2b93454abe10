#include "codec.hpp"

#include <cstring>
#include <new>
#include <string>

#include "payloads.hpp"
#include "utf8.hpp"

namespace pyport {
namespace {

// The atom cache stops growing here: names past it are still decoded, only
// not cached, so a stream of distinct names cannot grow memory without bound.
constexpr size_t kMaxCachedAtoms = 4096;

// ETF tags (the byte after 131) of the terms ext 5 may carry: pids, refs,
// ports and funs. Anything else (a compressed term: 80) is refused.
enum EtfTag : uint8_t {
  kNewPidExt = 88,
  kPidExt = 103,
  kNewerRefExt = 90,
  kNewRefExt = 114,
  kRefExt = 101,
  kV4PortExt = 89,
  kNewPortExt = 120,
  kPortExt = 102,
  kNewFunExt = 112,
  kExportExt = 113,
  kFunExt = 117,
};

// The type's __name__, for messages.
std::string type_name(PyObject* obj) {
  PyRef name = PyRef::steal(PyType_GetName(Py_TYPE(obj)));
  const char* s = name ? PyUnicode_AsUTF8(name.get()) : nullptr;
  if (!s) {
    PyErr_Clear();
    return Py_TYPE(obj)->tp_name;
  }
  return s;
}

// A str (one copy from p) for text of the given kind, else bytes.
PyObject* new_string(const uint8_t* p, size_t n, utf8::Kind kind) {
  switch (kind) {
    case utf8::Kind::kAscii: {
      PyObject* s = PyUnicode_New(Py_ssize_t(n), 127);
      if (s) std::memcpy(PyUnicode_DATA(s), p, n);
      return s;
    }
    case utf8::Kind::kUtf8:
      return PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(p), Py_ssize_t(n), "strict");
    default:
      return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p), Py_ssize_t(n));
  }
}

// Integers of int16 and uint16 range, made once and shared: a decoded list
// of 10,000 such ints then costs no allocation per element, and freeing
// it none either (each stays referenced here). Ints are immutable, so
// sharing them is invisible to Python code (CPython shares -5..256 alike).
// At most 98,304 objects (about 3 MiB), made as values are first seen.
constexpr long kIntCacheMin = -32768, kIntCacheMax = 65535;
PyObject* int_cache[kIntCacheMax - kIntCacheMin + 1];

// A new reference to the int v.
inline PyObject* small_int_object(long v) {
  if (v < kIntCacheMin || v > kIntCacheMax) return PyLong_FromLong(v);
  PyObject*& slot = int_cache[v - kIntCacheMin];
  if (!slot) {
    slot = PyLong_FromLong(v);
    if (!slot) return nullptr;
  }
  Py_INCREF(slot);
  return slot;
}

// The value of an int of at most two CPython digits (|v| < 2**60; from
// Python 3.12 on, of one digit: |v| < 2**30), read straight from the
// object; false for any other int, which the caller converts the general
// way. Nearly every int is one of these, and reading it needs no call.
// o is an int or an int subclass (same layout).
inline bool short_int(PyObject* o, int64_t& v) {
  auto* l = reinterpret_cast<PyLongObject*>(o);
#if PY_VERSION_HEX >= 0x030c0000
  if (!PyUnstable_Long_IsCompact(l)) return false;
  v = int64_t(PyUnstable_Long_CompactValue(l));
  return true;
#elif PyLong_SHIFT == 30
  Py_ssize_t size = Py_SIZE(o);   // digits, negative for a negative int
  if (size >= -1 && size <= 1) {  // the common case first, without a table
    v = size == 0 ? 0 : int64_t(size) * int64_t(l->ob_digit[0]);
    return true;
  }
  if (size != 2 && size != -2) return false;
  int64_t m = int64_t(l->ob_digit[1]) << PyLong_SHIFT | l->ob_digit[0];
  v = size < 0 ? -m : m;
  return true;
#else
  (void)l;  // 15-bit digits: always the general way
  (void)v;
  return false;
#endif
}

// short_int for an exact int only: the runs in containers leave bools and
// int subclasses to Encoder::value().
inline bool exact_short_int(PyObject* o, int64_t& v) {
  return Py_TYPE(o) == &PyLong_Type && short_int(o, v);
}

// The integer forms of up to 32 bits at p (p < end): stores the value in v
// and returns the end of the form; null for any other form or a truncated
// one, which Decoder::value then reads or reports. Most elements of big
// lists and maps are such integers, so they skip the general dispatch.
inline const uint8_t* read_small_int(const uint8_t* p, const uint8_t* end, long& v) {
  uint8_t b = p[0];
  if (b <= 0x7f) {
    v = b;
    return p + 1;
  }
  if (b >= 0xe0) {
    v = int8_t(b);
    return p + 1;
  }
  size_t left = size_t(end - p);
  switch (b) {
    case 0xcc:
      if (left < 2) return nullptr;
      v = p[1];
      return p + 2;
    case 0xcd:
      if (left < 3) return nullptr;
      v = long(p[1]) << 8 | p[2];
      return p + 3;
    case 0xce:
      if (left < 5) return nullptr;
      v = long(mp::load_be32(p + 1));
      return p + 5;
    case 0xd0:
      if (left < 2) return nullptr;
      v = int8_t(p[1]);
      return p + 2;
    case 0xd1:
      if (left < 3) return nullptr;
      v = int16_t(uint16_t(p[1] << 8 | p[2]));
      return p + 3;
    case 0xd2:
      if (left < 5) return nullptr;
      v = int32_t(mp::load_be32(p + 1));
      return p + 5;
    default:
      return nullptr;
  }
}

// Releases a Py_buffer on scope exit.
struct BufferView {
  Py_buffer view{};
  bool held = false;
  ~BufferView() {
    if (held) PyBuffer_Release(&view);
  }
};

}  // namespace

// ---- decoding ------------------------------------------------------------

class Codec::Decoder {
 public:
  explicit Decoder(Codec& codec) : codec_(codec) {}

  // One value; null on failure, with the reader's error set for malformed
  // input or a Python exception set otherwise.
  PyRef value(mp::Reader& r, int depth) {
    size_t start = r.offset();
    uint8_t b = 0;
    if (!r.read_byte(b)) return {};
    if (b <= 0x7f) return PyRef::steal(small_int_object(b));
    if (b >= 0xe0) return PyRef::steal(small_int_object(int8_t(b)));
    if (b <= 0x8f) return map(r, b & 0x0f, depth, start);
    if (b <= 0x9f) return array(r, b & 0x0f, depth, start);
    if (b <= 0xbf) return string(r, b & 0x1f, true, start);
    uint64_t n = 0;
    switch (b) {
      case 0xc0:
        return PyRef::borrow(Py_None);
      case 0xc2:
        return PyRef::borrow(Py_False);
      case 0xc3:
        return PyRef::borrow(Py_True);
      case 0xc4:
      case 0xc5:
      case 0xc6:  // bin 8/16/32
        if (!r.read_be(size_t(1) << (b - 0xc4), n, "bin length")) return {};
        return string(r, n, false, start);
      case 0xd9:
      case 0xda:
      case 0xdb:  // str 8/16/32
        if (!r.read_be(size_t(1) << (b - 0xd9), n, "str length")) return {};
        return string(r, n, true, start);
      case 0xc7:
      case 0xc8:
      case 0xc9:  // ext 8/16/32
        if (!r.read_be(size_t(1) << (b - 0xc7), n, "ext length")) return {};
        return ext(r, n, depth, start);
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8:  // fixext 1..16
        return ext(r, size_t(1) << (b - 0xd4), depth, start);
      case 0xca: {
        if (!r.read_be(4, n, "float32")) return {};
        uint32_t bits = uint32_t(n);
        float f;
        std::memcpy(&f, &bits, sizeof f);
        return PyRef::steal(PyFloat_FromDouble(f));
      }
      case 0xcb: {
        if (!r.read_be(8, n, "float64")) return {};
        double d;
        std::memcpy(&d, &n, sizeof d);
        return PyRef::steal(PyFloat_FromDouble(d));
      }
      case 0xcc:
      case 0xcd:
      case 0xce:
      case 0xcf:  // uint 8/16/32/64
        if (!r.read_be(size_t(1) << (b - 0xcc), n, "uint")) return {};
        return PyRef::steal(PyLong_FromUnsignedLongLong(n));
      case 0xd0:
      case 0xd1:
      case 0xd2:
      case 0xd3: {  // int 8/16/32/64
        size_t width = size_t(1) << (b - 0xd0);
        if (!r.read_be(width, n, "int")) return {};
        int shift = int(64 - 8 * width);  // sign-extend from `width` bytes
        return PyRef::steal(PyLong_FromLongLong(int64_t(n << shift) >> shift));
      }
      case 0xdc:
      case 0xdd:  // array 16/32
        if (!r.read_be(b == 0xdc ? 2 : 4, n, "array length")) return {};
        return array(r, n, depth, start);
      case 0xde:
      case 0xdf:  // map 16/32
        if (!r.read_be(b == 0xde ? 2 : 4, n, "map length")) return {};
        return map(r, n, depth, start);
      default:  // 0xc1
        r.fail_at(start, "invalid type byte 0xc1");
        return {};
    }
  }

  // The elements of an array (header already read) as a tuple.
  PyRef tuple_items(mp::Reader& r, uint64_t n, int depth, size_t start) {
    if (!check_count(r, n, 1, "array", start)) return {};
    PyRef t = PyRef::steal(PyTuple_New(Py_ssize_t(n)));
    if (!t) return {};
    for (uint64_t i = 0; i < n; ++i) {
      PyObject* item = element(r, depth);
      if (!item) return {};
      PyTuple_SET_ITEM(t.get(), Py_ssize_t(i), item);
    }
    return t;
  }

 private:
  // Every element takes at least one byte: a count larger than the input
  // left is malformed, and refusing it early stops a 5-byte header from
  // allocating gigabytes.
  static bool check_count(mp::Reader& r, uint64_t n, uint64_t min_bytes, const char* what,
                          size_t start) {
    if (n <= r.remaining() / min_bytes) return true;
    return r.fail_at(start, std::string("truncated input: ") + what + " of " + std::to_string(n) +
                                (min_bytes == 1 ? " elements" : " entries") + " has only " +
                                std::to_string(r.remaining()) + " bytes left");
  }

  static bool check_depth(mp::Reader& r, int depth, size_t start) {
    if (depth < kMaxDepth) return true;
    return r.fail_at(start, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
  }

  // A msgpack str must be UTF-8; a bin is str when it is, else bytes.
  PyRef string(mp::Reader& r, uint64_t n, bool is_str, size_t start) {
    const uint8_t* p = nullptr;
    if (!r.read_raw(n, p, "string")) return {};
    utf8::Kind kind = utf8::classify(p, n);
    if (is_str && kind == utf8::Kind::kInvalid) {
      r.fail_at(start, "str is not valid UTF-8 (arbitrary bytes go in a bin)");
      return {};
    }
    return PyRef::steal(new_string(p, n, kind));
  }

  // Reads an integer form of up to 32 bits if one is next.
  static bool int_here(mp::Reader& r, long& v) {
    if (r.at_end()) return false;
    const uint8_t* p = r.cursor();
    const uint8_t* next = read_small_int(p, p + r.remaining(), v);
    if (next) r.skip(size_t(next - p));
    return next != nullptr;
  }

  // One element of a container: value(), with small integers first.
  __attribute__((always_inline)) PyObject* element(mp::Reader& r, int depth) {
    long v;
    if (int_here(r, v)) return small_int_object(v);
    return value(r, depth).release();
  }

  // PyDict_SetItem, without hashing an int key read as `small`: an int's
  // hash is its value below 2**61 - 1, except that -1 hashes to -2.
  static int set_item(PyObject* dict, PyObject* key, PyObject* val, bool small_key, long small) {
#if PY_VERSION_HEX < 0x030d0000
    if (small_key) return _PyDict_SetItem_KnownHash(dict, key, val, small == -1 ? -2 : small);
#else
    (void)small_key;
    (void)small;
#endif
    return PyDict_SetItem(dict, key, val);
  }

  // Small integers from element i on, read with a cursor of their own into
  // items, up to the first other value (or n); i ends past the last one
  // read. False, with a Python exception set, when making an int fails.
  static bool int_run(mp::Reader& r, PyObject** items, uint64_t& i, uint64_t n) {
    const uint8_t* const begin = r.cursor();
    const uint8_t* const end = begin + r.remaining();
    const uint8_t* p = begin;
    bool ok = true;
    while (i < n && p < end) {
      long v;
      const uint8_t* next = read_small_int(p, end, v);
      PyObject* item;
      if (next) {
        item = small_int_object(v);
      } else if ((*p == 0xcf || *p == 0xd3) && end - p >= 9) {  // uint64, int64: as value()
        uint64_t u = mp::load_be64(p + 1);
        item = *p == 0xcf ? PyLong_FromUnsignedLongLong(u) : PyLong_FromLongLong(int64_t(u));
        next = p + 9;
      } else {
        break;
      }
      if (!item) {
        ok = false;
        break;
      }
      items[i++] = item;
      p = next;
    }
    r.skip(size_t(p - begin));
    return ok;
  }

  PyRef array(mp::Reader& r, uint64_t n, int depth, size_t start) {
    if (!check_depth(r, depth, start) || !check_count(r, n, 1, "array", start)) return {};
    PyRef list = PyRef::steal(PyList_New(Py_ssize_t(n)));
    if (!list) return {};
    for (uint64_t i = 0; i < n;) {
      if (!int_run(r, reinterpret_cast<PyListObject*>(list.get())->ob_item, i, n)) return {};
      if (i == n) break;
      PyObject* item = value(r, depth + 1).release();
      if (!item) return {};
      PyList_SET_ITEM(list.get(), Py_ssize_t(i), item);
      ++i;
    }
    return list;
  }

  PyRef map(mp::Reader& r, uint64_t n, int depth, size_t start) {
    if (!check_depth(r, depth, start) || !check_count(r, n, 2, "map", start)) return {};
    // Sized for n entries (CPython caps what it sets aside), so a big map
    // is not rehashed as it fills.
    PyRef dict = PyRef::steal(_PyDict_NewPresized(Py_ssize_t(n)));
    if (!dict) return {};
    for (uint64_t i = 0; i < n; ++i) {
      size_t key_at = r.offset();
      long small = 0;  // passed to set_item either way: never indeterminate
      PyRef key;
      bool small_key = int_here(r, small);
      if (small_key) {
        key = PyRef::steal(small_int_object(small));
      } else {
        key = value(r, depth + 1);
      }
      if (!key) return {};
      PyRef val = PyRef::steal(element(r, depth + 1));
      if (!val) return {};
      if (set_item(dict.get(), key.get(), val.get(), small_key, small) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) return {};
        PyErr_Clear();  // an unhashable key (a list): malformed for Python
        r.fail_at(key_at, "map key of type " + type_name(key.get()) + " is unhashable");
        return {};
      }
    }
    return dict;
  }

  PyRef ext(mp::Reader& r, uint64_t n, int depth, size_t start) {
    uint64_t type = 0;
    const uint8_t* p = nullptr;
    if (!r.read_be(1, type, "ext type") || !r.read_raw(n, p, "ext payload")) return {};
    switch (int8_t(type)) {
      case mp::kExtAtom:
        if (utf8::classify(p, n) == utf8::Kind::kInvalid) {
          r.fail_at(start, "atom name is not valid UTF-8");
          return {};
        }
        return codec_.atom(reinterpret_cast<const char*>(p), n);
      case mp::kExtTuple: {
        if (!check_depth(r, depth, start)) return {};
        size_t payload_at = r.offset() - n;
        mp::Reader inner(p, n, payload_at);
        uint32_t count;
        PyRef t;
        if (inner.read_array_header(count, "tuple payload")) {
          t = tuple_items(inner, count, depth + 1, payload_at);
        }
        if (t && !inner.at_end()) {
          inner.fail(std::to_string(inner.remaining()) + " bytes after the tuple's array");
          t.reset();
        }
        if (!t && inner.failed()) r.fail_like(inner);
        return t;
      }
      case mp::kExtBigInt: {
        if (n < 2 || p[0] > 1) {
          r.fail_at(start, n < 2 ? "bigint needs a sign byte and a magnitude"
                                 : "bigint sign byte is not 0 or 1");
          return {};
        }
        PyRef mag = PyRef::steal(_PyLong_FromByteArray(p + 1, n - 1, /*little_endian=*/0,
                                                       /*is_signed=*/0));
        if (!mag || p[0] == 0) return mag;
        return PyRef::steal(PyNumber_Negative(mag.get()));
      }
      case mp::kExtBytes:
        return PyRef::steal(PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p), n));
      case mp::kExtObject: {
        if (n != 8) {
          r.fail_at(start, "object payload is not an 8-byte id");
          return {};
        }
        return codec_.kept_object(mp::load_be64(p));
      }
      case mp::kExtTerm: {
        if (n < 2 || p[0] != 131) {
          r.fail_at(start, "term payload is not external term format (starting with 131)");
          return {};
        }
        PyObject* cls;
        switch (p[1]) {
          case kNewPidExt:
          case kPidExt:
            cls = codec_.pid_type_.get();
            break;
          case kNewerRefExt:
          case kNewRefExt:
          case kRefExt:
            cls = codec_.ref_type_.get();
            break;
          case kV4PortExt:
          case kNewPortExt:
          case kPortExt:
          case kNewFunExt:
          case kExportExt:
          case kFunExt:
            cls = codec_.term_type_.get();
            break;
          default:
            r.fail_at(start, "term payload is not a pid, reference, port or fun (ETF tag " +
                                 std::to_string(p[1]) + ")");
            return {};
        }
        PyRef etf = PyRef::steal(PyBytes_FromStringAndSize(reinterpret_cast<const char*>(p), n));
        if (!etf) return {};
        return PyRef::steal(PyObject_CallOneArg(cls, etf.get()));
      }
      case mp::kExtPayload: {
        // Bytes the node put in the region it lent this request.
        if (n != Payloads::kPlaceholder) {
          r.fail_at(start, "payload placeholder is not 17 bytes (form, offset, length)");
          return {};
        }
        std::string why;
        PyObject* v =
            Payloads::instance().read(p[0], mp::load_be64(p + 1), mp::load_be64(p + 9), &why);
        if (!v && !why.empty()) r.fail_at(start, why);
        return PyRef::steal(v);
      }
      default:
        r.fail_at(start, "unknown ext type " + std::to_string(int8_t(type)));
        return {};
    }
  }

  Codec& codec_;
};

// Turns a failed decode into the documented exception: the reader's message
// as ValueError when the input was malformed.
static PyRef decode_failed(mp::Reader& r) {
  if (r.failed()) {
    PyErr_Clear();
    PyErr_SetString(PyExc_ValueError, r.error().c_str());
  } else if (!PyErr_Occurred()) {
    PyErr_SetString(PyExc_SystemError, "msgpack decoding failed without a reason");
  }
  return {};
}

PyRef Codec::decode(mp::Reader& r, int depth) {
  try {
    PyRef v = Decoder(*this).value(r, depth);
    return v ? v : decode_failed(r);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return {};
  }
}

PyRef Codec::decode_tuple(mp::Reader& r, uint32_t count, size_t array_at) {
  try {
    PyRef v = Decoder(*this).tuple_items(r, count, 1, array_at);
    return v ? v : decode_failed(r);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return {};
  }
}

PyRef Codec::decode_exact(const uint8_t* data, size_t size) {
  mp::Reader r(data, size);
  PyRef v = decode(r);
  if (v && !r.at_end()) {
    r.fail(std::to_string(r.remaining()) + " trailing bytes after the value");
    return decode_failed(r);
  }
  return v;
}

PyRef Codec::atom(const char* name, size_t size) {
  std::string key(name, size);
  auto it = atoms_.find(key);
  if (it != atoms_.end()) return it->second;
  PyRef str = PyRef::steal(PyUnicode_DecodeUTF8(name, Py_ssize_t(size), "strict"));
  if (!str) return {};
  PyRef atom = PyRef::steal(PyObject_CallOneArg(atom_type_.get(), str.get()));
  if (atom && atoms_.size() < kMaxCachedAtoms) atoms_.emplace(std::move(key), atom);
  return atom;
}

PyRef Codec::kept_object(uint64_t id) {
  PyRef key = PyRef::steal(PyLong_FromUnsignedLongLong(id));
  if (!key) return {};
  PyObject* obj = PyDict_GetItemWithError(objects_.get(), key.get());  // borrowed
  if (obj) return PyRef::borrow(obj);
  if (!PyErr_Occurred()) {
    PyErr_Format(stale_error_.get(),
                 "object %llu is not held by this worker (it was released, or the worker "
                 "restarted since)",
                 static_cast<unsigned long long>(id));
  }
  return {};
}

// ---- encoding ------------------------------------------------------------

class Codec::Encoder {
 public:
  Encoder(Codec& codec, ByteBuffer& out, size_t limit_end)
      : codec_(codec), out_(out), end_(limit_end) {}

  bool too_large = false;

  bool value(PyObject* o, int depth) {
    // Exact builtin types first: they are nearly every value.
    PyTypeObject* t = Py_TYPE(o);
    if (t == &PyUnicode_Type) return str(o);
    if (t == &PyLong_Type) return integer(o);
    if (t == &PyFloat_Type) return real(PyFloat_AS_DOUBLE(o));
    if (o == Py_None) {
      mp::write_nil(out_);
      return true;
    }
    if (o == Py_True || o == Py_False) {
      mp::write_bool(out_, o == Py_True);
      return true;
    }
    if (t == &PyList_Type) return list(o, depth);
    if (t == &PyTuple_Type) return tuple(o, depth);
    if (t == &PyDict_Type) return dict(o, depth);
    if (t == &PyBytes_Type) return bin(PyBytes_AS_STRING(o), size_t(PyBytes_GET_SIZE(o)));
    return other(o, depth);
  }

 private:
  // Subclasses and the rarer types, in the order PROTOCOL.md requires
  // (bool before int, Atom before str).
  bool other(PyObject* o, int depth) {
    if (PyObject_TypeCheck(o, reinterpret_cast<PyTypeObject*>(codec_.atom_type_.get()))) {
      Py_ssize_t n;
      const char* s = PyUnicode_AsUTF8AndSize(o, &n);
      return s && ext(mp::kExtAtom, s, size_t(n));
    }
    if (PyLong_Check(o)) return integer(o);
    if (PyFloat_Check(o)) return real(PyFloat_AS_DOUBLE(o));
    if (PyUnicode_Check(o)) return str(o);
    if (PyObject_TypeCheck(o, reinterpret_cast<PyTypeObject*>(codec_.term_type_.get()))) {
      PyRef etf = PyRef::steal(PyObject_GetAttr(o, codec_.etf_name_.get()));
      if (!etf) return false;
      if (!PyBytes_Check(etf.get())) {
        PyErr_Format(PyExc_TypeError, "cannot convert %s with a non-bytes etf to an Erlang term",
                     type_name(o).c_str());
        return false;
      }
      return ext(mp::kExtTerm, PyBytes_AS_STRING(etf.get()), size_t(PyBytes_GET_SIZE(etf.get())));
    }
    if (PyBytes_Check(o)) return bin(PyBytes_AS_STRING(o), size_t(PyBytes_GET_SIZE(o)));
    if (PyByteArray_Check(o) || PyMemoryView_Check(o)) return buffer(o);
    if (PyTuple_Check(o)) return tuple(o, depth);
    if (PyList_Check(o)) return list(o, depth);
    if (PyDict_Check(o)) return dict(o, depth);
    if (PyAnySet_Check(o)) return set(o, depth);
    return number_or_buffer(o);
  }

  // Objects that are numbers or bytes without being int, float or bytes:
  // numpy scalars and arrays, Decimal, array.array, anything with
  // __index__, __float__ or the buffer protocol (docs/type-mapping.md).
  bool number_or_buffer(PyObject* o) {
    const char* tp = Py_TYPE(o)->tp_name;
    // numpy.bool_ (numpy.bool in numpy 2) has no __index__ to rely on.
    if (std::strcmp(tp, "numpy.bool_") == 0 || std::strcmp(tp, "numpy.bool") == 0) {
      int truth = PyObject_IsTrue(o);
      if (truth < 0) return false;
      mp::write_bool(out_, truth);
      return true;
    }
    if (PyObject_CheckBuffer(o)) {
      BufferView b;
      if (PyObject_GetBuffer(o, &b.view, PyBUF_FULL_RO) == 0) {
        b.held = true;
        // A 0-dimensional buffer is a scalar (numpy.int64(5)): a number.
        if (b.view.ndim != 0) return contiguous_bin(b.view);
      } else {
        PyErr_Clear();
      }
    }
    if (PyIndex_Check(o)) {
      PyRef i = PyRef::steal(PyNumber_Index(o));
      if (i) return integer(i.get());
      if (!PyErr_ExceptionMatches(PyExc_TypeError)) return false;
      PyErr_Clear();
    }
    if (Py_TYPE(o)->tp_as_number && Py_TYPE(o)->tp_as_number->nb_float) {
      PyRef f = PyRef::steal(PyNumber_Float(o));
      if (f) return real(PyFloat_AsDouble(f.get()));
      if (!PyErr_ExceptionMatches(PyExc_TypeError)) return false;
      PyErr_Clear();
    }
    PyErr_Format(PyExc_TypeError, "cannot convert %s to an Erlang term", type_name(o).c_str());
    return false;
  }

  // The buffer's bytes in C order, copied straight from a strided view.
  bool contiguous_bin(Py_buffer& view) {
    size_t n = size_t(view.len);
    if (PyBuffer_IsContiguous(&view, 'C')) return bin(view.buf, n);
    if (!room(n) || !length(n, "a buffer")) return false;
    mp::write_bin_header(out_, uint32_t(n));
    size_t at = out_.size();
    void* dst = out_.grow(n);
    if (PyBuffer_ToContiguous(dst, &view, view.len, 'C') < 0) {
      out_.truncate(at);
      return false;
    }
    return true;
  }

  // Checks, before a payload of n bytes is copied, that it can still fit
  // within the limit, so an oversized result fails without being copied.
  // Codec::encode checks the exact total at the end.
  bool room(size_t n) {
    if (out_.size() <= end_ && n <= end_ - out_.size()) return true;
    too_large = true;
    return false;
  }

  bool length(size_t n, const char* what) {
    if (n <= UINT32_MAX) return true;
    PyErr_Format(PyExc_OverflowError, "%s of length %zu is too long for msgpack", what, n);
    return false;
  }

  bool container(int depth) {
    if (depth < kMaxDepth) return true;
    PyErr_Format(PyExc_TypeError, "cannot convert a value nested deeper than %d levels", kMaxDepth);
    return false;
  }

  bool integer(PyObject* o) {
    int64_t small;
    if (short_int(o, small)) {
      mp::write_int(out_, small);
      return true;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (!overflow) {
      if (v == -1 && PyErr_Occurred()) return false;
      mp::write_int(out_, v);
      return true;
    }
    if (overflow > 0) {
      unsigned long long u = PyLong_AsUnsignedLongLong(o);
      if (!(u == static_cast<unsigned long long>(-1) && PyErr_Occurred())) {
        mp::write_uint(out_, u);
        return true;
      }
      if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;
      PyErr_Clear();
    }
    return bigint(o, overflow < 0);
  }

  // Ext 3: sign byte, then the magnitude big-endian without leading zeros.
  bool bigint(PyObject* o, bool negative) {
    PyRef mag = negative ? PyRef::steal(PyNumber_Absolute(o)) : PyRef::borrow(o);
    if (!mag) return false;
    size_t bits = _PyLong_NumBits(mag.get());
    if (bits == size_t(-1) && PyErr_Occurred()) return false;
    size_t nbytes = (bits + 7) / 8;
    if (!length(nbytes + 1, "an int") || !room(nbytes)) return false;
    size_t at = out_.size();
    mp::write_ext_header(out_, mp::kExtBigInt, uint32_t(nbytes + 1));
    out_.push_back(negative ? 1 : 0);
    auto* dst = reinterpret_cast<unsigned char*>(out_.grow(nbytes));
    auto* lo = reinterpret_cast<PyLongObject*>(mag.get());
#if PY_VERSION_HEX >= 0x030d0000
    int rc = _PyLong_AsByteArray(lo, dst, nbytes, /*little_endian=*/0, /*is_signed=*/0, 1);
#else
    int rc = _PyLong_AsByteArray(lo, dst, nbytes, /*little_endian=*/0, /*is_signed=*/0);
#endif
    if (rc < 0) {
      out_.truncate(at);
      return false;
    }
    return true;
  }

  bool real(double d) {
    mp::write_double(out_, d);
    return true;
  }

  bool str(PyObject* o) {
    Py_ssize_t n;
    const char* s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s && Payloads::instance().wants(size_t(n)) && placeholder(s, size_t(n))) return true;
    if (!s || !room(size_t(n)) || !length(size_t(n), "a str")) return false;
    mp::write_str_header(out_, uint32_t(n));
    out_.append(s, size_t(n));
    return true;
  }

  bool bin(const void* p, size_t n) {
    if (Payloads::instance().wants(n) && placeholder(p, n)) return true;
    if (!room(n) || !length(n, "a bytes")) return false;
    mp::write_bin_header(out_, uint32_t(n));
    out_.append(p, n);
    return true;
  }

  // An ext 7 in place of the n bytes at p, which go to the answer's
  // region of the payload file; false (nothing written) when they cannot.
  bool placeholder(const void* p, size_t n) {
    if (!room(Payloads::kPlaceholder + 3)) {
      too_large = false;  // the bytes may still fit in the frame
      return false;
    }
    uint64_t at = Payloads::instance().put(p, n);
    if (at == UINT64_MAX) return false;
    mp::write_ext_header(out_, mp::kExtPayload, uint32_t(Payloads::kPlaceholder));
    uint8_t* d = out_.grow(Payloads::kPlaceholder);
    d[0] = Payloads::kFormBin;
    mp::store_be64(d + 1, at);
    mp::store_be64(d + 9, uint64_t(n));
    return true;
  }

  bool buffer(PyObject* o) {
    BufferView b;
    if (PyObject_GetBuffer(o, &b.view, PyBUF_FULL_RO) < 0) return false;
    b.held = true;
    return contiguous_bin(b.view);
  }

  bool ext(int8_t type, const void* p, size_t n) {
    if (!room(n) || !length(n, "an ext payload")) return false;
    mp::write_ext_header(out_, type, uint32_t(n));
    out_.append(p, n);
    return true;
  }

  // An object whose encoding runs no Python code, so nothing can free it
  // while it is written: it needs no reference of its own.
  static bool inert(PyObject* o) {
    PyTypeObject* t = Py_TYPE(o);
    return t == &PyLong_Type || t == &PyFloat_Type || t == &PyUnicode_Type || o == Py_None ||
           t == &PyBool_Type;
  }

  // Items per int_run call: bounds the room it sets aside (4,608 bytes).
  static constexpr Py_ssize_t kRun = 512;

  // Exact short ints (short_int) from items[i] on (below n), written with a
  // cursor of their own into room set aside once; returns the index of the
  // first item not written. No Python code runs, so the container cannot
  // change meanwhile. Bools and int subclasses are left to value().
  Py_ssize_t int_run(PyObject* const* items, Py_ssize_t i, Py_ssize_t n) {
    Py_ssize_t stop = n - i > kRun ? i + kRun : n;
    uint8_t* const begin = out_.space(size_t(stop - i) * mp::kMaxIntSize);
    uint8_t* p = begin;
    for (; i < stop; ++i) {
      int64_t v;
      if (!exact_short_int(items[i], v)) break;
      p = mp::store_int(p, v);
    }
    out_.commit(size_t(p - begin));
    return i;
  }

  bool list(PyObject* o, int depth) {
    Py_ssize_t n = PyList_GET_SIZE(o);
    if (!container(depth) || !length(size_t(n), "a list")) return false;
    mp::write_array_header(out_, uint32_t(n));
    for (Py_ssize_t i = 0; i < n;) {
      // Python code run by an element (a Term subclass property) may shrink
      // the list or move its items: re-read both, and hold the item.
      Py_ssize_t now = PyList_GET_SIZE(o);
      if (i >= now) return changed("list");
      Py_ssize_t next = int_run(reinterpret_cast<PyListObject*>(o)->ob_item, i, now < n ? now : n);
      if (next != i) {
        i = next;
        continue;
      }
      PyObject* item = PyList_GET_ITEM(o, i++);
      if (inert(item)) {
        if (!value(item, depth + 1)) return false;
        continue;
      }
      PyRef held = PyRef::borrow(item);
      if (!value(held.get(), depth + 1)) return false;
    }
    return PyList_GET_SIZE(o) == n || changed("list");
  }

  // Ext 2 around an array. The payload's length is known only after
  // encoding it, so the widest header is reserved and the payload moved
  // down when a shorter one fits; payloads over 64 KiB need the widest
  // header anyway, so a large payload is never moved.
  bool tuple(PyObject* o, int depth) {
    Py_ssize_t n = PyTuple_GET_SIZE(o);
    if (!container(depth) || !length(size_t(n), "a tuple")) return false;
    size_t at = out_.size();
    out_.grow(6);
    mp::write_array_header(out_, uint32_t(n));
    for (Py_ssize_t i = 0; i < n;) {
      Py_ssize_t next = int_run(reinterpret_cast<PyTupleObject*>(o)->ob_item, i, n);
      if (next != i) {
        i = next;
        continue;
      }
      if (!value(PyTuple_GET_ITEM(o, i++), depth + 1)) return false;
    }
    size_t payload = out_.size() - at - 6;
    if (!length(payload, "a tuple's encoding")) return false;
    size_t header = mp::ext_header_size(uint32_t(payload));
    uint8_t* base = out_.data() + at;
    if (header < 6) {
      std::memmove(base + header, base + 6, payload);
      out_.truncate(out_.size() - (6 - header));
    }
    mp::store_ext_header(base, mp::kExtTuple, uint32_t(payload));
    return true;
  }

  bool dict(PyObject* o, int depth) {
    Py_ssize_t n = PyDict_GET_SIZE(o);
    if (!container(depth) || !length(size_t(n), "a dict")) return false;
    mp::write_map_header(out_, uint32_t(n));
    Py_ssize_t pos = 0, count = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v)) {
      if (++count > n) return changed("dict");
      int64_t kv, vv;  // exact short ints: written with no dispatch
      if (exact_short_int(k, kv) && exact_short_int(v, vv)) {
        uint8_t* p = out_.space(2 * mp::kMaxIntSize);
        out_.commit(size_t(mp::store_int(mp::store_int(p, kv), vv) - p));
        continue;
      }
      if (inert(k) && inert(v)) {
        if (!value(k, depth + 1) || !value(v, depth + 1)) return false;
        continue;
      }
      PyRef key = PyRef::borrow(k), val = PyRef::borrow(v);
      if (!value(key.get(), depth + 1) || !value(val.get(), depth + 1)) return false;
    }
    return count == n || changed("dict");
  }

  bool set(PyObject* o, int depth) {
    Py_ssize_t n = PySet_GET_SIZE(o);
    if (!container(depth) || !length(size_t(n), "a set")) return false;
    mp::write_array_header(out_, uint32_t(n));
    PyRef it = PyRef::steal(PyObject_GetIter(o));
    if (!it) return false;
    Py_ssize_t count = 0;
    while (PyRef item = PyRef::steal(PyIter_Next(it.get()))) {
      if (++count > n) return changed("set");
      if (!value(item.get(), depth + 1)) return false;
    }
    if (PyErr_Occurred()) return false;
    return count == n || changed("set");
  }

  static bool changed(const char* what) {
    PyErr_Format(PyExc_RuntimeError, "%s changed size during encoding", what);
    return false;
  }

  Codec& codec_;
  ByteBuffer& out_;
  size_t end_;
};

EncodeResult Codec::encode(PyObject* obj, ByteBuffer& out, size_t limit) {
  size_t start = out.size();
  size_t end = limit > SIZE_MAX - start ? SIZE_MAX : start + limit;
  Encoder enc(*this, out, end);
  bool ok;
  try {
    ok = enc.value(obj, 0);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    ok = false;
  }
  if (ok && out.size() - start > limit) enc.too_large = true;
  if (ok && !enc.too_large) return EncodeResult::kOk;
  out.truncate(start);
  if (enc.too_large) {
    PyErr_Clear();  // nothing should be set; be sure
    return EncodeResult::kTooLarge;
  }
  return EncodeResult::kError;
}

// ---- setup ---------------------------------------------------------------

std::unique_ptr<Codec> Codec::create() {
  PyRef mod = PyRef::steal(PyImport_ImportModule("erlang._types"));
  if (!mod) return nullptr;
  std::unique_ptr<Codec> c(new Codec());
  struct {
    PyRef* slot;
    const char* name;
  } types[] = {{&c->atom_type_, "Atom"},
               {&c->term_type_, "Term"},
               {&c->pid_type_, "Pid"},
               {&c->ref_type_, "Ref"}};
  for (auto& t : types) {
    *t.slot = PyRef::steal(PyObject_GetAttrString(mod.get(), t.name));
    if (!*t.slot) return nullptr;
    if (!PyType_Check(t.slot->get())) {
      PyErr_Format(PyExc_TypeError, "erlang._types.%s is not a class", t.name);
      return nullptr;
    }
  }
  c->etf_name_ = PyRef::steal(PyUnicode_InternFromString("etf"));
  if (!c->etf_name_) return nullptr;
  PyRef objects = PyRef::steal(PyImport_ImportModule("erlang._objects"));
  if (!objects) return nullptr;
  c->objects_ = PyRef::steal(PyObject_GetAttrString(objects.get(), "_table"));
  c->stale_error_ = PyRef::steal(PyObject_GetAttrString(objects.get(), "StaleRefError"));
  if (!c->objects_ || !c->stale_error_) return nullptr;
  if (!PyDict_Check(c->objects_.get())) {
    PyErr_SetString(PyExc_TypeError, "erlang._objects._table is not a dict");
    return nullptr;
  }
  return c;
}

}  // namespace pyport
