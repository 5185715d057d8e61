// The environment a ProcessPool gives its workers.
#pragma once

#include <atomic>
#include <cstdint>

namespace crew::inline v0::detail {

inline constexpr const char* kWorkerFdEnv = "CREW_WORKER_FD";
inline constexpr const char* kWorkerNameEnv = "CREW_WORKER_NAME";
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

/// One worker's page: how many frames each side has sent on the channel so far. A reader looks
/// at the count before it asks the socket, so nobody spins on system calls. The counts are
/// hints: a frame is still read from the socket, and a wrong count only costs time.
struct WorkerPage {
  alignas(64) std::atomic<std::uint64_t> requests{0};  // written by the pool
  alignas(64) std::atomic<std::uint64_t> replies{0};   // written by the worker
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "shared between processes");
static_assert(sizeof(WorkerPage) <= kPoolPageSize);

/// The descriptor a worker talks to its pool on, or -1 when this is not a worker process. Read
/// once (serve() removes the variables so that the worker's own children are not workers).
int worker_socket_from_env() noexcept;

}  // namespace crew::inline v0::detail
