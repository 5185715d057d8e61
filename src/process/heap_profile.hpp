// Heap profiles of worker processes (ProcessPoolOptions::heap_profiling), both sides (internal).
//
// The pool preloads jemalloc into its workers with sampling on. A worker installs a SIGUSR2
// handler before it tells the pool it is ready; the handler hands the request to a thread of its
// own through a pipe, so a worker busy with a task still answers. The pool asks with
// pidfd_send_signal and a sequence number in si_value; a signal sent by hand carries none. The
// thread writes the profile under a temporary name and renames it: the pool waits for the final
// name to appear (or a "<name>.error" file saying why it could not be written), and the worker
// says on stdout where it wrote it, so the pool's log shows profiles taken by hand too.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <sys/types.h>

#include <crew/process/pool.hpp>

#include "spawn.hpp"
#include "worker_env.hpp"

namespace crew::inline v0::detail {

/// For the pool's constructor: resolves options.heap_profile_dir (to an absolute path; throws
/// std::invalid_argument unless it is a writable directory), finds libjemalloc.so.2 (throws
/// std::invalid_argument naming the Debian package when it is missing) and adds LD_PRELOAD,
/// MALLOC_CONF and kWorkerHeapDirEnv to the workers' environment `env` ("KEY=value").
void enable_heap_profiling(ProcessPoolOptions& options, std::vector<std::string>& env);

/// A worker found by name, with a pidfd of the caller's own.
struct HeapTarget {
  std::string name;
  pid_t pid = -1;
  UniqueFd pidfd;
};

/// The pool's side of ProcessPool::heap_profile: signals `target` and waits for its profile.
std::string take_heap_profile(const ProcessPoolOptions& options, HeapTarget target,
                              std::chrono::milliseconds timeout);

/// The worker's side, from serve() before it reports ready: when the pool asked for heap
/// profiles, blocks SIGUSR2 in this thread (threads it starts inherit that), installs the handler
/// and starts the thread that writes profiles. Returns false, having printed why, when that fails.
bool serve_heap_profiles(const char* worker_name);

}  // namespace crew::inline v0::detail
