// The environment a ProcessPool gives its workers.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "ring.hpp"

namespace crew::inline v0::detail {

inline constexpr const char* kWorkerFdEnv = "CREW_WORKER_FD";
inline constexpr const char* kWorkerNameEnv = "CREW_WORKER_NAME";
/// Set (to the profile directory) when ProcessPoolOptions::heap_profiling is on.
inline constexpr const char* kWorkerHeapDirEnv = "CREW_WORKER_HEAP_DIR";
/// Besides the channel (CREW_WORKER_FD, always 3), a worker inherits the pool's doorbell (an
/// eventfd: one write wakes the supervisor) and the pool's shared page, read-only.
inline constexpr int kWorkerDoorbellFd = 4;
inline constexpr int kWorkerPageFd = 5;
/// And a page of its own, shared read-write with the pool.
inline constexpr int kWorkerOwnPageFd = 6;
inline constexpr std::size_t kPoolPageSize = 4096;

/// The page a pool shares with its workers. While either word is non-zero a worker does not ring
/// the doorbell after a reply: somebody will read it without being woken.
struct PoolPage {
  /// Threads of the pool's process reading replies themselves while they wait for one
  /// (ProcessPool "driving"). A worker that answers one of them looks for its next request for a
  /// while before it sleeps: a thread waiting on results is likely to send more at once.
  std::atomic<std::uint32_t> drivers{0};
  /// The supervisor is awake and will read the sockets before it sleeps again.
  std::atomic<std::uint32_t> supervisor_awake{0};
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "shared between processes");

/// One worker's shared memory: a ring each way, and what the worker tells the pool about
/// itself. The pool sends a wake frame on the socket when it finds either flag set.
struct WorkerPage {
  alignas(64) std::atomic<std::uint32_t> asleep{0};      // waiting in the socket for requests
  alignas(64) std::atomic<std::uint32_t> wants_room{0};  // waiting for room in `replies`
  Ring requests;                                         // pool -> worker
  Ring replies;                                          // worker -> pool
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "shared between processes");
inline constexpr std::size_t kWorkerPageSize = (sizeof(WorkerPage) + 4095) & ~std::size_t{4095};

/// The descriptor a worker talks to its pool on, or -1 when this is not a worker process. Read
/// once (serve() removes the variables so that the worker's own children are not workers).
int worker_socket_from_env() noexcept;

}  // namespace crew::inline v0::detail
