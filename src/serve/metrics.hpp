// What `crew serve` counts, and how /metrics and /api/stats present it. A server takes a
// snapshot of its figures as JSON; in a cluster every worker publishes its snapshot (through
// crew::ClusterWorker) so that any worker can render the whole cluster: one series per worker
// plus the totals.
#pragma once

#include <atomic>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace crew::serve_app {

/// Request-duration buckets (seconds) of the Prometheus histogram.
inline constexpr double kDurationBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,    0.25,  0.5,    1,     2.5,  5,     10};
inline constexpr std::size_t kDurationBucketCount = std::size(kDurationBuckets);

/// One task name's figures: requests answered, how many were errors, and their durations.
struct TaskFigures {
  std::uint64_t count = 0;
  std::uint64_t errors = 0;
  std::uint64_t buckets[kDurationBucketCount + 1] = {};  // last one: +Inf
};

/// Request and task counters of one server.
/// Thread safety: all members are atomics or guarded by `mutex`.
struct Metrics {
  std::mutex mutex;
  std::map<std::pair<std::string, int>, std::uint64_t> requests;  // (route, status) -> count
  std::map<std::string, std::uint64_t> outcomes;                  // task outcome -> count
  std::map<std::string, TaskFigures> by_task;                     // task name -> figures
  std::uint64_t buckets[kDurationBucketCount + 1] = {};           // last one: +Inf
  double duration_sum = 0;
  std::uint64_t duration_count = 0;
  std::atomic<std::int64_t> lag_ns{0};
  std::atomic<std::int64_t> lag_max_ns{0};
  std::atomic<std::uint64_t> tls_handshake_failures{0};

  void record(const std::string& route, int status, double seconds);
  /// A task request answered with `outcome` (a crew_tasks_total label) after `seconds`. It is an
  /// error unless ok, submitted or abandoned (the client left: no fault of the task).
  void outcome(const std::string& outcome, const std::string& task, double seconds);
  /// The HTTP and task part of a snapshot: "http", "tasks", "task_names", "lag".
  void fill(nlohmann::json& snapshot);
};

/// Resident memory (RSS, and PSS read at most once a second), CPU time and open descriptors of
/// this process: a snapshot's "process".
nlohmann::json process_figures();

/// The `q` quantile (0..1) of a request-duration histogram (kDurationBuckets, +Inf last), in
/// seconds, interpolated within its bucket; nullopt for an empty histogram.
std::optional<double> histogram_quantile(const std::uint64_t* buckets, double q);

/// The totals of several snapshots, in the same shape (worker "all"): counters, histograms and
/// gauges add up, lag is the largest, utilisation the mean; latency quantiles do not add up and
/// are left out (their counts are kept).
nlohmann::json merge_snapshots(const std::vector<nlohmann::json>& snapshots);

/// Prometheus text format 0.0.4. One snapshot and `per_worker` false: plain series. Otherwise
/// every series carries worker="<id>", and the totals worker="all".
std::string render_prometheus(const std::vector<nlohmann::json>& snapshots, bool per_worker);

/// /api/stats for one snapshot.
nlohmann::json stats_json(const nlohmann::json& snapshot);

}  // namespace crew::serve_app
