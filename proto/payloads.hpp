// Big payloads off the pipe (PROTOCOL.md, "Payloads"): binaries above a
// threshold travel through one file that the worker's owner created on
// tmpfs and both processes hold open (the name is unlinked as soon as the
// worker has opened it). A frame then carries an ext 7 placeholder
// (form, offset, length) instead of the bytes.
//
// Layout of the file: a 4 KiB header, then `in_slots` regions the node
// lends to requests (one per request, named by a LENT frame), then
// `out_slots` regions for answers, which the worker allocates; a region
// for answers is busy while the 8-byte word at 64 + 8 × k of the header is
// not zero: the worker sets it, the node clears it once it has read the
// answer. Every region is `slot_size` bytes (the pool's max_frame_size,
// rounded up to a page).
//
// One per process (the worker talks to one owner). Needs the GIL.
#pragma once

#include <Python.h>
#include <pthread.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyport {

class Payloads {
 public:
  static constexpr size_t kHeader = 4096;
  static constexpr size_t kStatesAt = 64;
  // Pages kept allocated at the start of a region between requests, so that
  // payloads up to this size do not fault fresh tmpfs pages every time;
  // what lies beyond is given back (punched) once the payload is read.
  static constexpr size_t kWarm = size_t(2) << 20;
  // Placeholder forms: a bin (Python: str when UTF-8, else bytes) or bytes.
  static constexpr uint8_t kFormBin = 0;
  static constexpr uint8_t kFormBytes = 1;
  static constexpr size_t kPlaceholder = 17;  // form, offset:64, length:64

  static Payloads& instance();

  // Opens the owner's file at path (then unlinks it and its directory).
  // False with *error set when the file cannot be used.
  bool open(const std::string& path, uint64_t token, uint64_t slot_size, uint32_t in_slots,
            uint32_t out_slots, uint64_t threshold, std::string* error);
  bool is_open() const { return fd_ >= 0; }
  ~Payloads();

  // ---- node -> worker: the region lent to the request being decoded ----
  // Checks a LENT frame's token and base; false with *error set.
  bool lend(uint64_t token, uint64_t base, std::string* error);
  void end_lend() { lent_ = false; }
  // The value of an ext 7 in a request: bytes or str (memoryview when
  // erlang.payloads.zero_copy is on). Null with *error set (a lie about the
  // region: a FrameError) or a Python exception set.
  PyObject* read(uint8_t form, uint64_t offset, uint64_t length, std::string* error);

  // ---- worker -> node: the answer being encoded ----
  // Big binaries of the answer encoded between begin_answer() and
  // end_answer() go to a region of their own when one is free.
  void begin_answer();
  // sent: the frame holding the placeholders was written; else the region
  // is released.
  void end_answer(bool sent);
  // Whether a binary of n bytes should go off the pipe now.
  // Only on the thread that encodes the answer: another thread's frame
  // (erlang.call from a Python thread) keeps its bytes in the frame.
  bool wants(size_t n) const {
    return answering_ && fd_ >= 0 && n >= threshold_ && pthread_equal(answerer_, pthread_self());
  }
  // Copies n bytes into the answer's region; returns their offset in the
  // file, or UINT64_MAX when no region is free or it is full (the caller
  // then writes the bytes in the frame).
  uint64_t put(const void* p, size_t n);

  uint64_t threshold() const { return threshold_; }

 private:
  Payloads() = default;
  uint64_t in_base(uint32_t i) const { return kHeader + uint64_t(i) * slot_size_; }
  uint64_t out_base(uint32_t k) const { return kHeader + (uint64_t(in_slots_) + k) * slot_size_; }
  volatile uint64_t* state(uint32_t k) const {
    return reinterpret_cast<volatile uint64_t*>(header_ + kStatesAt) + k;
  }
  // Gives back the pages of [from, to) (best effort).
  void punch(uint64_t from, uint64_t to);
  // The warm part of region r (request regions first, then answer
  // regions) mapped into this process, or null (not mappable: pread and
  // pwrite then). Mapped on first use, kept until the process ends.
  uint8_t* warm_map(uint32_t r);
  uint64_t warm() const { return slot_size_ < kWarm ? slot_size_ : kWarm; }
  // Whether the file still has the size it was opened with (the node never
  // shrinks it; a mapped page past the end would be SIGBUS).
  bool intact() const;
  // Whether every page of [p, p + n) of a mapping holds data (a hole would
  // be allocated by the read fault, SIGBUS on a full tmpfs).
  static bool resident(const uint8_t* p, size_t n);
  // Whether the first `upto` bytes of answer region k are allocated
  // (fallocate: a full tmpfs is an error here, not a SIGBUS in memcpy).
  bool allocated(uint32_t k, uint64_t upto);
  // put()'s "not written": UINT64_MAX, and the answer region given back if
  // nothing of the answer is in it yet.
  uint64_t unused();
  void punch_released();
  PyObject* view(uint64_t at, uint64_t length);
  bool zero_copy();

  int fd_ = -1;
  uint8_t* header_ = nullptr;
  uint64_t token_ = 0, slot_size_ = 0, threshold_ = UINT64_MAX;
  uint32_t in_slots_ = 0, out_slots_ = 0;
  // The request being decoded: its region.
  bool lent_ = false;
  uint64_t lent_base_ = 0;
  // The answer being encoded: its region (out_slots_ when none yet), used.
  bool answering_ = false;
  int nested_ = 0;
  pthread_t answerer_{};
  uint32_t slot_ = 0;
  uint64_t used_ = 0;
  uint64_t seq_ = 0;
  std::vector<uint64_t> dirty_;  // bytes written into each answer region
  uint64_t file_size_ = 0;
  std::vector<void*> maps_;      // warm_map's, per region (null: not yet; MAP_FAILED: not mappable)
  std::vector<uint64_t> ready_;  // allocated bytes at each answer region's start
  PyObject* zero_copy_module_ = nullptr;
  PyObject* mmap_type_ = nullptr;
};

// Scope of one answer's encoding.
class PayloadAnswer {
 public:
  PayloadAnswer() { Payloads::instance().begin_answer(); }
  ~PayloadAnswer() { Payloads::instance().end_answer(sent_); }
  PayloadAnswer(const PayloadAnswer&) = delete;
  PayloadAnswer& operator=(const PayloadAnswer&) = delete;
  void sent() { sent_ = true; }

 private:
  bool sent_ = false;
};

}  // namespace pyport
