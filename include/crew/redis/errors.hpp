// Errors of crew::redis, the distributed task queue.
#pragma once

#include <string>

#include <crew/errors.hpp>

namespace crew::inline v0::redis {

/// Redis could not be reached, or stopped answering: connect failures, I/O errors, timeouts and
/// failed AUTH/SELECT. The message names the URL (never its password) and the reason.
class ConnectionError : public Error {
 public:
  explicit ConnectionError(const std::string& what) : Error(what) {}
};

}  // namespace crew::inline v0::redis
