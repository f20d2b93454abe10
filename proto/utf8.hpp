// UTF-8 checks with exactly the rules of Python's strict decoder (no
// surrogates, no overlong forms, nothing above U+10FFFF), so "valid" here
// means PyUnicode_DecodeUTF8 cannot fail.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyport::utf8 {

enum class Kind { kInvalid, kAscii, kUtf8 };

Kind classify(const uint8_t* p, size_t n);

// Length of the valid sequence starting at p[0] (1 to 4), or 0 if p[0] does
// not start one within n bytes.
size_t sequence_length(const uint8_t* p, size_t n);

// Appends p[0..n) to out with every invalid byte replaced by U+FFFD.
void append_sanitized(std::string& out, const uint8_t* p, size_t n);

// The largest cut <= max (max <= n) that does not split a multi-byte
// sequence of p; used to cut long log lines between characters.
size_t cut_point(const uint8_t* p, size_t n, size_t max);

}  // namespace pyport::utf8
