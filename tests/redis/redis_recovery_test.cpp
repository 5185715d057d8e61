// Queue and Worker when things go wrong: a worker that stopped renewing its lease, a lease lost
// while the task runs, a worker stopping with jobs in flight, an outcome Redis answers with an
// error of its state, jobs started by calls whose reply the worker lost, Redis killed and
// restarted in the middle of a batch. Thread isolation: the
// tasks count their executions in this process.
#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/process/tasks.hpp>
#include <crew/redis.hpp>
#include <crew/redis/worker.hpp>

#include "connection.hpp"
#include "redis/redis_server.hpp"

namespace {

using crew::redis::Isolation;
using crew::redis::Queue;
using crew::redis::Worker;
using crew_test::RedisServer;
using namespace std::chrono_literals;
using crew_test::eventually;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_executions{0};
std::atomic<bool> g_gate_open{false};

// The first execution holds on until it is told to stop (then returns -1, which must never be
// reported); every later one returns its argument.
const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("add", [](int a, int b) {
      ++g_executions;
      return a + b;
    });
    // Returns its argument once the test opens the gate.
    t.add("gated", [](int v) {
      ++g_executions;
      const auto limit = Clock::now() + 60s;
      while (!g_gate_open && Clock::now() < limit) std::this_thread::sleep_for(1ms);
      return v;
    });
    t.add("first_holds", [](int v) {
      if (g_executions++ > 0) return v;
      const auto limit = Clock::now() + 60s;
      while (!crew::this_task::stop_requested() && Clock::now() < limit) {
        std::this_thread::sleep_for(1ms);
      }
      return -1;
    });
    return t;
  }();
  return tasks;
}

class RedisRecovery : public ::testing::Test {
 protected:
  void SetUp() override {
    g_executions = 0;
    g_gate_open = false;
  }

  std::unique_ptr<Worker> worker(std::size_t workers = 2, std::chrono::milliseconds lease = 1s) {
    return std::make_unique<Worker>(test_tasks(),
                                    crew::redis::WorkerOptions{.url = server_.url(),
                                                               .queue = "q",
                                                               .workers = workers,
                                                               .lease = lease,
                                                               .isolation = Isolation::thread});
  }

  crew::redis::Reply fcall(const std::string& function, std::vector<std::string> args) {
    args.insert(args.begin(), {"FCALL", function, "1", "crew:{q}:"});
    return redis_.command(args);
  }

  std::string field(const std::string& id, const std::string& name) {
    const auto reply = redis_.command({"HGET", "crew:{q}:job:" + id, name});
    return reply.is_nil() ? "" : reply.str();
  }

  long long error_replies() {
    const std::string info = redis_.command({"INFO", "stats"}).str();
    const std::string key = "total_error_replies:";
    return std::stoll(info.substr(info.find(key) + key.size()));
  }

  // A connection of the worker's blocked in XREADGROUP: its fetch thread waits for work.
  bool fetch_blocked() {
    return redis_.command({"CLIENT", "LIST"}).str().find("cmd=xreadgroup") != std::string::npos;
  }

  RedisServer server_{{.appendonly = true}};
  crew::redis::Connection redis_{crew::redis::parse_url(server_.url())};
};

TEST_F(RedisRecovery, JobOfAWorkerThatStoppedRenewingRunsElsewhereAndTheLateResultIsRefused) {
  Queue queue({.url = server_.url(), .name = "q"});
  ASSERT_EQ(fcall("crew_init", {}).str(), "ok");
  crew::Future<int> sum = queue.run<int>({.job_id = "j"}, "add", 1, 2);
  // This test is the first worker: it takes the job, starts it, and then goes silent.
  const auto delivery = redis_.command(
      {"XREADGROUP", "GROUP", "workers", "ghost", "COUNT", "1", "STREAMS", "crew:{q}:p1", ">"});
  ASSERT_FALSE(delivery.is_nil());
  const std::string entry = delivery[0][1][0][0].str();
  const auto run = fcall("crew_start", {"j", "crew:{q}:p1", entry, "ghost", "1000"});
  ASSERT_EQ(run[0].str(), "run") << run.describe();
  const std::string ghost_lease = run[1].str();

  auto w = worker();  // reclaims the job once the ghost's lease expired, and runs it
  EXPECT_EQ(sum.get(), 3);
  EXPECT_EQ(g_executions.load(), 1);
  EXPECT_EQ(field("j", "reclaims"), "1");
  EXPECT_EQ(fcall("crew_complete", {"j", ghost_lease, "late"}).str(), "refused");
  EXPECT_EQ(field("j", "state"), "completed");
}

TEST_F(RedisRecovery, ALostNotificationIsNotALostResult) {
  Queue queue({.url = server_.url(), .name = "q"});
  ASSERT_EQ(fcall("crew_init", {}).str(), "ok");
  crew::Future<int> sum = queue.run<int>({.job_id = "j"}, "add", 1, 2);
  const auto delivery = redis_.command(
      {"XREADGROUP", "GROUP", "workers", "hand", "COUNT", "1", "STREAMS", "crew:{q}:p1", ">"});
  ASSERT_FALSE(delivery.is_nil());
  const std::string entry = delivery[0][1][0][0].str();
  const std::string lease =
      fcall("crew_start", {"j", "crew:{q}:p1", entry, "hand", "60000"})[1].str();
  // In one transaction: the result is stored, its notification vanishes, and every other
  // connection drops (the Queue's among them), as a Redis restart without the stream would do.
  redis_.command({"MULTI"});
  redis_.command({"FCALL", "crew_complete", "1", "crew:{q}:", "j", lease, std::string("\x03", 1)});
  redis_.command({"DEL", "crew:{q}:results:" + queue.producer_id()});
  redis_.command({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"});
  const auto exec = redis_.command({"EXEC"});
  ASSERT_EQ(exec[0].str(), "ok") << exec.describe();
  ASSERT_TRUE(sum.wait_for(60s));
  EXPECT_EQ(sum.get(), 3);
  // The submit connection dropped too: the next submission reconnects instead of failing.
  EXPECT_FALSE(queue.submit("add", 1, 1).empty());
}

TEST_F(RedisRecovery, LostLeaseStopsTheTaskAndItsOutcomeIsNeverReported) {
  Queue queue({.url = server_.url(), .name = "q"});
  auto w = worker();
  crew::Future<int> f = queue.run<int>({.job_id = "j"}, "first_holds", 7);
  ASSERT_TRUE(eventually([&] { return g_executions.load() == 1; }));  // running: see the next test
  ASSERT_EQ(field("j", "state"), "active");
  // As if this worker had been silent past its lease: expire it now and reclaim.
  redis_.command({"ZADD", "crew:{q}:leases", "XX", "0", w->id()});
  const auto reclaimed = fcall("crew_reclaim", {"10", "3", "0"});
  ASSERT_EQ(reclaimed.describe(), "[1, 0, 0]");
  EXPECT_EQ(f.get(), 7);
  EXPECT_EQ(g_executions.load(), 2);
  EXPECT_TRUE(eventually([&] { return w->stats().lost == 1; })) << w->stats().lost;
  EXPECT_EQ(w->stats().completed, 1u);
  EXPECT_EQ(w->stats().refused, 0u);  // the stale run's -1 was never sent
  EXPECT_EQ(field("j", "result"), std::string("\x07", 1));
}

TEST_F(RedisRecovery, StopHandsRunningJobsBackAtOnce) {
  Queue queue({.url = server_.url(), .name = "q"});
  auto first = worker();
  crew::Future<int> f = queue.run<int>({.job_id = "j"}, "first_holds", 9);
  // Running, not only started in Redis: on a busy machine the task may still wait for its thread
  // (stopped then, it would never run, and the next worker's run would be the one that holds).
  ASSERT_TRUE(eventually([&] { return g_executions.load() == 1; }));
  ASSERT_EQ(field("j", "state"), "active");
  const auto stopping = Clock::now();
  first->stop(0ms);
  std::printf("stop(0) took %lld ms\n", static_cast<long long>((Clock::now() - stopping) / 1ms));
  EXPECT_EQ(first->stats().released, 1u);
  EXPECT_EQ(field("j", "state"), "waiting");
  EXPECT_EQ(field("j", "attempt"), "0");
  auto second = worker();
  EXPECT_EQ(f.get(), 9);
  EXPECT_EQ(g_executions.load(), 2);
  EXPECT_EQ(field("j", "attempt"), "1");
}

TEST_F(RedisRecovery, StopLetsRunningJobsFinishWithinTheDeadline) {
  Queue queue({.url = server_.url(), .name = "q"});
  auto w = worker();
  std::vector<crew::Future<int>> sums;
  for (int i = 0; i < 20; ++i) sums.push_back(queue.run<int>("add", i, i));
  ASSERT_TRUE(eventually([&] { return w->stats().started > 0; }));
  w->stop(30s);
  const auto s = w->stats();
  EXPECT_EQ(s.released, 0u);
  EXPECT_EQ(s.completed, s.started);
  // What it did not take waits for the next worker.
  auto next = worker();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sums[i].get(), 2 * i);
}

// The same for a job the fetch thread runs itself (WorkerOptions::inline_below), whose outcome
// goes to Redis in the same write as the thread's next read.
TEST_F(RedisRecovery, AnInlineOutcomeAnsweredWithAServerErrorIsSentAgainNotDropped) {
  Queue queue({.url = server_.url(), .name = "q"});
  Worker w(test_tasks(), {.url = server_.url(),
                          .queue = "q",
                          .workers = 1,
                          .lease = 60s,
                          .isolation = Isolation::thread,
                          .inline_below = 60s});
  EXPECT_EQ(queue.run<int>("add", 1, 1).get(), 2);  // a run time to go by
  crew::Future<int> f = queue.run<int>({.job_id = "j"}, "gated", 5);
  ASSERT_TRUE(eventually([&] { return g_executions.load() == 2; }));
  EXPECT_EQ(w.stats().inlined, 1u);
  ASSERT_EQ(redis_.command({"FUNCTION", "DELETE", "crew"}).str(), "OK");
  const long long errors = error_replies();
  g_gate_open = true;
  ASSERT_TRUE(eventually([&] { return error_replies() > errors; }));
  crew::redis::Connection reload(crew::redis::parse_url(server_.url()));  // loads the library
  ASSERT_TRUE(f.wait_for(30s));
  EXPECT_EQ(f.get(), 5);
  EXPECT_EQ(g_executions.load(), 2);
  EXPECT_EQ(field("j", "reclaims"), "");
  EXPECT_TRUE(eventually([&] { return w.stats().completed == 2; })) << w.stats().completed;
}

TEST_F(RedisRecovery, AnOutcomeAnsweredWithAServerErrorIsSentAgainNotDropped) {
  Queue queue({.url = server_.url(), .name = "q"});
  auto w = worker(1, 60s);
  crew::Future<int> f = queue.run<int>({.job_id = "j"}, "gated", 5);
  ASSERT_TRUE(eventually([&] { return g_executions.load() == 1; }));
  // Without its function library Redis answers crew_report with an error of its own state (as a
  // restarted Redis answers LOADING while it reads its AOF back), not a crew_ argument check.
  ASSERT_EQ(redis_.command({"FUNCTION", "DELETE", "crew"}).str(), "OK");
  const long long errors = error_replies();
  g_gate_open = true;
  ASSERT_TRUE(eventually([&] { return error_replies() > errors; }));      // the report got an error
  crew::redis::Connection reload(crew::redis::parse_url(server_.url()));  // loads the library
  // Sent again: the job completes now, not after its 60 s lease ran out and it ran again.
  ASSERT_TRUE(f.wait_for(30s));
  EXPECT_EQ(f.get(), 5);
  EXPECT_EQ(g_executions.load(), 1);
  // Never reclaimed: a job's hash keeps no field at its default (0), and the job is there.
  EXPECT_EQ(field("j", "reclaims"), "");
  EXPECT_NE(field("j", "attempt"), "");
  EXPECT_TRUE(eventually([&] { return w->stats().completed == 1; }));
}

TEST_F(RedisRecovery, JobsStartedByCallsWhoseReplyTheWorkerLostRunAtOnce) {
  Queue queue({.url = server_.url(), .name = "q"});
  auto w = worker(2, 60s);
  ASSERT_TRUE(eventually([&] { return fetch_blocked(); }));
  auto submit = [&](const std::string& id, const std::string& args) {
    return std::vector<std::string>{
        "FCALL", "crew_submit", "1", "crew:{q}:", id,  queue.producer_id(),
        "add",   args,          "1", "0",         "1", "fixed",
        "0",     "0",           "0", "60000"};
  };
  // In one transaction, as if the worker's own calls had run and their replies been lost with the
  // connection: a crew_take starts j1 in its name, a blocking XREADGROUP delivers j2 to it, and
  // every connection drops.
  redis_.command({"MULTI"});
  redis_.command(submit("j1", std::string("\x92\x01\x02", 3)));
  redis_.command(submit("j2", std::string("\x92\x03\x04", 3)));
  redis_.command({"FCALL", "crew_take", "1", "crew:{q}:", w->id(), "1", "60000"});
  redis_.command(
      {"XREADGROUP", "GROUP", "workers", w->id(), "COUNT", "1", "STREAMS", "crew:{q}:p1", ">"});
  redis_.command({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"});
  const auto exec = redis_.command({"EXEC"});
  ASSERT_EQ(exec[2][1][0].str(), "j1") << exec.describe();
  ASSERT_FALSE(exec[3].is_nil()) << exec.describe();
  crew::Future<int> first = queue.result<int>("j1");
  crew::Future<int> second = queue.result<int>("j2");
  // Both run after the worker reconnects, not a 60 s lease later.
  ASSERT_TRUE(first.wait_for(30s));
  ASSERT_TRUE(second.wait_for(30s));
  EXPECT_EQ(first.get(), 3);
  EXPECT_EQ(second.get(), 7);
  EXPECT_EQ(g_executions.load(), 2);
  // Never reclaimed: a job's hash keeps no field at its default (0), and the job is there.
  EXPECT_EQ(field("j1", "reclaims"), "");
  EXPECT_NE(field("j1", "attempt"), "");
  EXPECT_EQ(field("j2", "attempt"), "1");
  EXPECT_TRUE(eventually([&] { return w->stats().completed == 2; }));
  EXPECT_EQ(w->stats().started, 2u);
}

TEST_F(RedisRecovery, RedisKilledAndRestartedMidwayEveryFutureSettlesOnceWithItsValue) {
  Queue queue({.url = server_.url(), .name = "q"});
  auto w = worker(4);
  constexpr int kJobs = 500;
  std::vector<crew::Future<int>> sums;
  for (int i = 0; i < kJobs; ++i) sums.push_back(queue.run<int>("add", i, 1'000'000));
  ASSERT_TRUE(eventually([&] { return g_executions.load() >= 50; }));
  const int before = g_executions.load();
  server_.kill9();
  server_.restart();
  std::printf("killed Redis after %d of %d executions\n", before, kJobs);
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(sums[i].wait_for(120s)) << "job " << i << " never settled";
    EXPECT_EQ(sums[i].get(), i + 1'000'000);
  }
  EXPECT_GE(g_executions.load(), kJobs);
  std::printf("%d executions for %d jobs\n", g_executions.load(), kJobs);
}

}  // namespace
