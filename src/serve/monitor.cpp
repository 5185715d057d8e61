#include "monitor.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include <crew/version.hpp>

#include "metrics.hpp"

namespace crew::serve_app {

using json = nlohmann::json;

namespace {

// Figures are rounded before they are sent: full double precision would triple an hour of
// history for digits no chart shows.
double rounded(double x, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(x * scale) / scale;  // dividing gives the double nearest the decimal
}
json seconds_or_null(std::optional<double> s) {
  return s ? json(rounded(*s, 6)) : json(nullptr);
}

template <typename T>
T get_or(const json& j, const char* key, T fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && !it->is_null() ? it->get<T>() : fallback;
}

// A member that may be missing (a snapshot from an older crew), by reference: loops over a
// temporary from json::value() would outlive it.
const json& member(const json& j, const char* key, const json& fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && !it->is_null() ? *it : fallback;
}
const json kNoObject = json::object();
const json kNoArray = json::array();

using Buckets = std::vector<std::uint64_t>;

Buckets buckets_of(const json& j) {
  Buckets out(kDurationBucketCount + 1, 0);
  if (!j.is_array()) return out;
  for (std::size_t b = 0; b < out.size() && b < j.size(); ++b) out[b] = j[b].get<std::uint64_t>();
  return out;
}
void add_to(Buckets& sum, const Buckets& more, const Buckets* less = nullptr) {
  for (std::size_t b = 0; b < sum.size(); ++b) {
    const std::uint64_t minus = less != nullptr ? (*less)[b] : 0;
    sum[b] += more[b] >= minus ? more[b] - minus : 0;
  }
}

// The same server in an earlier set of snapshots: same worker id and same process (a restarted
// worker's counters start again from zero, so no rate is taken across a restart).
const json* same_server(const Snapshots* set, const json& s) {
  if (set == nullptr) return nullptr;
  for (const auto& o : *set) {
    if (o.at("worker") == s.at("worker") && o.value("pid", 0) == s.value("pid", 0)) return &o;
  }
  return nullptr;
}
const json* same_task_worker(const json* server, const json& w) {
  if (server == nullptr) return nullptr;
  auto it = server->find("task_workers");
  if (it == server->end()) return nullptr;
  for (const auto& o : *it) {
    if (o.value("name", "") == w.value("name", "") && o.value("pid", 0) == w.value("pid", 0)) {
      return &o;
    }
  }
  return nullptr;
}

std::uint64_t requests_of(const json& s) {
  return s.at("http").at("count").get<std::uint64_t>();
}
std::uint64_t errors_of(const json& s) {
  std::uint64_t n = 0;
  for (const auto& r : s.at("http").at("requests")) {
    if (r.at(1).get<int>() >= 500) n += r.at(2).get<std::uint64_t>();
  }
  return n;
}
std::uint64_t tasks_of(const json& s) {
  std::uint64_t n = 0;
  for (const auto& [name, t] : member(s, "task_names", kNoObject).items()) {
    n += t.at("count").get<std::uint64_t>();
  }
  return n;
}
std::uint64_t task_errors_of(const json& s) {
  std::uint64_t n = 0;
  for (const auto& [name, t] : member(s, "task_names", kNoObject).items()) {
    n += t.at("errors").get<std::uint64_t>();
  }
  return n;
}

// A rate over the interval of a counter that never falls (0 without an earlier value).
double per_second(std::uint64_t now, std::optional<std::uint64_t> before, double interval) {
  if (!before || interval <= 0 || now < *before) return 0.0;
  return rounded(static_cast<double>(now - *before) / interval, 2);
}
double cpu_percent(double now, std::optional<double> before, double interval) {
  if (!before || interval <= 0 || now < *before) return 0.0;
  return rounded((now - *before) / interval * 100.0, 1);
}

std::string server_state(const json& s) {
  if (!s.value("ready", false)) return "unready";
  return "ready";
}

}  // namespace

json make_sample(const Snapshots& now, const Snapshots* before, const Snapshots* minute_ago,
                 double interval_s, std::uint64_t seq, double wall_time) {
  const bool cluster = std::any_of(now.begin(), now.end(),
                                   [](const json& s) { return s.value("in_cluster", false); });
  json rows = json::array();
  Buckets http_delta(kDurationBucketCount + 1, 0);
  double requests_rate = 0, errors_rate = 0, tasks_rate = 0, cpu = 0, lag = 0, utilization = 0,
         wait_p99 = 0;
  std::uint64_t rss = 0, pss = 0, queued = 0, busy = 0, workers = 0, restarts = 0, connections = 0;
  struct TaskSum {
    std::uint64_t count = 0, errors = 0, count_before = 0;
    bool has_before = false;
    Buckets window = Buckets(kDurationBucketCount + 1, 0);
  };
  std::map<std::string, TaskSum> tasks;

  for (const json& s : now) {
    const json* prev = same_server(before, s);
    const json* old = same_server(minute_ago, s);
    const int worker = s.at("worker").get<int>();
    const json& process = s.at("process");
    const json& pool = s.at("pool");

    // HTTP over the interval.
    const Buckets b_now = buckets_of(s.at("http").at("buckets"));
    if (prev != nullptr) {
      const Buckets b_prev = buckets_of(prev->at("http").at("buckets"));
      add_to(http_delta, b_now, &b_prev);
    }
    const auto prev_value = [&](auto of) -> std::optional<std::uint64_t> {
      if (prev == nullptr) return std::nullopt;
      return of(*prev);
    };
    requests_rate += per_second(requests_of(s), prev_value(requests_of), interval_s);
    errors_rate += per_second(errors_of(s), prev_value(errors_of), interval_s);
    const double server_tasks_rate = per_second(tasks_of(s), prev_value(tasks_of), interval_s);
    tasks_rate += server_tasks_rate;

    queued += get_or<std::uint64_t>(pool, "queued", 0);
    busy += get_or<std::uint64_t>(pool, "busy", 0);
    workers += get_or<std::uint64_t>(pool, "workers", 0);
    utilization += get_or<double>(pool, "utilization", 0.0);
    wait_p99 = std::max(wait_p99, get_or<double>(member(pool, "wait", kNoObject), "p99_s", 0));
    lag = std::max(lag, s.at("lag").at("last_s").get<double>());
    connections += get_or<std::uint64_t>(s.at("http"), "connections", 0);

    // The server's own row.
    Buckets own_delta(kDurationBucketCount + 1, 0);
    if (prev != nullptr) {
      const Buckets b_prev = buckets_of(prev->at("http").at("buckets"));
      add_to(own_delta, b_now, &b_prev);
    }
    const double server_cpu = cpu_percent(
        process.at("cpu_seconds").get<double>(),
        prev != nullptr ? std::optional(prev->at("process").at("cpu_seconds").get<double>())
                        : std::nullopt,
        interval_s);
    const std::uint64_t server_rss = get_or<std::uint64_t>(process, "rss_bytes", 0);
    const std::uint64_t server_pss = get_or<std::uint64_t>(process, "pss_bytes", 0);
    cpu += server_cpu;
    rss += server_rss;
    pss += server_pss;
    rows.push_back({{"id", cluster ? std::to_string(worker) : std::string("server")},
                    {"kind", "server"},
                    {"server", worker},
                    {"pid", s.value("pid", 0)},
                    {"state", server_state(s)},
                    {"uptime_s", rounded(s.at("uptime_s").get<double>(), 1)},
                    {"tasks", tasks_of(s)},
                    {"errors", task_errors_of(s)},
                    {"restarts", 0},
                    {"tasks_per_s", server_tasks_rate},
                    {"p99_s", seconds_or_null(histogram_quantile(own_delta.data(), 0.99))},
                    {"cpu_percent", server_cpu},
                    {"rss_bytes", server_rss},
                    {"pss_bytes", server_pss},
                    {"leak_suspected", false},
                    {"last_exit", nullptr},
                    {"log", json::array()}});

    // Its task worker processes.
    for (const json& w : member(s, "task_workers", kNoArray)) {
      const json* pw = same_task_worker(prev, w);
      const std::string name = w.value("name", "");
      const double w_cpu = cpu_percent(
          get_or<double>(w, "cpu_seconds", 0.0),
          pw != nullptr ? std::optional(get_or<double>(*pw, "cpu_seconds", 0.0)) : std::nullopt,
          interval_s);
      const std::uint64_t w_rss = get_or<std::uint64_t>(w, "rss_bytes", 0);
      const std::uint64_t w_pss = get_or<std::uint64_t>(w, "pss_bytes", 0);
      const std::uint64_t w_restarts = get_or<std::uint64_t>(w, "restarts", 0);
      cpu += w_cpu;
      rss += w_rss;
      pss += w_pss;
      restarts += w_restarts;
      rows.push_back(
          {{"id", cluster ? fmt::format("{}.{}", worker, name) : name},
           {"kind", "task"},
           {"server", worker},
           {"pid", w.value("pid", 0)},
           {"state", w.value("state", "")},
           {"uptime_s", rounded(get_or<double>(w, "uptime_s", 0.0), 1)},
           {"tasks", get_or<std::uint64_t>(w, "tasks", 0)},
           {"errors", get_or<std::uint64_t>(w, "errors", 0)},
           {"restarts", w_restarts},
           {"tasks_per_s",
            per_second(get_or<std::uint64_t>(w, "tasks", 0),
                       pw != nullptr ? std::optional(get_or<std::uint64_t>(*pw, "tasks", 0))
                                     : std::nullopt,
                       interval_s)},
           {"p99_s", nullptr},
           {"cpu_percent", w_cpu},
           {"rss_bytes", w_rss},
           {"pss_bytes", w_pss},
           {"leak_suspected", w.value("leak_suspected", false)},
           {"last_exit", w.value("last_exit", json(nullptr))},
           {"log", w.value("log", json::array())}});
    }

    // Task names: totals, the interval's count, the minute's durations.
    for (const auto& [name, t] : member(s, "task_names", kNoObject).items()) {
      TaskSum& sum = tasks[name];
      sum.count += t.at("count").get<std::uint64_t>();
      sum.errors += t.at("errors").get<std::uint64_t>();
      if (prev != nullptr) {
        const json& pt = member(*prev, "task_names", kNoObject);
        if (auto it = pt.find(name); it != pt.end()) {
          sum.count_before += it->at("count").get<std::uint64_t>();
        }
        sum.has_before = true;
      }
      const Buckets t_now = buckets_of(t.at("buckets"));
      const json* ot = nullptr;
      if (old != nullptr) {
        const json& names = member(*old, "task_names", kNoObject);
        if (auto it = names.find(name); it != names.end()) ot = &*it;
      }
      if (ot != nullptr) {
        const Buckets t_old = buckets_of(ot->at("buckets"));
        add_to(sum.window, t_now, &t_old);
      } else {
        add_to(sum.window, t_now);
      }
    }
  }

  json task_rows = json::array();
  for (const auto& [name, t] : tasks) {
    task_rows.push_back(
        {{"name", name},
         {"count", t.count},
         {"errors", t.errors},
         {"per_s", per_second(t.count, t.has_before ? std::optional(t.count_before) : std::nullopt,
                              interval_s)},
         {"p50_s", seconds_or_null(histogram_quantile(t.window.data(), 0.5))},
         {"p99_s", seconds_or_null(histogram_quantile(t.window.data(), 0.99))}});
  }

  const json* self = now.empty() ? nullptr : &now.front();
  json server = json::object();
  if (self != nullptr) {
    server = {{"worker", self->at("worker")},
              {"pid", self->value("pid", 0)},
              {"cluster", cluster ? now.size() : 0},
              {"isolation", self->value("isolation", "")},
              {"backend", self->value("backend", "local")},
              {"uptime_s", rounded(self->at("uptime_s").get<double>(), 1)},
              {"version", CREW_VERSION_STRING}};
  }
  return {{"seq", seq},
          {"time", rounded(wall_time, 3)},
          {"interval_s", rounded(interval_s, 3)},
          {"server", std::move(server)},
          {"totals",
           {{"requests_per_s", rounded(requests_rate, 2)},
            {"errors_per_s", rounded(errors_rate, 2)},
            {"p50_s", seconds_or_null(histogram_quantile(http_delta.data(), 0.5))},
            {"p99_s", seconds_or_null(histogram_quantile(http_delta.data(), 0.99))},
            {"tasks_per_s", rounded(tasks_rate, 2)},
            {"queued", queued},
            {"busy", busy},
            {"workers", workers},
            {"wait_p99_s", rounded(wait_p99, 6)},
            {"cpu_percent", rounded(cpu, 1)},
            {"rss_bytes", rss},
            {"pss_bytes", pss},
            {"restarts", restarts},
            {"lag_s", rounded(lag, 6)},
            {"utilization",
             now.empty() ? 0.0 : rounded(utilization / static_cast<double>(now.size()), 3)},
            {"connections", connections}}},
          {"workers", std::move(rows)},
          {"tasks", std::move(task_rows)}};
}

json compact_sample(const json& full) {
  json rows = json::array();
  for (const auto& w : full.at("workers")) {
    rows.push_back({{"id", w.at("id")},
                    {"cpu_percent", w.at("cpu_percent")},
                    {"rss_bytes", w.at("rss_bytes")},
                    {"pss_bytes", w.at("pss_bytes")}});
  }
  return {{"seq", full.at("seq")},
          {"time", full.at("time")},
          {"totals", full.at("totals")},
          {"workers", std::move(rows)}};
}

std::shared_ptr<const std::string> Monitor::add(Snapshots snapshots, double wall_time,
                                                std::chrono::steady_clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto seq = static_cast<std::uint64_t>(std::max(0.0, std::floor(wall_time)));
  if (!history_.empty()) seq = std::max(seq, history_.back().seq + 1);
  const Kept* before = kept_.empty() ? nullptr : &kept_.back();
  // The minute-old snapshots, or the oldest kept while there is not a minute yet.
  const Kept* minute_ago = kept_.size() >= kKeptSnapshots ? &kept_.front() : nullptr;
  const double interval =
      before != nullptr ? std::chrono::duration<double>(now - before->at).count() : 0.0;
  const json full =
      make_sample(snapshots, before ? &before->snapshots : nullptr,
                  minute_ago ? &minute_ago->snapshots : nullptr, interval, seq, wall_time);
  latest_ = full.dump(-1, ' ', false, json::error_handler_t::replace);
  history_.push_back(
      {seq, compact_sample(full).dump(-1, ' ', false, json::error_handler_t::replace)});
  if (history_.size() > kHistory) history_.pop_front();
  kept_.push_back({seq, now, std::move(snapshots)});
  if (kept_.size() > kKeptSnapshots) kept_.pop_front();
  // A comment every ten samples: a heartbeat for proxies that watch for silence.
  return std::make_shared<const std::string>(fmt::format(
      "{}id: {}\nevent: sample\ndata: {}\n\n", seq % 10 == 0 ? ": ping\n" : "", seq, latest_));
}

std::string Monitor::history_after(std::optional<std::uint64_t> since, std::size_t max) const {
  std::size_t from = 0;
  // A `since` this monitor cannot continue from (ahead of it: another server's, or before a
  // restart) gets everything.
  if (since && !history_.empty() && *since <= history_.back().seq) {
    while (from < history_.size() && history_[from].seq <= *since) ++from;
  }
  from = std::max(from, history_.size() - std::min(max, history_.size()));
  std::string out = "[";
  for (std::size_t i = from; i < history_.size(); ++i) {
    if (i > from) out += ',';
    out += history_[i].compact;
  }
  return out + "]";
}

std::string Monitor::monitor_json(std::optional<std::uint64_t> since, std::size_t max) const {
  std::lock_guard lock(mutex_);
  return fmt::format(R"({{"latest":{},"history":{}}})", latest_.empty() ? "null" : latest_,
                     history_after(since, max));
}

std::string Monitor::stream_start(std::optional<std::uint64_t> since, std::size_t max) const {
  std::lock_guard lock(mutex_);
  return fmt::format("retry: 1000\n\nevent: history\ndata: {}\n\n", history_after(since, max));
}

std::optional<Snapshots> Monitor::snapshots(std::uint64_t seq) const {
  std::lock_guard lock(mutex_);
  for (const auto& k : kept_) {
    if (k.seq == seq) return k.snapshots;
  }
  return std::nullopt;
}

}  // namespace crew::serve_app
