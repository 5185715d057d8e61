// crew::redis (internal): how a job's error crosses Redis. A worker records the exception as a
// type name and a message (the job hash's `error_type` and `error`); a producer turns the pair
// back into the crew error type.
#pragma once

#include <exception>
#include <string>
#include <string_view>

namespace crew::inline v0::redis {

struct ErrorRecord {
  std::string type;  ///< "WorkerCrashed", "TimedOut", ... or the remote exception's type
  std::string message;
};

/// The record of a caught exception (worker side).
ErrorRecord record_of(const std::exception_ptr& error);

/// The crew exception for a record (producer side): WorkerCrashed, TimedOut, BadArguments,
/// Cancelled, MemoryLimitExceeded, or RemoteError carrying any other type and its message.
std::exception_ptr error_of(std::string_view job_id, const ErrorRecord& record);

/// `crew:{<queue>}:`; throws std::invalid_argument naming `field` for a name Redis keys cannot
/// carry.
std::string queue_prefix(std::string_view name, std::string_view field);

/// A fresh, random id for a producer or a worker: `<host>-<pid>-<random>`.
std::string process_unique_id();

}  // namespace crew::inline v0::redis
