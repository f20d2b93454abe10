// Warm pools (`warm_start => true`, docs/pools.md): a pool's workers are
// forked from a zygote that has already started Python, imported the
// pool's modules and run its init_code, so they share those pages
// copy-on-write and start without importing anything.
//
// Three kinds of process, each with one job:
//
//  - the zygote (`--warm-zygote`), one per pool, its own port: starts
//    Python, reads a venv's activation and the init_code from its stdin,
//    prepares (Worker::
//    prepare_warm), refuses if more than one thread runs (threads do not
//    survive a fork), listens on a unix socket in a private directory and
//    says "READY <path>" on its stdout. It exits at end of its stdin.
//  - the worker's port process (`--warm-from <path>`), the OS process of
//    each worker's own Erlang port: connects to the zygote, passes its
//    stdin, stdout and stderr (SCM_RIGHTS), holds none of them afterwards,
//    and exits with the worker's exact status, which it reads from the
//    connection. SIGTERM or SIGHUP (the node's reaper, the node gone) makes
//    it shut the connection down, which ends the worker.
//  - for each connection the zygote forks a keeper (keeper.hpp, the same
//    loop as every worker's) that forks the worker on the passed
//    descriptors. Being the worker's parent it gets its exact status and
//    is its subreaper; it sends the status to the port process, and ends
//    the worker when the connection closes (the port process is gone). It
//    does not die with the zygote: a zygote's death costs no running
//    worker, only the start of new ones until the pool's owner starts
//    another zygote.
//
// Why not a thinner design: a process's exit status goes only to its
// parent, and a subreaper catches only its own descendants, so the keeper
// must be an ancestor of the worker; the port's OS process cannot be (the
// worker is forked from the zygote), so the keeper sits between the two and
// reports over the connection that also tells it the port process is gone.
#pragma once

#include <string>

#include "options.hpp"
#include "worker.hpp"

namespace pyport {

// The zygote's life. Returns its exit status in the zygote; returns -1 in
// a forked worker, whose fds 0-2 are then its port's stdin and stdout and
// the pipe to its keeper, as after start_keeper(): the caller goes on as
// for any worker (limits, channel, worker.run()).
int run_warm_zygote(Worker& worker);

// A warm worker's port process. Never returns.
[[noreturn]] void run_warm_port(const std::string& socket_path);

}  // namespace pyport
