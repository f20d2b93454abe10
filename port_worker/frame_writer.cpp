#include "frame_writer.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>

namespace pyport {

namespace {
constexpr size_t kKeepCapacity = 1 << 20;
constexpr int kWaitSliceMs = 100;  // how often a waiting thread rechecks close/failure
}  // namespace

void grow_pipe(int fd) {
  int size = fcntl(fd, F_GETPIPE_SZ);
  if (size >= 0 && size_t(size) < kBigPipeBytes) (void)fcntl(fd, F_SETPIPE_SZ, int(kBigPipeBytes));
}

int FrameWriter::open(uv_loop_t* loop, int fd, ErrorCallback on_error, void* ctx) {
  on_error_ = on_error;
  ctx_ = ctx;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return uv_translate_sys_error(errno);
  int rc = uv_poll_init(loop, &poll_, fd);
  if (rc) return rc;
  poll_.data = this;
  ++open_handles_;
  rc = uv_async_init(loop, &wake_, on_wake);
  if (rc) return rc;
  wake_.data = this;
  ++open_handles_;
  fd_ = fd;
  return 0;
}

void FrameWriter::start(ByteBuffer& first) {
  std::lock_guard<std::mutex> lock(mu_);
  first.append(pending_.data() + sent_, pending_.size() - sent_);
  pending_.swap(first);
  first.clear();
  sent_ = 0;
  queued_total_ = written_total_ + pending_.size();
  started_ = true;
  write_locked();
  arm_locked();
}

void FrameWriter::submit_from_loop(ByteBuffer& frames) {
  if (frames.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_ || error_) {
    frames.clear();
    return;
  }
  queued_total_ += frames.size();
  if (sent_ == pending_.size()) {
    pending_.swap(frames);
    sent_ = 0;
  } else {
    pending_.append(frames.data(), frames.size());
  }
  frames.clear();
  if (!started_) return;
  write_locked();
  arm_locked();
}

void FrameWriter::submit(const uint8_t* frames, size_t size) {
  std::unique_lock<std::mutex> lock(mu_);
  if (closed_ || error_) return;
  pending_.append(frames, size);
  queued_total_ += size;
  if (!started_) return;  // sent by start(); nothing to wait for yet
  uint64_t mine = queued_total_;
  for (;;) {
    write_locked();
    if (written_total_ >= mine || closed_ || error_) return;
    lock.unlock();
    pollfd p = {fd_, POLLOUT, 0};
    poll(&p, 1, kWaitSliceMs);
    lock.lock();
  }
}

bool FrameWriter::idle() {
  std::lock_guard<std::mutex> lock(mu_);
  return error_ || closed_ || sent_ == pending_.size();
}

void FrameWriter::write_from_loop() {
  std::lock_guard<std::mutex> lock(mu_);
  write_locked();
  arm_locked();
}

void FrameWriter::write_locked() {
  if (!grown_ && pending_.size() - sent_ > kDefaultPipeBytes && fd_ >= 0) {
    grown_ = true;
    grow_pipe(fd_);
  }
  while (sent_ < pending_.size() && !error_ && !closed_) {
    ssize_t n = write(fd_, pending_.data() + sent_, pending_.size() - sent_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) fail_locked(uv_translate_sys_error(errno));
      break;
    }
    sent_ += size_t(n);
    written_total_ += uint64_t(n);
  }
  if (sent_ == pending_.size()) {
    pending_.clear();
    sent_ = 0;
    pending_.trim(kKeepCapacity);
  } else if (sent_ >= kKeepCapacity) {
    pending_.consume_front(sent_);  // do not keep sent bytes of a long backlog
    sent_ = 0;
  }
}

void FrameWriter::arm_locked() {
  bool backlog = sent_ < pending_.size() && !error_ && !closed_;
  if (backlog && !polling_) {
    int rc = uv_poll_start(&poll_, UV_WRITABLE, on_writable);
    if (rc) return fail_locked(rc);
    polling_ = true;
  } else if (!backlog && polling_) {
    uv_poll_stop(&poll_);
    polling_ = false;
  }
}

void FrameWriter::fail_locked(int error) {
  if (error_) return;
  error_ = error;
  pending_.clear();
  sent_ = 0;
  uv_async_send(&wake_);  // the loop thread reports it
}

void FrameWriter::on_writable(uv_poll_t* handle, int status, int) {
  auto* self = static_cast<FrameWriter*>(handle->data);
  std::lock_guard<std::mutex> lock(self->mu_);
  if (status < 0) {
    self->fail_locked(status);
  } else {
    self->write_locked();
  }
  self->arm_locked();
}

void FrameWriter::on_wake(uv_async_t* handle) {
  auto* self = static_cast<FrameWriter*>(handle->data);
  int error;
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    if (!self->error_ || self->error_reported_) return;
    self->error_reported_ = true;
    error = self->error_;
    self->arm_locked();  // stops polling
  }
  if (self->on_error_) self->on_error_(self->ctx_, error);
}

void FrameWriter::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    pending_.clear();
    sent_ = 0;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&wake_), on_closed);
}

void FrameWriter::on_closed(uv_handle_t* handle) {
  auto* self = static_cast<FrameWriter*>(handle->data);
  // The fd is closed only once libuv no longer watches it.
  if (--self->open_handles_ == 0 && self->fd_ >= 0) {
    ::close(self->fd_);
    self->fd_ = -1;
  }
}

}  // namespace pyport
