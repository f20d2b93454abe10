// A growable byte buffer without zero-initialisation: the codec appends
// into it, the frame reader reads into its tail, and the frame writer hands
// its memory straight to libuv.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace pyport {

class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t capacity) { reserve(capacity); }
  ~ByteBuffer() { std::free(data_); }

  ByteBuffer(const ByteBuffer&) = delete;
  ByteBuffer& operator=(const ByteBuffer&) = delete;
  ByteBuffer(ByteBuffer&& other) noexcept { swap(other); }
  ByteBuffer& operator=(ByteBuffer&& other) noexcept {
    ByteBuffer(std::move(other)).swap(*this);
    return *this;
  }

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }

  // Ensures capacity() >= n. Throws std::bad_alloc when memory runs out.
  void reserve(size_t n) {
    if (n > capacity_) enlarge(n);
  }

  // Appends n uninitialised bytes and returns where they start.
  uint8_t* grow(size_t n) {
    uint8_t* p = space(n);
    size_ += n;
    return p;
  }

  // Room for n more bytes at the end, not yet counted in size(): the
  // caller writes up to n bytes there, then commit()s what it wrote. For
  // writers that keep their own cursor over many small values.
  uint8_t* space(size_t n) {
    if (n > capacity_ - size_) enlarge(size_ + n);
    return data_ + size_;
  }

  void push_back(uint8_t byte) { *grow(1) = byte; }
  void append(const void* p, size_t n) {
    if (n) std::memcpy(grow(n), p, n);
  }

  // Shrinks the contents to n bytes (n <= size()); keeps the memory.
  void truncate(size_t n) { size_ = n < size_ ? n : size_; }
  void clear() { size_ = 0; }
  // Marks n bytes beyond size() (already written through data()) as used.
  void commit(size_t n) { size_ += n; }

  // Drops the first n bytes, moving the rest to the front.
  void consume_front(size_t n) {
    if (n >= size_) {
      size_ = 0;
    } else if (n) {
      std::memmove(data_, data_ + n, size_ - n);
      size_ -= n;
    }
  }

  // Gives back the memory of an empty buffer that grew past `keep` bytes,
  // so one huge frame does not pin its memory for the worker's lifetime.
  void trim(size_t keep) {
    if (size_ == 0 && capacity_ > keep) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
    }
  }

  void swap(ByteBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
  }

 private:
  // Out of line, so the checks above inline to a compare and a branch.
  __attribute__((noinline)) void enlarge(size_t n) {
    size_t cap = capacity_ ? capacity_ : 256;
    while (cap < n)
      cap = cap > SIZE_MAX / 2 ? n : cap * 2;
    auto* p = static_cast<uint8_t*>(std::realloc(data_, cap));
    if (!p) throw std::bad_alloc();
    data_ = p;
    capacity_ = cap;
  }

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace pyport
