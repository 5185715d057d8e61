// QueueStats: reading crew_stats, quantiles of the latency histogram, the Prometheus text.
#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <crew/redis/errors.hpp>
#include <crew/redis/stats.hpp>

#include "stats_reader.hpp"

namespace crew::inline v0::redis {
namespace {

using std::chrono::milliseconds;

// The histogram's bucket bounds in ms; they must match LATENCY_BOUNDS in crew.lua.
constexpr std::array<std::int64_t, 16> kLatencyBounds{
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000};

std::uint64_t non_negative(long long v) {
  return v < 0 ? 0 : static_cast<std::uint64_t>(v);
}

void set_latency_field(LatencyHistogram& h, std::string_view field, std::uint64_t value) {
  if (field == "count") {
    h.count = value;
  } else if (field == "sum_ms") {
    h.sum = milliseconds(static_cast<milliseconds::rep>(value));
  } else if (field == "le:inf") {
    h.buckets.back().count = value;
  } else if (field.starts_with("le:")) {
    std::int64_t bound = 0;
    const std::string_view digits = field.substr(3);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), bound);
    if (ec != std::errc{} || end != digits.data() + digits.size()) return;
    for (auto& b : h.buckets) {
      if (b.le.count() == bound) b.count = value;
    }
  }
}

}  // namespace

milliseconds LatencyHistogram::quantile(double q) const {
  if (!(q >= 0.0 && q <= 1.0)) {
    throw std::invalid_argument(
        fmt::format("crew::redis::LatencyHistogram::quantile: q must be in 0..1, got {}", q));
  }
  std::uint64_t total = 0;
  for (const auto& b : buckets) total += b.count;
  if (total == 0) return milliseconds(0);
  // The rank of the q-th observation, 1-based; the bucket where the running count reaches it.
  const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(q * total + 0.5));
  std::uint64_t seen = 0;
  for (const auto& b : buckets) {
    seen += b.count;
    if (seen >= rank) return b.le;
  }
  return buckets.back().le;
}

QueueStats parse_queue_stats(const Reply& flat) {
  QueueStats s;
  for (const std::int64_t bound : kLatencyBounds)
    s.latency.buckets.push_back({milliseconds(bound)});
  s.latency.buckets.push_back({milliseconds::max()});
  const std::map<std::string_view, std::uint64_t QueueStats::*> fields{
      {"waiting", &QueueStats::waiting},     {"delayed", &QueueStats::delayed},
      {"active", &QueueStats::active},       {"dead_letters", &QueueStats::dead_letters},
      {"submitted", &QueueStats::submitted}, {"completed", &QueueStats::completed},
      {"failed", &QueueStats::failed},       {"retried", &QueueStats::retried},
      {"reclaimed", &QueueStats::reclaimed}, {"dead", &QueueStats::dead}};
  const auto& e = flat.elements();
  for (std::size_t i = 0; i + 1 < e.size(); i += 2) {
    const std::string& name = e[i].str();
    const std::uint64_t value = non_negative(e[i + 1].integer());
    if (name.starts_with("latency:")) {
      set_latency_field(s.latency, std::string_view(name).substr(8), value);
    } else if (auto it = fields.find(name); it != fields.end()) {
      s.*(it->second) = value;
    }
  }
  return s;
}

QueueStats read_queue_stats(Connection& connection, const std::string& prefix) {
  const Reply reply = connection.command({"FCALL_RO", "crew_stats", "1", prefix});
  if (reply.is_error()) {
    throw ConnectionError(connection.url().redacted() + ": crew_stats: " + reply.error());
  }
  return parse_queue_stats(reply);
}

std::string prometheus_text(const QueueStats& s, std::string_view queue) {
  // A queue name has no braces (QueueOptions::name); quotes and backslashes are escaped.
  std::string q;
  for (const char c : queue) {
    if (c == '"' || c == '\\') q += '\\';
    if (c == '\n') {
      q += "\\n";
      continue;
    }
    q += c;
  }
  std::string out;
  auto line = [&out](std::string_view text) {
    out += text;
    out += '\n';
  };
  line("# HELP crew_queue_jobs Jobs in the queue by state, now.");
  line("# TYPE crew_queue_jobs gauge");
  for (const auto& [state, n] : {std::pair{"waiting", s.waiting}, std::pair{"delayed", s.delayed},
                                 std::pair{"active", s.active}}) {
    line(fmt::format("crew_queue_jobs{{queue=\"{}\",state=\"{}\"}} {}", q, state, n));
  }
  line("# HELP crew_queue_dead_letters Entries in the queue's dead-letter stream.");
  line("# TYPE crew_queue_dead_letters gauge");
  line(fmt::format("crew_queue_dead_letters{{queue=\"{}\"}} {}", q, s.dead_letters));
  line("# HELP crew_queue_jobs_total Jobs by outcome since the queue was created.");
  line("# TYPE crew_queue_jobs_total counter");
  for (const auto& [outcome, n] :
       {std::pair{"submitted", s.submitted}, std::pair{"completed", s.completed},
        std::pair{"failed", s.failed}, std::pair{"retried", s.retried},
        std::pair{"reclaimed", s.reclaimed}, std::pair{"dead", s.dead}}) {
    line(fmt::format("crew_queue_jobs_total{{queue=\"{}\",outcome=\"{}\"}} {}", q, outcome, n));
  }
  line("# HELP crew_queue_latency_seconds End-to-end latency of completed jobs (Redis time).");
  line("# TYPE crew_queue_latency_seconds histogram");
  std::uint64_t cumulative = 0;
  for (const auto& b : s.latency.buckets) {
    cumulative += b.count;
    const std::string le = b.le == milliseconds::max()
                               ? std::string("+Inf")
                               : fmt::format("{}", static_cast<double>(b.le.count()) / 1000.0);
    line(fmt::format("crew_queue_latency_seconds_bucket{{queue=\"{}\",le=\"{}\"}} {}", q, le,
                     cumulative));
  }
  line(fmt::format("crew_queue_latency_seconds_sum{{queue=\"{}\"}} {}", q,
                   static_cast<double>(s.latency.sum.count()) / 1000.0));
  line(fmt::format("crew_queue_latency_seconds_count{{queue=\"{}\"}} {}", q, s.latency.count));
  return out;
}

}  // namespace crew::inline v0::redis
