#include "frame_writer.hpp"

namespace pyport {

namespace {
constexpr size_t kKeepCapacity = 1 << 20;
}

int FrameWriter::open(uv_loop_t* loop, int fd, ErrorCallback on_error, void* ctx) {
  on_error_ = on_error;
  ctx_ = ctx;
  int rc = uv_pipe_init(loop, &pipe_, 0);
  if (rc) return rc;
  pipe_.data = this;
  rc = uv_pipe_open(&pipe_, fd);
  if (rc == 0) rc = uv_async_init(loop, &wake_, on_wake);
  if (rc) {
    uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), nullptr);
    return rc;
  }
  wake_.data = this;
  return 0;
}

void FrameWriter::start(ByteBuffer& first) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    first.append(pending_.data(), pending_.size());
    pending_.swap(first);
    first.clear();
    started_ = true;
  }
  flush();
}

void FrameWriter::submit(const uint8_t* frames, size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  pending_.append(frames, size);
  uv_async_send(&wake_);
}

void FrameWriter::submit_from_loop(ByteBuffer& frames) {
  if (frames.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.empty()) {
      pending_.swap(frames);
    } else {
      pending_.append(frames.data(), frames.size());
    }
  }
  frames.clear();
  flush();
}

bool FrameWriter::idle() {
  if (failed_) return true;
  if (writing_) return false;
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.empty();
}

void FrameWriter::flush() {
  if (!started_ || writing_ || failed_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || pending_.empty()) return;
    inflight_.swap(pending_);
  }
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(inflight_.data()),
                             static_cast<unsigned>(inflight_.size()));
  req_.data = this;
  int rc = uv_write(&req_, reinterpret_cast<uv_stream_t*>(&pipe_), &buf, 1, on_written);
  if (rc) {
    failed_ = true;
    inflight_.clear();
    if (on_error_) on_error_(ctx_, rc);
    return;
  }
  writing_ = true;
}

void FrameWriter::on_wake(uv_async_t* handle) {
  static_cast<FrameWriter*>(handle->data)->flush();
}

void FrameWriter::on_written(uv_write_t* req, int status) {
  auto* self = static_cast<FrameWriter*>(req->data);
  self->writing_ = false;
  self->inflight_.clear();
  self->inflight_.trim(kKeepCapacity);
  if (status < 0) {
    if (status == UV_ECANCELED) return;  // closed while writing
    self->failed_ = true;
    if (self->on_error_) self->on_error_(self->ctx_, status);
    return;
  }
  self->flush();
}

void FrameWriter::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    pending_.clear();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
}

}  // namespace pyport
