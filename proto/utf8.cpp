#include "utf8.hpp"

#include <cstring>

namespace pyport::utf8 {

size_t sequence_length(const uint8_t* p, size_t n) {
  uint8_t b = p[0];
  if (b < 0x80) return 1;
  size_t len;
  uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (b >= 0xc2 && b <= 0xdf) {
    len = 2;
  } else if (b >= 0xe0 && b <= 0xef) {
    len = 3;
    if (b == 0xe0) lo = 0xa0;  // overlong
    if (b == 0xed) hi = 0x9f;  // surrogates
  } else if (b >= 0xf0 && b <= 0xf4) {
    len = 4;
    if (b == 0xf0) lo = 0x90;  // overlong
    if (b == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  if (n < len || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < len; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
  }
  return len;
}

Kind classify(const uint8_t* p, size_t n) {
  size_t i = 0;
  // ASCII runs, eight bytes at a time: the common case for text and names.
  while (i + 8 <= n) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w & 0x8080808080808080ull) break;
    i += 8;
  }
  bool ascii = true;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len = sequence_length(p + i, n - i);
    if (!len) return Kind::kInvalid;
    ascii = false;
    i += len;
  }
  return ascii ? Kind::kAscii : Kind::kUtf8;
}

void append_sanitized(std::string& out, const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    size_t len = sequence_length(p + i, n - i);
    if (len) {
      out.append(reinterpret_cast<const char*>(p + i), len);
      i += len;
    } else {
      out.append("\xef\xbf\xbd");
      ++i;
    }
  }
}

size_t cut_point(const uint8_t* p, size_t n, size_t max) {
  if (max >= n) return n;
  // Step back over continuation bytes (at most three) to a lead byte.
  size_t cut = max;
  for (int k = 0; k < 3 && cut > 0 && (p[cut] & 0xc0) == 0x80; ++k)
    --cut;
  return (p[cut] & 0xc0) == 0x80 ? max : cut;
}

}  // namespace pyport::utf8
