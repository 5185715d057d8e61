// crew::redis (internal): QueueStats from the crew_stats function.
#pragma once

#include <string>

#include <crew/redis/stats.hpp>

#include "connection.hpp"

namespace crew::inline v0::redis {

/// FCALL_RO crew_stats on `connection` for the queue under `prefix`. Throws ConnectionError
/// (I/O, or an error reply such as LOADING) naming the URL.
QueueStats read_queue_stats(Connection& connection, const std::string& prefix);

/// QueueStats from crew_stats' flat `{name, value, ...}` reply; names it does not know are
/// skipped, so an older build reads a newer library's reply.
QueueStats parse_queue_stats(const Reply& flat);

}  // namespace crew::inline v0::redis
