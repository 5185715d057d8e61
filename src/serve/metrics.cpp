#include "metrics.hpp"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <sys/resource.h>

#include <crew/memory.hpp>
#include <crew/version.hpp>

namespace crew::serve_app {

using json = nlohmann::json;

namespace {

std::size_t bucket_of(double seconds) {
  std::size_t b = 0;
  while (b < kDurationBucketCount && seconds > kDurationBuckets[b]) ++b;
  return b;
}

}  // namespace

void Metrics::record(const std::string& route, int status, double seconds) {
  std::lock_guard lock(mutex);
  ++requests[{route, status}];
  ++buckets[bucket_of(seconds)];
  duration_sum += seconds;
  ++duration_count;
}

void Metrics::outcome(const std::string& outcome, const std::string& task, double seconds) {
  const bool error = outcome != "ok" && outcome != "submitted" && outcome != "abandoned";
  std::lock_guard lock(mutex);
  ++outcomes[outcome];
  TaskFigures& t = by_task[task];
  ++t.count;
  if (error) ++t.errors;
  ++t.buckets[bucket_of(seconds)];
}

std::optional<double> histogram_quantile(const std::uint64_t* buckets, double q) {
  std::uint64_t total = 0;
  for (std::size_t b = 0; b <= kDurationBucketCount; ++b) total += buckets[b];
  if (total == 0) return std::nullopt;
  const double rank = q * static_cast<double>(total);
  std::uint64_t below = 0;
  for (std::size_t b = 0; b < kDurationBucketCount; ++b) {
    if (static_cast<double>(below + buckets[b]) >= rank && buckets[b] > 0) {
      const double lo = b == 0 ? 0.0 : kDurationBuckets[b - 1];
      const double share = (rank - static_cast<double>(below)) / static_cast<double>(buckets[b]);
      return lo + (kDurationBuckets[b] - lo) * std::clamp(share, 0.0, 1.0);
    }
    below += buckets[b];
  }
  return kDurationBuckets[kDurationBucketCount - 1];  // in +Inf: the largest bound is all we know
}

void Metrics::fill(json& snapshot) {
  std::lock_guard lock(mutex);
  json requests_json = json::array();
  for (const auto& [key, n] : requests) requests_json.push_back({key.first, key.second, n});
  snapshot["http"] = {{"requests", std::move(requests_json)},
                      {"buckets", buckets},
                      {"sum", duration_sum},
                      {"count", duration_count},
                      {"tls_handshake_failures", tls_handshake_failures.load()}};
  snapshot["tasks"] = outcomes;
  json names = json::object();
  for (const auto& [name, t] : by_task) {
    names[name] = {{"count", t.count}, {"errors", t.errors}, {"buckets", t.buckets}};
  }
  snapshot["task_names"] = std::move(names);
  snapshot["lag"] = {{"last_s", static_cast<double>(lag_ns.load()) / 1e9},
                     {"max_s", static_cast<double>(lag_max_ns.load()) / 1e9}};
}

json process_figures() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  const double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                     static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  const MemoryUsage memory = memory_usage();
  // PSS makes the kernel walk every mapping: snapshots come several times a second (cluster
  // publishing, /metrics scrapes), the figure is wanted once a second.
  static std::mutex pss_mutex;
  static std::chrono::steady_clock::time_point pss_read{};
  static std::size_t pss_last = 0;
  std::size_t pss = 0;
  {
    std::lock_guard lock(pss_mutex);
    const auto now = std::chrono::steady_clock::now();
    if (now - pss_read >= std::chrono::seconds(1)) {
      pss_last = memory_usage({.pss = true}).pss.value_or(0);
      pss_read = now;
    }
    pss = pss_last;
  }
  return {{"rss_bytes", memory.rss},
          {"pss_bytes", pss},
          {"cpu_seconds", cpu},
          {"open_fds", memory.open_fds}};
}

namespace {

constexpr const char* kPoolCounters[] = {"completed", "failed", "cancelled", "timed_out",
                                         "crashed"};
constexpr const char* kPoolGauges[] = {"workers", "busy", "idle", "queued"};
// Stuck threads (thread isolation) and suspected leaks (process isolation), kept apart: a
// snapshot from a worker of an older crew lacks them.
constexpr const char* kOptionalPoolFigures[] = {"stuck", "stuck_limit", "stuck_total",
                                                "leaks_suspected", "leaking"};

template <typename T>
T get_or(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  return it != j.end() && !it->is_null() ? it->get<T>() : fallback;
}

}  // namespace

json merge_snapshots(const std::vector<json>& snapshots) {
  json all = {{"worker", "all"}, {"ready", false}, {"isolation", ""}};
  std::map<std::pair<std::string, int>, std::uint64_t> requests;
  std::vector<std::uint64_t> buckets(kDurationBucketCount + 1, 0);
  double sum = 0, cpu = 0, lag = 0, lag_max = 0, utilization = 0, start = 0, uptime = 0;
  std::uint64_t count = 0, connections = 0, rss = 0, fds = 0, wait_count = 0, run_count = 0,
                handshakes_failed = 0;
  std::map<std::string, std::uint64_t> outcomes, pool, stuck_tasks;
  for (const auto& s : snapshots) {
    const json& http = s.at("http");
    for (const auto& r : http.at("requests")) {
      requests[{r.at(0).get<std::string>(), r.at(1).get<int>()}] += r.at(2).get<std::uint64_t>();
    }
    for (std::size_t b = 0; b < buckets.size() && b < http.at("buckets").size(); ++b) {
      buckets[b] += http.at("buckets").at(b).get<std::uint64_t>();
    }
    sum += http.at("sum").get<double>();
    count += http.at("count").get<std::uint64_t>();
    connections += get_or<std::uint64_t>(http, "connections", 0);
    handshakes_failed += get_or<std::uint64_t>(http, "tls_handshake_failures", 0);
    for (const auto& [name, n] : s.at("tasks").items()) outcomes[name] += n.get<std::uint64_t>();
    const json& p = s.at("pool");
    for (const char* k : kPoolCounters) pool[k] += p.at(k).get<std::uint64_t>();
    for (const char* k : kPoolGauges) pool[k] += p.at(k).get<std::uint64_t>();
    for (const char* k : kOptionalPoolFigures) pool[k] += get_or<std::uint64_t>(p, k, 0);
    if (auto it = p.find("stuck_tasks"); it != p.end() && it->is_object()) {
      for (const auto& [name, n] : it->items()) stuck_tasks[name] += n.get<std::uint64_t>();
    }
    utilization += p.at("utilization").get<double>();
    wait_count += p.at("wait").at("count").get<std::uint64_t>();
    run_count += p.at("run").at("count").get<std::uint64_t>();
    rss += s.at("process").at("rss_bytes").get<std::uint64_t>();
    cpu += s.at("process").at("cpu_seconds").get<double>();
    fds += s.at("process").at("open_fds").get<std::uint64_t>();
    lag = std::max(lag, s.at("lag").at("last_s").get<double>());
    lag_max = std::max(lag_max, s.at("lag").at("max_s").get<double>());
    const double st = s.at("start_time_s").get<double>();
    start = start == 0 ? st : std::min(start, st);
    uptime = std::max(uptime, s.at("uptime_s").get<double>());
    all["ready"] = all["ready"].get<bool>() || s.at("ready").get<bool>();
    all["isolation"] = s.at("isolation");
  }
  json requests_json = json::array();
  for (const auto& [key, n] : requests) requests_json.push_back({key.first, key.second, n});
  all["http"] = {{"requests", std::move(requests_json)},
                 {"buckets", buckets},
                 {"sum", sum},
                 {"count", count},
                 {"connections", connections},
                 {"tls_handshake_failures", handshakes_failed}};
  all["tasks"] = outcomes;
  json pool_json = pool;
  pool_json["stuck_tasks"] = stuck_tasks;
  pool_json["utilization"] = snapshots.empty() ? 0.0 : utilization / double(snapshots.size());
  pool_json["wait"] = {{"count", wait_count}};
  pool_json["run"] = {{"count", run_count}};
  all["pool"] = std::move(pool_json);
  all["process"] = {{"rss_bytes", rss}, {"cpu_seconds", cpu}, {"open_fds", fds}};
  all["lag"] = {{"last_s", lag}, {"max_s", lag_max}};
  all["start_time_s"] = start;
  all["uptime_s"] = uptime;
  all["workers_reporting"] = snapshots.size();
  return all;
}

std::string render_prometheus(const std::vector<json>& snapshots, bool per_worker) {
  std::vector<json> series = snapshots;
  if (per_worker) series.push_back(merge_snapshots(snapshots));
  std::string out;
  // {worker="1",extra} or {extra} or nothing.
  auto labels = [&](const json& s, const std::string& extra = {}) {
    std::string l;
    if (per_worker) {
      const json& w = s.at("worker");
      l = fmt::format("worker=\"{}\"", w.is_string() ? w.get<std::string>() : w.dump());
    }
    if (!extra.empty()) l += (l.empty() ? "" : ",") + extra;
    return l.empty() ? l : "{" + l + "}";
  };
  auto family = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto gauge = [&](const char* name, const char* help, auto value_of) {
    family(name, "gauge", help);
    for (const auto& s : series) out += fmt::format("{}{} {}\n", name, labels(s), value_of(s));
  };

  family("crew_http_requests_total", "counter", "HTTP requests by route and status code.");
  for (const auto& s : series) {
    for (const auto& r : s.at("http").at("requests")) {
      out += fmt::format("crew_http_requests_total{} {}\n",
                         labels(s, fmt::format("route=\"{}\",code=\"{}\"",
                                               r.at(0).get<std::string>(), r.at(1).get<int>())),
                         r.at(2).get<std::uint64_t>());
    }
  }
  gauge("crew_http_connections", "Open client connections.",
        [](const json& s) { return get_or<std::uint64_t>(s.at("http"), "connections", 0); });
  family("crew_tls_handshake_failures_total", "counter",
         "TLS handshakes that failed or timed out (with --tls-cert): each cost its connection.");
  for (const auto& s : series) {
    out += fmt::format("crew_tls_handshake_failures_total{} {}\n", labels(s),
                       get_or<std::uint64_t>(s.at("http"), "tls_handshake_failures", 0));
  }
  family("crew_http_request_duration_seconds", "histogram",
         "Time from request headers to response.");
  for (const auto& s : series) {
    const json& http = s.at("http");
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b <= kDurationBucketCount; ++b) {
      cumulative += http.at("buckets").at(b).get<std::uint64_t>();
      const std::string le =
          b < kDurationBucketCount ? fmt::format("{}", kDurationBuckets[b]) : "+Inf";
      out += fmt::format("crew_http_request_duration_seconds_bucket{} {}\n",
                         labels(s, fmt::format("le=\"{}\"", le)), cumulative);
    }
    out += fmt::format("crew_http_request_duration_seconds_sum{} {}\n", labels(s),
                       http.at("sum").get<double>());
    out += fmt::format("crew_http_request_duration_seconds_count{} {}\n", labels(s),
                       http.at("count").get<std::uint64_t>());
  }
  family("crew_tasks_total", "counter", "Tasks run through HTTP, by outcome.");
  for (const auto& s : series) {
    for (const auto& [name, n] : s.at("tasks").items()) {
      out += fmt::format("crew_tasks_total{} {}\n", labels(s, fmt::format("outcome=\"{}\"", name)),
                         n.get<std::uint64_t>());
    }
  }
  auto pool_gauge = [&](const char* name, const char* key, const char* help) {
    gauge(name, help, [key](const json& s) { return s.at("pool").at(key).get<std::uint64_t>(); });
  };
  pool_gauge("crew_pool_workers", "workers", "Pool threads or worker processes alive.");
  pool_gauge("crew_pool_busy", "busy", "Workers running a task.");
  pool_gauge("crew_pool_idle", "idle", "Workers waiting for a task.");
  pool_gauge("crew_pool_queued", "queued", "Tasks waiting for a worker.");
  gauge("crew_pool_stuck",
        "Tasks running past their timeout that ignore their stop request, each holding a thread "
        "(thread isolation).",
        [](const json& s) { return get_or<std::uint64_t>(s.at("pool"), "stuck", 0); });
  gauge("crew_pool_stuck_limit", "Replacement threads the pool may add for stuck tasks.",
        [](const json& s) { return get_or<std::uint64_t>(s.at("pool"), "stuck_limit", 0); });
  family("crew_pool_stuck_total", "counter", "Tasks that ever got stuck past their timeout.");
  for (const auto& s : series) {
    out += fmt::format("crew_pool_stuck_total{} {}\n", labels(s),
                       get_or<std::uint64_t>(s.at("pool"), "stuck_total", 0));
  }
  family("crew_pool_leaks_suspected_total", "counter",
         "Suspected memory leaks that began: a worker process whose memory floor kept rising "
         "(process isolation's leak watch).");
  for (const auto& s : series) {
    out += fmt::format("crew_pool_leaks_suspected_total{} {}\n", labels(s),
                       get_or<std::uint64_t>(s.at("pool"), "leaks_suspected", 0));
  }
  gauge("crew_pool_leaking_workers", "Worker processes whose memory floor is rising now.",
        [](const json& s) { return get_or<std::uint64_t>(s.at("pool"), "leaking", 0); });
  gauge("crew_pool_utilization", "Share of pool capacity spent running tasks.",
        [](const json& s) { return s.at("pool").at("utilization").get<double>(); });
  family("crew_pool_tasks_total", "counter", "Tasks finished by the pool, by outcome.");
  for (const auto& s : series) {
    for (const char* k : kPoolCounters) {
      out +=
          fmt::format("crew_pool_tasks_total{} {}\n", labels(s, fmt::format("outcome=\"{}\"", k)),
                      s.at("pool").at(k).get<std::uint64_t>());
    }
  }
  for (const auto& [name, key] :
       {std::pair{"crew_pool_wait_seconds", "wait"}, std::pair{"crew_pool_run_seconds", "run"}}) {
    family(name, "summary", key == std::string_view("wait") ? "Task wait time." : "Task run time.");
    for (const auto& s : series) {
      const json& l = s.at("pool").at(key);
      for (const auto& [q, field] :
           {std::pair{"0.5", "p50_s"}, std::pair{"0.9", "p90_s"}, std::pair{"0.99", "p99_s"}}) {
        if (l.contains(field)) {
          out += fmt::format("{}{} {}\n", name, labels(s, fmt::format("quantile=\"{}\"", q)),
                             l.at(field).get<double>());
        }
      }
      out += fmt::format("{}_count{} {}\n", name, labels(s), l.at("count").get<std::uint64_t>());
    }
  }
  gauge("process_resident_memory_bytes", "Resident memory of the process.",
        [](const json& s) { return s.at("process").at("rss_bytes").get<std::uint64_t>(); });
  family("process_cpu_seconds_total", "counter", "User and system CPU time of the process.");
  for (const auto& s : series) {
    out += fmt::format("process_cpu_seconds_total{} {}\n", labels(s),
                       s.at("process").at("cpu_seconds").get<double>());
  }
  gauge("process_open_fds", "Open file descriptors.",
        [](const json& s) { return s.at("process").at("open_fds").get<std::uint64_t>(); });
  gauge("process_start_time_seconds", "Start time since the Unix epoch (the earliest).",
        [](const json& s) { return s.at("start_time_s").get<double>(); });
  gauge("crew_event_loop_lag_seconds", "How late the I/O loop's 100 ms timer last fired.",
        [](const json& s) { return s.at("lag").at("last_s").get<double>(); });
  gauge("crew_event_loop_lag_max_seconds", "Largest such lateness since start.",
        [](const json& s) { return s.at("lag").at("max_s").get<double>(); });
  gauge("crew_ready", "1 while the server accepts tasks.",
        [](const json& s) { return s.at("ready").get<bool>() ? 1 : 0; });
  return out;
}

json stats_json(const json& s) {
  auto summary = [](const json& l) {
    json out = {{"count", l.at("count")}};
    for (const char* k : {"p50", "p90", "p99", "max"}) {
      const std::string field = std::string(k) + "_s";
      if (l.contains(field)) out[std::string(k) + "_ms"] = l.at(field).get<double>() * 1e3;
    }
    return out;
  };
  const json& p = s.at("pool");
  json pool = {{"isolation", s.at("isolation")},
               {"utilization", p.at("utilization")},
               {"wait", summary(p.at("wait"))},
               {"run", summary(p.at("run"))}};
  for (const char* k : kPoolGauges) pool[k] = p.at(k);
  for (const char* k : kPoolCounters) pool[k] = p.at(k);
  for (const char* k : kOptionalPoolFigures) pool[k] = get_or<std::uint64_t>(p, k, 0);
  pool["stuck_tasks"] = p.contains("stuck_tasks") ? p.at("stuck_tasks") : json::object();
  json requests = json::array();
  for (const auto& r : s.at("http").at("requests")) {
    requests.push_back({{"route", r.at(0)}, {"code", r.at(1)}, {"count", r.at(2)}});
  }
  json out = {{"version", CREW_VERSION_STRING},
              {"uptime_s", s.at("uptime_s")},
              {"ready", s.at("ready")},
              {"pool", std::move(pool)},
              {"http",
               {{"requests", std::move(requests)},
                {"count", s.at("http").at("count")},
                {"connections", get_or<std::uint64_t>(s.at("http"), "connections", 0)},
                {"tls_handshake_failures",
                 get_or<std::uint64_t>(s.at("http"), "tls_handshake_failures", 0)}}},
              {"tasks", s.at("tasks")},
              {"process", s.at("process")},
              {"event_loop_lag_ms",
               {{"last", s.at("lag").at("last_s").get<double>() * 1e3},
                {"max", s.at("lag").at("max_s").get<double>() * 1e3}}}};
  if (s.contains("pid")) out["pid"] = s.at("pid");
  if (s.contains("workers_reporting")) out["workers_reporting"] = s.at("workers_reporting");
  return out;
}

}  // namespace crew::serve_app
