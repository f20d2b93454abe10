// Plain msgpack: canonical writers appending to a ByteBuffer, and a bounds-
// checked Reader whose errors name what was wrong and at which byte offset.
// Nothing here knows about Python; codec.hpp builds on it.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "byte_buffer.hpp"

namespace pyport::mp {

// Ext type codes of PROTOCOL.md ("Extension types").
enum ExtType : int8_t {
  kExtAtom = 1,
  kExtTuple = 2,
  kExtBigInt = 3,
  kExtBytes = 4,
  kExtTerm = 5,
  kExtObject = 6,   // Erlang -> worker only: an object the worker keeps (8-byte id)
  kExtPayload = 7,  // bytes in the payload file: form, offset:64, length:64 (payloads.hpp)
};

inline void store_be16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
inline void store_be32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}
inline void store_be64(uint8_t* p, uint64_t v) {
  store_be32(p, uint32_t(v >> 32));
  store_be32(p + 4, uint32_t(v));
}
inline uint32_t load_be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
inline uint64_t load_be64(const uint8_t* p) {
  return uint64_t(load_be32(p)) << 32 | load_be32(p + 4);
}

// ---- writers: always the shortest form (PROTOCOL.md, "Values") ----------

inline void write_nil(ByteBuffer& b) {
  b.push_back(0xc0);
}
inline void write_bool(ByteBuffer& b, bool v) {
  b.push_back(v ? 0xc3 : 0xc2);
}

// The shortest form of an integer, stored at p (up to 9 bytes); returns
// the end of what was stored. The writers below and the codec's loops over
// runs of integers (which keep their own cursor) share these.
inline uint8_t* store_uint(uint8_t* p, uint64_t v) {
  if (v < 0x80) {
    p[0] = uint8_t(v);
    return p + 1;
  }
  if (v <= 0xff) {
    p[0] = 0xcc;
    p[1] = uint8_t(v);
    return p + 2;
  }
  if (v <= 0xffff) {
    p[0] = 0xcd;
    store_be16(p + 1, uint16_t(v));
    return p + 3;
  }
  if (v <= 0xffffffffu) {
    p[0] = 0xce;
    store_be32(p + 1, uint32_t(v));
    return p + 5;
  }
  p[0] = 0xcf;
  store_be64(p + 1, v);
  return p + 9;
}

inline uint8_t* store_int(uint8_t* p, int64_t v) {
  if (v >= 0) return store_uint(p, uint64_t(v));
  if (v >= -32) {
    p[0] = uint8_t(int8_t(v));
    return p + 1;
  }
  if (v >= INT8_MIN) {
    p[0] = 0xd0;
    p[1] = uint8_t(int8_t(v));
    return p + 2;
  }
  if (v >= INT16_MIN) {
    p[0] = 0xd1;
    store_be16(p + 1, uint16_t(int16_t(v)));
    return p + 3;
  }
  if (v >= INT32_MIN) {
    p[0] = 0xd2;
    store_be32(p + 1, uint32_t(int32_t(v)));
    return p + 5;
  }
  p[0] = 0xd3;
  store_be64(p + 1, uint64_t(v));
  return p + 9;
}

// Most bytes store_int and store_uint write for one value.
constexpr size_t kMaxIntSize = 9;

inline void write_uint(ByteBuffer& b, uint64_t v) {
  uint8_t* p = b.space(kMaxIntSize);
  b.commit(size_t(store_uint(p, v) - p));
}

inline void write_int(ByteBuffer& b, int64_t v) {
  uint8_t* p = b.space(kMaxIntSize);
  b.commit(size_t(store_int(p, v) - p));
}

inline void write_double(ByteBuffer& b, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint8_t* p = b.grow(9);
  p[0] = 0xcb;
  store_be64(p + 1, bits);
}

namespace detail {
// Header with a "fix" form for lengths up to fix_max, else 8/16/32-bit forms
// starting at code8 (code8 == 0: no 8-bit form, as for arrays and maps).
inline void write_length(ByteBuffer& b, uint32_t n, uint8_t fix_base, uint32_t fix_max,
                         uint8_t code8, uint8_t code16, uint8_t code32) {
  if (fix_base && n <= fix_max) {
    b.push_back(uint8_t(fix_base | n));
  } else if (code8 && n <= 0xff) {
    uint8_t* p = b.grow(2);
    p[0] = code8;
    p[1] = uint8_t(n);
  } else if (n <= 0xffff) {
    uint8_t* p = b.grow(3);
    p[0] = code16;
    store_be16(p + 1, uint16_t(n));
  } else {
    uint8_t* p = b.grow(5);
    p[0] = code32;
    store_be32(p + 1, n);
  }
}
}  // namespace detail

inline void write_str_header(ByteBuffer& b, uint32_t n) {
  detail::write_length(b, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
}
inline void write_bin_header(ByteBuffer& b, uint32_t n) {
  detail::write_length(b, n, 0, 0, 0xc4, 0xc5, 0xc6);
}
inline void write_array_header(ByteBuffer& b, uint32_t n) {
  detail::write_length(b, n, 0x90, 15, 0, 0xdc, 0xdd);
}
inline void write_map_header(ByteBuffer& b, uint32_t n) {
  detail::write_length(b, n, 0x80, 15, 0, 0xde, 0xdf);
}

// Size of the header write_ext_header writes for a payload of n bytes.
inline size_t ext_header_size(uint32_t n) {
  switch (n) {
    case 1:
    case 2:
    case 4:
    case 8:
    case 16:
      return 2;
    default:
      return n <= 0xff ? 3 : n <= 0xffff ? 4 : 6;
  }
}

// Writes the header into exactly ext_header_size(n) bytes at p.
inline void store_ext_header(uint8_t* p, int8_t type, uint32_t n) {
  switch (n) {
    case 1:
      p[0] = 0xd4;
      break;
    case 2:
      p[0] = 0xd5;
      break;
    case 4:
      p[0] = 0xd6;
      break;
    case 8:
      p[0] = 0xd7;
      break;
    case 16:
      p[0] = 0xd8;
      break;
    default:
      if (n <= 0xff) {
        p[0] = 0xc7;
        p[1] = uint8_t(n);
        p[2] = uint8_t(type);
      } else if (n <= 0xffff) {
        p[0] = 0xc8;
        store_be16(p + 1, uint16_t(n));
        p[3] = uint8_t(type);
      } else {
        p[0] = 0xc9;
        store_be32(p + 1, n);
        p[5] = uint8_t(type);
      }
      return;
  }
  p[1] = uint8_t(type);
}

inline void write_ext_header(ByteBuffer& b, int8_t type, uint32_t n) {
  store_ext_header(b.grow(ext_header_size(n)), type, n);
}

inline void write_str(ByteBuffer& b, std::string_view s) {
  write_str_header(b, uint32_t(s.size()));
  b.append(s.data(), s.size());
}
inline void write_bin(ByteBuffer& b, const void* p, uint32_t n) {
  write_bin_header(b, n);
  b.append(p, n);
}

// ---- reader --------------------------------------------------------------

// What a value starting with this byte is, for error messages ("str", ...).
const char* type_name(uint8_t first_byte);

// Reads msgpack from a byte range it does not own. Every read either
// succeeds or returns false and records one error ("<what> at byte N"); the
// first error wins. Offsets in messages are absolute: a Reader over a slice
// of a larger input is given the slice's offset as `base`.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, size_t base = 0)
      : data_(data), size_(size), base_(base) {}

  size_t offset() const { return base_ + pos_; }
  size_t remaining() const { return size_ - pos_; }
  bool at_end() const { return pos_ == size_; }
  const uint8_t* cursor() const { return data_ + pos_; }
  bool failed() const { return failed_; }
  const std::string& error() const { return error_; }

  bool peek(uint8_t& b) {
    if (pos_ >= size_) return truncated(1, "value");
    b = data_[pos_];
    return true;
  }
  bool read_byte(uint8_t& b) {
    if (!peek(b)) return false;
    ++pos_;
    return true;
  }
  // n bytes in place; `what` names them in the truncation message.
  bool read_raw(size_t n, const uint8_t*& p, const char* what) {
    if (n > size_ - pos_) return truncated(n, what);
    p = data_ + pos_;
    pos_ += n;
    return true;
  }
  // Steps over n bytes the caller has checked are there (n <= remaining()).
  void skip(size_t n) { pos_ += n; }
  // An n-byte (1, 2, 4 or 8) big-endian unsigned integer.
  bool read_be(size_t n, uint64_t& v, const char* what) {
    const uint8_t* p = nullptr;
    if (!read_raw(n, p, what)) return false;
    v = 0;
    for (size_t i = 0; i < n; ++i)
      v = v << 8 | p[i];
    return true;
  }

  // Typed reads for frame fields; `what` names the field in errors.
  bool read_array_header(uint32_t& n, const char* what);
  bool read_map_header(uint32_t& n, const char* what);
  bool read_uint(uint64_t& v, const char* what);
  // A str or bin, returned in place.
  bool read_string(std::string_view& s, const char* what);
  // Steps over one value of any type (containers at most max_depth deep).
  bool skip_value(int max_depth = 512);
  // Consumes a nil if one is next; false (without error) otherwise.
  bool read_nil() {
    if (pos_ < size_ && data_[pos_] == 0xc0) {
      ++pos_;
      return true;
    }
    return false;
  }

  // Records "<message> at byte <offset>" unless an error is already set.
  bool fail_at(size_t offset, const std::string& message);
  // Same, at the current offset.
  bool fail(const std::string& message) { return fail_at(offset(), message); }
  // "expected <expected> (<what>), found <type> at byte N" for the next byte.
  bool fail_expected(const char* expected, const char* what);
  // Takes over the error of a Reader over a slice of this one's input.
  bool fail_like(const Reader& inner) {
    if (!failed_) {
      failed_ = true;
      error_ = inner.error_;
    }
    return false;
  }

 private:
  bool truncated(size_t needed, const char* what);

  const uint8_t* data_;
  size_t size_;
  size_t base_;
  size_t pos_ = 0;
  bool failed_ = false;
  std::string error_;
};

}  // namespace pyport::mp
