// Framing of PROTOCOL.md: 4-byte big-endian length + one msgpack array
// [Kind, Id, ...]. Builders for the worker's own frames, and the assembler
// that cuts the incoming byte stream into frames. No Python here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "byte_buffer.hpp"

namespace pyport {

constexpr uint64_t kProtocolVersion = 1;
constexpr size_t kDefaultMaxFrameSize = size_t(64) << 20;
// The smallest allowed maximum: room for any ERROR frame the worker writes
// about a frame it cannot take.
constexpr size_t kMinMaxFrameSize = 256;
constexpr size_t kMaxMaxFrameSize = 0xffffffffu;  // what a 4-byte length can say

enum FrameKind : uint8_t {
  kHello = 0,
  kCall = 1,
  kCast = 2,
  kEval = 3,
  kExec = 4,
  kCancel = 5,
  kStreamStart = 6,
  kStreamCredit = 7,
  kInterrupt = 8,
  kReply = 9,     // answer to a worker's REQUEST
  kMessage = 10,  // a term for one of the worker's mailboxes
  kControl = 11,
  kBatch = 12,  // several frames in one: [12, 0, [Frame (bin), ...]]
  kWith = 13,   // a CALL or EVAL with options: [13, Id, Options, Frame (bin)]
  kLent = 14,   // a request whose payloads are in the payload file: [14, Id, Token, Base, Frame]
  kShutdown = 15,
  kResult = 16,
  kError = 17,
  kLog = 18,
  kRequest = 19,   // the worker asks Erlang; answered by REPLY
  kNotify = 20,    // the worker tells Erlang; no answer
  kSchedule = 21,  // answers a CALL/CAST: continue it elsewhere
  kStreamChunk = 24,
  kStreamEnd = 25,
};

// Starts a frame in out: reserves its length prefix and returns where the
// frame starts, to be passed to end_frame once the payload is written.
inline size_t begin_frame(ByteBuffer& out) {
  size_t start = out.size();
  out.grow(4);
  return start;
}
// Fills in the length prefix; returns the payload size.
size_t end_frame(ByteBuffer& out, size_t start);

// Writes [0, 0, Version, PythonVersion, OsPid, Capabilities]. `sandbox`,
// when given, is the encoded value of the capabilities' `sandbox` entry
// (an atom key).
void write_hello_frame(ByteBuffer& out, std::string_view python_version, uint64_t os_pid,
                       size_t max_frame_size, const std::vector<std::string_view>& features,
                       const ByteBuffer* sandbox = nullptr);

// Writes [17, Id, Type, Message, Traceback]. Message and traceback are cut
// (between characters, marked "[truncated]") so the frame fits in
// max_frame_size. All three strings must be valid UTF-8.
void write_error_frame(ByteBuffer& out, uint64_t id, std::string_view type,
                       std::string_view message, std::string_view traceback, size_t max_frame_size);

// Writes [18, 0, Level, Message]; message must be valid UTF-8.
void write_log_frame(ByteBuffer& out, std::string_view level, std::string_view message);

// Reads the request id from the first bytes of a frame payload: an array
// header, a kind (any value, valid or not) and an unsigned id. False if
// they are not there.
bool recover_id(const uint8_t* payload, size_t size, uint64_t& id);

// Cuts an incoming byte stream into frames. The owner reads into prepare()'s
// space, commit()s what arrived, takes events from next() and calls
// compact() when done with them. A frame longer than the maximum is reported
// with the id from its first bytes, and the rest of it is dropped as it
// streams in, never buffered.
class FrameAssembler {
 public:
  struct Event {
    enum Type { kFrame, kOversized } type;
    const uint8_t* payload;  // kFrame: valid until compact() or prepare()
    size_t size;             // payload length (kOversized: the announced length)
    uint64_t id;             // kOversized: the recovered id, else 0
  };

  explicit FrameAssembler(size_t max_frame_size) : max_(max_frame_size) {}

  // Free space to read into: enough for the rest of the frame in progress,
  // so a big frame arrives without repeated reallocation.
  std::pair<uint8_t*, size_t> prepare();
  void commit(size_t n) { buf_.commit(n); }
  bool next(Event& ev);
  void compact();

  size_t buffered() const { return buf_.size() - pos_; }

 private:
  static constexpr size_t kReadChunk = 64 * 1024;
  static constexpr size_t kHeadBytes = 32;  // enough for array header, kind and id
  static constexpr size_t kKeepCapacity = 1 << 20;

  size_t max_;
  ByteBuffer buf_;
  size_t pos_ = 0;   // start of unprocessed bytes in buf_
  size_t skip_ = 0;  // bytes of an oversized frame still to drop
};

}  // namespace pyport
