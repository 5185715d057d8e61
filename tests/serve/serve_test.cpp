// Tests for `crew serve` (src/serve): a real server on 127.0.0.1 port 0, real HTTP/1.1 clients.
// This executable is also the worker program for --isolation process.
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it

#include <arpa/inet.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.hpp"
#include "http_client.hpp"
#include "metrics.hpp"
#include "process/observe.hpp"
#include "server.hpp"
#include "tasks.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using namespace std::chrono_literals;
using crew::serve_app::ServeConfig;
using ::testing::HasSubstr;
using ::testing::Not;

using crew_test::Client;
using crew_test::Reply;

// A task that runs until the test opens its gate: a request stays in flight (or a task
// outlives its timeout) for as long as the test needs, however slow or busy the machine. The
// gate lives in this process, so only the thread runner can run it.
class TaskGate {
 public:
  void close() {
    std::lock_guard lock(mutex_);
    open_ = false;
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // 1 once opened; 0 if nobody opened it for two minutes (a failing test must still end).
  int wait() {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, std::chrono::minutes(2), [this] { return open_; }) ? 1 : 0;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = true;
};

TaskGate& task_gate() {
  static TaskGate g;
  return g;
}

// POST /v1/tasks/held as raw bytes, for a request whose reply is read later.
const std::string kHeldRequest =
    "POST /v1/tasks/held HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Content-Length: 11\r\n\r\n{\"args\":[]}";

const crew::Tasks& tasks() {
  static const crew::Tasks t = [] {
    crew::Tasks x;
    crew::serve_app::add_builtin_tasks(x);
    x.add("held", [] { return task_gate().wait(); });
    return x;
  }();
  return t;
}

using crew_test::eventually;

struct Running {
  explicit Running(ServeConfig c, bool process = false) {
    c.host = "127.0.0.1";
    c.port = 0;
    c.log_format = "off";
    std::unique_ptr<crew::serve_app::Runner> runner;
    if (process) {
      crew::ProcessPoolOptions o;
      o.max_workers = c.workers == 0 ? 2 : c.workers;
      o.max_queue = c.max_queue;
      o.log = [](const crew::ProcessLogLine&) {};
      runner = crew::serve_app::make_process_runner(tasks(), std::move(o));
    } else {
      runner = crew::serve_app::make_thread_runner(
          tasks(), {.workers = c.workers == 0 ? 2 : c.workers,
                    .max_queue = c.max_queue,
                    .max_stuck_replacements = c.max_stuck_replacements});
    }
    server = std::make_unique<crew::serve_app::Server>(c, std::move(runner));
    server->start();
  }
  std::uint16_t port() const { return server->port(); }
  std::unique_ptr<crew::serve_app::Server> server;
};

TEST(Serve, HealthReadinessAndTaskList) {
  Running s({});
  Client c(s.port());
  EXPECT_EQ(c.request(http::verb::get, "/healthz").status, 200);
  const auto ready = c.request(http::verb::get, "/readyz");
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(ready.js()["ready"], true);
  const auto list = c.request(http::verb::get, "/v1/tasks").js();
  bool found = false;
  for (const auto& t : list["tasks"]) found = found || t["signature"] == "fib(int) -> long";
  EXPECT_TRUE(found) << list.dump();
}

TEST(Serve, RunsBuiltInTasksOverOneKeepAliveConnection) {
  Running s({});
  Client c(s.port());
  auto r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [30]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.js()["result"], 832040);
  EXPECT_TRUE(r.js()["duration_ms"].is_number());
  r = c.request(http::verb::post, "/v1/tasks/sum_range", R"({"args": [100000]})");
  EXPECT_EQ(r.js()["result"], 4999950000LL);
  r = c.request(http::verb::post, "/v1/tasks/count_primes", R"({"args": [100]})");
  EXPECT_EQ(r.js()["result"], 25);
  r = c.request(http::verb::post, "/v1/tasks/sort_numbers", R"({"args": [[3, 1.5, -2]]})");
  EXPECT_EQ(r.js()["result"], json::parse("[-2, 1.5, 3]"));
  r = c.request(http::verb::post, "/v1/tasks/sha256", "abc", "application/octet-stream");
  EXPECT_EQ(r.js()["result"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// Found by ServeFuzz: each of these bodies once ended the server (an uncaught out_of_range for
// a number a double cannot hold; a stack overflow after parsing a body nested 400 000 deep).
TEST(Serve, JsonThatParsersChokeOnIsABadRequestAndTheServerGoesOn) {
  Running s(ServeConfig{});
  Client c(s.port());
  auto r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [1e999]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.js()["error"]["type"], "BadJson");
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("1e999"));
  constexpr int kDepth = 500'000;  // just under the default 1 MiB --max-body
  const std::string deep =
      R"({"args": [)" + std::string(kDepth, '[') + std::string(kDepth, ']') + "]}";
  r = c.request(http::verb::post, "/v1/tasks/sort_numbers", deep);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.js()["error"]["type"], "BadJson");
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("deeper than 64"));
  // Nesting within the bound still reaches the task, which names the argument it wanted.
  r = c.request(http::verb::post, "/v1/tasks/sort_numbers",
                R"({"args": [)" + std::string(60, '[') + std::string(60, ']') + "]}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.js()["error"]["type"], "BadArguments");
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.js()["result"], 55);
}

TEST(Serve, ErrorsHaveTheRightStatusAndSayWhat) {
  ServeConfig cfg;
  cfg.max_body = 1024;
  cfg.max_header = 4096;
  Running s(cfg);
  Client c(s.port());
  auto r = c.request(http::verb::post, "/v1/tasks/fib", "{not json");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.js()["error"]["type"], "BadJson");
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": ["ten"]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("fib(int) -> long"));
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("string"));
  r = c.request(http::verb::post, "/v1/tasks/nope", R"({"args": []})");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("sum_range"));
  r = c.request(http::verb::get, "/nowhere");
  EXPECT_EQ(r.status, 404);
  r = c.request(http::verb::get, "/v1/tasks/fib");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "POST");
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [-1]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.js()["error"]["type"], "BadArguments");
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("outside 0..92"));
  // A task that cannot finish before its timeout (the gate opens only after the reply).
  task_gate().close();
  r = c.request(http::verb::post, "/v1/tasks/held?timeout_ms=50", R"({"args": []})");
  task_gate().open();
  EXPECT_EQ(r.status, 504);
  // curl -d labels JSON as a form: still JSON. A real form is still a raw body.
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})",
                "application/x-www-form-urlencoded");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.js()["result"], 55);
  r = c.request(http::verb::post, "/v1/tasks/fib", "n=10", "application/x-www-form-urlencoded");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("given (string)"));
  r = c.request(http::verb::post, "/v1/tasks/fib?timeout_ms=soon", R"({"args": [1]})");
  EXPECT_EQ(r.status, 400);
  // Found by ServeFuzz: a huge timeout overflowed the deadline arithmetic.
  r = c.request(http::verb::post, "/v1/tasks/fib?timeout_ms=99999999999999999999",
                R"({"args": [1]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.js()["error"]["message"],
            "timeout_ms must be an integer in 0..86400000, not '99999999999999999999'");
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [1]})", "application/json",
                {{"X-Priority", "4294967296"}});
  EXPECT_EQ(r.status, 400);
  {
    Client big(s.port());
    r = big.request(http::verb::post, "/v1/tasks/sha256", std::string(10'000, 'x'),
                    "application/octet-stream");
    EXPECT_EQ(r.status, 413);
  }
  {
    Client headers(s.port());
    // 64 KiB of headers against a 4 KiB limit.
    std::vector<std::pair<std::string, std::string>> many;
    for (int i = 0; i < 4; ++i)
      many.emplace_back("X-Filler-" + std::to_string(i), std::string(16 * 1024, 'h'));
    r = headers.request(http::verb::get, "/healthz", "", "", many);
    EXPECT_EQ(r.status, 431);
  }
  EXPECT_EQ(Client(s.port()).request(http::verb::get, "/healthz").status, 200);
}

TEST(Serve, FullQueueAnswers429WithRetryAfter) {
  ServeConfig cfg;
  cfg.workers = 1;
  cfg.max_queue = 1;
  Running s(cfg);
  Client a(s.port()), b(s.port()), c(s.port());
  // a's and b's tasks wait for the gate: the queue stays full until the test opens it.
  task_gate().close();
  a.send_raw(kHeldRequest);
  auto pool = [&](const char* key) {
    return c.request(http::verb::get, "/api/stats").js()["pool"][key].get<int>();
  };
  ASSERT_TRUE(eventually([&] { return pool("busy") == 1; }));
  b.send_raw(kHeldRequest);
  // Requests on different connections have no order: c's must not overtake b's (it would be
  // the one queued, and wait for a). So wait until b's task is in the queue.
  ASSERT_TRUE(eventually([&] { return pool("queued") == 1; }));
  // One running, one queued: the next is refused.
  const Reply r = c.request(http::verb::post, "/v1/tasks/sleep_ms", R"({"args": [1]})");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.raw[http::field::retry_after], "1");
  task_gate().open();
  EXPECT_EQ(a.read().status, 200);
  EXPECT_EQ(b.read().status, 200);
}

// A response far larger than the socket's buffers (the client's receive buffer is made small)
// cannot be written at once: the rest goes out asynchronously, and the connection carries on.
TEST(Serve, AResponseLargerThanTheSocketBuffersArrivesWholeAndTheConnectionGoesOn) {
  ServeConfig cfg;
  cfg.max_body = 16 << 20;
  // Sending, sorting and reading back 7 MB through a 4 KiB receive buffer takes a second here,
  // but a minute or more under TSan on a loaded machine: the server's defaults must not be what
  // this test measures. That includes the header timeout: it runs from the moment the response
  // is in the server's send buffer (4 MB of it), while this client still reads and parses.
  cfg.header_timeout = 240s;
  cfg.body_timeout = 240s;
  cfg.task_timeout = 240s;
  Running s(cfg);
  asio::io_context ioc;
  tcp::socket raw(ioc);
  raw.open(tcp::v4());
  raw.set_option(asio::socket_base::receive_buffer_size(4096));
  raw.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), s.port()));
  constexpr int kNumbers = 1'000'000;  // a 7 MB response: over a 4 MB send buffer
  std::string body = R"({"args": [[)";
  for (int i = kNumbers; i > 0; --i) body += std::to_string(i) + (i > 1 ? "," : "");
  body += "]]}";
  auto exchange = [&](http::verb verb, const std::string& target, const std::string& b) {
    http::request<http::string_body> req(verb, target, 11);
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::content_type, "application/json");
    req.body() = b;
    req.prepare_payload();
    http::write(raw, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    http::read(raw, buffer, parser);
    return parser.release();
  };
  const auto sorted = exchange(http::verb::post, "/v1/tasks/sort_numbers", body);
  ASSERT_EQ(sorted.result_int(), 200U);
  const json result = json::parse(sorted.body())["result"];
  ASSERT_EQ(result.size(), static_cast<std::size_t>(kNumbers));
  EXPECT_EQ(result.front().get<double>(), 1.0);
  EXPECT_EQ(result.back().get<double>(), kNumbers);
  EXPECT_TRUE(std::is_sorted(result.begin(), result.end()));
  const auto health = exchange(http::verb::get, "/healthz", "");
  EXPECT_EQ(health.result_int(), 200U);
  EXPECT_EQ(health.body(), R"({"status":"ok"})");
}

TEST(Serve, SlowClientsAndGarbageDoNotStopTheServer) {
  ServeConfig cfg;
  // Long enough that the garbage below is always read before it; the slowloris waits it out.
  cfg.header_timeout = 2s;
  Running s(cfg);
  {
    Client slow(s.port());
    slow.send_raw("GET /healthz HTTP/1.1\r\nHo");  // and nothing more: slowloris
    const auto r = slow.read();
    EXPECT_EQ(r.status, 408);
  }
  {
    // A whole request line, then nothing: the parser has taken the line from the buffer, and the
    // client still gets its 408 rather than a silent close.
    Client slow(s.port());
    slow.send_raw("GET /healthz HTTP/1.1\r\n");
    EXPECT_EQ(slow.read().status, 408);
  }
  {
    Client junk(s.port());
    const char bytes[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 random bytes\r\n\r\n";
    junk.send_raw(std::string(bytes, sizeof bytes - 1));  // a TLS hello, not HTTP
    const auto r = junk.read();
    EXPECT_EQ(r.status, 400);
  }
  EXPECT_EQ(Client(s.port()).request(http::verb::get, "/healthz").status, 200);
}

TEST(Serve, MetricsAndStatsDescribeTheService) {
  Running s({});
  Client c(s.port());
  ASSERT_EQ(c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})").status, 200);
  const auto m = c.request(http::verb::get, "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_THAT(std::string(m.raw[http::field::content_type]), HasSubstr("version=0.0.4"));
  EXPECT_THAT(m.body,
              HasSubstr("crew_http_requests_total{route=\"/v1/tasks/:name\",code=\"200\"} 1"));
  EXPECT_THAT(m.body, HasSubstr("crew_tasks_total{outcome=\"ok\"} 1"));
  EXPECT_THAT(m.body, HasSubstr("crew_pool_workers 2"));
  EXPECT_THAT(m.body, HasSubstr("process_resident_memory_bytes"));
  EXPECT_THAT(m.body, HasSubstr("crew_event_loop_lag_seconds"));
  EXPECT_THAT(m.body, HasSubstr("crew_http_connections 1\n"));  // this client's
  json st;
  EXPECT_TRUE(eventually([&] {  // the pool counts the task just after it answered
    st = c.request(http::verb::get, "/api/stats").js();
    return st["pool"]["completed"] == 1;
  })) << st.dump();
  EXPECT_EQ(st["pool"]["isolation"], "thread");
  {
    Client second(s.port());
    EXPECT_EQ(second.request(http::verb::get, "/api/stats").js()["http"]["connections"], 2);
  }
  EXPECT_GT(st["process"]["rss_bytes"].get<double>(), 0);
}

TEST(Serve, DrainLetsInFlightRequestsFinish) {
  Running s({});
  Client c(s.port());
  task_gate().close();
  c.send_raw(kHeldRequest);
  // The request is in flight once the pool reports it running.
  ASSERT_TRUE(eventually([&] {
    return Client(s.port()).request(http::verb::get, "/api/stats").js()["pool"]["busy"] == 1;
  }));
  auto drained = std::async(std::launch::async, [&] { return s.server->drain(60s); });
  // Not drained while the request is held (the gate is still closed).
  EXPECT_EQ(drained.wait_for(50ms), std::future_status::timeout);
  task_gate().open();
  const auto r = c.read();
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(drained.get());
  EXPECT_FALSE(s.server->ready());
}

TEST(Serve, ProcessIsolationRunsTasksInWorkers) {
  ServeConfig cfg;
  cfg.workers = 2;
  Running s(cfg, true);
  Client c(s.port());
  auto r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [40]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.js()["result"], 102334155);
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": ["x"]})");
  EXPECT_EQ(r.status, 400);
  // The worker is killed at 50 ms; without the kill the reply would take a minute.
  r = c.request(http::verb::post, "/v1/tasks/sleep_ms?timeout_ms=50", R"({"args": [60000]})");
  EXPECT_EQ(r.status, 504);
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [20]})");
  EXPECT_EQ(r.js()["result"], 6765);
  EXPECT_EQ(c.request(http::verb::get, "/api/stats").js()["pool"]["isolation"], "process");
}

// Both isolations count a task that ran past its timeout as timed_out, apart from cancelled, in
// /api/stats and in /metrics (the thread pool used to fold timeouts into cancelled).
TEST(Serve, BothIsolationsReportTimeoutsApartFromCancellations) {
  for (const bool process : {false, true}) {
    SCOPED_TRACE(process ? "process isolation" : "thread isolation");
    ServeConfig cfg;
    cfg.workers = 1;
    Running s(cfg, process);
    Client c(s.port());
    const auto r =
        c.request(http::verb::post, "/v1/tasks/sleep_ms?timeout_ms=50", R"({"args": [60000]})");
    ASSERT_EQ(r.status, 504) << r.body;
    json pool;
    EXPECT_TRUE(eventually([&] {
      pool = c.request(http::verb::get, "/api/stats").js()["pool"];
      return pool["timed_out"] == 1;
    })) << pool.dump();
    EXPECT_EQ(pool["cancelled"], 0);
    const auto m = c.request(http::verb::get, "/metrics");
    EXPECT_THAT(m.body, HasSubstr("crew_pool_tasks_total{outcome=\"timed_out\"} 1\n"));
    EXPECT_THAT(m.body, HasSubstr("crew_pool_tasks_total{outcome=\"cancelled\"} 0\n"));
  }
}

// ---- budgets: what one client may ask of the server ----------------------------------------

std::string error_message(const Reply& r) {
  return r.js()["error"]["message"].get<std::string>();
}

TEST(ServeBudgets, ClientsMayAskForLessThanTheLimitNeverMoreNorNone) {
  for (const bool process : {false, true}) {
    SCOPED_TRACE(process ? "process isolation" : "thread isolation");
    ServeConfig cfg;
    cfg.task_timeout = 5s;
    cfg.max_task_timeout = 20s;
    Running s(cfg, process);
    Client c(s.port());
    for (const char* target : {"/v1/tasks/fib?timeout_ms=0", "/v1/tasks/fib?timeout_ms=20001"}) {
      const auto r = c.request(http::verb::post, target, R"({"args": [10]})");
      EXPECT_EQ(r.status, 400) << target;
      EXPECT_EQ(r.js()["error"]["type"], "BadArguments");
      EXPECT_THAT(error_message(r), HasSubstr("at most 20000 ms"));
      EXPECT_THAT(error_message(r), HasSubstr("--max-task-timeout-ms"));
    }
    auto r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})", "application/json",
                       {{"X-Timeout-Ms", "25000"}});
    EXPECT_EQ(r.status, 400);
    r = c.request(http::verb::post, "/v1/tasks/fib?timeout_ms=20000", R"({"args": [10]})");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.js()["result"], 55);
  }
}

TEST(ServeBudgets, TheLimitIsTheTaskTimeoutUnlessSetAndTheDefaultMustFitIt) {
  {
    ServeConfig cfg;
    cfg.task_timeout = 2s;
    Running s(cfg);
    Client c(s.port());
    EXPECT_EQ(
        c.request(http::verb::post, "/v1/tasks/fib?timeout_ms=2001", R"({"args": [1]})").status,
        400);
    EXPECT_EQ(
        c.request(http::verb::post, "/v1/tasks/fib?timeout_ms=2000", R"({"args": [1]})").status,
        200);
  }
  ServeConfig over;
  over.task_timeout = 5s;
  over.max_task_timeout = 1s;
  EXPECT_THAT([&] { Running s(over); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("--max-task-timeout-ms")));
  ServeConfig none_by_default;
  none_by_default.task_timeout = 0ms;
  none_by_default.max_task_timeout = 1s;
  EXPECT_THROW(Running s(none_by_default), std::invalid_argument);
  // Both 0: the operator chose no limit at all, and a client may ask for none.
  ServeConfig unlimited;
  unlimited.task_timeout = 0ms;
  Running s(unlimited);
  Client c(s.port());
  EXPECT_EQ(c.request(http::verb::post, "/v1/tasks/fib?timeout_ms=0", R"({"args": [1]})").status,
            200);
}

// Before: these tasks ignored their timeout and kept the only thread for ever (sum_range(9e18)
// runs for years), so the next request was never answered.
TEST(ServeBudgets, BuiltInTasksStopAtTheirTimeoutAndFreeTheirThread) {
  ServeConfig cfg;
  cfg.workers = 1;
  Running s(cfg);
  for (const auto& [task, args] :
       {std::pair{"sum_range", "[9000000000000000000]"}, std::pair{"sleep_ms", "[600000]"},
        std::pair{"count_primes", "[100000000]"}}) {
    Client abuser(s.port());
    const auto r =
        abuser.request(http::verb::post, std::string("/v1/tasks/") + task + "?timeout_ms=50",
                       std::string(R"({"args": )") + args + "}");
    EXPECT_EQ(r.status, 504) << task << ": " << r.body;
    Client next(s.port());
    next.read_timeout(60s);  // fib(20) takes microseconds once the thread is free
    const auto ok = next.request(http::verb::post, "/v1/tasks/fib", R"({"args": [20]})");
    EXPECT_EQ(ok.status, 200) << "after " << task;
    EXPECT_EQ(ok.js()["result"], 6765);
  }
}

// Before: a client that hung up left its task to run to its end (here ten minutes), holding the
// only worker, so the next request waited that long.
TEST(ServeBudgets, AClientThatHangsUpHasItsTaskCancelled) {
  for (const bool process : {false, true}) {
    SCOPED_TRACE(process ? "process isolation" : "thread isolation");
    ServeConfig cfg;
    cfg.workers = 1;
    cfg.task_timeout = 600s;  // the budget is no help here: only the hang-up frees the worker
    Running s(cfg, process);
    auto stat = [&](const char* group, const char* key) {
      const json st = Client(s.port()).request(http::verb::get, "/api/stats").js();
      return st[group].value(key, 0);
    };
    {
      Client gone(s.port());
      const std::string body = R"({"args": [600000]})";
      gone.send_raw(
          "POST /v1/tasks/sleep_ms HTTP/1.1\r\nHost: x\r\nContent-Type: "
          "application/json\r\nContent-Length: " +
          std::to_string(body.size()) + "\r\n\r\n" + body);
      ASSERT_TRUE(eventually([&] { return stat("pool", "busy") == 1; }));
    }  // hangs up
    Client next(s.port());
    next.read_timeout(60s);  // a fresh worker answers in milliseconds; the old one in ten minutes
    const auto r = next.request(http::verb::post, "/v1/tasks/fib", R"({"args": [20]})");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_TRUE(eventually([&] { return stat("tasks", "abandoned") == 1; }));
  }
}

TEST(ServeBudgets, TheStopTokenIsTheTasksOwnAndOnlyWhileItRuns) {
  EXPECT_FALSE(crew::this_task::stop_token().stop_possible());  // no task on this thread
  std::stop_source source;
  {
    const crew::this_task::StopScope scope(source.get_token());
    EXPECT_FALSE(crew::this_task::stop_requested());
    source.request_stop();
    EXPECT_TRUE(crew::this_task::stop_requested());
  }
  EXPECT_FALSE(crew::this_task::stop_token().stop_possible());
}

// ---- access control -----------------------------------------------------------------------

// A token file in a directory of its own, removed with it.
class TokenFile {
 public:
  TokenFile() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "crew-auth-XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
  }
  ~TokenFile() { std::filesystem::remove_all(dir_); }
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  void write(const std::string& text) const {
    std::FILE* f = std::fopen(path().c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  std::string path() const { return (dir_ / "tokens").string(); }

 private:
  std::filesystem::path dir_;
};

// A server whose token file holds `tokens`.
struct Guarded {
  explicit Guarded(const std::string& tokens, bool metrics_public = false) {
    file.write(tokens);
    ServeConfig cfg;
    cfg.auth_token_file = file.path();
    cfg.metrics_public = metrics_public;
    server = std::make_unique<Running>(cfg);
  }
  std::uint16_t port() const { return server->port(); }
  TokenFile file;
  std::unique_ptr<Running> server;
};

int status_with(std::uint16_t port, const std::string& target, const std::string& authorization,
                http::verb verb = http::verb::get) {
  std::vector<std::pair<std::string, std::string>> headers;
  if (!authorization.empty()) headers.emplace_back("Authorization", authorization);
  const std::string body = verb == http::verb::post ? R"({"args": [10]})" : "";
  return Client(port).request(verb, target, body, "application/json", headers).status;
}

TEST(ServeAuth, EveryRouteButHealthNeedsABearerToken) {
  Guarded s("# ops\nfirst-token\n\n  second-token  \n");
  EXPECT_EQ(status_with(s.port(), "/healthz", ""), 200);
  for (const char* route : {"/readyz", "/metrics", "/api/stats", "/v1/tasks", "/nowhere"}) {
    EXPECT_EQ(status_with(s.port(), route, ""), 401) << route;
    EXPECT_EQ(status_with(s.port(), route, "Bearer first-token"),
              route == std::string("/nowhere") ? 404 : 200)
        << route;
  }
  const auto missing =
      Client(s.port()).request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})");
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(missing.raw[http::field::www_authenticate], R"(Bearer realm="crew")");
  EXPECT_EQ(missing.js()["error"]["type"], "Unauthorized");
  const auto wrong =
      Client(s.port()).request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})",
                               "application/json", {{"Authorization", "Bearer first-tokeN"}});
  EXPECT_EQ(wrong.status, 401);
  EXPECT_THAT(std::string(wrong.raw[http::field::www_authenticate]),
              HasSubstr(R"(error="invalid_token")"));
  EXPECT_EQ(status_with(s.port(), "/v1/tasks/fib", "Bearer second-token", http::verb::post), 200);
  EXPECT_EQ(status_with(s.port(), "/v1/tasks/fib", "bearer  second-token ", http::verb::post),
            200);  // the scheme in any case, spaces around the token
  for (const char* bad : {"Basic Zmlyc3QtdG9rZW4=", "Bearer", "Bearer ", "first-token",
                          "Bearer first-token second-token", "Bearer # ops"}) {
    EXPECT_EQ(status_with(s.port(), "/v1/tasks/fib", bad, http::verb::post), 401) << bad;
  }
}

TEST(ServeAuth, MetricsPublicLeavesOnlyMetricsOpen) {
  Guarded s("t0k3n\n", true);
  EXPECT_EQ(status_with(s.port(), "/metrics", ""), 200);
  EXPECT_EQ(status_with(s.port(), "/api/stats", ""), 401);
}

TEST(ServeAuth, AReloadSwapsTheTokensAndABadFileKeepsTheOldOnes) {
  Guarded s("old-token\n");
  EXPECT_EQ(status_with(s.port(), "/v1/tasks", "Bearer old-token"), 200);
  s.file.write("new-token\nother-token\n");
  EXPECT_EQ(s.server->server->reload_tokens(), 2U);
  EXPECT_EQ(status_with(s.port(), "/v1/tasks", "Bearer old-token"), 401);
  EXPECT_EQ(status_with(s.port(), "/v1/tasks", "Bearer new-token"), 200);
  s.file.write("# nothing but a comment\n");
  EXPECT_THAT([&] { s.server->server->reload_tokens(); },
              ::testing::ThrowsMessage<std::runtime_error>(HasSubstr("holds no token")));
  EXPECT_EQ(status_with(s.port(), "/v1/tasks", "Bearer new-token"), 200);
}

TEST(ServeAuth, BadTokenFilesAreRefusedWithTheReason) {
  TokenFile tokens;
  ServeConfig cfg;
  cfg.auth_token_file = tokens.path();  // not written yet
  EXPECT_THAT([&] { Running s(cfg); },
              ::testing::ThrowsMessage<std::runtime_error>(HasSubstr("cannot be read")));
  tokens.write("two words\n");
  EXPECT_THAT([&] { Running s(cfg); },
              ::testing::ThrowsMessage<std::runtime_error>(HasSubstr("line 1")));
}

TEST(ServeAuth, LoopbackAddresses) {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "::1", "localhost"}) {
    EXPECT_TRUE(crew::serve_app::is_loopback(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "::", "10.0.0.1", "192.168.1.1", "example.com", ""}) {
    EXPECT_FALSE(crew::serve_app::is_loopback(host)) << host;
  }
}

#ifdef CREW_EXAMPLE_PLUGIN
TEST(Serve, APluginTaskThatSegfaultsCostsOneRequest) {
  crew::Tasks all;
  crew::serve_app::add_builtin_tasks(all);
  crew::serve_app::load_plugins({CREW_EXAMPLE_PLUGIN}, all);
  crew::ProcessPoolOptions o;
  o.max_workers = 2;
  o.env["CREW_SERVE_PLUGINS"] = CREW_EXAMPLE_PLUGIN;
  o.env["ASAN_OPTIONS"] = "handle_segv=0:detect_leaks=0";
  o.env["TSAN_OPTIONS"] = "handle_segv=0";
  o.log = [](const crew::ProcessLogLine&) {};
  ServeConfig cfg;
  cfg.port = 0;
  cfg.log_format = "off";
  crew::serve_app::Server server(cfg, crew::serve_app::make_process_runner(all, std::move(o)));
  server.start();
  Client c(server.port());
  auto r = c.request(http::verb::post, "/v1/tasks/legacy_checksum", R"({"args": [""]})");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.js()["error"]["type"], "WorkerCrashed");
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("SIGSEGV"));
  int ok = 0;
  for (int i = 0; i < 100; ++i) {
    r = c.request(http::verb::post, "/v1/tasks/word_count", R"({"args": ["a b c"]})");
    ok += r.status == 200 && r.js()["result"] == 3;
  }
  EXPECT_EQ(ok, 100);
}

TEST(Serve, LoadingAMissingPluginNamesIt) {
  crew::Tasks t;
  EXPECT_THAT([&] { crew::serve_app::load_plugins({"/nonexistent/libx.so"}, t); },
              ::testing::ThrowsMessage<crew::PluginError>(HasSubstr("/nonexistent/libx.so")));
}

// A plugin whose registration throws (its task names are taken: it was loaded already) is a
// PluginError naming the plugin, not the Tasks registry's bare error.
TEST(Serve, APluginThatCannotRegisterIsAPluginError) {
  crew::Tasks t;
  crew::serve_app::load_plugins({CREW_EXAMPLE_PLUGIN}, t);
  EXPECT_THAT([&] { crew::serve_app::load_plugins({CREW_EXAMPLE_PLUGIN}, t); },
              ::testing::ThrowsMessage<crew::PluginError>(::testing::AllOf(
                  HasSubstr(CREW_EXAMPLE_PLUGIN), HasSubstr("failed to register"))));
}
#endif

// A cluster worker's /metrics: each worker's series with its label, then the totals.
TEST(ServeMetrics, ClusterSeriesCarryWorkerLabelsAndTotalsAddUp) {
  auto snapshot = [](int worker, std::uint64_t ok, double rss, double lag) {
    crew::serve_app::Metrics m;
    for (std::uint64_t i = 0; i < ok; ++i) {
      m.record("/v1/tasks/:name", 200, 0.002);
      m.outcome("ok", "fib", 0.002);
    }
    m.record("/healthz", 200, 0.0001);
    m.lag_ns = static_cast<std::int64_t>(lag * 1e9);
    m.lag_max_ns = static_cast<std::int64_t>(lag * 1e9);
    json s = {
        {"worker", worker},
        {"pid", 100 + worker},
        {"ready", true},
        {"uptime_s", 5.0 * worker},
        {"start_time_s", 1000.0 + worker},
        {"isolation", "thread"},
        {"pool",
         {{"workers", 2},
          {"busy", worker - 1},
          {"idle", 3 - worker},
          {"queued", 0},
          {"completed", ok},
          {"failed", 0},
          {"cancelled", 0},
          {"timed_out", 0},
          {"crashed", worker},
          {"utilization", 0.25 * worker},
          {"wait",
           {{"p50_s", 0.001}, {"p90_s", 0.002}, {"p99_s", 0.003}, {"max_s", 0.004}, {"count", ok}}},
          {"run",
           {{"p50_s", 0.001},
            {"p90_s", 0.002},
            {"p99_s", 0.003},
            {"max_s", 0.004},
            {"count", ok}}}}},
        {"process", {{"rss_bytes", rss}, {"cpu_seconds", 0.5}, {"open_fds", 10}}}};
    m.fill(s);
    if (worker == 2) s["http"]["connections"] = 5;  // worker 1's snapshot predates the field
    return s;
  };
  const std::vector<json> both = {snapshot(1, 3, 1000, 0.001), snapshot(2, 4, 3000, 0.004)};
  const json all = crew::serve_app::merge_snapshots(both);
  EXPECT_EQ(all["tasks"]["ok"], 7);
  EXPECT_EQ(all["http"]["count"], 9);
  EXPECT_EQ(all["pool"]["crashed"], 3);
  EXPECT_EQ(all["pool"]["workers"], 4);
  EXPECT_DOUBLE_EQ(all["pool"]["utilization"].get<double>(), 0.375);
  EXPECT_EQ(all["process"]["rss_bytes"], 4000);
  EXPECT_DOUBLE_EQ(all["lag"]["max_s"].get<double>(), 0.004);
  EXPECT_DOUBLE_EQ(all["start_time_s"].get<double>(), 1001.0);
  EXPECT_FALSE(all["pool"]["wait"].contains("p99_s"));  // quantiles do not add up

  const std::string text = crew::serve_app::render_prometheus(both, true);
  EXPECT_THAT(text, HasSubstr("crew_tasks_total{worker=\"1\",outcome=\"ok\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("crew_tasks_total{worker=\"2\",outcome=\"ok\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("crew_tasks_total{worker=\"all\",outcome=\"ok\"} 7\n"));
  EXPECT_THAT(text, HasSubstr("crew_http_request_duration_seconds_bucket{worker=\"all\","
                              "le=\"0.0025\"} 9\n"));
  EXPECT_THAT(text, HasSubstr("crew_http_request_duration_seconds_bucket{worker=\"all\","
                              "le=\"0.0005\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("crew_pool_wait_seconds{worker=\"2\",quantile=\"0.99\"} 0.003\n"));
  EXPECT_THAT(text, Not(HasSubstr("crew_pool_wait_seconds{worker=\"all\",quantile")));
  EXPECT_THAT(text, HasSubstr("crew_pool_wait_seconds_count{worker=\"all\"} 7\n"));
  EXPECT_THAT(text, HasSubstr("crew_http_connections{worker=\"1\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("crew_http_connections{worker=\"all\"} 5\n"));
  // Each family is declared once however many workers there are.
  std::size_t declared = 0;
  for (auto at = text.find("# TYPE crew_tasks_total "); at != std::string::npos;
       at = text.find("# TYPE crew_tasks_total ", at + 1)) {
    ++declared;
  }
  EXPECT_EQ(declared, 1U);

  const json stats = crew::serve_app::stats_json(all);
  EXPECT_EQ(stats["tasks"]["ok"], 7);
  EXPECT_EQ(stats["workers_reporting"], 2);
  EXPECT_FALSE(stats["pool"]["wait"].contains("p99_ms"));
}

// --- request-path fuzzing -------------------------------------------------------------------
//
// Two variants (docs/testing.md): ServeFuzz runs in the gate with the fixed seeds below and a
// fixed number of inputs per seed, the same inputs on every run; ServeFuzzRandom (CTest label
// fuzz-random, outside the gate) draws a new seed, or takes CREW_SERVE_FUZZ_SEED, and runs for
// a time budget. Either prints, for any failure, the seed, the client and input number, and the
// input itself hex-escaped.

// The bytes as the inside of a C++ string literal: printable ASCII as it is, everything else
// (and \ and ") as \xNN, closed and reopened ("\x0d" "1") where a hex digit follows, so that
// the text pastes into a test as it is.
std::string hex_escaped(std::string_view bytes) {
  std::string out;
  bool after_escape = false;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
      if (after_escape && std::isxdigit(c) != 0) out += "\"\"";
      out += ch;
      after_escape = false;
    } else {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", c);
      out += esc;
      after_escape = true;
    }
  }
  return out;
}

// Sends `bytes` on a fresh connection (in up to three pieces), half-closes, and returns what the
// server wrote before closing. Sets `problem` if the server neither answers nor closes in 30 s
// (its own timeouts are 1-2 s), or the connection cannot be made.
std::string exchange(std::uint16_t port, const std::string& bytes, std::mt19937_64& rng,
                     std::string& problem) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    problem = std::string("connect failed: ") + std::strerror(errno);
    ::close(fd);
    return out;
  }
  std::size_t sent = 0;
  for (int piece = 0; piece < 3 && sent < bytes.size(); ++piece) {
    std::size_t n = piece == 2 ? bytes.size() - sent : rng() % (bytes.size() - sent + 1);
    if (n == 0) continue;
    const ssize_t w = ::send(fd, bytes.data() + sent, n, MSG_NOSIGNAL);
    if (w <= 0) break;  // the server already answered and closed: fine
    sent += static_cast<std::size_t>(w);
  }
  ::shutdown(fd, SHUT_WR);
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      problem = "no answer and no close within 30 s";
    }
    break;
  }
  ::close(fd);
  return out;
}

// Valid requests to mutate: every route, a task with JSON, a raw body, chunked encoding.
const std::vector<std::string>& seeds() {
  static const std::vector<std::string> s = {
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /v1/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      "POST /v1/tasks/fib?timeout_ms=500 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 14\r\n\r\n{\"args\": [20]}",
      "POST /v1/tasks/sort_numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "X-Timeout-Ms: 500\r\nContent-Length: 27\r\n\r\n{\"args\": [[3, 1.5, -2, 7]]}",
      "POST /v1/tasks/sha256 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      "POST /v1/tasks/sum_range?priority=3&timeout_ms=500 HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"args\": [1000]}",
      "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n",
      "DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
  };
  return s;
}

std::string fuzz_input(std::mt19937_64& rng) {
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  std::string in;
  if (pick(4) == 0) {  // pure noise
    in.resize(1 + pick(2048));
    for (auto& c : in) c = static_cast<char>(rng());
    return in;
  }
  in = seeds()[pick(seeds().size())];
  const std::size_t mutations = 1 + pick(6);
  for (std::size_t m = 0; m < mutations; ++m) {
    const std::size_t at = pick(in.size() + 1);
    switch (pick(6)) {
      case 0:  // flip a byte
        if (at < in.size()) in[at] = static_cast<char>(rng());
        break;
      case 1:  // insert noise
        in.insert(at, std::string(1 + pick(16), static_cast<char>(rng())));
        break;
      case 2:  // cut a piece out
        in.erase(at, pick(16));
        break;
      case 3:  // repeat a piece (long headers, repeated fields)
        if (at < in.size()) in.insert(at, in.substr(at, 1 + pick(64)));
        break;
      case 4:  // a large, unrepresentable or negative number somewhere
        in.insert(at, std::array{"99999999999999999999", "1e999", "-1"}[pick(3)]);
        break;
      default:  // special characters of HTTP and JSON
        in.insert(at, std::string(1, "\r\n:{}[]\",% \0"[pick(12)]));
        break;
    }
  }
  return in;
}

// What any input may get back: nothing (a closed connection) or one of the statuses the service
// documents. Never a 5xx other than a task's 500, 503 or 504, and never a garbled status line.
bool acceptable(const std::string& reply, std::string& why) {
  if (reply.empty()) return true;
  // HTTP/1.0 requests are answered in HTTP/1.0.
  if ((reply.rfind("HTTP/1.1 ", 0) != 0 && reply.rfind("HTTP/1.0 ", 0) != 0) || reply.size() < 12) {
    why = "not an HTTP status line";
    return false;
  }
  const int status = std::atoi(reply.substr(9, 3).c_str());
  static const std::set<int> ok = {200, 400, 404, 405, 408, 413, 429, 431, 500, 503, 504};
  if (!ok.contains(status)) {
    why = "status " + std::to_string(status);
    return false;
  }
  return true;
}

std::size_t resident_bytes() {
  return crew::resident_memory_bytes();
}

struct FuzzPlan {
  std::uint64_t seed = 0;
  // Inputs each client sends; 0: send until `seconds` have passed instead.
  std::uint64_t inputs_per_client = 0;
  int seconds = 0;
};

constexpr int kFuzzClients = 4;

// Random bytes and mutated requests on the request path from four client threads, client t
// drawing from std::mt19937_64(seed + t): every reply is a documented status or a close, the
// server keeps answering /healthz throughout, no connection or descriptor is left behind, and
// resident memory stays bounded.
void fuzz_request_path(const FuzzPlan& plan) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  constexpr bool kMeasureMemory = false;  // ASan's quarantine and TSan's shadow grow on purpose
#else
  constexpr bool kMeasureMemory = true;
#endif
  if (plan.inputs_per_client != 0) {
    std::printf("fuzzing the request path: CREW_SERVE_FUZZ_SEED=%llu, %llu inputs per client\n",
                static_cast<unsigned long long>(plan.seed),
                static_cast<unsigned long long>(plan.inputs_per_client));
  } else {
    std::printf("fuzzing the request path: CREW_SERVE_FUZZ_SEED=%llu for %d s\n",
                static_cast<unsigned long long>(plan.seed), plan.seconds);
  }
  std::fflush(stdout);
  ServeConfig config;
  config.header_timeout = 2s;
  config.body_timeout = 2s;
  config.task_timeout = 1s;
  config.max_body = 64 * 1024;
  config.max_header = 8 * 1024;
  Running s(config);
  const auto port = s.port();
  auto fds = [&] {
    return Client(port).request(http::verb::get, "/api/stats").js()["process"]["open_fds"];
  };
  const auto fds_before = fds().get<int>();

  const std::uint64_t total = plan.inputs_per_client * kFuzzClients;
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::seconds(plan.seconds);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> inputs{0}, closed{0};
  std::mutex mutex;  // guards the four below
  std::condition_variable all_done;
  int clients_done = 0;
  std::vector<std::string> failures;
  std::size_t failure_count = 0;
  std::atomic<std::size_t> rss_warm{resident_bytes()};  // replaced once warmed up
  std::vector<std::thread> clients;
  for (int t = 0; t < kFuzzClients; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937_64 rng(plan.seed + static_cast<std::uint64_t>(t));
      for (std::uint64_t i = 0;
           plan.inputs_per_client != 0 ? i < plan.inputs_per_client : !stop.load(); ++i) {
        const std::string in = fuzz_input(rng);
        std::string why;
        const std::string reply = exchange(port, in, rng, why);
        const std::uint64_t n = ++inputs;
        if (total != 0 && n == total / 4) rss_warm = resident_bytes();
        if (reply.empty()) ++closed;
        if (why.empty() && !acceptable(reply, why)) {
          why += "; reply (" + std::to_string(reply.size()) + " bytes) \"" +
                 hex_escaped(std::string_view(reply).substr(0, 200)) + "\"";
        }
        if (!why.empty()) {
          std::lock_guard lock(mutex);
          ++failure_count;
          if (failures.size() < 5) {
            failures.push_back("CREW_SERVE_FUZZ_SEED=" + std::to_string(plan.seed) + " client " +
                               std::to_string(t) + " input " + std::to_string(i) + ": " + why +
                               "\n  input (" + std::to_string(in.size()) + " bytes): \"" +
                               hex_escaped(in) + "\"");
          }
        }
      }
      std::lock_guard lock(mutex);
      ++clients_done;
      all_done.notify_all();
    });
  }
  // Meanwhile a /healthz probe every 500 ms, and the end of a timed run.
  int probes = 0, healthz_failures = 0;
  bool warmed = total != 0;  // a counted run measures after a quarter of its inputs
  for (;;) {
    {
      std::unique_lock lock(mutex);
      if (all_done.wait_for(lock, 500ms, [&] { return clients_done == kFuzzClients; })) break;
    }
    ++probes;
    if (Client(port).request(http::verb::get, "/healthz").status != 200) ++healthz_failures;
    const auto now = std::chrono::steady_clock::now();
    if (!warmed && now - start >= (end - start) / 4) {
      rss_warm = resident_bytes();
      warmed = true;
    }
    if (total == 0 && now >= end) stop = true;
  }
  for (auto& c : clients) c.join();
  ++probes;  // and one after the last input
  if (Client(port).request(http::verb::get, "/healthz").status != 200) ++healthz_failures;
  std::printf("%llu inputs, %llu answered by a close, %d /healthz probes\n",
              static_cast<unsigned long long>(inputs.load()),
              static_cast<unsigned long long>(closed.load()), probes);
  if (total != 0) {
    EXPECT_EQ(inputs.load(), total);
  } else {
    EXPECT_GT(inputs.load(), 0U);
  }
  EXPECT_EQ(healthz_failures, 0);
  EXPECT_EQ(failure_count, 0U) << "inputs that failed (the first five follow)";
  for (const auto& f : failures) ADD_FAILURE() << f;
  // Still serving real work, and every fuzzed connection is gone.
  {
    Client c(port);
    const auto r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [30]})");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.js()["result"], 832040);
  }
  int fds_after = 0;
  EXPECT_TRUE(eventually([&] {  // sessions close a moment after their peers do
    fds_after = fds().get<int>();
    return fds_after <= fds_before;
  })) << "descriptors left open by fuzzed connections: "
      << fds_after << " open, " << fds_before << " before (CREW_SERVE_FUZZ_SEED=" << plan.seed
      << ")";
  if (kMeasureMemory) {
    const std::size_t warm = rss_warm.load();
    const std::size_t rss_end = resident_bytes();
    std::printf("resident memory %.1f MiB after warm-up, %.1f MiB at the end\n",
                static_cast<double>(warm) / (1 << 20), static_cast<double>(rss_end) / (1 << 20));
    EXPECT_LT(rss_end, warm + (std::size_t{32} << 20))
        << "memory grew by more than 32 MiB (CREW_SERVE_FUZZ_SEED=" << plan.seed << ")";
  }
}

// The gate's seeds: fixed, so the gate sends the same inputs on every run. A seed that once found
// a bug stays in this list (with a test of its own for the input it found, as for 1e999 above).
constexpr std::uint64_t kGateSeeds[] = {1, 2, 3, 4, 5, 6, 7, 8};
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::uint64_t kGateInputsPerClient = 2'500;  // 5-20x slower per request
#else
constexpr std::uint64_t kGateInputsPerClient = 10'000;  // about 1 s per seed on an idle machine
#endif

TEST(ServeFuzzReport, InputsArePrintedAsPastableHexEscapedStrings) {
  EXPECT_EQ(hex_escaped("GET /\r\n"), "GET /\\x0d\\x0a");
  const std::string awkward{'\0', '1', 'a', '"', '\\', '\xff'};
  EXPECT_EQ(hex_escaped(awkward), "\\x00\"\"1a\\x22\\x5c\\xff");
  EXPECT_EQ(hex_escaped("\n z"), "\\x0a z");  // no break needed before a non-hex character
}

class ServeFuzz : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(ServeFuzz, MutatedRequestsGetAStatusOrACloseWithBoundedMemory) {
  fuzz_request_path({.seed = GetParam(), .inputs_per_client = kGateInputsPerClient});
}

INSTANTIATE_TEST_SUITE_P(FixedSeeds, ServeFuzz, ::testing::ValuesIn(kGateSeeds),
                         [](const ::testing::TestParamInfo<std::uint64_t>& info) {
                           return "seed_" + std::to_string(info.param);
                         });

// Outside the gate (label fuzz-random): a new seed each run unless CREW_SERVE_FUZZ_SEED is set;
// CREW_SERVE_FUZZ_INPUTS inputs per client, or else CREW_SERVE_FUZZ_SECONDS (60 s; 20 s under a
// sanitizer). With the seed and input count a failure printed, the run repeats exactly.
TEST(ServeFuzzRandom, RandomAndMutatedRequestsGetAStatusOrACloseWithBoundedMemory) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  constexpr int kDefaultSeconds = 20;
#else
  constexpr int kDefaultSeconds = 60;
#endif
  auto env = [](const char* name) -> std::optional<std::uint64_t> {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return std::nullopt;
    return std::strtoull(v, nullptr, 10);
  };
  FuzzPlan plan;
  plan.seed = env("CREW_SERVE_FUZZ_SEED").value_or(std::random_device{}());
  plan.inputs_per_client = env("CREW_SERVE_FUZZ_INPUTS").value_or(0);
  plan.seconds = static_cast<int>(env("CREW_SERVE_FUZZ_SECONDS").value_or(kDefaultSeconds));
  fuzz_request_path(plan);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::serve_app::run_task_worker();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
