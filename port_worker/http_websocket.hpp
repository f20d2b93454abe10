// The `_pyport_ws` builtin module: RFC 6455 framing for the worker's HTTP
// server (python_runtime/erlang/_websocket.py), on Debian's libwslay.
//
// A Session is the server side of one upgraded connection. It owns a
// wslay event context (freed with the Session) and never touches the
// socket: the bytes read are fed in, the bytes to write come back.
//   feed(data) -> list of events, in order:
//     (TEXT, str)               a whole text message (fragments joined,
//                               UTF-8 checked: invalid -> close 1007)
//     (BINARY, bytes)           a whole binary message
//     (CLOSE, code, reason)     the peer's close frame (code 1005: none)
//   send_text(str) / send_bytes(bytes) / close(code, reason) / ping(payload)
//                             -> bytes to write
//   output() -> bytes wslay queued itself (pongs, the close reply, the
//               close of a protocol error), to write after every feed.
// Session(max_message_size, deflate=None): deflate, when the handshake
// agreed permessage-deflate (RFC 7692, negotiated by _websocket.py), is
// (server_no_context_takeover, server_max_window_bits): then libwslay
// lets RSV1 through, messages with it are inflated here with zlib (the
// inflated size bounded by max_message_size: above -> close 1009; bad
// data -> 1002) and messages of 64 bytes or more are sent deflated.
// wslay enforces masking of client frames (unmasked -> close 1002), control
// frame rules, and the maximum message size (-> close 1009); pings are
// answered with pongs.
#pragma once

#include <Python.h>

namespace pyport {
namespace ws_module {

constexpr const char* kName = "_pyport_ws";

// For PyImport_AppendInittab, before Py_Initialize.
PyObject* init();

}  // namespace ws_module
}  // namespace pyport
