// The `_pyport_http` builtin module: HTTP/1.1 request parsing for the
// worker's HTTP server (python_runtime/erlang/_http.py), on Debian's
// libhttp-parser (docs/http.md says why that library).
//
// A Parser is fed the bytes a connection reads and returns what they
// complete, in order, as tuples the server turns into ASGI messages:
//   (HEAD, scope, keep_alive, expect_continue, content_length)
//                                                   a request's head
//   (BODY, bytes)                                   a piece of its body
//   (END,)                                          its end
//   (ERROR, status, reason)                         the stream is broken:
//                                                   answer status, close
// `scope` is the request's ASGI http scope: a copy of the Parser's `scope`
// template (the connection's fields) with method, path (percent- and
// UTF-8-decoded), raw_path and query_string (bytes), headers (a list of
// (name, value) bytes pairs, names lower-cased, values trimmed),
// http_version and a new extensions dict. Limits (request line, header count and bytes,
// body bytes) are checked here, so an oversized request never builds
// Python objects. The smuggling cases libhttp-parser refuses
// (Content-Length with Transfer-Encoding, repeated Content-Length, a bad
// chunk size, Transfer-Encoding not ending in chunked) become ERROR 400.
#pragma once

#include <Python.h>

namespace pyport {
namespace http_module {

constexpr const char* kName = "_pyport_http";

// For PyImport_AppendInittab, before Py_Initialize.
PyObject* init();

// response_head(status, reason, headers) as the module's function computes
// it: (head, content_length, flags), or null with an exception set.
PyObject* response_head(PyObject* status, PyObject* reason, PyObject* headers);

}  // namespace http_module
}  // namespace pyport
