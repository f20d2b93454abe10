// The ASGI `send` and `receive` callables of one HTTP request, in C++
// (python_runtime/erlang/_http_request.py's _Request is their state).
//
// Send(req)(message) and Receive(req)() handle the common cases without
// running Python: a whole `http.response.start` (no hooks), a whole body
// in one `http.response.body` on a keep-alive connection, a receive()
// whose body is already read. They return an awaitable that is already
// done (its `__await__` is itself, its first step returns the result).
// Every other case, and any message the fast path cannot take as it is
// (not a dict, a bad status, bad headers: their errors are the Python
// path's), returns the coroutine req._send_slow(message) /
// req._receive_slow(), so the rules and the error texts stay in one place.
// The fast path changes nothing on the request before it is sure to
// complete.
#pragma once

#include <Python.h>

namespace pyport {
namespace http_exchange {

// Adds Send, Receive and setup(reasons) to the _pyport_http module.
bool add_to(PyObject* module);

}  // namespace http_exchange
}  // namespace pyport
