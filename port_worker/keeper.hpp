// The keeper: the process the port owner started, kept as the parent of
// every worker, sandboxed or not.
//
// start_keeper() forks. The child goes on as the worker; the parent (the
// port's OS process, whose exit status the owner sees) becomes the keeper,
// a small trusted loop that runs no Python and holds no descriptor of the
// frame channel:
//
//  - it is PR_SET_CHILD_SUBREAPER, so whatever the worker forks, and whatever
//    those children leave behind (a double-forked setsid daemon too), is
//    reparented to it, never to init;
//  - when the worker exits, it kills every remaining descendant (the
//    worker's process group, then each process reparented to it, until none
//    is left), reaps them, removes the sandbox's working directory if any,
//    and exits with the worker's exact status (a signal is re-raised). So a
//    child that outlives the worker can never keep the port's pipes open;
//  - SIGTERM or SIGHUP (from the node's reaper, or the parent-death signal
//    when the node goes) make it kill the worker first, then do the same;
//  - its own fds 0-2 are /dev/null. The worker's fd 2 starts as a pipe to
//    the keeper, which copies what arrives there (early start errors, fatal
//    crash reports) to the node's stderr, with control bytes replaced and a
//    rate limit, when that stderr is a file or a pipe; a terminal is never
//    kept. The worker never holds the node's stderr: it cannot reach the
//    node's terminal.
//
// The keeper and the worker are in a session of their own, without a
// controlling terminal; the worker leads its own process group.
#pragma once

#include <sys/types.h>

#include <string>

namespace pyport {

// What a sandbox adds to its keeper's loop (sandbox.cpp): called in the
// keeper, which stays privileged and outside the sandbox.
class KeeperHooks {
 public:
  virtual ~KeeperHooks() = default;
  // A descriptor the keeper keeps open and polls for the hooks (-1: none,
  // or no more): on_readable() when it is readable or closed.
  virtual int fd() const { return -1; }
  virtual void on_readable() {}
  // Called about once a second while the worker runs: why the worker must
  // be ended (the keeper kills it and says why on stderr), or "".
  virtual std::string check() { return ""; }
  // Once the worker and all its descendants are gone.
  virtual void after_worker() {}
  // Whether the keeper ends the worker when its own parent dies (a warm
  // worker's keeper outlives the pool's zygote, its parent: zygote.hpp).
  virtual bool dies_with_parent() const { return true; }
  // Last thing before the keeper exits as the worker did (`status` from
  // waitpid): a warm worker's keeper tells its port process (zygote.hpp).
  virtual void on_exit(int /*status*/) {}
};

// Forks the worker off the calling process, which must be single-threaded.
// Returns only in the worker: an empty string, or why no worker could be
// started (the caller then exits with an error; no keeper exists). The
// calling process becomes the keeper and never returns; its exit status
// is the worker's.
//
// `workdir`: a directory to remove (without following links) once the
// worker and all its descendants are gone; empty for none.
//
// A caller that made a pid namespace (unshare(CLONE_NEWPID)) before the
// call gets the worker as that namespace's init.
//
// `hooks` (may be null) stay the keeper's for its whole life.
std::string start_keeper(const std::string& workdir, KeeperHooks* hooks = nullptr);

// In the worker, after it forked again (sandbox.cpp: a relay, a pid
// namespace's init): its parent, as it sees it, is the process whose death
// die_with_keeper() watches from now on.
void keeper_is_now(pid_t parent);

// In the worker: sets the parent-death signal (SIGKILL when the keeper
// dies) again, as a change of uid clears it; false if the keeper is gone
// already (the worker should exit).
bool die_with_keeper();

// Exits as a waited-for process did (`status` from waitpid): the same exit
// code, or death by the same signal, re-raised without a core dump. The
// keeper and the sandbox's relay end this way, so the port owner sees the
// worker's own status.
[[noreturn]] void exit_as(int status);

}  // namespace pyport
