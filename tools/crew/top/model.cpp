#include "model.hpp"

#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

namespace crew::tool::top {
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(std::string_view path, std::string_view what) {
  throw std::runtime_error(fmt::format(
      "the monitor answer's {} is {}: is the URL a `crew serve` with /api/monitor?", path, what));
}

// Missing and null fields read as "not known": newer servers may add or drop figures, and the
// view shows "-" for them instead of refusing the whole sample.
const json* field(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::optional<double> number(const json& object, const char* key, std::string_view path) {
  const json* v = field(object, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) bad(fmt::format("{}.{}", path, key), "not a number");
  return v->get<double>();
}

std::optional<std::uint64_t> count(const json& object, const char* key, std::string_view path) {
  const json* v = field(object, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number() || v->get<double>() < 0) {
    bad(fmt::format("{}.{}", path, key), "not a count");
  }
  return v->get<std::uint64_t>();
}

std::string text(const json& object, const char* key, std::string_view path) {
  const json* v = field(object, key);
  if (v == nullptr) return {};
  if (!v->is_string()) bad(fmt::format("{}.{}", path, key), "not a string");
  return v->get<std::string>();
}

const json& object_at(const json& object, const char* key, std::string_view path) {
  const json* v = field(object, key);
  if (v == nullptr || !v->is_object()) {
    bad(fmt::format("{}.{}", path, key), v == nullptr ? "missing" : "not an object");
  }
  return *v;
}

const json& array_at(const json& object, const char* key, std::string_view path) {
  const json* v = field(object, key);
  if (v == nullptr || !v->is_array()) {
    bad(fmt::format("{}.{}", path, key), v == nullptr ? "missing" : "not an array");
  }
  return *v;
}

Totals parse_totals(const json& t) {
  const std::string_view p = "latest.totals";
  Totals out;
  out.requests_per_s = number(t, "requests_per_s", p);
  out.errors_per_s = number(t, "errors_per_s", p);
  out.p50_s = number(t, "p50_s", p);
  out.p99_s = number(t, "p99_s", p);
  out.tasks_per_s = number(t, "tasks_per_s", p);
  out.cpu_percent = number(t, "cpu_percent", p);
  out.queued = count(t, "queued", p);
  out.busy = count(t, "busy", p);
  out.workers = count(t, "workers", p);
  out.rss_bytes = count(t, "rss_bytes", p);
  out.restarts = count(t, "restarts", p);
  out.connections = count(t, "connections", p);
  return out;
}

Worker parse_worker(const json& w, std::size_t index) {
  const std::string p = fmt::format("latest.workers[{}]", index);
  if (!w.is_object()) bad(p, "not an object");
  Worker out;
  out.id = text(w, "id", p);
  if (out.id.empty()) bad(p + ".id", "missing");
  out.kind = text(w, "kind", p);
  if (const auto pid = number(w, "pid", p)) out.pid = static_cast<std::int64_t>(*pid);
  out.state = text(w, "state", p);
  out.uptime_s = number(w, "uptime_s", p).value_or(0);
  out.tasks = count(w, "tasks", p).value_or(0);
  out.errors = count(w, "errors", p).value_or(0);
  out.restarts = count(w, "restarts", p).value_or(0);
  out.tasks_per_s = number(w, "tasks_per_s", p);
  out.p99_s = number(w, "p99_s", p);
  out.cpu_percent = number(w, "cpu_percent", p);
  out.rss_bytes = count(w, "rss_bytes", p);
  out.pss_bytes = count(w, "pss_bytes", p);
  if (const json* leak = field(w, "leak_suspected"))
    out.leak_suspected = leak->is_boolean() && leak->get<bool>();
  if (const json* e = field(w, "last_exit")) {
    if (!e->is_object()) bad(p + ".last_exit", "not an object");
    const std::string ep = p + ".last_exit";
    LastExit exit;
    exit.reason = text(*e, "reason", ep);
    if (const auto s = number(*e, "signal", ep)) exit.signal = static_cast<int>(*s);
    if (const auto c = number(*e, "code", ep)) exit.code = static_cast<int>(*c);
    exit.time = number(*e, "time", ep).value_or(0);
    out.last_exit = exit;
  }
  if (const json* log = field(w, "log")) {
    if (!log->is_array()) bad(p + ".log", "not an array");
    for (const json& line : *log) {
      if (line.is_string()) out.log.push_back(line.get<std::string>());
    }
  }
  return out;
}

Point parse_point(const json& h, std::size_t index) {
  const std::string p = fmt::format("history[{}]", index);
  if (!h.is_object()) bad(p, "not an object");
  const auto seq = number(h, "seq", p);
  if (!seq) bad(p + ".seq", "missing");
  Point out;
  out.seq = static_cast<std::int64_t>(*seq);
  if (const json* t = field(h, "totals")) {
    if (!t->is_object()) bad(p + ".totals", "not an object");
    out.requests_per_s = number(*t, "requests_per_s", p + ".totals").value_or(0);
    out.p99_s = number(*t, "p99_s", p + ".totals");
  }
  return out;
}

}  // namespace

void apply_monitor(TopModel& model, const json& answer) {
  if (!answer.is_object()) bad("top level", "not an object");
  const auto latest_it = answer.find("latest");
  if (latest_it != answer.end() && latest_it->is_null()) return;  // no sample taken yet
  const json& latest = object_at(answer, "latest", "answer");
  const auto seq = number(latest, "seq", "latest");
  if (!seq) bad("latest.seq", "missing");
  const json& workers = array_at(latest, "workers", "latest");
  const json& history = array_at(answer, "history", "answer");

  TopModel next = model;  // all or nothing: a bad answer leaves the view as it was
  // A restarted server counts from the start again: the old history is another server's.
  if (*seq < model.seq) next.history.clear();
  next.seq = static_cast<std::int64_t>(*seq);
  next.time = number(latest, "time", "latest").value_or(0);
  if (const json* server = field(latest, "server"); server != nullptr && server->is_object()) {
    next.isolation = text(*server, "isolation", "latest.server");
    next.backend = text(*server, "backend", "latest.server");
    next.version = text(*server, "version", "latest.server");
    next.uptime_s = number(*server, "uptime_s", "latest.server").value_or(0);
  }
  next.totals = parse_totals(object_at(latest, "totals", "latest"));
  next.workers.clear();
  for (std::size_t i = 0; i < workers.size(); ++i) {
    next.workers.push_back(parse_worker(workers[i], i));
  }
  for (std::size_t i = 0; i < history.size(); ++i) {
    Point point = parse_point(history[i], i);
    if (next.history.empty() || point.seq > next.history.back().seq) {
      next.history.push_back(point);
    }
  }
  if (next.history.size() > kHistoryKept) {
    next.history.erase(next.history.begin(),
                       next.history.end() - static_cast<std::ptrdiff_t>(kHistoryKept));
  }
  model = std::move(next);
}

}  // namespace crew::tool::top
