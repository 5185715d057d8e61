// The monitor behind /dashboard, `crew top`, /api/monitor and /api/events (docs/monitor.md).
// Once a second the server hands it its snapshots (its own and, in a cluster, its peers'); the
// monitor turns them into a sample: rates and quantiles over the second, one row per process,
// one per task name. It keeps an hour of compact samples for the charts and the last minute of
// snapshots, so that /metrics?seq= and /api/stats?seq= can render exactly what a sample shows.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace crew::serve_app {

/// One snapshot per server (Server::snapshot()): this one's and its cluster peers'.
using Snapshots = std::vector<nlohmann::json>;

/// A full sample (docs/monitor.md) from this second's snapshots, the ones a second before (for
/// rates; null: none yet) and the ones a minute before (per-task quantiles over the minute;
/// null: since start). `interval_s` is the time between `now` and `before`.
nlohmann::json make_sample(const Snapshots& now, const Snapshots* before,
                           const Snapshots* minute_ago, double interval_s, std::uint64_t seq,
                           double wall_time);

/// What the charts need of a full sample: seq, time, totals and each row's CPU and memory.
nlohmann::json compact_sample(const nlohmann::json& full);

/// Thread safety: every member may be called from any thread.
class Monitor {
 public:
  static constexpr std::size_t kHistory = 3600;        ///< compact samples kept: an hour
  static constexpr std::size_t kKeptSnapshots = 60;    ///< snapshots kept for ?seq=
  static constexpr std::size_t kMonitorHistory = 120;  ///< /api/monitor's default history

  /// Adds the sample of `snapshots`, taken at `wall_time` (Unix seconds). Its seq is that second
  /// (one more than the last when the clock has not moved on), so cluster workers number the
  /// same second alike and a stream can resume on any of them. Returns the stream's event.
  std::shared_ptr<const std::string> add(Snapshots snapshots, double wall_time,
                                         std::chrono::steady_clock::time_point now);

  /// GET /api/monitor: {"latest": full sample, "history": compact samples after `since`, at
  /// most `max`}. Before the first sample: latest is null, history empty.
  [[nodiscard]] std::string monitor_json(std::optional<std::uint64_t> since, std::size_t max) const;
  /// The start of an event stream: the retry interval and an `event: history` with the compact
  /// samples after `since` (all kept, when `since` is not one this monitor can continue from),
  /// at most `max`.
  [[nodiscard]] std::string stream_start(std::optional<std::uint64_t> since, std::size_t max) const;
  /// The snapshots behind sample `seq`, while kept.
  [[nodiscard]] std::optional<Snapshots> snapshots(std::uint64_t seq) const;

 private:
  struct Entry {
    std::uint64_t seq;
    std::string compact;  // JSON text
  };
  struct Kept {
    std::uint64_t seq;
    std::chrono::steady_clock::time_point at;
    Snapshots snapshots;
  };
  // Compact samples after `since` (all when `since` is unknown), at most `max`: a JSON array.
  std::string history_after(std::optional<std::uint64_t> since, std::size_t max) const;

  mutable std::mutex mutex_;
  std::deque<Entry> history_;
  std::deque<Kept> kept_;
  std::string latest_;  // the newest full sample, JSON text
};

}  // namespace crew::serve_app
