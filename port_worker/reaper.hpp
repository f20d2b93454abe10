// `pyport_worker --reaper`: the node's helper that kills worker process
// trees without the node opening a descriptor or a shell to do it
// (pyport_reaper.erl opens it once, at startup).
//
// It reads commands, one per line, on stdin:
//
//   w <Id> <Pid>   watch: Pid is the OS process of a port (a worker's
//                  keeper); a pidfd for it is taken now, so a later kill
//                  can never reach another process that reused the pid
//   k <Id>         kill: SIGCONT then SIGTERM to that keeper, which kills
//                  the worker and everything it started (keeper.hpp);
//                  then forget it
//   x <Id>         SIGKILL that process, then forget it
//   f <Id>         forget it
//
// It writes nothing, and exits at end of input. Where the kernel has no
// pidfd, the pid's start time (/proc/<pid>/stat) stands in for it.
#pragma once

namespace pyport {

// Runs the helper until end of input; returns the exit status.
int run_reaper();

}  // namespace pyport
