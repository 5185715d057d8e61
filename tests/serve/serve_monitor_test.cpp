// Tests for the monitor of `crew serve` (src/serve/monitor.*, docs/monitor.md): samples made from
// snapshots, the kept history, and the routes on a real server (/api/monitor, /api/events,
// ?seq= on /metrics and /api/stats, the actions). This executable is also the worker program
// for --isolation process.
#include <chrono>
#include <csignal>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it
#include <vector>

#include <boost/asio.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <crew/memory.hpp>

#include "builtin_tasks.hpp"
#include "http_client.hpp"
#include "metrics.hpp"
#include "monitor.hpp"
#include "process/observe.hpp"
#include "server.hpp"
#include "tasks.hpp"

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using json = nlohmann::json;
using namespace std::chrono_literals;
using crew::serve_app::Monitor;
using crew::serve_app::Snapshots;
using crew_test::Client;
using ::testing::HasSubstr;

// ---- samples from hand-made snapshots ---------------------------------------------------------

// A snapshot with what the monitor reads: `requests` finished in bucket 2 (≤ 2.5 ms) and
// `errors` of them answered 500; `tasks` of task "fib".
json snap(int worker, int pid, std::uint64_t requests, std::uint64_t errors, double cpu_s,
          std::uint64_t tasks, bool in_cluster = false) {
  std::vector<std::uint64_t> buckets(crew::serve_app::kDurationBucketCount + 1, 0);
  buckets[2] = requests;
  std::vector<std::uint64_t> fib(buckets.size(), 0);
  fib[4] = tasks;  // ≤ 10 ms
  return {{"worker", worker},
          {"in_cluster", in_cluster},
          {"pid", pid},
          {"ready", true},
          {"uptime_s", 10.0},
          {"isolation", "process"},
          {"http",
           {{"requests", json::array({json::array({"/v1/tasks/:name", 200, requests - errors}),
                                      json::array({"/v1/tasks/:name", 500, errors})})},
            {"buckets", buckets},
            {"count", requests},
            {"sum", 0.002 * static_cast<double>(requests)},
            {"connections", 3}}},
          {"pool",
           {{"workers", 2},
            {"busy", 1},
            {"idle", 1},
            {"queued", 4},
            {"completed", tasks},
            {"failed", 0},
            {"cancelled", 0},
            {"timed_out", 0},
            {"crashed", 0},
            {"leaks_suspected", 2},
            {"leaking", 1},
            {"utilization", 0.5},
            {"wait", {{"p99_s", 0.002}, {"count", tasks}}},
            {"run", {{"count", tasks}}}}},
          {"process",
           {{"cpu_seconds", cpu_s}, {"rss_bytes", 1000}, {"pss_bytes", 600}, {"open_fds", 9}}},
          {"tasks", {{"ok", tasks}}},
          {"start_time_s", 900.0},
          {"lag", {{"last_s", 0.001}, {"max_s", 0.002}}},
          {"task_names", {{"fib", {{"count", tasks}, {"errors", 0}, {"buckets", fib}}}}},
          {"task_workers", json::array({{{"name", "crew-task-0"},
                                         {"pid", pid + 1},
                                         {"state", "busy"},
                                         {"tasks", tasks},
                                         {"restarts", 1},
                                         {"cpu_seconds", cpu_s * 2},
                                         {"rss_bytes", 500},
                                         {"pss_bytes", 200}}})}};
}

TEST(MonitorSample, RatesAndQuantilesComeFromTheInterval) {
  const Snapshots before{snap(0, 100, 10, 1, 1.0, 10)};
  const Snapshots now{snap(0, 100, 30, 5, 1.5, 30)};
  const json s = crew::serve_app::make_sample(now, &before, nullptr, 2.0, 7, 1000.0);
  EXPECT_EQ(s["seq"], 7);
  const json& t = s["totals"];
  EXPECT_DOUBLE_EQ(t["requests_per_s"].get<double>(), 10.0);  // 20 in 2 s
  EXPECT_DOUBLE_EQ(t["errors_per_s"].get<double>(), 2.0);     // 4 in 2 s
  EXPECT_DOUBLE_EQ(t["tasks_per_s"].get<double>(), 10.0);
  // Every request of the interval took 1..2.5 ms: both quantiles are inside that bucket.
  EXPECT_GT(t["p50_s"].get<double>(), 0.001);
  EXPECT_LE(t["p99_s"].get<double>(), 0.0025);
  // CPU: the server 0.5 s and its worker 1.0 s in 2 s.
  EXPECT_DOUBLE_EQ(t["cpu_percent"].get<double>(), 75.0);
  EXPECT_EQ(t["rss_bytes"], 1500);
  EXPECT_EQ(t["pss_bytes"], 800);
  EXPECT_EQ(t["queued"], 4);
  EXPECT_EQ(t["restarts"], 1);
  ASSERT_EQ(s["workers"].size(), 2u);
  EXPECT_EQ(s["workers"][0]["id"], "server");
  EXPECT_EQ(s["workers"][1]["id"], "crew-task-0");
  EXPECT_EQ(s["workers"][1]["kind"], "task");
  EXPECT_DOUBLE_EQ(s["workers"][1]["cpu_percent"].get<double>(), 50.0);
  ASSERT_EQ(s["tasks"].size(), 1u);
  EXPECT_EQ(s["tasks"][0]["name"], "fib");
  EXPECT_EQ(s["tasks"][0]["count"], 30);
  EXPECT_DOUBLE_EQ(s["tasks"][0]["per_s"].get<double>(), 10.0);
}

TEST(MonitorSample, NoRatesWithoutAnEarlierSampleOrAcrossARestart) {
  const Snapshots now{snap(0, 100, 30, 5, 1.5, 30)};
  const json first = crew::serve_app::make_sample(now, nullptr, nullptr, 0.0, 1, 1000.0);
  EXPECT_EQ(first["totals"]["requests_per_s"], 0.0);
  EXPECT_TRUE(first["totals"]["p99_s"].is_null());
  // The same worker id with another pid: a restarted process whose counters began again.
  const Snapshots restarted{snap(0, 200, 3, 0, 0.1, 3)};
  const json s = crew::serve_app::make_sample(restarted, &now, nullptr, 1.0, 2, 1001.0);
  EXPECT_EQ(s["totals"]["requests_per_s"], 0.0);
  EXPECT_EQ(s["totals"]["cpu_percent"], 0.0);
}

TEST(MonitorSample, ClusterRowsAreNamedByWorkerAndTasksAddUp) {
  const Snapshots now{snap(1, 100, 10, 0, 1.0, 10, true), snap(2, 300, 20, 0, 1.0, 20, true)};
  const json s = crew::serve_app::make_sample(now, nullptr, nullptr, 1.0, 1, 1000.0);
  EXPECT_EQ(s["server"]["cluster"], 2);
  std::vector<std::string> ids;
  for (const auto& w : s["workers"]) ids.push_back(w["id"]);
  EXPECT_THAT(ids, ::testing::ElementsAre("1", "1.crew-task-0", "2", "2.crew-task-0"));
  ASSERT_EQ(s["tasks"].size(), 1u);
  EXPECT_EQ(s["tasks"][0]["count"], 30);
  // Since start (no minute-old snapshots): all 30 took 5..10 ms.
  EXPECT_GT(s["tasks"][0]["p50_s"].get<double>(), 0.005);
  EXPECT_LE(s["tasks"][0]["p99_s"].get<double>(), 0.01);
}

TEST(MonitorSample, CompactKeepsWhatTheChartsNeed) {
  const json full =
      crew::serve_app::make_sample({snap(0, 100, 1, 0, 1, 1)}, nullptr, nullptr, 1.0, 5, 1000.0);
  const json c = crew::serve_app::compact_sample(full);
  EXPECT_EQ(c["seq"], 5);
  EXPECT_EQ(c["totals"], full["totals"]);
  ASSERT_EQ(c["workers"].size(), 2u);
  EXPECT_EQ(
      c["workers"][1],
      (json{{"id", "crew-task-0"}, {"cpu_percent", 0.0}, {"rss_bytes", 500}, {"pss_bytes", 200}}));
  EXPECT_FALSE(c.contains("tasks"));
}

// The leak watch of process isolation reaches /metrics: suspicions so far, and leaking now.
TEST(MonitorSample, SuspectedLeaksAreMetrics) {
  const std::string text = crew::serve_app::render_prometheus({snap(0, 100, 1, 0, 1, 1)}, false);
  EXPECT_THAT(text, HasSubstr("\ncrew_pool_leaks_suspected_total 2\n"));
  EXPECT_THAT(text, HasSubstr("\ncrew_pool_leaking_workers 1\n"));
}

// ---- the kept history -------------------------------------------------------------------------

TEST(MonitorHistory, SeqIsTheSecondAndRisesByOneAtLeast) {
  Monitor m;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string first = *m.add({snap(0, 1, 0, 0, 0, 0)}, 100.2, t0);
  EXPECT_THAT(first, HasSubstr("id: 100\nevent: sample\ndata: {"));
  EXPECT_THAT(first, HasSubstr(": ping\n"));  // every tenth second
  // Sampled again within the same second (a late wake-up before): the next number all the same.
  EXPECT_THAT(*m.add({snap(0, 1, 0, 0, 0, 0)}, 100.9, t0 + 700ms), HasSubstr("id: 101\n"));
  EXPECT_THAT(*m.add({snap(0, 1, 0, 0, 0, 0)}, 105.0, t0 + 5s), HasSubstr("id: 105\n"));
  const json all = json::parse(m.monitor_json(std::nullopt, 10));
  EXPECT_EQ(all["latest"]["seq"], 105);
  ASSERT_EQ(all["history"].size(), 3u);
  EXPECT_EQ(all["history"][0]["seq"], 100);
  // Resuming: only what came after; a seq this monitor never had (ahead of it) gets everything.
  EXPECT_EQ(json::parse(m.monitor_json(101, 10))["history"].size(), 1u);
  EXPECT_EQ(json::parse(m.monitor_json(105, 10))["history"].size(), 0u);
  EXPECT_EQ(json::parse(m.monitor_json(999, 10))["history"].size(), 3u);
  EXPECT_EQ(json::parse(m.monitor_json(std::nullopt, 2))["history"][0]["seq"], 101);
  EXPECT_THAT(m.stream_start(104, 10), HasSubstr("event: history\ndata: [{\"seq\":105"));
}

TEST(MonitorHistory, AnHourOfSamplesAndAMinuteOfSnapshotsAreKept) {
  Monitor m;
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t n = Monitor::kHistory + 10;
  for (std::size_t i = 0; i < n; ++i) {
    m.add({snap(0, 1, i, 0, 0, 0)}, 1000.0 + static_cast<double>(i), t0 + std::chrono::seconds(i));
  }
  const json all = json::parse(m.monitor_json(std::nullopt, Monitor::kHistory * 2));
  ASSERT_EQ(all["history"].size(), Monitor::kHistory);
  EXPECT_EQ(all["history"][0]["seq"], 1010);
  const std::uint64_t last = 1000 + n - 1;
  ASSERT_TRUE(m.snapshots(last).has_value());
  EXPECT_EQ(m.snapshots(last)->at(0)["http"]["count"], n - 1);
  EXPECT_TRUE(m.snapshots(last - Monitor::kKeptSnapshots + 1).has_value());
  EXPECT_FALSE(m.snapshots(last - Monitor::kKeptSnapshots).has_value());
}

// ---- a real server ----------------------------------------------------------------------------

using crew_test::builtin_tasks;

// A server whose tasks run in `workers` worker processes, started at once.
struct Running {
  explicit Running(std::size_t workers = 2, bool heap_profiling = false) {
    crew::serve_app::ServeConfig c;
    c.host = "127.0.0.1";
    c.port = 0;
    c.log_format = "off";
    crew::ProcessPoolOptions o;
    o.min_workers = workers;
    o.max_workers = workers;
    o.heap_profiling = heap_profiling;
    o.log = [](const crew::ProcessLogLine&) {};
    server = std::make_unique<crew::serve_app::Server>(
        c, crew::serve_app::make_process_runner(builtin_tasks(), std::move(o)));
    server->start();
  }
  std::uint16_t port() const { return server->port(); }
  std::unique_ptr<crew::serve_app::Server> server;
};

int run_fib(Client& c) {
  return c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})").status;
}

// The newest sample once one satisfies `ok` (a sample comes each second).
// Polls every 20 ms: a sample comes each second, and a request a millisecond would be load.
template <typename Pred>
json sample_where(Client& c, Pred ok) {
  const auto end = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    json latest = c.request(http::verb::get, "/api/monitor").js()["latest"];
    if (!latest.is_null() && ok(latest)) return latest;
    if (std::chrono::steady_clock::now() > end) {
      ADD_FAILURE() << "no such sample within 60 s; the last: " << latest.dump();
      return latest;
    }
    std::this_thread::sleep_for(20ms);
  }
}

std::uint64_t fib_count(const json& sample) {
  for (const auto& t : sample["tasks"]) {
    if (t["name"] == "fib") return t["count"];
  }
  return 0;
}

TEST(ServeMonitor, SamplesShowTheServerItsWorkerProcessesAndItsTasks) {
  Running s;
  Client c(s.port());
  for (int i = 0; i < 5; ++i) ASSERT_EQ(run_fib(c), 200);
  const json latest = sample_where(c, [](const json& l) { return fib_count(l) == 5; });
  EXPECT_EQ(latest["server"]["isolation"], "process");
  EXPECT_EQ(latest["totals"]["workers"], 2);
  int task_rows = 0;
  for (const auto& w : latest["workers"]) {
    EXPECT_GT(w["pid"].get<int>(), 0);
    EXPECT_GT(w["rss_bytes"].get<std::uint64_t>(), 0u);
    if (w["kind"] == "task") ++task_rows;
  }
  EXPECT_EQ(task_rows, 2);
  EXPECT_EQ(latest["workers"][0]["id"], "server");
  EXPECT_EQ(latest["workers"][0]["tasks"], 5);
  // The history has the samples before it, and ?since= continues after one.
  const json later = sample_where(c, [&](const json& l) { return l["seq"] > latest["seq"]; });
  const json after =
      c.request(http::verb::get, "/api/monitor?since=" + latest["seq"].dump()).js()["history"];
  ASSERT_FALSE(after.empty());
  EXPECT_GT(after[0]["seq"].get<std::uint64_t>(), latest["seq"].get<std::uint64_t>());
  EXPECT_EQ(c.request(http::verb::get, "/api/monitor?since=x").status, 400);
}

TEST(ServeMonitor, StatsAndMetricsAtASeqShowThatSamplesNumbers) {
  Running s;
  Client c(s.port());
  for (int i = 0; i < 3; ++i) ASSERT_EQ(run_fib(c), 200);
  const json sample = sample_where(c, [](const json& l) { return fib_count(l) == 3; });
  const std::string seq = sample["seq"].dump();
  for (int i = 0; i < 2; ++i) ASSERT_EQ(run_fib(c), 200);  // live figures move on
  EXPECT_EQ(c.request(http::verb::get, "/api/stats").js()["tasks"]["ok"], 5);
  const json stats = c.request(http::verb::get, "/api/stats?seq=" + seq).js();
  EXPECT_EQ(stats["seq"], sample["seq"]);
  EXPECT_EQ(stats["tasks"]["ok"], 3);
  const std::string metrics = c.request(http::verb::get, "/metrics?seq=" + seq).body;
  EXPECT_THAT(metrics, HasSubstr("# crew seq " + seq + "\n"));
  EXPECT_THAT(metrics, HasSubstr("crew_tasks_total{outcome=\"ok\"} 3\n"));
  EXPECT_EQ(c.request(http::verb::get, "/api/stats?seq=1").status, 404);
  EXPECT_EQ(c.request(http::verb::get, "/metrics?seq=-1").status, 400);
}

// Reads a raw event stream until `events` sample events came (or the socket's timeout).
std::string read_events(Client& c, int events) {
  std::string got;
  char buf[4096];
  for (;;) {
    std::size_t count = 0;
    for (auto p = got.find("event: sample"); p != std::string::npos;
         p = got.find("event: sample", p + 1)) {
      ++count;
    }
    if (count >= static_cast<std::size_t>(events)) return got;
    boost::system::error_code ec;
    const std::size_t n = c.read_some(buf, sizeof buf, ec);
    if (ec) return got;
    got.append(buf, n);
  }
}

std::vector<std::uint64_t> event_ids(const std::string& text) {
  std::vector<std::uint64_t> ids;
  for (auto p = text.find("\nid: "); p != std::string::npos; p = text.find("\nid: ", p + 1)) {
    ids.push_back(std::stoull(text.substr(p + 5)));
  }
  return ids;
}

TEST(ServeMonitor, TheEventStreamSendsHistoryThenSamplesAndResumes) {
  Running s;
  Client first(s.port());
  first.read_timeout(30s);
  first.send_raw("GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string text = read_events(first, 2);
  EXPECT_THAT(text, HasSubstr("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
  EXPECT_THAT(text, HasSubstr("retry: 1000\n\nevent: history\ndata: ["));
  const auto ids = event_ids(text);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_GT(ids[1], ids[0]);
  // A reconnect that says what it saw last gets only what came after in its history.
  Client again(s.port());
  again.read_timeout(30s);
  again.send_raw("GET /api/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: " + std::to_string(ids[0]) +
                 "\r\n\r\n");
  const std::string resumed = read_events(again, 1);
  const auto h = resumed.find("event: history\ndata: ");
  ASSERT_NE(h, std::string::npos);
  const json history = json::parse(resumed.substr(h + 21, resumed.find('\n', h + 21) - h - 21));
  ASSERT_FALSE(history.empty());
  for (const auto& e : history) EXPECT_GT(e["seq"].get<std::uint64_t>(), ids[0]);
}

TEST(ServeMonitor, ActionsRefuseClearlyWhatThisServerCannotDo) {
  Running s;
  Client c(s.port());
  const auto reload = c.request(http::verb::post, "/api/cluster/reload");
  EXPECT_EQ(reload.status, 409);
  EXPECT_EQ(reload.js()["error"]["type"], "NotACluster");
  EXPECT_EQ(c.request(http::verb::post, "/api/workers/server/restart").status, 409);
  EXPECT_EQ(c.request(http::verb::post, "/api/workers/server/explode").status, 404);
  EXPECT_EQ(c.request(http::verb::post, "/api/workers/server/heap").status, 409);
  ASSERT_EQ(run_fib(c), 200);
  const json sample = sample_where(c, [](const json& l) { return l["workers"].size() > 1; });
  const auto heap = c.request(
      http::verb::post, "/api/workers/" + sample["workers"][1]["id"].get<std::string>() + "/heap");
  EXPECT_EQ(heap.status, 409);
  EXPECT_THAT(heap.body, HasSubstr("--heap-profiling"));
  EXPECT_EQ(c.request(http::verb::get, "/api/cluster/reload").status, 405);
}

// The row of task worker `id` in a sample (null when absent).
json row(const json& sample, const std::string& id) {
  for (const auto& w : sample["workers"]) {
    if (w["id"] == id) return w;
  }
  return nullptr;
}

// The ids of the task worker rows of a sample.
std::vector<std::string> task_ids(const json& sample) {
  std::vector<std::string> ids;
  for (const auto& w : sample["workers"]) {
    if (w["kind"] == "task") ids.push_back(w["id"]);
  }
  return ids;
}

TEST(ServeMonitor, AKilledWorkerShowsItsSignalAndARestartedOneItsReason) {
  Running s;
  Client c(s.port());
  ASSERT_EQ(run_fib(c), 200);
  const json first = sample_where(c, [](const json& l) { return task_ids(l).size() == 2; });
  const std::vector<std::string> ids = task_ids(first);
  ASSERT_EQ(ids.size(), 2u);
  const int victim = row(first, ids[0])["pid"];
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const json killed = sample_where(c, [&](const json& l) {
    const json r = row(l, ids[0]);
    return !r.is_null() && !r["last_exit"].is_null();
  });
  const json exit = row(killed, ids[0])["last_exit"];
  EXPECT_EQ(exit["signal"], SIGKILL);
  EXPECT_TRUE(exit["code"].is_null());
  EXPECT_EQ(exit["reason"], "signal");
  // A restart through the API: the slot's process is replaced, and says it was stopped.
  const int before = row(first, ids[1])["pid"];
  EXPECT_EQ(c.request(http::verb::post, "/api/workers/" + ids[1] + "/restart").status, 202);
  const json restarted = sample_where(c, [&](const json& l) {
    const json r = row(l, ids[1]);
    return !r.is_null() && r["pid"] != before && r["pid"] != 0 && !r["last_exit"].is_null();
  });
  EXPECT_EQ(row(restarted, ids[1])["last_exit"]["reason"], "stop");
  const auto unknown = c.request(http::verb::post, "/api/workers/no-such-worker/restart");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(unknown.body, HasSubstr(ids[0]));  // names the ones there are
  EXPECT_EQ(run_fib(c), 200);
}

// Draining ends the event streams (they never end by themselves), so a shutdown is not held
// up by a dashboard left open.
TEST(ServeMonitor, ADrainEndsOpenEventStreams) {
  Running s;
  Client stream(s.port());
  stream.read_timeout(30s);
  stream.send_raw("GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_THAT(read_events(stream, 1), HasSubstr("event: sample"));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(s.server->drain(20s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  read_events(stream, 1000);  // reads to the end of the stream (or the 30 s read timeout)
  EXPECT_TRUE(stream.closed_by_server());
  s.server->stop();
}

// jemalloc cannot be preloaded into a sanitizer build: release builds only.
TEST(ServeMonitorReleaseOnly, AHeapProfileOfATaskWorkerIsWrittenOnRequest) {
  Running s(1, true);
  Client client(s.port());
  ASSERT_EQ(run_fib(client), 200);
  const json sample = sample_where(client, [](const json& l) { return !task_ids(l).empty(); });
  const std::string id = task_ids(sample).at(0);
  const auto heap = client.request(http::verb::post, "/api/workers/" + id + "/heap");
  ASSERT_EQ(heap.status, 200) << heap.body;
  const std::string path = heap.js()["path"];
  EXPECT_GT(std::filesystem::file_size(path), 0U);
  std::filesystem::remove(path);
  EXPECT_EQ(client.request(http::verb::post, "/api/workers/nobody/heap").status, 404);
}

// 100 streams that never read, and a storm of streams opened and dropped: the server still
// answers at once, and its memory stays within bounds.
TEST(ServeMonitor, StreamsThatNeverReadAndAStormOfThemCostTheServerNothing) {
  Running s;
  Client c(s.port());
  const std::size_t rss_before = crew::resident_memory_bytes();
  asio::io_context ioc;
  const asio::ip::tcp::endpoint at(asio::ip::make_address("127.0.0.1"), s.port());
  const std::string request = "GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n";
  std::vector<std::unique_ptr<asio::ip::tcp::socket>> idle;
  for (int i = 0; i < 100; ++i) {
    auto sock = std::make_unique<asio::ip::tcp::socket>(ioc);
    sock->connect(at);
    sock->set_option(asio::socket_base::receive_buffer_size(1024));
    asio::write(*sock, asio::buffer(request));
    idle.push_back(std::move(sock));
  }
  for (int i = 0; i < 300; ++i) {
    asio::ip::tcp::socket sock(ioc);
    sock.connect(at);
    asio::write(sock, asio::buffer(request));
    if (i % 2 == 0) sock.set_option(asio::socket_base::linger(true, 0));  // a reset
  }
  // Samples flow to the idle streams meanwhile: wait for a few, then ask for service.
  const json first = sample_where(c, [](const json&) { return true; });
  sample_where(c, [&](const json& l) { return l["seq"] > first["seq"].get<std::uint64_t>() + 2; });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c.request(http::verb::get, "/healthz").status, 200);
  EXPECT_EQ(run_fib(c), 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  // Each idle stream holds at most a sample waiting: far below a megabyte each.
  EXPECT_LT(crew::resident_memory_bytes(), rss_before + std::size_t{64} * 1024 * 1024);
  idle.clear();
  // The dropped streams are noticed at their next sample and let go.
  sample_where(c, [](const json& l) { return l["totals"]["connections"] == 1; });
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::serve_app::run_task_worker();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
