// The environment a ProcessPool gives its workers.
#pragma once

namespace crew::inline v0::detail {

inline constexpr const char* kWorkerFdEnv = "CREW_WORKER_FD";
inline constexpr const char* kWorkerNameEnv = "CREW_WORKER_NAME";
/// The descriptor a worker talks to its pool on, or -1 when this is not a worker process. Read
/// once (serve() removes the variables so that the worker's own children are not workers).
int worker_socket_from_env() noexcept;

}  // namespace crew::inline v0::detail
