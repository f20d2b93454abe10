#include "frames.hpp"

#include <algorithm>

#include "msgpack_rw.hpp"
#include "utf8.hpp"

namespace pyport {

size_t end_frame(ByteBuffer& out, size_t start) {
  size_t payload = out.size() - start - 4;
  mp::store_be32(out.data() + start, uint32_t(payload));
  return payload;
}

void write_hello_frame(ByteBuffer& out, std::string_view python_version, uint64_t os_pid,
                       size_t max_frame_size, const std::vector<std::string_view>& features,
                       const ByteBuffer* sandbox) {
  size_t start = begin_frame(out);
  mp::write_array_header(out, 6);
  mp::write_uint(out, kHello);
  mp::write_uint(out, 0);
  mp::write_uint(out, kProtocolVersion);
  mp::write_str(out, python_version);
  mp::write_uint(out, os_pid);
  mp::write_map_header(out, sandbox ? 3 : 2);
  mp::write_str(out, "max_frame_size");
  mp::write_uint(out, max_frame_size);
  mp::write_str(out, "features");
  mp::write_array_header(out, uint32_t(features.size()));
  for (auto f : features)
    mp::write_str(out, f);
  if (sandbox) {
    constexpr std::string_view kKey = "sandbox";
    mp::write_ext_header(out, mp::kExtAtom, uint32_t(kKey.size()));
    out.append(kKey.data(), kKey.size());
    out.append(sandbox->data(), sandbox->size());
  }
  end_frame(out, start);
}

namespace {
constexpr std::string_view kTruncated = " [truncated]";

void write_cut_str(ByteBuffer& out, std::string_view s, size_t keep) {
  if (keep >= s.size()) return mp::write_str(out, s);
  auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t cut = utf8::cut_point(p, s.size(), keep);
  mp::write_str_header(out, uint32_t(cut + kTruncated.size()));
  out.append(p, cut);
  out.append(kTruncated.data(), kTruncated.size());
}
}  // namespace

void write_error_frame(ByteBuffer& out, uint64_t id, std::string_view type,
                       std::string_view message, std::string_view traceback,
                       size_t max_frame_size) {
  // Everything but the message and traceback bytes: prefix, array header,
  // kind, id, three str headers, two truncation marks.
  type = type.substr(
      0, utf8::cut_point(reinterpret_cast<const uint8_t*>(type.data()), type.size(), 256));
  size_t fixed = 4 + 1 + 1 + 9 + 15 + type.size() + 2 * kTruncated.size();
  size_t room = max_frame_size > fixed ? max_frame_size - fixed : 0;
  size_t keep_msg = message.size(), keep_tb = traceback.size();
  if (keep_msg + keep_tb > room) {
    keep_msg = std::min(keep_msg, std::max(room / 2, room - std::min(room, keep_tb)));
    keep_tb = std::min(keep_tb, room - keep_msg);
  }
  size_t start = begin_frame(out);
  mp::write_array_header(out, 5);
  mp::write_uint(out, kError);
  mp::write_uint(out, id);
  mp::write_str(out, type);
  write_cut_str(out, message, keep_msg);
  write_cut_str(out, traceback, keep_tb);
  end_frame(out, start);
}

void write_log_frame(ByteBuffer& out, std::string_view level, std::string_view message) {
  size_t start = begin_frame(out);
  mp::write_array_header(out, 4);
  mp::write_uint(out, kLog);
  mp::write_uint(out, 0);
  mp::write_str(out, level);
  mp::write_str(out, message);
  end_frame(out, start);
}

bool recover_id(const uint8_t* payload, size_t size, uint64_t& id) {
  mp::Reader r(payload, size);
  uint32_t n;
  uint64_t v = 0;
  if (!r.read_array_header(n, "frame") || n < 2 || !r.skip_value() || !r.read_uint(v, "Id")) {
    return false;
  }
  id = v;
  return true;
}

std::pair<uint8_t*, size_t> FrameAssembler::prepare() {
  size_t want = kReadChunk;
  size_t avail = buf_.size() - pos_;
  if (skip_ == 0 && avail >= 4) {
    size_t len = mp::load_be32(buf_.data() + pos_);
    size_t frame = 4 + (len > max_ ? std::min(len, kHeadBytes) : len);
    // The rest of this frame, plus the next frame's length prefix.
    if (frame > avail) want = std::max(want, frame - avail + 4);
  }
  buf_.reserve(buf_.size() + want);
  return {buf_.data() + buf_.size(), buf_.capacity() - buf_.size()};
}

bool FrameAssembler::next(Event& ev) {
  for (;;) {
    size_t avail = buf_.size() - pos_;
    if (skip_) {
      size_t drop = std::min(avail, skip_);
      pos_ += drop;
      skip_ -= drop;
      if (skip_) return false;
      continue;
    }
    if (avail < 4) return false;
    const uint8_t* p = buf_.data() + pos_;
    size_t len = mp::load_be32(p);
    if (len > max_) {
      size_t head = std::min(len, kHeadBytes);
      if (avail < 4 + head) return false;
      ev.type = Event::kOversized;
      ev.payload = nullptr;
      ev.size = len;
      if (!recover_id(p + 4, head, ev.id)) ev.id = 0;
      pos_ += 4 + head;
      skip_ = len - head;
      return true;
    }
    if (avail < 4 + len) return false;
    ev.type = Event::kFrame;
    ev.payload = p + 4;
    ev.size = len;
    ev.id = 0;
    pos_ += 4 + len;
    return true;
  }
}

void FrameAssembler::compact() {
  buf_.consume_front(pos_);
  pos_ = 0;
  buf_.trim(kKeepCapacity);
}

}  // namespace pyport
