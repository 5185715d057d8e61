// crew top: what the terminal view shows, parsed from `GET /api/monitor` (docs/monitor.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace crew::tool::top {

/// How a row's process last ended (`last_exit`).
struct LastExit {
  std::string reason;  ///< signal, exit, memory, timeout or stop
  std::optional<int> signal;
  std::optional<int> code;
  double time = 0;  ///< seconds since the epoch
};

/// One process of the service (`latest.workers[]`). Optional figures are `null` on the server.
struct Worker {
  std::string id;
  std::string kind;  ///< server or task
  std::optional<std::int64_t> pid;
  std::string state;
  double uptime_s = 0;
  std::uint64_t tasks = 0;
  std::uint64_t errors = 0;
  std::uint64_t restarts = 0;
  std::optional<double> tasks_per_s;
  std::optional<double> p99_s;
  std::optional<double> cpu_percent;
  std::optional<std::uint64_t> rss_bytes;
  std::optional<std::uint64_t> pss_bytes;
  bool leak_suspected = false;
  std::optional<LastExit> last_exit;
  std::vector<std::string> log;
};

/// `latest.totals`.
struct Totals {
  std::optional<double> requests_per_s, errors_per_s, p50_s, p99_s, tasks_per_s, cpu_percent;
  std::optional<std::uint64_t> queued, busy, workers, rss_bytes, restarts, connections;
};

/// What a sparkline needs of a history entry; `p99_s` is empty when no request finished.
struct Point {
  std::int64_t seq = 0;
  double requests_per_s = 0;
  std::optional<double> p99_s;
};

struct TopModel {
  std::string url;        ///< where the samples come from, for the title
  std::string status;     ///< the last action's answer or the last fetch's failure; empty: none
  std::int64_t seq = -1;  ///< of `latest`; -1 before the first sample
  double time = 0;
  std::string isolation, backend, version;
  double uptime_s = 0;
  Totals totals;
  std::vector<Worker> workers;
  std::vector<Point> history;  ///< oldest first, `latest` included
};

/// History entries kept: wider than any terminal's sparkline.
inline constexpr std::size_t kHistoryKept = 600;

/// Takes in an answer of `GET /api/monitor[?since=SEQ]`: `latest` replaces the sample shown,
/// `history` entries after the last one held are appended; a `latest` of null (a server that has
/// not taken its first sample) changes nothing. Throws std::runtime_error naming the field when
/// the answer is not a monitor sample (a wrong URL or an older server).
void apply_monitor(TopModel& model, const nlohmann::json& answer);

}  // namespace crew::tool::top
