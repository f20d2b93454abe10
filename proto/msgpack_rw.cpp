#include "msgpack_rw.hpp"

namespace pyport::mp {

const char* type_name(uint8_t b) {
  if (b <= 0x7f || b >= 0xe0) return "int";
  if (b <= 0x8f) return "map";
  if (b <= 0x9f) return "array";
  if (b <= 0xbf) return "str";
  switch (b) {
    case 0xc0:
      return "nil";
    case 0xc1:
      return "the unused type byte 0xc1";
    case 0xc2:
    case 0xc3:
      return "bool";
    case 0xc4:
    case 0xc5:
    case 0xc6:
      return "bin";
    case 0xc7:
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
      return "ext";
    case 0xca:
    case 0xcb:
      return "float";
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3:
      return "int";
    case 0xd9:
    case 0xda:
    case 0xdb:
      return "str";
    case 0xdc:
    case 0xdd:
      return "array";
    default:
      return "map";  // 0xde, 0xdf
  }
}

bool Reader::fail_at(size_t at, const std::string& message) {
  if (!failed_) {
    failed_ = true;
    error_ = message + " at byte " + std::to_string(at);
  }
  return false;
}

bool Reader::truncated(size_t needed, const char* what) {
  return fail("truncated input: " + std::string(what) + " needs " + std::to_string(needed) +
              (needed == 1 ? " byte" : " bytes") + ", " + std::to_string(size_ - pos_) + " remain");
}

bool Reader::fail_expected(const char* expected, const char* what) {
  if (pos_ >= size_) return truncated(1, what);
  return fail(std::string("expected ") + expected + " (" + what + "), found " +
              type_name(data_[pos_]));
}

bool Reader::read_array_header(uint32_t& n, const char* what) {
  uint8_t b = 0;
  if (pos_ >= size_) return truncated(1, what);
  b = data_[pos_];
  uint64_t v = 0;
  if (b >= 0x90 && b <= 0x9f) {
    n = b & 0x0f;
    ++pos_;
    return true;
  }
  if (b != 0xdc && b != 0xdd) return fail_expected("an array", what);
  ++pos_;
  if (!read_be(b == 0xdc ? 2 : 4, v, what)) return false;
  n = uint32_t(v);
  return true;
}

bool Reader::read_map_header(uint32_t& n, const char* what) {
  uint8_t b = 0;
  if (pos_ >= size_) return truncated(1, what);
  b = data_[pos_];
  uint64_t v = 0;
  if (b >= 0x80 && b <= 0x8f) {
    n = b & 0x0f;
    ++pos_;
    return true;
  }
  if (b != 0xde && b != 0xdf) return fail_expected("a map", what);
  ++pos_;
  if (!read_be(b == 0xde ? 2 : 4, v, what)) return false;
  n = uint32_t(v);
  return true;
}

bool Reader::read_uint(uint64_t& v, const char* what) {
  uint8_t b = 0;
  if (pos_ >= size_) return truncated(1, what);
  b = data_[pos_];
  if (b <= 0x7f) {
    v = b;
    ++pos_;
    return true;
  }
  size_t start = pos_;
  if (b >= 0xcc && b <= 0xcf) {
    ++pos_;
    return read_be(size_t(1) << (b - 0xcc), v, what);
  }
  if (b >= 0xd0 && b <= 0xd3) {  // a signed format holding a value >= 0 is fine
    ++pos_;
    size_t width = size_t(1) << (b - 0xd0);
    if (!read_be(width, v, what)) return false;
    if (v >> (8 * width - 1) & 1) return fail_at(base_ + start, std::string(what) + " is negative");
    return true;
  }
  if (b >= 0xe0) return fail(std::string(what) + " is negative");
  return fail_expected("an unsigned integer", what);
}

bool Reader::read_string(std::string_view& s, const char* what) {
  uint8_t b = 0;
  if (pos_ >= size_) return truncated(1, what);
  b = data_[pos_];
  uint64_t n = 0;
  if (b >= 0xa0 && b <= 0xbf) {
    ++pos_;
    n = b & 0x1f;
  } else if (b == 0xd9 || b == 0xc4) {
    ++pos_;
    if (!read_be(1, n, what)) return false;
  } else if (b == 0xda || b == 0xc5) {
    ++pos_;
    if (!read_be(2, n, what)) return false;
  } else if (b == 0xdb || b == 0xc6) {
    ++pos_;
    if (!read_be(4, n, what)) return false;
  } else {
    return fail_expected("a string", what);
  }
  const uint8_t* p = nullptr;
  if (!read_raw(n, p, what)) return false;
  s = std::string_view(reinterpret_cast<const char*>(p), n);
  return true;
}

bool Reader::skip_value(int max_depth) {
  size_t start = offset();
  uint8_t b = 0;
  if (!read_byte(b)) return false;
  uint64_t n = 0;
  const uint8_t* p = nullptr;
  uint64_t items = 0;  // values inside a container
  if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) return true;
  if (b <= 0x8f) {
    items = 2 * uint64_t(b & 0x0f);
  } else if (b <= 0x9f) {
    items = b & 0x0f;
  } else if (b <= 0xbf) {
    return read_raw(b & 0x1f, p, "str");
  } else {
    switch (b) {
      case 0xc4:
      case 0xc5:
      case 0xc6:
        return read_be(size_t(1) << (b - 0xc4), n, "bin length") && read_raw(n, p, "bin");
      case 0xd9:
      case 0xda:
      case 0xdb:
        return read_be(size_t(1) << (b - 0xd9), n, "str length") && read_raw(n, p, "str");
      case 0xc7:
      case 0xc8:
      case 0xc9:
        return read_be(size_t(1) << (b - 0xc7), n, "ext length") && read_raw(n + 1, p, "ext");
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8:
        return read_raw(1 + (size_t(1) << (b - 0xd4)), p, "ext");
      case 0xca:
        return read_raw(4, p, "float32");
      case 0xcb:
        return read_raw(8, p, "float64");
      case 0xcc:
      case 0xcd:
      case 0xce:
      case 0xcf:
        return read_raw(size_t(1) << (b - 0xcc), p, "uint");
      case 0xd0:
      case 0xd1:
      case 0xd2:
      case 0xd3:
        return read_raw(size_t(1) << (b - 0xd0), p, "int");
      case 0xdc:
      case 0xdd:
        if (!read_be(b == 0xdc ? 2 : 4, items, "array length")) return false;
        break;
      case 0xde:
      case 0xdf:
        if (!read_be(b == 0xde ? 2 : 4, n, "map length")) return false;
        items = 2 * n;
        break;
      default:
        return fail_at(start, "invalid type byte 0xc1");
    }
  }
  if (max_depth <= 0) return fail_at(start, "nesting too deep");
  // Each value takes at least one byte, so this loop ends with the input.
  for (uint64_t i = 0; i < items; ++i) {
    if (!skip_value(max_depth - 1)) return false;
  }
  return true;
}

}  // namespace pyport::mp
