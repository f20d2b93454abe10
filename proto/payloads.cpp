#include "payloads.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "utf8.hpp"

namespace pyport {
namespace {

// pread/pwrite of all n bytes (they may be cut by signals).
bool pread_all(int fd, void* p, size_t n, uint64_t at) {
  auto* d = static_cast<char*>(p);
  while (n > 0) {
    ssize_t got = ::pread(fd, d, n, off_t(at));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    d += got;
    n -= size_t(got);
    at += uint64_t(got);
  }
  return true;
}

bool pwrite_all(int fd, const void* p, size_t n, uint64_t at) {
  auto* d = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t put = ::pwrite(fd, d, n, off_t(at));
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    d += put;
    n -= size_t(put);
    at += uint64_t(put);
  }
  return true;
}

}  // namespace

Payloads& Payloads::instance() {
  static Payloads* p = new Payloads();  // lives as long as the process
  return *p;
}

Payloads::~Payloads() {
  for (void* m : maps_) {
    if (m && m != MAP_FAILED) ::munmap(m, warm());
  }
  if (header_) ::munmap(header_, kHeader);
  if (fd_ >= 0) ::close(fd_);
}

bool Payloads::open(const std::string& path, uint64_t token, uint64_t slot_size, uint32_t in_slots,
                    uint32_t out_slots, uint64_t threshold, std::string* error) {
  if (fd_ >= 0) {
    *error = "the payload file is already open";
    return false;
  }
  if (slot_size == 0 || slot_size % 4096 != 0 || in_slots == 0 || out_slots == 0 ||
      kStatesAt + 8 * uint64_t(out_slots) > kHeader || threshold == 0 ||
      uint64_t(in_slots) + out_slots > (UINT64_MAX - kHeader) / slot_size) {
    *error = "bad payload layout";
    return false;
  }
  // O_NOFOLLOW: the owner created a regular file there; anything else is
  // not ours to map.
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  struct stat st {};
  uint64_t size = kHeader + (uint64_t(in_slots) + out_slots) * slot_size;
  if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || uint64_t(st.st_size) < size) {
    ::close(fd);
    *error = path + " is not a payload file of " + std::to_string(size) + " bytes";
    return false;
  }
  // The header is written through a mapping: its page is allocated first,
  // so that a full tmpfs is this error and never a SIGBUS later.
  if (::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, kHeader) != 0) {
    int e = errno;
    ::close(fd);
    *error = "cannot allocate the payload file's header: " + std::string(std::strerror(e));
    return false;
  }
  void* h = ::mmap(nullptr, kHeader, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (h == MAP_FAILED) {
    ::close(fd);
    *error = std::string("cannot map the payload file's header: ") + std::strerror(errno);
    return false;
  }
  // Only the two descriptors keep the file: nothing is left to clean up
  // after either process, however it ends.
  ::unlink(path.c_str());
  std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty()) ::rmdir(dir.c_str());
  fd_ = fd;
  header_ = static_cast<uint8_t*>(h);
  token_ = token;
  slot_size_ = slot_size;
  in_slots_ = in_slots;
  out_slots_ = out_slots;
  threshold_ = threshold;
  dirty_.assign(out_slots, 0);
  file_size_ = size;
  maps_.assign(size_t(in_slots) + out_slots, nullptr);
  ready_.assign(out_slots, 0);
  return true;
}

// Payloads that fit a region's warm part are copied through a mapping of
// it instead of pread/pwrite: one memcpy, where the syscalls looked up,
// locked and marked each 4 KiB page of the file every time (a quarter of
// the worker's time in a 1 MiB round trip, docs/performance.md). Those
// pages stay allocated and mapped between requests (nothing punches the
// warm part), so after the first use there is no fault either. Larger
// payloads keep pread/pwrite: their pages beyond the warm part are given
// back after each use, and would fault in again page by page.
uint8_t* Payloads::warm_map(uint32_t r) {
  if (!maps_[r]) {
    bool answer = r >= in_slots_;
    uint64_t base = kHeader + uint64_t(r) * slot_size_;
    // MAP_FAILED (an address-space limit, say) is kept too: the syscalls
    // then do, without trying again.
    maps_[r] = ::mmap(nullptr, warm(), answer ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd_,
                      off_t(base));
  }
  return maps_[r] == MAP_FAILED ? nullptr : static_cast<uint8_t*>(maps_[r]);
}

bool Payloads::intact() const {
  struct stat st {};
  return ::fstat(fd_, &st) == 0 && uint64_t(st.st_size) >= file_size_;
}

bool Payloads::resident(const uint8_t* p, size_t n) {
  constexpr size_t kPage = 4096;
  unsigned char vec[kWarm / kPage];
  auto from = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(kPage - 1);
  auto to = (reinterpret_cast<uintptr_t>(p) + n + kPage - 1) & ~uintptr_t(kPage - 1);
  size_t pages = (to - from) / kPage;
  if (pages > sizeof vec) return false;
  if (::mincore(reinterpret_cast<void*>(from), to - from, vec) != 0) return false;
  for (size_t i = 0; i < pages; ++i) {
    if (!(vec[i] & 1)) return false;
  }
  return true;
}

bool Payloads::allocated(uint32_t k, uint64_t upto) {
  if (ready_[k] >= upto) return true;
  if (::fallocate(fd_, FALLOC_FL_KEEP_SIZE, off_t(out_base(k) + ready_[k]),
                  off_t(upto - ready_[k])) != 0) {
    return false;
  }
  ready_[k] = upto;
  return true;
}

bool Payloads::lend(uint64_t token, uint64_t base, std::string* error) {
  if (fd_ < 0) {
    *error = "LENT frame, but this worker has no payload file";
    return false;
  }
  if (token != token_) {
    *error = "LENT frame for another payload file (the worker was restarted since)";
    return false;
  }
  if (base < kHeader || (base - kHeader) % slot_size_ != 0 ||
      (base - kHeader) / slot_size_ >= in_slots_) {
    *error = "LENT frame names offset " + std::to_string(base) + ", which starts no request region";
    return false;
  }
  lent_ = true;
  lent_base_ = base;
  return true;
}

bool Payloads::zero_copy() {
  if (!zero_copy_module_) {
    zero_copy_module_ = PyImport_ImportModule("erlang.payloads");
    if (!zero_copy_module_) {
      PyErr_Clear();
      return false;
    }
  }
  PyObject* on = PyObject_GetAttrString(zero_copy_module_, "_zero_copy");
  if (!on) {
    PyErr_Clear();
    return false;
  }
  int yes = PyObject_IsTrue(on);
  Py_DECREF(on);
  if (yes < 0) PyErr_Clear();
  return yes > 0;
}

// A read-only memoryview of the file's bytes [at, at + length), backed by
// an mmap object, so the mapping lives as long as the view.
PyObject* Payloads::view(uint64_t at, uint64_t length) {
  if (!mmap_type_) {
    PyObject* mod = PyImport_ImportModule("mmap");
    if (!mod) return nullptr;
    mmap_type_ = PyObject_GetAttrString(mod, "mmap");
    Py_DECREF(mod);
    if (!mmap_type_) return nullptr;
  }
  uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  uint64_t start = at - at % page;
  uint64_t skip = at - start;
  PyObject* args =
      Py_BuildValue("(iKii)", fd_, (unsigned long long)(skip + length), MAP_SHARED, PROT_READ);
  PyObject* kwargs = args ? Py_BuildValue("{s:L}", "offset", (long long)start) : nullptr;
  PyObject* map = kwargs ? PyObject_Call(mmap_type_, args, kwargs) : nullptr;
  Py_XDECREF(args);
  Py_XDECREF(kwargs);
  if (!map) return nullptr;
  PyObject* whole = PyMemoryView_FromObject(map);
  Py_DECREF(map);
  if (!whole) return nullptr;
  PyObject* slice = PySequence_GetSlice(whole, Py_ssize_t(skip), Py_ssize_t(skip + length));
  Py_DECREF(whole);
  return slice;
}

PyObject* Payloads::read(uint8_t form, uint64_t offset, uint64_t length, std::string* error) {
  if (!lent_) {
    *error = "payload placeholder (ext 7) outside a LENT frame";
    return nullptr;
  }
  if (form != kFormBin && form != kFormBytes) {
    *error = "payload placeholder of unknown form " + std::to_string(form);
    return nullptr;
  }
  if (offset > slot_size_ || length > slot_size_ - offset) {
    *error = "payload placeholder names bytes " + std::to_string(offset) + ".." +
             std::to_string(offset + length) + " past its region of " + std::to_string(slot_size_) +
             " bytes";
    return nullptr;
  }
  uint64_t at = lent_base_ + offset;
  if (form == kFormBytes && zero_copy()) return view(at, length);
  PyObject* bytes = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(length));
  if (!bytes) return nullptr;
  bool copied = false;
  if (offset + length <= warm()) {
    const uint8_t* m = warm_map(uint32_t((lent_base_ - kHeader) / slot_size_));
    if (m && intact() && resident(m + offset, length)) {
      std::memcpy(PyBytes_AS_STRING(bytes), m + offset, length);
      copied = true;
    }
  }
  if (!copied && !pread_all(fd_, PyBytes_AS_STRING(bytes), length, at)) {
    Py_DECREF(bytes);
    *error = "payload placeholder names bytes past the end of the payload file";
    return nullptr;
  }
  // Copied: its pages beyond the region's warm ones go back at once. Only
  // its own: an earlier payload of the request may be a view still in use.
  if (offset + length > kWarm) punch(std::max(at, lent_base_ + kWarm), at + length);
  if (form == kFormBytes) return bytes;
  auto* p = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(bytes));
  utf8::Kind kind = utf8::classify(p, length);
  if (kind == utf8::Kind::kInvalid) return bytes;
  PyObject* s =
      PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(p), Py_ssize_t(length), "strict");
  Py_DECREF(bytes);
  return s;
}

void Payloads::punch(uint64_t from, uint64_t to) {
  if (to > from) {
    (void)::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(from),
                      off_t(to - from));
  }
}

// Answer regions the node has read (their word cleared) give back what
// they hold beyond the warm pages.
void Payloads::punch_released() {
  for (uint32_t k = 0; k < out_slots_; ++k) {
    if (dirty_[k] > kWarm && __atomic_load_n(state(k), __ATOMIC_ACQUIRE) == 0) {
      punch(out_base(k) + kWarm, out_base(k) + dirty_[k]);
      dirty_[k] = kWarm;
    }
  }
}

void Payloads::begin_answer() {
  if (fd_ < 0) return;
  if (answering_) {
    // An answer written while one is encoded: the outer one owns the
    // region. (Only the main thread writes answers; another thread's
    // scope changes nothing.)
    if (pthread_equal(answerer_, pthread_self())) ++nested_;
    return;
  }
  answering_ = true;
  answerer_ = pthread_self();
  slot_ = out_slots_;
  used_ = 0;
  punch_released();
}

void Payloads::end_answer(bool sent) {
  if (!answering_ || !pthread_equal(answerer_, pthread_self())) return;
  if (nested_ > 0) {
    --nested_;
    return;
  }
  answering_ = false;
  if (slot_ < out_slots_ && !sent) __atomic_store_n(state(slot_), 0, __ATOMIC_RELEASE);
}

// A value that could not be written goes in the frame; a region it took
// and nothing else of the answer uses is given back at once (marked, the
// node would never read it, so never clear it).
uint64_t Payloads::unused() {
  if (slot_ < out_slots_ && used_ == 0) {
    __atomic_store_n(state(slot_), 0, __ATOMIC_RELEASE);
    slot_ = out_slots_;
  }
  return UINT64_MAX;
}

uint64_t Payloads::put(const void* p, size_t n) {
  if (slot_ == out_slots_) {
    for (uint32_t k = 0; k < out_slots_; ++k) {
      if (__atomic_load_n(state(k), __ATOMIC_ACQUIRE) == 0) {
        slot_ = k;
        break;
      }
    }
    if (slot_ == out_slots_) return UINT64_MAX;  // all held: the pipe it is
    __atomic_store_n(state(slot_), ++seq_, __ATOMIC_RELEASE);
    used_ = 0;
  }
  if (n > slot_size_ - used_) return unused();
  uint64_t at = out_base(slot_) + used_;
  bool copied = false;
  if (used_ + n <= warm()) {
    uint8_t* m = warm_map(in_slots_ + slot_);
    if (m && intact() && allocated(slot_, used_ + n)) {
      std::memcpy(m + used_, p, n);
      copied = true;
    }
  }
  if (!copied && !pwrite_all(fd_, p, n, at)) return unused();  // a full tmpfs, say
  used_ += n;
  if (used_ > dirty_[slot_]) dirty_[slot_] = used_;
  return at;
}

}  // namespace pyport
