// `crew serve --backend redis://…` (src/serve/redis_runner.cpp): a real server whose tasks go to
// a redis-server of the test's own, run by a crew::redis::Worker over the same built-in tasks.
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <crew/redis.hpp>
#include <crew/redis/worker.hpp>

#include "builtin_tasks.hpp"
#include "connection.hpp"
#include "http_client.hpp"
#include "redis/redis_server.hpp"
#include "server.hpp"
#include "tasks.hpp"

namespace {

namespace http = boost::beast::http;
using json = nlohmann::json;
using namespace std::chrono_literals;
using crew::serve_app::ServeConfig;
using crew_test::Client;
using crew_test::eventually;
using crew_test::RedisServer;
using crew_test::Reply;
using ::testing::HasSubstr;

using crew_test::builtin_tasks;

// A server on the queue "t" of its own Redis; the worker that runs the jobs starts on demand.
class ServeRedis : public ::testing::Test {
 protected:
  void SetUp() override { server_ = make_server(ServeConfig{}.max_wait); }

  // A server on the queue "t" that waits at most `max_wait` for a result (--max-wait-ms).
  std::unique_ptr<crew::serve_app::Server> make_server(std::chrono::milliseconds max_wait) {
    ServeConfig c;
    c.host = "127.0.0.1";
    c.port = 0;
    c.log_format = "off";
    c.backend = redis_.url();
    c.queue = "t";
    c.max_wait = max_wait;
    auto server = std::make_unique<crew::serve_app::Server>(
        c,
        crew::serve_app::make_redis_runner(builtin_tasks(), {.url = redis_.url(), .queue = "t"}));
    server->start();
    return server;
  }

  void start_worker() {
    worker_ = std::make_unique<crew::redis::Worker>(
        builtin_tasks(), crew::redis::WorkerOptions{.url = redis_.url(),
                                                    .queue = "t",
                                                    .workers = 2,
                                                    .isolation = crew::redis::Isolation::thread});
  }

  Reply get(const std::string& target) {
    return Client(server_->port()).request(http::verb::get, target);
  }
  Reply post(const std::string& target, const std::string& body) {
    return Client(server_->port()).request(http::verb::post, target, body);
  }

  // GET `location` until the job is in `state`; the last reply.
  Reply job_in_state(const std::string& location, const std::string& state) {
    Reply r;
    EXPECT_TRUE(eventually([&] {
      r = get(location);
      return r.status == 200 && r.js()["state"] == state;
    })) << r.body;
    return r;
  }

  RedisServer redis_;  // first: it outlives the server and the worker
  std::unique_ptr<crew::serve_app::Server> server_;
  std::unique_ptr<crew::redis::Worker> worker_;
};

TEST_F(ServeRedis, TasksRunOnTheQueueWithTheSameRoutesAndErrors) {
  start_worker();
  Client c(server_->port());
  auto r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": [30]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.js()["result"], 832040);
  EXPECT_TRUE(r.js()["duration_ms"].is_number());
  r = c.request(http::verb::post, "/v1/tasks/sort_numbers?priority=3", R"({"args": [[3, 1.5]]})");
  EXPECT_EQ(r.js()["result"], json::parse("[1.5, 3]"));
  r = c.request(http::verb::post, "/v1/tasks/fib", R"({"args": ["x"]})");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(r.js()["error"]["type"], "BadArguments");
  r = c.request(http::verb::post, "/v1/tasks/sleep_ms?timeout_ms=200", R"({"args": [60000]})");
  EXPECT_EQ(r.status, 504) << r.body;
  EXPECT_EQ(r.js()["error"]["type"], "TimedOut");

  // Names and options are checked here, before anything reaches Redis.
  r = c.request(http::verb::post, "/v1/tasks/no_such_task", R"({"args": []})");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("fib"));
  r = c.request(http::verb::post, "/v1/tasks/fib?priority=7", R"({"args": [1]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("0..3"));
  r = c.request(http::verb::post, "/v1/tasks/fib?wait=maybe", R"({"args": [1]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("wait"));
  EXPECT_EQ(c.request(http::verb::get, "/v1/tasks").js()["isolation"], "redis");
  EXPECT_EQ(c.request(http::verb::get, "/readyz").status, 200);
}

TEST_F(ServeRedis, WaitFalseAnswers202AndTheJobCanBeFollowedToItsResult) {
  // No worker yet: the job waits in Redis, and its status says so.
  const Reply accepted = post("/v1/tasks/fib?wait=false", R"({"args": [10]})");
  ASSERT_EQ(accepted.status, 202) << accepted.body;
  const std::string id = accepted.js()["job_id"];
  const std::string location = accepted.js()["location"];
  EXPECT_EQ(location, "/v1/jobs/" + id);
  EXPECT_EQ(std::string(accepted.raw[http::field::location]), location);
  EXPECT_EQ(accepted.js()["state"], "waiting");
  Reply r = get(location);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.js()["state"], "waiting");
  EXPECT_EQ(r.js()["task"], "fib");
  EXPECT_EQ(r.js()["attempt"], 0);
  EXPECT_FALSE(r.js().contains("result"));

  start_worker();
  r = job_in_state(location, "completed");
  EXPECT_EQ(r.js()["result"], 55);
  EXPECT_EQ(r.js()["attempt"], 1);
  EXPECT_EQ(r.js()["attempts"], 1);
  EXPECT_LE(r.js()["created_ms"].get<long long>(), r.js()["finished_ms"].get<long long>());

  // A failed job shows the error its POST would have answered with.
  const Reply slow = post("/v1/tasks/sleep_ms?wait=false&timeout_ms=100", R"({"args": [60000]})");
  ASSERT_EQ(slow.status, 202) << slow.body;
  r = job_in_state(slow.js()["location"], "dead");
  EXPECT_EQ(r.js()["error"]["type"], "TimedOut");
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(),
              HasSubstr(slow.js()["job_id"].get<std::string>()));

  r = get("/v1/jobs/no-such-job");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.js()["error"]["type"], "NotFound");
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("no-such-job"));
  r = get("/v1/jobs/" + std::string(300, 'x'));
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("job_id"));
  EXPECT_EQ(post(location, "").status, 405);
}

TEST_F(ServeRedis, UnreachableRedisMakesReadyz503AndTasks503UntilItIsBack) {
  redis_.stop();
  Reply ready;
  ASSERT_TRUE(eventually([&] {
    ready = get("/readyz");
    return ready.status == 503;
  })) << ready.body;
  EXPECT_THAT(ready.js()["reason"].get<std::string>(), HasSubstr("Redis"));
  EXPECT_THAT(ready.js()["reason"].get<std::string>(),
              HasSubstr("127.0.0.1:" + std::to_string(redis_.port())));
  Reply r;
  // Refused at once while the probe finds Redis away (not after a command timeout).
  ASSERT_TRUE(eventually([&] {
    r = post("/v1/tasks/fib", R"({"args": [10]})");
    return r.status == 503;
  })) << r.body;
  EXPECT_EQ(r.js()["error"]["type"], "ConnectionError");
  EXPECT_EQ(std::string(r.raw[http::field::retry_after]), "1");

  redis_.restart();
  ASSERT_TRUE(eventually([&] {
    ready = get("/readyz");
    return ready.status == 200;
  })) << ready.body;
  start_worker();
  r = post("/v1/tasks/fib", R"({"args": [10]})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.js()["result"], 55);
}

TEST_F(ServeRedis, AClientThatHangsUpLeavesItsJobToRunAndItsResultKept) {
  {
    Client c(server_->port());
    c.send_raw(
        "POST /v1/tasks/fib HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 12\r\n\r\n{\"args\":[9]}");
    // The job exists before the client goes: the hang-up cancels the wait, not the job.
    crew::redis::Connection redis(crew::redis::parse_url(redis_.url()));
    ASSERT_TRUE(eventually([&] { return redis.command({"XLEN", "crew:{t}:p1"}).integer() == 1; }));
  }
  ASSERT_TRUE(eventually([&] {
    const json stats = get("/api/stats").js();
    return stats["tasks"].value("abandoned", 0) == 1;
  })) << get("/api/stats").body;
  start_worker();
  crew::redis::Queue q({.url = redis_.url(), .name = "t"});
  crew::redis::Connection redis(crew::redis::parse_url(redis_.url()));
  std::string id;
  ASSERT_TRUE(eventually([&] {
    const auto keys = redis.command({"KEYS", "crew:{t}:job:*"});
    if (keys.elements().size() != 1) return false;
    id = keys[0].str().substr(std::string("crew:{t}:job:").size());
    return q.status(id).state == crew::redis::JobState::completed;
  }));
  const Reply r = get("/v1/jobs/" + id);
  EXPECT_EQ(r.js()["result"], 34);
}

TEST_F(ServeRedis, AnIdempotencyKeyAttachesARepeatedRequestToTheFirstJob) {
  const std::vector<std::pair<std::string, std::string>> key = {{"Idempotency-Key", "order-17"}};
  // No worker yet: both submissions find one job, waiting.
  for (int i = 0; i < 2; ++i) {
    const Reply r = Client(server_->port())
                        .request(http::verb::post, "/v1/tasks/fib?wait=false", R"({"args": [10]})",
                                 "application/json", key);
    ASSERT_EQ(r.status, 202) << r.body;
    EXPECT_EQ(r.js()["job_id"], "order-17");
    EXPECT_EQ(r.js()["state"], "waiting");
  }
  crew::redis::Connection redis(crew::redis::parse_url(redis_.url()));
  EXPECT_EQ(redis.command({"XLEN", "crew:{t}:p1"}).integer(), 1);

  // A waiting request with the same key gets the first job's result (its own arguments are not
  // looked at: the key names the job), and nothing runs twice.
  start_worker();
  const Reply r =
      Client(server_->port())
          .request(http::verb::post, "/v1/tasks/fib", R"({"args": [12]})", "application/json", key);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.js()["result"], 55);
  crew::redis::Queue q({.url = redis_.url(), .name = "t"});
  const crew::redis::QueueStats stats = q.stats();
  EXPECT_EQ(stats.submitted, 1U);
  EXPECT_EQ(stats.completed, 1U);
  EXPECT_EQ(worker_->stats().started, 1U);

  const std::vector<std::pair<std::string, std::string>> long_key = {
      {"Idempotency-Key", std::string(257, 'k')}};
  const Reply bad = Client(server_->port())
                        .request(http::verb::post, "/v1/tasks/fib", R"({"args": [1]})",
                                 "application/json", long_key);
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_THAT(bad.js()["error"]["message"].get<std::string>(), HasSubstr("Idempotency-Key"));
}

TEST_F(ServeRedis, AWaitThatRunsOutAnswers202WithTheJobsStateAndTheJobGoesOn) {
  // No worker: without a bound, this request would wait for as long as none comes.
  const auto impatient = make_server(300ms);
  const Reply r =
      Client(impatient->port()).request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})");
  ASSERT_EQ(r.status, 202) << r.body;
  EXPECT_EQ(r.js()["state"], "waiting");
  EXPECT_EQ(r.js()["task"], "fib");
  const std::string location = r.js()["location"];
  EXPECT_EQ(location, "/v1/jobs/" + r.js()["job_id"].get<std::string>());
  EXPECT_EQ(std::string(r.raw[http::field::location]), location);
  start_worker();
  EXPECT_EQ(job_in_state(location, "completed").js()["result"], 55);
}

TEST_F(ServeRedis, AWaitThatRunsOutWhileRedisIsAwayAnswers503AndTheServerGoesOn) {
  // Long enough for the probe to find Redis away first (about 1-5 s), so that the look-up at the
  // end of the wait is refused at once; it once escaped the I/O thread and ended the server.
  const auto impatient = make_server(12s);
  Client c(impatient->port());
  c.read_timeout(60s);
  c.send_raw(
      "POST /v1/tasks/fib HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 12\r\n\r\n{\"args\":[9]}");
  crew::redis::Connection redis(crew::redis::parse_url(redis_.url()));
  ASSERT_TRUE(eventually([&] { return redis.command({"XLEN", "crew:{t}:p1"}).integer() == 1; }));
  // No worker, and Redis gone: when the wait runs out, the job's state cannot be looked up.
  redis_.kill9();
  ASSERT_TRUE(eventually(
      [&] { return Client(impatient->port()).request(http::verb::get, "/readyz").status == 503; }));
  const Reply r = c.read();
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(r.js()["error"]["type"], "ConnectionError") << r.body;
  EXPECT_EQ(Client(impatient->port()).request(http::verb::get, "/healthz").status, 200);
}

TEST_F(ServeRedis, AttemptsAndTheirBoundsReachTheJob) {
  const Reply accepted = post("/v1/tasks/fib?wait=false&attempts=3", R"({"args": [5]})");
  ASSERT_EQ(accepted.status, 202) << accepted.body;
  const Reply job = get(accepted.js()["location"]);
  EXPECT_EQ(job.js()["attempts"], 3) << job.body;
  for (const char* bad : {"0", "101", "x"}) {
    const Reply r = post(std::string("/v1/tasks/fib?attempts=") + bad, R"({"args": [5]})");
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("attempts"));
  }
}

TEST(ServeRedisBackend, TheLocalBackendRefusesJobRoutesNamingTheFlag) {
  ServeConfig c;
  c.host = "127.0.0.1";
  c.port = 0;
  c.log_format = "off";
  crew::serve_app::Server server(
      c, crew::serve_app::make_thread_runner(
             builtin_tasks(),
             {.workers = 1, .max_queue = 16, .max_stuck_replacements = std::nullopt}));
  server.start();
  Client client(server.port());
  auto r = client.request(http::verb::post, "/v1/tasks/fib?wait=false", R"({"args": [10]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("--backend redis://"));
  r = client.request(http::verb::get, "/v1/jobs/some-id");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("--backend redis://"));
  r = client.request(http::verb::post, "/v1/tasks/fib", R"({"args": [10]})", "application/json",
                     {{"Idempotency-Key", "k"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("--backend redis://"));
  // A thread task is never run twice: it may still be running, or have taken the server down.
  r = client.request(http::verb::post, "/v1/tasks/fib?attempts=2", R"({"args": [10]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.js()["error"]["message"].get<std::string>(), HasSubstr("--isolation process"));
  r = client.request(http::verb::post, "/v1/tasks/fib?wait=true&attempts=1", R"({"args": [10]})");
  EXPECT_EQ(r.js()["result"], 55);
}

TEST(ServeRedisBackend, BadSettingsNameTheFlagAndAnUnreachableRedisItsUrl) {
  auto error_of = [](const crew::serve_app::RedisRunnerOptions& o) -> std::string {
    try {
      (void)crew::serve_app::make_redis_runner(builtin_tasks(), o);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "no exception";
  };
  EXPECT_THAT(error_of({.url = "http://127.0.0.1:6379"}), HasSubstr("--backend"));
  EXPECT_THAT(error_of({.url = "redis://127.0.0.1:99999"}), HasSubstr("--backend"));
  int port = 0;
  {
    RedisServer gone;
    port = gone.port();
    EXPECT_THAT(error_of({.url = gone.url(), .queue = "a{b}"}), HasSubstr("--queue"));
  }
  const std::string url = "redis://127.0.0.1:" + std::to_string(port);
  try {
    (void)crew::serve_app::make_redis_runner(builtin_tasks(), {.url = url});
    ADD_FAILURE() << "no exception";
  } catch (const crew::redis::ConnectionError& e) {
    EXPECT_THAT(e.what(), HasSubstr("127.0.0.1:" + std::to_string(port)));
  }
}

}  // namespace
