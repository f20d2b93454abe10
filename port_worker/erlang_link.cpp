#include "erlang_link.hpp"

#include <string>

#include "frames.hpp"
#include "msgpack_rw.hpp"

namespace pyport {

namespace {

constexpr uint32_t kReplyFields = 4;    // [9, Id, Status, Value]
constexpr uint32_t kMessageFields = 3;  // [10, Mailbox, Term]

PyObject* connection_error(const char* what) {
  PyErr_Format(PyExc_ConnectionError, "%s: the worker's link to Erlang is closed", what);
  return nullptr;
}

}  // namespace

ErlangLink::ErlangLink(Codec& codec, FrameWriter& writer, size_t max_frame_size)
    : codec_(codec), writer_(writer), max_frame_size_(max_frame_size) {}

void ErlangLink::bind_main(MainThread* main) {
  main_ = main;
  main_id_ = std::this_thread::get_id();
}

void ErlangLink::install(InputReader& reader) {
  reader_ = &reader;
  reader.set_handler(kReply, on_frame, this);
  reader.set_handler(kMessage, on_frame, this);
}

// ---- mailboxes ----------------------------------------------------------------

uint64_t ErlangLink::open_mailbox() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = next_id_++;
  boxes_.emplace(id, std::make_shared<Mailbox>());
  return id;
}

void ErlangLink::close_mailbox(uint64_t id) {
  Box box;  // freed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto it = boxes_.find(id);
  if (it == boxes_.end()) return;
  box = std::move(it->second);
  boxes_.erase(it);
}

ErlangLink::Box ErlangLink::find(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = boxes_.find(id);
  return it == boxes_.end() ? Box() : it->second;
}

bool ErlangLink::on_frame(void* ctx, const InputFrame& frame) {
  uint32_t want = frame.kind == kReply ? kReplyFields : kMessageFields;
  if (frame.fields != want || frame.id == 0) return false;  // the dispatcher says what is wrong
  static_cast<ErlangLink*>(ctx)->deliver(frame);
  return true;
}

// On the thread that read the frame, without the GIL.
void ErlangLink::deliver(const InputFrame& frame) {
  ByteBuffer copy;
  copy.append(frame.payload, frame.size);
  bool wake_main = false;
  bool for_loop = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = boxes_.find(frame.id);
    // No mailbox: a request whose waiter gave up, or a subscription closed
    // while a message was on its way. Nobody wants the frame.
    if (it == boxes_.end()) return;
    Mailbox& box = *it->second;
    box.frames.push_back(std::move(copy));
    for_loop = post_watch_locked(box);
    box.cv.notify_all();
    // The main thread reads for itself while it waits; another reader must
    // ring its doorbell.
    wake_main = box.main_waiting && std::this_thread::get_id() != main_id_;
  }
  if (for_loop && main_) main_->loop_completions_posted();
  if (wake_main && reader_) reader_->wake_main();
}

bool ErlangLink::post_watch_locked(Mailbox& box) {
  uint64_t token = box.watch;
  if (!token) return false;
  box.watch = 0;
  if (box.watch_on_loop) {
    loop_completions_.push_back(token);  // reserved in watch_on_loop()
    return true;
  }
  post_locked(token);
  return false;
}

void ErlangLink::post_locked(uint64_t token) {
  completions_.push_back(token);
  completions_cv_.notify_one();
}

// ---- sending ------------------------------------------------------------------

bool ErlangLink::encode_frame(ByteBuffer& out, uint8_t kind, uint64_t id, PyObject* op,
                              PyObject* args) {
  if (!PyUnicode_Check(op)) {
    PyErr_SetString(PyExc_TypeError, "the operation must be a str");
    return false;
  }
  if (!PyList_Check(args) && !PyTuple_Check(args)) {
    PyErr_SetString(PyExc_TypeError, "the arguments must be a list or a tuple");
    return false;
  }
  size_t start = begin_frame(out);
  mp::write_array_header(out, 4);
  mp::write_uint(out, kind);
  mp::write_uint(out, id);
  size_t head = out.size() - start - 4;
  EncodeResult rc = codec_.encode(op, out, max_frame_size_ - head);
  if (rc == EncodeResult::kOk) {
    rc = codec_.encode(args, out, max_frame_size_ - (out.size() - start - 4));
  }
  if (rc == EncodeResult::kOk) {
    end_frame(out, start);
    return true;
  }
  out.truncate(start);
  if (rc == EncodeResult::kTooLarge) {
    PyErr_Format(PyExc_ValueError, "the request does not fit in max_frame_size (%zu bytes)",
                 max_frame_size_);
  }
  return false;
}

void ErlangLink::send(ByteBuffer& frames) {
  if (main_ && std::this_thread::get_id() == main_id_) return main_->send(frames);
  // Another thread waits for the pipe when it is full: let Python run.
  PyThreadState* ts = PyEval_SaveThread();
  writer_.submit(frames.data(), frames.size());
  PyEval_RestoreThread(ts);
  frames.clear();
}

bool ErlangLink::start_request(PyObject* op, PyObject* args, uint64_t* id) {
  if (closed()) return connection_error("cannot send a request to Erlang"), false;
  *id = open_mailbox();
  ByteBuffer out;
  if (!encode_frame(out, kRequest, *id, op, args)) {
    close_mailbox(*id);
    return false;
  }
  send(out);
  return true;
}

PyRef ErlangLink::request(PyObject* op, PyObject* args) {
  uint64_t id;
  if (!start_request(op, args, &id)) return {};
  Box box = find(id);
  ByteBuffer frame;
  int got = box ? wait_frame(box, kForever, &frame) : 0;
  if (got < 0) {
    // Interrupted (the caller of this Python code gave up): the Erlang
    // process serving the request is ended; its reply, if one is on its
    // way, finds no mailbox.
    cancel_request(id);
    return {};
  }
  close_mailbox(id);
  if (got == 0) return PyRef::steal(connection_error("no reply from Erlang"));
  return decode_reply(frame);
}

PyRef ErlangLink::take_reply(uint64_t id) {
  Box box = find(id);
  ByteBuffer frame;
  bool got = false;
  if (box) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!box->frames.empty()) {
      frame = std::move(box->frames.front());
      box->frames.pop_front();
      got = true;
    }
  }
  close_mailbox(id);
  if (!got) return PyRef::steal(connection_error("no reply from Erlang"));
  return decode_reply(frame);
}

bool ErlangLink::notify(PyObject* op, PyObject* args) {
  if (closed()) return connection_error("cannot send to Erlang"), false;
  ByteBuffer out;
  if (!encode_frame(out, kNotify, 0, op, args)) return false;
  send(out);
  return true;
}

void ErlangLink::cancel_request(uint64_t id) {
  close_mailbox(id);
  if (closed()) return;  // nobody serves it any more
  ByteBuffer out;
  size_t start = begin_frame(out);
  mp::write_array_header(out, 4);
  mp::write_uint(out, kNotify);
  mp::write_uint(out, 0);
  mp::write_str(out, "cancel");
  mp::write_array_header(out, 1);
  mp::write_uint(out, id);
  end_frame(out, start);
  send(out);
}

// ---- waiting ------------------------------------------------------------------

int ErlangLink::wait_frame(const Box& box, Clock::time_point deadline, ByteBuffer* frame) {
  auto take = [&] {
    if (box->frames.empty()) return false;
    *frame = std::move(box->frames.front());
    box->frames.pop_front();
    return true;
  };
  if (main_ && std::this_thread::get_id() == main_id_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (take()) return 1;
      if (closed_) return 0;
      box->main_waiting = true;
    }
    MainThread::WaitResult result = main_->wait(
        [&] {
          std::lock_guard<std::mutex> lock(mu_);
          return !box->frames.empty() || closed_;
        },
        deadline);
    std::lock_guard<std::mutex> lock(mu_);
    box->main_waiting = false;
    if (result == MainThread::WaitResult::kInterrupted) return -1;
    return take() ? 1 : 0;
  }
  bool got;
  PyThreadState* ts = PyEval_SaveThread();
  {
    std::unique_lock<std::mutex> lock(mu_);
    ++inside_;
    auto ready = [&] { return !box->frames.empty() || closed_; };
    if (deadline == kForever) {
      box->cv.wait(lock, ready);
    } else {
      box->cv.wait_until(lock, deadline, ready);
    }
    got = take();
    leave_locked();
  }
  PyEval_RestoreThread(ts);
  return got ? 1 : 0;
}

void ErlangLink::leave_locked() {
  if (--inside_ == 0 && closed_) left_cv_.notify_all();
}

PyRef ErlangLink::receive(uint64_t id, Clock::time_point deadline) {
  Box box = find(id);
  if (!box) {
    PyErr_Format(PyExc_KeyError, "no mailbox %llu", static_cast<unsigned long long>(id));
    return {};
  }
  ByteBuffer frame;
  int got = wait_frame(box, deadline, &frame);
  if (got < 0) return {};
  if (got == 0) {
    if (closed()) return PyRef::steal(connection_error("no more messages"));
    return PyRef::steal(Py_BuildValue("(OO)", Py_False, Py_None));
  }
  mp::Reader r(frame.data(), frame.size());
  uint32_t n;
  uint64_t kind, mailbox;
  if (!r.read_array_header(n, "frame") || !r.read_uint(kind, "Kind") ||
      !r.read_uint(mailbox, "Id")) {
    PyErr_Format(PyExc_RuntimeError, "malformed MESSAGE frame: %s", r.error().c_str());
    return {};
  }
  if (kind != kMessage) {
    PyErr_Format(PyExc_RuntimeError, "mailbox %llu got a frame of kind %llu, not MESSAGE",
                 static_cast<unsigned long long>(id), static_cast<unsigned long long>(kind));
    return {};
  }
  PyRef term = codec_.decode(r);
  if (!term) return {};
  return PyRef::steal(Py_BuildValue("(OO)", Py_True, term.get()));
}

bool ErlangLink::watch(uint64_t id, uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = boxes_.find(id);
  if (it == boxes_.end()) {
    PyErr_Format(PyExc_KeyError, "no mailbox %llu", static_cast<unsigned long long>(id));
    return false;
  }
  if (!it->second->frames.empty() || closed_) {
    post_locked(token);
  } else {
    it->second->watch = token;
  }
  return true;
}

bool ErlangLink::watch_on_loop(uint64_t id, uint64_t token) {
  bool posted = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = boxes_.find(id);
    if (it == boxes_.end()) {
      PyErr_Format(PyExc_KeyError, "no mailbox %llu", static_cast<unsigned long long>(id));
      return false;
    }
    try {
      // Posting happens on the reading thread, where allocation must not fail.
      loop_completions_.reserve(loop_completions_.size() + 1);
    } catch (const std::bad_alloc&) {
      PyErr_NoMemory();
      return false;
    }
    Mailbox& box = *it->second;
    box.watch = token;
    box.watch_on_loop = true;
    if (!box.frames.empty() || closed_) posted = post_watch_locked(box);
  }
  if (posted && main_) main_->loop_completions_posted();
  return true;
}

void ErlangLink::take_loop_completions(std::vector<uint64_t>& out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) {
    for (auto& [id, box] : boxes_)
      if (box->watch_on_loop) post_watch_locked(*box);
  }
  // Copied, not swapped: the reserved capacity stays (see watch_on_loop).
  out.assign(loop_completions_.begin(), loop_completions_.end());
  loop_completions_.clear();
}

bool ErlangLink::loop_completions_waiting() {
  std::lock_guard<std::mutex> lock(mu_);
  return !loop_completions_.empty();
}

uint64_t ErlangLink::next_completion() {
  uint64_t token = 0;
  PyThreadState* ts = PyEval_SaveThread();
  {
    std::unique_lock<std::mutex> lock(mu_);
    ++inside_;
    completions_cv_.wait(lock, [&] { return !completions_.empty() || closed_; });
    if (!completions_.empty()) {
      token = completions_.front();
      completions_.pop_front();
    }
    leave_locked();
  }
  PyEval_RestoreThread(ts);
  return token;
}

PyRef ErlangLink::decode_reply(const ByteBuffer& frame) {
  mp::Reader r(frame.data(), frame.size());
  uint32_t n;
  uint64_t kind, id;
  std::string_view status;
  if (!r.read_array_header(n, "frame") || !r.read_uint(kind, "Kind") || !r.read_uint(id, "Id") ||
      !r.read_string(status, "Status")) {
    PyErr_Format(PyExc_RuntimeError, "malformed REPLY frame: %s", r.error().c_str());
    return {};
  }
  PyRef value = codec_.decode(r);
  if (!value) return {};
  if (status == "ok") return value;
  if (status != "error") {
    PyErr_Format(PyExc_RuntimeError, "REPLY with status '%.*s', not ok or error",
                 int(status.size()), status.data());
    return {};
  }
  // [Type, Message, Reason]: the error factory (erlang/_errors.py) makes the
  // exception, so that its classes live in Python.
  PyRef seq = PyRef::steal(PySequence_Fast(value.get(), "an error REPLY needs a list"));
  if (!seq || PySequence_Fast_GET_SIZE(seq.get()) != 3) {
    PyErr_SetString(PyExc_RuntimeError, "an error REPLY needs [Type, Message, Reason]");
    return {};
  }
  PyObject** items = PySequence_Fast_ITEMS(seq.get());
  if (!error_factory_) {
    PyRef errors = PyRef::steal(PyImport_ImportModule("erlang._errors"));
    if (errors) error_factory_ = PyRef::steal(PyObject_GetAttrString(errors.get(), "from_reply"));
    if (!error_factory_) return {};
  }
  PyRef exc = PyRef::steal(
      PyObject_CallFunctionObjArgs(error_factory_.get(), items[0], items[1], items[2], nullptr));
  if (!exc) return {};
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.get())), exc.get());
  return {};
}

// ---- the rest -----------------------------------------------------------------

bool ErlangLink::consume_time_slice(long percent) {
  long used = slice_used_.fetch_add(percent, std::memory_order_relaxed) + percent;
  if (used < 100) return false;
  slice_used_.store(0, std::memory_order_relaxed);
  return main_ && main_->requests_waiting();
}

void ErlangLink::close() {
  std::unique_lock<std::mutex> lock(mu_);
  closed_ = true;
  for (auto& [id, box] : boxes_)
    box->cv.notify_all();
  completions_cv_.notify_all();
  left_cv_.wait(lock, [&] { return inside_ == 0; });
}

bool ErlangLink::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

}  // namespace pyport
