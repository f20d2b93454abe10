// The `_pyport_http` builtin module: HTTP/1.1 request parsing for the
// worker's HTTP server (python_runtime/erlang/_http.py), on Debian's
// libhttp-parser (docs/http.md says why that library).
//
// A Parser is fed the bytes a connection reads and returns what they
// complete, in order, as tuples the server turns into ASGI messages:
//   (HEAD, method, raw_path, query_string, headers, http_version,
//    keep_alive, expect_continue, content_length)   a request's head
//   (BODY, bytes)                                   a piece of its body
//   (END,)                                          its end
//   (ERROR, status, reason)                         the stream is broken:
//                                                   answer status, close
// Header names come lower-cased, names and values as bytes, values
// without surrounding whitespace; query_string and raw_path are bytes
// (ASGI types them so). Limits (request line, header count and bytes,
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

}  // namespace http_module
}  // namespace pyport
