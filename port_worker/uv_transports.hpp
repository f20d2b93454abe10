// The `_pyport_transports` builtin module: the hot paths of ErlangEventLoop's
// socket and datagram transports (python_runtime/erlang/_transports.py).
//
// The transports are asyncio's selector transports (so close, abort,
// write_eof, flow control, sendfile and TLS keep the standard library's
// semantics) whose per-event methods are replaced by C++: reading
// (recv/recvfrom straight on the descriptor, data_received or
// get_buffer/buffer_updated), writing (send, then a buffer of the caller's
// bytes objects flushed with writev), sendto with cached socket addresses.
// Readiness still comes from the loop's libuv polls (loop._add_reader /
// _add_writer). Anything unusual (a backlog of datagrams, a non-IP datagram
// socket, an address to resolve) takes asyncio's own Python path.
#pragma once

#include <Python.h>

namespace pyport {
namespace transports_module {

constexpr const char* kName = "_pyport_transports";

// For PyImport_AppendInittab, before Py_Initialize.
PyObject* init();

}  // namespace transports_module
}  // namespace pyport
