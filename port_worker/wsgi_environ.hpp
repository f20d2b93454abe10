// The PEP 3333 environ of one request, built from its ASGI scope in C++
// (`_pyport_wsgi.environ`, used by erlang._wsgi on the pool thread), and
// start_response's status and headers made ASGI's (`response_start`).
//
// environ(scope, wsgi_input, mount, base) -> dict: a copy of `base` (the
// constant wsgi.* keys) plus REQUEST_METHOD, SCRIPT_NAME (root_path),
// PATH_INFO (raw_path percent-decoded, as latin-1, without the mount or
// root_path prefix), QUERY_STRING, SERVER_NAME/PORT, SERVER_PROTOCOL,
// REMOTE_ADDR/PORT (when the scope has a client), wsgi.url_scheme,
// wsgi.input, wsgi.errors (sys.stderr now), CONTENT_TYPE, CONTENT_LENGTH and
// an HTTP_* key per header (repeats joined with ",", cookies with ";";
// names with "_" dropped, as gunicorn does, since "X_A" would pass for
// "X-A"). Header names and values must be bytes (TypeError otherwise).
#pragma once

#include <Python.h>

namespace pyport {
namespace wsgi_environ {

// Interns the key strings; false with a Python exception set.
bool init();

// The module function (METH_FASTCALL).
PyObject* environ(PyObject* module, PyObject* const* args, Py_ssize_t nargs);

// response_start(status, headers) -> (code, [(name, value), ...]): the
// other direction, start_response's arguments as ASGI's http.response.start
// wants them. status: a str starting with 3 ASCII digits (ValueError
// otherwise); headers: (str, str) pairs (TypeError otherwise), encoded
// latin-1 (UnicodeEncodeError otherwise), hop-by-hop ones dropped, repeats
// kept in order.
PyObject* response_start(PyObject* module, PyObject* const* args, Py_ssize_t nargs);

}  // namespace wsgi_environ
}  // namespace pyport
