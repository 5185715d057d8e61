// What a Redis queue holds and has done: QueueStats, read by Queue::stats() and
// Worker::queue_stats(), and its Prometheus form for a /metrics endpoint.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace crew::inline v0::redis {

/// End-to-end latency of completed jobs: from when a job could first run (its submission, or
/// the end of its delay) to the moment Redis accepted its result, retries and reclaims
/// included. Both ends are Redis time, so client clocks never skew it. The buckets are fixed
/// (1 ms … 5 min, then the rest) so that every producer and worker adds into the same ones.
struct LatencyHistogram {
  struct Bucket {
    /// Upper bound, inclusive; milliseconds::max() for the last bucket.
    std::chrono::milliseconds le;
    std::uint64_t count = 0;  ///< jobs in this bucket alone (not cumulative)
  };
  std::vector<Bucket> buckets;  ///< ascending `le`, every fixed bucket present
  std::uint64_t count = 0;
  std::chrono::milliseconds sum{0};

  /// The upper bound of the bucket that holds quantile `q` (0..1): an estimate at most one
  /// bucket high. 0 ms when nothing was observed; throws std::invalid_argument outside 0..1.
  [[nodiscard]] std::chrono::milliseconds quantile(double q) const;
};

/// A snapshot of one queue, shared by every producer and worker of it.
struct QueueStats {
  // Jobs by state, now.
  std::uint64_t waiting = 0;       ///< in a priority stream, not started
  std::uint64_t delayed = 0;       ///< waiting for their delay or a retry's backoff
  std::uint64_t active = 0;        ///< running under a lease
  std::uint64_t dead_letters = 0;  ///< entries in the dead-letter stream
  // Counters since the queue was created.
  std::uint64_t submitted = 0;  ///< jobs created (a duplicate job_id is not counted)
  std::uint64_t completed = 0;  ///< results accepted
  std::uint64_t failed = 0;     ///< failed executions (each retried or dead-lettered)
  std::uint64_t retried = 0;    ///< failed executions put back for another attempt
  std::uint64_t reclaimed = 0;  ///< jobs taken from a worker that stopped renewing its lease
  std::uint64_t dead = 0;       ///< jobs dead-lettered
  LatencyHistogram latency;
};

/// Prometheus text exposition (format 0.0.4) of `stats`, every series labelled
/// `queue="<queue>"`: `crew_queue_jobs{state}` (gauge), `crew_queue_dead_letters` (gauge),
/// `crew_queue_jobs_total{outcome}` (counter) and `crew_queue_latency_seconds` (histogram).
[[nodiscard]] std::string prometheus_text(const QueueStats& stats, std::string_view queue);

}  // namespace crew::inline v0::redis
