// The builtin module `_erlang`: the primitives the Python `erlang` package
// (python_runtime/erlang) builds its public API on. Its functions reach the
// worker through the module's state, bound once the worker is running; an
// unbound module (plain Python, the C++ tests) raises RuntimeError instead.
#pragma once

#include "erlang_link.hpp"

namespace pyport {

// Before Py_Initialize: makes `import _erlang` work. False if it failed.
bool register_erlang_module();
// With the GIL: binds the module to the worker's link. False with a Python
// exception set if the module cannot be imported.
bool bind_erlang_module(ErlangLink* link);

}  // namespace pyport
