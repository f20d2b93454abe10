// The per-request path of an HTTP connection (python_runtime/erlang/
// _http_conn.py's HttpConnection) in C++, for its common cases:
//   connection_data_received(conn, data)  HttpConnection.data_received
//     (an instancemethod: bound like a Python method): parser.feed(data);
//     a request's head (no lifespan state) becomes a _Request started as
//     HttpConnection._start does, its body pieces are queued and its end
//     marked as HttpConnection._event does; every other event goes to
//     conn._event(ev); then conn._after_events() unless there is nothing
//     for it to do (no upgrade, the request's timeout armed, one request,
//     no more body buffered than READ_HIGH).
//   request_done(conn, req)  HttpConnection.request_done(req) when the
//     request was the only one, ended well on a keep-alive connection with
//     nothing to log, unbuffer or recycle: the keep-alive deadline set;
//     else the Python method.
//   setup_connection(request_class, read_high)  _Request, READ_HIGH.
// The Python methods stay the reference: these take a case only when it
// is sure to be the common one, before changing anything.
#pragma once

#include <Python.h>

namespace pyport {
namespace http_connection {

// Adds the functions above to the _pyport_http module.
bool add_to(PyObject* module);

}  // namespace http_connection
}  // namespace pyport
