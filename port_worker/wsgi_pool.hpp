// The `_pyport_wsgi` builtin module: the thread pool that runs a WSGI app's
// requests (erlang._wsgi.WsgiAdapter) off the event loop.
//
// Pool(threads) keeps up to `threads` threads. submit(fn, arg, future) from
// the loop thread queues a job; a pool thread takes the GIL only to run
// fn(arg), and keeps it while more jobs are queued, so a burst of requests
// costs one GIL hand-over rather than one per request. Finished jobs wait in
// a list; the first one of a batch writes the pool's eventfd, which the loop
// watches (add_reader(fileno(), drain)): drain() sets every finished job's
// future in one loop callback. A job whose future is already done (the
// request was cancelled) is skipped.
//
// One slow request must not hold up the others. A job submitted while every
// awake thread is in a job wakes (or starts) another thread: the loop holds
// the GIL to submit, so those threads are blocked in the app or waiting for
// the GIL. Jobs queued behind a blocking one are rescued by check(), which
// the loop calls every millisecond or so while jobs wait: a thread inside
// the app while the loop holds the GIL let the GIL go, and if no job was
// taken since the last check, another thread takes the next one. Idle
// threads sleep on a condition variable with no timeout (and spin_us, 0 by
// default, is only spent right after a batch): an idle pool uses no CPU.
#pragma once

#include <Python.h>

namespace pyport {
namespace wsgi_module {

constexpr const char* kName = "_pyport_wsgi";

// For PyImport_AppendInittab, before Py_Initialize.
PyObject* init();

}  // namespace wsgi_module
}  // namespace pyport
