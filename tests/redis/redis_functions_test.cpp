// The `crew` function library end to end, driven with FCALL through Connection: this test plays
// the producer and the worker (plain XREADGROUP), the way Queue and Worker will.
#include <chrono>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "connection.hpp"
#include "redis/redis_server.hpp"
#include "stats_reader.hpp"

namespace {

using crew::redis::Connection;
using crew::redis::parse_url;
using crew::redis::Reply;
using crew_test::RedisServer;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using Fields = std::map<std::string, std::string>;

const std::string kQueue = "crew:{q}:";

struct Job {
  std::string id;
  std::string task = "echo";
  std::string args = "args";
  int priority = 1;
  int delay_ms = 0;
  int attempts = 1;
  std::string backoff = "fixed";
  int backoff_ms = 0;
  std::string jitter = "0";
  int timeout_ms = 0;
  int retain_ms = 60'000;
};

struct Delivery {
  std::string stream, entry, id;
};

Fields fields_of(const Reply& flat) {
  Fields out;
  for (std::size_t i = 0; i + 1 < flat.elements().size(); i += 2) {
    out[flat[i].str()] = flat[i + 1].str();
  }
  return out;
}

class RedisFunctions : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(fcall("crew_init", {}).str(), "ok"); }

  Reply fcall(const std::string& function, std::vector<std::string> args) {
    args.insert(args.begin(), {"FCALL", function, "1", kQueue});
    return redis_.command(args);
  }

  Reply submit(const Job& job) {
    return fcall("crew_submit",
                 {job.id, "producer-1", job.task, job.args, std::to_string(job.priority),
                  std::to_string(job.delay_ms), std::to_string(job.attempts), job.backoff,
                  std::to_string(job.backoff_ms), job.jitter, std::to_string(job.timeout_ms),
                  std::to_string(job.retain_ms)});
  }

  // One entry from the highest-priority stream that has one, as a worker's XREADGROUP sees it.
  std::optional<Delivery> read(const std::string& worker) {
    Reply reply = redis_.command({"XREADGROUP", "GROUP", "workers", worker, "COUNT", "1", "STREAMS",
                                  kQueue + "p3", kQueue + "p2", kQueue + "p1", kQueue + "p0", ">",
                                  ">", ">", ">"});
    if (reply.is_nil()) return std::nullopt;
    const Reply& stream = reply[0];
    const Reply& entry = stream[1][0];
    return Delivery{stream[0].str(), entry[0].str(), fields_of(entry[1])["id"]};
  }

  Reply start(const Delivery& d, const std::string& worker, int lease_ms = 10'000) {
    return fcall("crew_start", {d.id, d.stream, d.entry, worker, std::to_string(lease_ms)});
  }

  // A worker's lease deadline (ms, Redis clock), and how many jobs it holds.
  double deadline(const std::string& worker) {
    return std::stod(redis_.command({"ZSCORE", kQueue + "leases", worker}).str());
  }
  long long held(const std::string& worker) {
    return redis_.command({"SCARD", kQueue + "held:" + worker}).integer();
  }

  Fields job(const std::string& id) {
    return fields_of(redis_.command({"HGETALL", kQueue + "job:" + id}));
  }

  std::vector<Fields> stream(const std::string& name) {
    std::vector<Fields> out;
    const Reply entries = redis_.command({"XRANGE", kQueue + name, "-", "+"});
    for (const auto& entry : entries.elements()) {
      out.push_back(fields_of(entry[1]));
    }
    return out;
  }

  long long stat(const std::string& name) {
    Reply reply = redis_.command({"HGET", kQueue + "stats", name});
    return reply.is_nil() ? 0 : std::stoll(reply.str());
  }

  long long redis_now_ms() {
    const Reply time = redis_.command({"TIME"});
    return std::stoll(time[0].str()) * 1000 + std::stoll(time[1].str()) / 1000;
  }

  long long due_ms(const std::string& id) {
    return std::stoll(redis_.command({"ZSCORE", kQueue + "delayed", id}).str());
  }

  // crew_stats as name -> value.
  std::map<std::string, long long> stats() {
    const Reply flat = fcall("crew_stats", {});
    std::map<std::string, long long> out;
    for (std::size_t i = 0; i + 1 < flat.elements().size(); i += 2) {
      out[flat[i].str()] = flat[i + 1].integer();
    }
    return out;
  }

  // Calls `function` until it returns `expected` (the Redis clock decides when a deadline has
  // passed); fails after 10 s.
  void poll_until(const std::string& function, const std::vector<std::string>& args,
                  const std::string& expected) {
    const auto deadline = Clock::now() + 10s;
    std::string last;
    while (Clock::now() < deadline) {
      last = fcall(function, args).describe();
      if (last == expected) return;
      std::this_thread::sleep_for(10ms);
    }
    FAIL() << function << " still returns " << last << ", expected " << expected;
  }

  // crew_take's jobs as {id, lease} and its due_ms.
  struct Taken {
    long long due_ms = 0;
    std::vector<std::pair<std::string, std::string>> jobs;
  };
  static Taken taken_of(const Reply& reply) {
    Taken t{reply[0].integer(), {}};
    for (std::size_t i = 1; i < reply.elements().size(); ++i) {
      t.jobs.emplace_back(reply[i][0].str(), reply[i][1].str());
    }
    return t;
  }
  Taken take(const std::string& worker, int count, int lease_ms = 10'000) {
    return taken_of(fcall("crew_take", {worker, std::to_string(count), std::to_string(lease_ms)}));
  }
  static std::vector<std::string> ids_of(const Taken& t) {
    std::vector<std::string> out;
    for (const auto& [id, lease] : t.jobs) out.push_back(id);
    return out;
  }

  RedisServer server_;
  Connection redis_{parse_url(server_.url())};
};

TEST_F(RedisFunctions, SubmitStartComplete) {
  const std::string args("\x92\x01\x00\xc0", 4);  // msgpack bytes, NUL included
  const std::string result("\x00\xff result", 9);
  Job j{.id = "j1", .args = args, .priority = 2, .timeout_ms = 1500};
  EXPECT_EQ(submit(j).describe(), R"(["created", "waiting"])");
  const std::map<std::string, long long> waiting = {
      {"waiting", 1}, {"delayed", 0}, {"active", 0}, {"dead_letters", 0}, {"submitted", 1}};
  EXPECT_EQ(stats(), waiting);

  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  EXPECT_EQ(delivery->stream, kQueue + "p2");
  EXPECT_EQ(delivery->id, "j1");
  Reply run = start(*delivery, "w1");
  ASSERT_EQ(run[0].str(), "run") << run.describe();
  const std::string lease = run[1].str();
  EXPECT_EQ(run[2].str(), "echo");
  EXPECT_EQ(run[3].str(), args);
  EXPECT_EQ(run[4].integer(), 1500);
  EXPECT_EQ(run[5].integer(), 1);
  EXPECT_EQ(job("j1")["state"], "active");
  EXPECT_EQ(job("j1")["owner"], "w1");
  // Acknowledged and deleted at start: the lease tracks the job now.
  EXPECT_EQ(redis_.command({"XPENDING", kQueue + "p2", "workers"})[0].integer(), 0);
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p2"}).integer(), 0);
  EXPECT_EQ(stats()["active"], 1);
  EXPECT_EQ(stats()["waiting"], 0);

  EXPECT_EQ(fcall("crew_complete", {"j1", lease, result}).str(), "ok");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p2"}).integer(), 0);
  EXPECT_EQ(redis_.command({"XPENDING", kQueue + "p2", "workers"})[0].integer(), 0);
  EXPECT_EQ(held("w1"), 0);
  EXPECT_EQ(job("j1")["state"], "completed");
  EXPECT_EQ(job("j1")["result"], result);
  EXPECT_GT(redis_.command({"PTTL", kQueue + "job:j1"}).integer(), 0);
  auto results = stream("results:producer-1");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["id"], "j1");
  EXPECT_EQ(results[0]["state"], "completed");
  EXPECT_EQ(results[0]["result"], result);
  EXPECT_EQ(stat("completed"), 1);
  EXPECT_EQ(stats()["active"], 0);

  EXPECT_EQ(fcall("crew_complete", {"j1", lease, "again"}).str(), "refused");
  EXPECT_EQ(stream("results:producer-1").size(), 1u);
}

// End-to-end latency is counted from when a job could first run: its delay is not latency.
TEST_F(RedisFunctions, LatencyHistogramCountsCompletedJobsFromWhenTheyCouldRun) {
  auto run_to_completion = [&](const std::string& id) {
    auto delivery = read("w1");
    ASSERT_TRUE(delivery);
    ASSERT_EQ(delivery->id, id);
    const std::string lease = start(*delivery, "w1")[1].str();
    ASSERT_EQ(fcall("crew_complete", {id, lease, "r"}).str(), "ok");
  };
  ASSERT_EQ(submit({.id = "now"})[0].str(), "created");
  run_to_completion("now");
  ASSERT_EQ(submit({.id = "later", .delay_ms = 1'000})[0].str(), "created");
  poll_until("crew_promote", {"10"}, "1");
  run_to_completion("later");

  auto s = stats();
  EXPECT_EQ(s["latency:count"], 2);
  // The count is the `completed` counter; a `count` field an older version kept is ignored.
  ASSERT_EQ(redis_.command({"HSET", kQueue + "latency", "count", "99"}).integer(), 1);
  EXPECT_EQ(stats()["latency:count"], 2);
  long long in_buckets = 0;
  for (const auto& [name, n] : s) {
    if (name.starts_with("latency:le:")) in_buckets += n;
  }
  EXPECT_EQ(in_buckets, 2);
  // Two jobs each completed within moments of becoming runnable; the 1 s delay would show.
  EXPECT_LT(s["latency:sum_ms"], 1'000);

  const crew::redis::QueueStats q = crew::redis::parse_queue_stats(fcall("crew_stats", {}));
  EXPECT_EQ(q.submitted, 2u);
  EXPECT_EQ(q.completed, 2u);
  EXPECT_EQ(q.latency.count, 2u);
  ASSERT_EQ(q.latency.buckets.size(), 17u);
  EXPECT_EQ(q.latency.buckets.back().le, std::chrono::milliseconds::max());
  EXPECT_LE(q.latency.quantile(0.99), 1'000ms);
  EXPECT_LE(q.latency.quantile(0.5), q.latency.quantile(0.99));
  EXPECT_THROW((void)q.latency.quantile(1.5), std::invalid_argument);
  const std::string text = crew::redis::prometheus_text(q, "q");
  EXPECT_THAT(text, HasSubstr("crew_queue_jobs_total{queue=\"q\",outcome=\"completed\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("crew_queue_latency_seconds_bucket{queue=\"q\",le=\"+Inf\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("crew_queue_latency_seconds_count{queue=\"q\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("crew_queue_jobs{queue=\"q\",state=\"waiting\"} 0\n"));
}

TEST_F(RedisFunctions, RetainZeroDeletesTheJobOnceTheProducerIsTold) {
  ASSERT_EQ(submit({.id = "j1", .retain_ms = 0})[0].str(), "created");
  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  const std::string lease = start(*delivery, "w1")[1].str();
  EXPECT_EQ(fcall("crew_complete", {"j1", lease, "r"}).str(), "ok");
  EXPECT_EQ(redis_.command({"EXISTS", kQueue + "job:j1"}).integer(), 0);
  ASSERT_EQ(stream("results:producer-1").size(), 1u);
  EXPECT_EQ(stream("results:producer-1")[0]["result"], "r");
}

TEST_F(RedisFunctions, AResultsStreamExpiresUnlessItsProducerRenewsIt) {
  const std::string results = kQueue + "results:producer-1";
  auto settle = [&](const std::string& id, const char* how) {
    // Kept 0 ms: no PEXPIRE of the job's hash either.
    ASSERT_EQ(submit({.id = id, .attempts = 1, .retain_ms = 0})[0].str(), "created");
    auto delivery = read("w1");
    ASSERT_TRUE(delivery);
    const std::string lease = start(*delivery, "w1")[1].str();
    if (std::string(how) == "complete") {
      ASSERT_EQ(fcall("crew_complete", {id, lease, "r"}).str(), "ok");
    } else {
      ASSERT_EQ(fcall("crew_fail", {id, lease, "RemoteError", "x"})[0].str(), "dead");
    }
  };
  // The first notification, by either path, gives the stream an hour to live.
  for (const char* how : {"complete", "fail"}) {
    (void)redis_.command({"DEL", results});
    settle(std::string("j-") + how, how);
    const long long ttl = redis_.command({"PTTL", results}).integer();
    EXPECT_GT(ttl, 3'500'000) << how;
    EXPECT_LE(ttl, 3'600'000) << how;
  }
  // A renewal (a living producer's Queue) is not cut short by later notifications.
  ASSERT_EQ(redis_.command({"PEXPIRE", results, "7200000"}).integer(), 1);
  // A stream that exists has its time to live: its notifications cost one XADD and no PEXPIRE.
  ASSERT_EQ(redis_.command({"CONFIG", "RESETSTAT"}).str(), "OK");
  settle("j-after", "complete");
  settle("j-dead", "fail");
  EXPECT_GT(redis_.command({"PTTL", results}).integer(), 7'000'000);
  EXPECT_THAT(redis_.command({"INFO", "commandstats"}).str(), Not(HasSubstr("cmdstat_pexpire")));
}

TEST_F(RedisFunctions, SubmitWithAnExistingIdAttachesAndNeverRunsAgain) {
  ASSERT_EQ(submit({.id = "same"}).describe(), R"(["created", "waiting"])");
  EXPECT_EQ(submit({.id = "same", .task = "other"}).describe(), R"(["exists", "waiting"])");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 1);
  EXPECT_EQ(job("same")["task"], "echo");

  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  const std::string lease = start(*delivery, "w1")[1].str();
  EXPECT_EQ(submit({.id = "same"}).describe(), R"(["exists", "active"])");
  ASSERT_EQ(fcall("crew_complete", {"same", lease, "r"}).str(), "ok");
  EXPECT_EQ(submit({.id = "same"}).describe(), R"(["exists", "completed"])");
  EXPECT_FALSE(read("w1"));
  EXPECT_EQ(stat("submitted"), 1);
}

TEST_F(RedisFunctions, DelayedJobIsNotDeliveredBeforeItIsDue) {
  const auto submitted = Clock::now();
  const long long before = redis_now_ms();
  EXPECT_EQ(fcall("crew_next_due", {}).integer(), -1);
  ASSERT_EQ(submit({.id = "later", .delay_ms = 500}).describe(), R"(["created", "delayed"])");
  const long long after = redis_now_ms();
  EXPECT_GE(due_ms("later"), before + 500);
  EXPECT_LE(due_ms("later"), after + 500);
  const long long due_in = fcall("crew_next_due", {}).integer();
  EXPECT_GT(due_in, 0);
  EXPECT_LE(due_in, 500);
  EXPECT_EQ(fcall("crew_promote", {"100"}).integer(), 0);
  EXPECT_FALSE(read("w1"));
  poll_until("crew_promote", {"100"}, "1");
  EXPECT_EQ(fcall("crew_next_due", {}).integer(), -1);
  EXPECT_GE(Clock::now() - submitted, 400ms);
  EXPECT_EQ(job("later")["state"], "waiting");
  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  EXPECT_EQ(delivery->id, "later");
  EXPECT_EQ(fcall("crew_promote", {"100"}).integer(), 0);
}

TEST_F(RedisFunctions, FailRetriesWithExponentialBackoffThenDeadLetters) {
  ASSERT_EQ(
      submit({.id = "flaky", .attempts = 3, .backoff = "exponential", .backoff_ms = 300})[0].str(),
      "created");
  for (int attempt = 1; attempt <= 3; ++attempt) {
    SCOPED_TRACE("attempt " + std::to_string(attempt));
    if (attempt > 1) poll_until("crew_promote", {"100"}, "1");
    auto delivery = read("w1");
    ASSERT_TRUE(delivery);
    Reply run = start(*delivery, "w1");
    ASSERT_EQ(run[5].integer(), attempt);
    const long long before = redis_now_ms();
    Reply failed = fcall("crew_fail", {"flaky", run[1].str(), "RemoteError", "boom"});
    const long long after = redis_now_ms();
    if (attempt < 3) {
      // 300 ms, then 600 ms: backoff_ms * 2^(attempt-1), no jitter.
      const int delay = 300 << (attempt - 1);
      EXPECT_EQ(failed.describe(), "[\"retry\", " + std::to_string(delay) + "]");
      EXPECT_GE(due_ms("flaky"), before + delay);
      EXPECT_LE(due_ms("flaky"), after + delay);
      EXPECT_EQ(job("flaky")["state"], "delayed");
      EXPECT_EQ(job("flaky")["error"], "boom");
      EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
      EXPECT_EQ(fcall("crew_promote", {"100"}).integer(), 0);  // not yet due
    } else {
      EXPECT_EQ(failed.describe(), R"(["dead"])");
    }
  }
  EXPECT_EQ(job("flaky")["state"], "dead");
  auto dead = stream("dead");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0]["id"], "flaky");
  EXPECT_EQ(dead[0]["task"], "echo");
  EXPECT_EQ(dead[0]["error_type"], "RemoteError");
  EXPECT_EQ(dead[0]["error"], "boom");
  EXPECT_EQ(dead[0]["attempts"], "3");
  auto results = stream("results:producer-1");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["state"], "dead");
  EXPECT_EQ(results[0]["error_type"], "RemoteError");
  EXPECT_EQ(results[0]["error"], "boom");
  EXPECT_EQ(stat("failed"), 3);
  EXPECT_EQ(stat("retried"), 2);
  EXPECT_EQ(stat("dead"), 1);
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
}

TEST_F(RedisFunctions, RetryWithoutBackoffGoesStraightBackAndJitterStaysInBounds) {
  ASSERT_EQ(submit({.id = "now", .attempts = 2})[0].str(), "created");
  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  Reply failed = fcall("crew_fail", {"now", start(*delivery, "w1")[1].str(), "E", "e"});
  EXPECT_EQ(failed.describe(), R"(["retry", 0])");
  EXPECT_EQ(job("now")["state"], "waiting");
  auto again = read("w2");
  ASSERT_TRUE(again);
  EXPECT_NE(again->entry, delivery->entry);

  for (int i = 0; i < 20; ++i) {
    const std::string id = "jittery-" + std::to_string(i);
    ASSERT_EQ(submit({.id = id, .priority = 0, .attempts = 2, .backoff_ms = 1000, .jitter = "0.5"})
                  .describe(),
              R"(["created", "waiting"])");
    auto d = read("w1");
    ASSERT_TRUE(d);
    ASSERT_EQ(d->id, id);
    Reply retry = fcall("crew_fail", {id, start(*d, "w1")[1].str(), "E", "e"});
    EXPECT_GE(retry[1].integer(), 500);
    EXPECT_LE(retry[1].integer(), 1500);
  }
}

TEST_F(RedisFunctions, RenewNeedsTheCurrentLease) {
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  const std::string lease = start(*delivery, "w1", 1000)[1].str();
  // Leases are per worker: renewing a job renews its worker's.
  const double before = deadline("w1");
  EXPECT_EQ(fcall("crew_renew", {"j1", lease, "60000"}).str(), "ok");
  EXPECT_GE(deadline("w1") - before, 59'000);
  EXPECT_EQ(fcall("crew_renew", {"j1", lease + "0", "60000"}).str(), "lost");
  EXPECT_EQ(fcall("crew_renew", {"nothing", lease, "60000"}).str(), "lost");
  ASSERT_EQ(fcall("crew_complete", {"j1", lease, "r"}).str(), "ok");
  EXPECT_EQ(fcall("crew_renew", {"j1", lease, "60000"}).str(), "lost");
}

TEST_F(RedisFunctions, ReclaimRefusesTheLateOwnerAndTheJobCompletesOnce) {
  ASSERT_EQ(submit({.id = "j1", .attempts = 1})[0].str(), "created");
  auto first = read("w1");
  ASSERT_TRUE(first);
  const std::string old_lease = start(*first, "w1", 100)[1].str();

  poll_until("crew_reclaim", {"10", "3", "0"}, "[1, 0, 0]");
  EXPECT_EQ(job("j1")["state"], "waiting");
  EXPECT_EQ(job("j1")["reclaims"], "1");
  EXPECT_NE(job("j1")["lease"], old_lease);
  EXPECT_EQ(fcall("crew_complete", {"j1", old_lease, "late"}).str(), "refused");
  EXPECT_EQ(fcall("crew_renew", {"j1", old_lease, "1000"}).str(), "lost");
  EXPECT_EQ(fcall("crew_fail", {"j1", old_lease, "E", "late"}).str(), "refused");

  auto second = read("w2");
  ASSERT_TRUE(second);
  EXPECT_NE(second->entry, first->entry);
  Reply run = start(*second, "w2");
  ASSERT_EQ(run[0].str(), "run");
  EXPECT_EQ(run[5].integer(), 2);  // an execution started, even if attempts is 1
  // The old owner wakes up while the job runs again: the token, not the state, refuses it.
  EXPECT_EQ(fcall("crew_complete", {"j1", old_lease, "late"}).str(), "refused");
  EXPECT_EQ(fcall("crew_renew", {"j1", old_lease, "1000"}).str(), "lost");
  EXPECT_EQ(fcall("crew_fail", {"j1", old_lease, "E", "late"}).str(), "refused");
  EXPECT_EQ(fcall("crew_complete", {"j1", run[1].str(), "on time"}).str(), "ok");
  EXPECT_EQ(fcall("crew_complete", {"j1", old_lease, "late"}).str(), "refused");

  auto results = stream("results:producer-1");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["result"], "on time");
  EXPECT_EQ(job("j1")["result"], "on time");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
  EXPECT_EQ(stat("reclaimed"), 1);
  EXPECT_EQ(stat("completed"), 1);
}

TEST_F(RedisFunctions, ReleaseHandsTheJobBackAtOnceWithoutSpendingAnAttempt) {
  ASSERT_EQ(submit({.id = "j1", .attempts = 1})[0].str(), "created");
  auto first = read("w1");
  ASSERT_TRUE(first);
  const std::string lease = start(*first, "w1", 60'000)[1].str();
  EXPECT_EQ(fcall("crew_release", {"j1", lease + "0"}).str(), "refused");
  EXPECT_EQ(fcall("crew_release", {"j1", lease}).str(), "ok");
  EXPECT_EQ(job("j1")["state"], "waiting");
  EXPECT_EQ(job("j1")["attempt"], "0");
  EXPECT_EQ(held("w1"), 0);
  EXPECT_EQ(fcall("crew_release", {"j1", lease}).str(), "refused");
  EXPECT_EQ(fcall("crew_complete", {"j1", lease, "late"}).str(), "refused");

  auto second = read("w2");
  ASSERT_TRUE(second);
  EXPECT_NE(second->entry, first->entry);
  Reply run = start(*second, "w2");
  ASSERT_EQ(run[0].str(), "run") << run.describe();
  EXPECT_EQ(run[5].integer(), 1);
  EXPECT_EQ(fcall("crew_complete", {"j1", run[1].str(), "r"}).str(), "ok");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
  EXPECT_FALSE(read("w3"));
}

TEST_F(RedisFunctions, ReclaimedTooOftenIsDeadLetteredAsWorkerCrashed) {
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  ASSERT_EQ(start(*delivery, "w1", 100)[0].str(), "run");
  poll_until("crew_reclaim", {"10", "0", "0"}, "[0, 1, 0]");
  EXPECT_EQ(job("j1")["state"], "dead");
  auto dead = stream("dead");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0]["error_type"], "WorkerCrashed");
  EXPECT_THAT(dead[0]["error"], HasSubstr("w1"));
  auto results = stream("results:producer-1");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["error_type"], "WorkerCrashed");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
}

TEST_F(RedisFunctions, DeliveryThatNeverStartedIsRedelivered) {
  redis_.command({"XADD", kQueue + "p1", "*", "id", "ghost"});
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  ASSERT_TRUE(read("w1"));  // the ghost entry
  auto lost = read("w1");   // w1 dies before crew_start
  ASSERT_TRUE(lost);
  ASSERT_EQ(lost->id, "j1");
  EXPECT_EQ(fcall("crew_reclaim", {"10", "3", "60000"}).describe(), "[0, 0, 0]");
  poll_until("crew_reclaim", {"10", "3", "100"}, "[0, 0, 1]");
  auto again = read("w2");
  ASSERT_TRUE(again);
  EXPECT_NE(again->entry, lost->entry);
  // w1's old entry is stale now: starting it is skipped, starting the new one runs.
  EXPECT_EQ(start(*lost, "w1")[0].str(), "skip");
  EXPECT_EQ(start(*again, "w2")[0].str(), "run");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
  EXPECT_EQ(redis_.command({"XPENDING", kQueue + "p1", "workers"})[0].integer(), 0);
  auto dead = stream("dead");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0]["id"], "ghost");
  EXPECT_EQ(dead[0]["error_type"], "Malformed");
}

TEST_F(RedisFunctions, MalformedEntriesAreDeadLettered) {
  redis_.command({"XADD", kQueue + "p1", "*", "junk", "1"});
  redis_.command({"XADD", kQueue + "p1", "*", "id", "ghost"});
  for (const std::string expected : {"no job id", "names no job"}) {
    auto delivery = read("w1");
    ASSERT_TRUE(delivery);
    Reply skipped = start(*delivery, "w1");
    EXPECT_EQ(skipped[0].str(), "skip");
    EXPECT_THAT(skipped[1].str(), HasSubstr(expected));
  }
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
  EXPECT_EQ(redis_.command({"XPENDING", kQueue + "p1", "workers"})[0].integer(), 0);
  auto dead = stream("dead");
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead[0]["error_type"], "Malformed");
  EXPECT_THAT(dead[0]["error"], HasSubstr("no job id"));
  EXPECT_EQ(dead[1]["id"], "ghost");
}

TEST_F(RedisFunctions, JobShowsTheRecordWithoutArgumentsAndWritesNothing) {
  // FCALL_RO: Redis itself refuses a function without the no-writes flag there.
  auto job_of = [&](const std::string& id) {
    return fields_of(redis_.command({"FCALL_RO", "crew_job", "1", kQueue, id}));
  };
  EXPECT_TRUE(redis_.command({"FCALL_RO", "crew_job", "1", kQueue, "nothing"}).is_nil());
  EXPECT_EQ(redis_.command({"EXISTS", kQueue + "job:nothing"}).integer(), 0);

  const long long before = redis_now_ms();
  ASSERT_EQ(submit({.id = "j1", .args = "secret", .priority = 2, .attempts = 2})[0].str(),
            "created");
  Fields waiting = job_of("j1");
  EXPECT_EQ(waiting["state"], "waiting");
  EXPECT_EQ(waiting["task"], "echo");
  EXPECT_EQ(waiting["priority"], "2");
  EXPECT_EQ(waiting["attempt"], "0");
  EXPECT_EQ(waiting["attempts"], "2");
  EXPECT_GE(std::stoll(waiting["created_ms"]), before);
  for (const char* absent : {"args", "started_ms", "finished_ms", "result", "error", "due_ms"}) {
    EXPECT_EQ(waiting.count(absent), 0u) << absent;
  }
  // Defaults are not stored in the job's hash; crew_job shows them all the same.
  ASSERT_EQ(submit({.id = "plain", .priority = 0})[0].str(), "created");
  Fields plain = job_of("plain");
  EXPECT_EQ(plain["priority"], "0");
  EXPECT_EQ(plain["attempts"], "1");
  EXPECT_EQ(job("plain").count("priority"), 0u);

  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  Reply run = start(*delivery, "w1");
  Fields active = job_of("j1");
  EXPECT_EQ(active["state"], "active");
  EXPECT_EQ(active["attempt"], "1");
  EXPECT_GE(std::stoll(active["started_ms"]), std::stoll(active["created_ms"]));

  // A failed attempt with one left: back to waiting, the error kept as the last one.
  ASSERT_EQ(fcall("crew_fail", {"j1", run[1].str(), "TimedOut", "too slow"}).describe(),
            R"(["retry", 0])");
  Fields retrying = job_of("j1");
  EXPECT_EQ(retrying["state"], "waiting");
  EXPECT_EQ(retrying["error_type"], "TimedOut");
  EXPECT_EQ(retrying["error"], "too slow");

  delivery = read("w1");
  ASSERT_TRUE(delivery);
  run = start(*delivery, "w1");
  const std::string result("\x00\x37", 2);
  ASSERT_EQ(fcall("crew_complete", {"j1", run[1].str(), result}).str(), "ok");
  Fields completed = job_of("j1");
  EXPECT_EQ(completed["state"], "completed");
  EXPECT_EQ(completed["result"], result);
  EXPECT_EQ(completed["attempt"], "2");
  EXPECT_GE(std::stoll(completed["finished_ms"]), std::stoll(completed["started_ms"]));

  ASSERT_EQ(submit({.id = "later", .delay_ms = 60'000})[0].str(), "created");
  Fields delayed = job_of("later");
  EXPECT_EQ(delayed["state"], "delayed");
  EXPECT_EQ(std::stoll(delayed["due_ms"]), due_ms("later"));

  ASSERT_EQ(submit({.id = "doomed"})[0].str(), "created");
  delivery = read("w1");
  ASSERT_TRUE(delivery);
  ASSERT_EQ(fcall("crew_fail", {"doomed", start(*delivery, "w1")[1].str(), "RemoteError", "boom"})
                .describe(),
            R"(["dead"])");
  Fields dead = job_of("doomed");
  EXPECT_EQ(dead["state"], "dead");
  EXPECT_EQ(dead["error_type"], "RemoteError");
  EXPECT_EQ(dead["error"], "boom");
  EXPECT_EQ(dead.count("finished_ms"), 1u);

  auto error_of = [](const Reply& reply) { return reply.is_error() ? reply.error() : ""; };
  EXPECT_THAT(error_of(redis_.command({"FCALL_RO", "crew_job", "1", kQueue, ""})),
              HasSubstr("id must be"));
  EXPECT_THAT(
      error_of(redis_.command({"FCALL_RO", "crew_job", "1", kQueue, std::string(257, 'x')})),
      HasSubstr("id must be"));
  EXPECT_THAT(error_of(redis_.command({"FCALL_RO", "crew_job", "1", "jobs", "j1"})),
              HasSubstr("queue prefix"));
}

TEST_F(RedisFunctions, TakeStartsUpToCountJobsHighestPriorityFirst) {
  for (int priority = 0; priority <= 3; ++priority) {
    for (int i = 0; i < 2; ++i) {
      std::string id = "p";  // built by appending: GCC 12 warns falsely on "p" + std::string
      id += std::to_string(priority) + "-" + std::to_string(i);
      ASSERT_EQ(submit({.id = id, .priority = priority})[0].str(), "created");
    }
  }
  const Reply first = fcall("crew_take", {"w1", "3", "10000"});
  ASSERT_EQ(first.elements().size(), 4u) << first.describe();
  EXPECT_EQ(first[0].integer(), -1);  // no delayed job
  const Reply& started = first[1];    // {id, lease, task, args, timeout_ms, attempt}
  EXPECT_EQ(started[0].str(), "p3-0");
  EXPECT_EQ(started[2].str(), "echo");
  EXPECT_EQ(started[3].str(), "args");
  EXPECT_EQ(started[4].integer(), 0);
  EXPECT_EQ(started[5].integer(), 1);
  EXPECT_EQ(job("p3-0")["state"], "active");
  EXPECT_EQ(job("p3-0")["owner"], "w1");
  EXPECT_EQ(job("p3-0")["lease"], started[1].str());
  EXPECT_EQ(ids_of(taken_of(first)), (std::vector<std::string>{"p3-0", "p3-1", "p2-0"}));
  EXPECT_EQ(held("w1"), 3);
  EXPECT_EQ(redis_.command({"ZCARD", kQueue + "leases"}).integer(), 1);  // one worker
  // Started jobs are acknowledged: the pending lists hold nothing.
  for (const char* stream : {"p3", "p2"}) {
    EXPECT_EQ(redis_.command({"XPENDING", kQueue + stream, "workers"})[0].integer(), 0);
  }
  EXPECT_EQ(ids_of(take("w2", 4)), (std::vector<std::string>{"p2-1", "p1-0", "p1-1", "p0-0"}));
  EXPECT_EQ(ids_of(take("w1", 4)), (std::vector<std::string>{"p0-1"}));
  EXPECT_TRUE(take("w1", 4).jobs.empty());
  EXPECT_EQ(stats()["active"], 8);
}

TEST_F(RedisFunctions, TakePromotesDueDelayedJobsNeverEarly) {
  ASSERT_EQ(submit({.id = "later", .delay_ms = 300})[0].str(), "created");
  const long long due = due_ms("later");
  Taken t = take("w1", 1);
  EXPECT_TRUE(t.jobs.empty());
  EXPECT_GT(t.due_ms, 0);
  EXPECT_LE(t.due_ms, 300);
  // The submission's `wake` entry is skipped: the caller is about to block for due_ms itself.
  EXPECT_TRUE(redis_
                  .command({"XREADGROUP", "GROUP", "workers", "w1", "COUNT", "1", "STREAMS",
                            kQueue + "wake", ">"})
                  .is_nil());
  const auto deadline = Clock::now() + 10s;
  while (t.jobs.empty() && Clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
    t = take("w1", 1);
  }
  ASSERT_EQ(ids_of(t), (std::vector<std::string>{"later"}));
  EXPECT_GE(std::stoll(job("later")["started_ms"]), due);
  EXPECT_EQ(t.due_ms, -1);
}

// What a worker pipelines behind its blocking read: the delivered entry starts first, with no
// round trip between delivery and start.
TEST_F(RedisFunctions, TakeOwnStartsWhatABlockingReadDeliveredFirst) {
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  auto delivery = read("w1");  // the blocking read's
  ASSERT_TRUE(delivery);
  ASSERT_EQ(delivery->id, "j1");
  ASSERT_EQ(submit({.id = "j2", .priority = 3})[0].str(), "created");
  // j1 first, though j2 has the higher priority: it was delivered already.
  const Taken own = taken_of(fcall("crew_take", {"w1", "1", "10000", "own"}));
  EXPECT_EQ(ids_of(own), (std::vector<std::string>{"j1"}));
  EXPECT_EQ(job("j1")["state"], "active");
  EXPECT_EQ(redis_.command({"XPENDING", kQueue + "p1", "workers"})[0].integer(), 0);
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
  // Nothing of w1's is left to start, and a read that delivered nothing (it timed out, or a
  // stopping worker unblocked it) starts nothing new either.
  EXPECT_TRUE(taken_of(fcall("crew_take", {"w1", "5", "10000", "own"})).jobs.empty());
  EXPECT_EQ(job("j2")["state"], "waiting");
  // With a delivery, the same call goes on to new jobs, up to its count.
  ASSERT_EQ(submit({.id = "j3"})[0].str(), "created");
  ASSERT_EQ(read("w1")->id, "j2");
  EXPECT_EQ(ids_of(taken_of(fcall("crew_take", {"w1", "5", "10000", "own"}))),
            (std::vector<std::string>{"j2", "j3"}));
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p3"}).integer(), 0);
  const Reply bad = fcall("crew_take", {"w1", "1", "10000", "mine"});
  ASSERT_TRUE(bad.is_error());
  EXPECT_THAT(bad.error(), HasSubstr("must be 'own'"));
}

// A blocking read delivers one entry of each stream with new ones, so more can wait only in a
// stream its delivery left entries in: only then does crew_take 'own' read for new jobs (a waited-
// for job's start is spared four empty reads).
TEST_F(RedisFunctions, TakeOwnLooksForMoreOnlyWhereItsDeliveryLeftEntries) {
  const auto reads = [&] {
    std::istringstream info(redis_.command({"INFO", "commandstats"}).str());
    for (std::string line; std::getline(info, line);) {
      if (line.starts_with("cmdstat_xreadgroup:calls=")) return std::stoll(line.substr(25));
    }
    return 0LL;
  };
  for (const char* id : {"j1", "j2"}) ASSERT_EQ(submit({.id = id})[0].str(), "created");
  ASSERT_EQ(read("w1")->id, "j1");
  EXPECT_EQ(ids_of(taken_of(fcall("crew_take", {"w1", "5", "10000", "own"}))),
            (std::vector<std::string>{"j1", "j2"}));
  ASSERT_EQ(submit({.id = "j3"})[0].str(), "created");
  ASSERT_EQ(read("w1")->id, "j3");
  const long long before = reads();
  EXPECT_EQ(ids_of(taken_of(fcall("crew_take", {"w1", "5", "10000", "own"}))),
            (std::vector<std::string>{"j3"}));
  EXPECT_EQ(reads() - before, 1);  // its own pending entries, of all five streams at once
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
}

// Entries a take started stay behind an older one still pending (a blocking read's, not started
// yet), and go with it once it is resolved: started, or redelivered after its reader died.
TEST_F(RedisFunctions, EntriesHeldBackByAPendingOneGoWithIt) {
  for (const char* id : {"j1", "j2", "j3"}) ASSERT_EQ(submit({.id = id})[0].str(), "created");
  auto delivery = read("w1");
  ASSERT_TRUE(delivery);
  ASSERT_EQ(delivery->id, "j1");
  ASSERT_EQ(ids_of(take("w2", 2)), (std::vector<std::string>{"j2", "j3"}));
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 3);  // j1's held them back
  EXPECT_EQ(stats()["waiting"], 3);
  ASSERT_EQ(start(*delivery, "w1")[0].str(), "run");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);

  // The same, resolved by a redelivery.
  for (const char* id : {"k1", "k2"}) ASSERT_EQ(submit({.id = id})[0].str(), "created");
  ASSERT_EQ(read("w3")->id, "k1");  // w3 dies before starting it
  ASSERT_EQ(ids_of(take("w2", 1)), (std::vector<std::string>{"k2"}));
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 2);
  poll_until("crew_reclaim", {"10", "3", "1"}, "[0, 0, 1]");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 1);  // k1's new entry alone
  EXPECT_EQ(ids_of(take("w2", 1)), (std::vector<std::string>{"k1"}));
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
}

// A lease token is the entry's id after its priority: different for every start of a job.
TEST_F(RedisFunctions, EveryStartOfAJobHasANewLease) {
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  const Taken first = take("w1", 1);
  ASSERT_EQ(first.jobs.size(), 1u);
  EXPECT_EQ(first.jobs[0].second.substr(0, 2), "1:");
  ASSERT_EQ(fcall("crew_release", {"j1", first.jobs[0].second}).str(), "ok");
  const Taken second = take("w1", 1);
  ASSERT_EQ(second.jobs.size(), 1u);
  EXPECT_NE(second.jobs[0].second, first.jobs[0].second);
  EXPECT_EQ(fcall("crew_complete", {"j1", first.jobs[0].second, "late"}).str(), "refused");
  EXPECT_EQ(fcall("crew_complete", {"j1", second.jobs[0].second, "r"}).str(), "ok");
}

TEST_F(RedisFunctions, TakeSettlesStaleAndMalformedEntriesWithoutCountingThem) {
  redis_.command({"XADD", kQueue + "p1", "*", "junk", "1"});
  redis_.command({"XADD", kQueue + "p1", "*", "id", "ghost"});
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  redis_.command({"XADD", kQueue + "p1", "*", "id", "j1"});  // a second, stale entry of j1
  ASSERT_EQ(submit({.id = "j2"})[0].str(), "created");
  EXPECT_EQ(ids_of(take("w1", 1)), (std::vector<std::string>{"j1"}));
  EXPECT_EQ(ids_of(take("w1", 5)), (std::vector<std::string>{"j2"}));
  // Every entry read is gone: the started jobs' with their start, the others settled.
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 0);
  EXPECT_EQ(redis_.command({"XPENDING", kQueue + "p1", "workers"})[0].integer(), 0);
  auto dead = stream("dead");
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead[0]["error_type"], "Malformed");
  EXPECT_THAT(dead[0]["error"], HasSubstr("no job id"));
  EXPECT_EQ(dead[1]["id"], "ghost");
}

TEST_F(RedisFunctions, TakeCreatesTheGroupsAgainWhenAStreamWasDeleted) {
  redis_.command({"DEL", kQueue + "p1"});
  ASSERT_EQ(submit({.id = "j1"})[0].str(), "created");
  EXPECT_EQ(ids_of(take("w1", 1)), (std::vector<std::string>{"j1"}));
}

TEST_F(RedisFunctions, ReportSettlesABatchThenTakesTheNextJobs) {
  ASSERT_EQ(submit({.id = "a", .priority = 2})[0].str(), "created");
  ASSERT_EQ(submit({.id = "b"})[0].str(), "created");
  ASSERT_EQ(submit({.id = "c", .attempts = 2})[0].str(), "created");
  ASSERT_EQ(submit({.id = "d", .priority = 0})[0].str(), "created");
  ASSERT_EQ(submit({.id = "e"})[0].str(), "created");
  const Taken t = take("w1", 3);
  ASSERT_EQ(ids_of(t), (std::vector<std::string>{"a", "b", "c"}));
  const std::vector<std::string> outcomes = {
      "complete", "a", t.jobs[0].second, "ra", "",     //
      "fail",     "b", t.jobs[1].second, "E",  "eb",   // the last attempt: dead
      "fail",     "c", t.jobs[2].second, "E",  "ec"};  // goes straight back to p1
  std::vector<std::string> args = {"w1", "2", "10000", "3"};
  args.insert(args.end(), outcomes.begin(), outcomes.end());
  const Reply reply = fcall("crew_report", args);
  ASSERT_EQ(reply.elements().size(), 2u) << reply.describe();
  EXPECT_EQ(reply[0].describe(), R"(["ok", "dead", "retry"])");
  // p1 before p0: e, then c's new entry (behind e), not d.
  EXPECT_EQ(ids_of(taken_of(reply[1])), (std::vector<std::string>{"e", "c"}));
  EXPECT_EQ(job("c")["attempt"], "2");
  EXPECT_EQ(job("a")["state"], "completed");
  EXPECT_EQ(job("b")["state"], "dead");
  EXPECT_EQ(stat("completed"), 1);
  EXPECT_EQ(stat("failed"), 2);
  EXPECT_EQ(stat("retried"), 1);
  EXPECT_EQ(stat("dead"), 1);
  EXPECT_EQ(stats()["latency:count"], 1);

  // The same call again (its reply was lost): every outcome is refused, nothing settles twice.
  args[1] = "0";
  EXPECT_EQ(fcall("crew_report", args).describe(), R"([["refused", "refused", "refused"]])");
  EXPECT_EQ(stream("results:producer-1").size(), 2u);
  EXPECT_EQ(stat("completed"), 1);
  EXPECT_EQ(stats()["latency:count"], 1);
  EXPECT_EQ(job("c")["state"], "active");
  EXPECT_EQ(stats()["waiting"], 1);  // d
}

// A batch's notifications to one producer go in one entry, a group of fields per job from its
// `id` on; the hashes of jobs kept for 0 ms go with one DEL.
TEST_F(RedisFunctions, ReportNotifiesABatchInOneEntry) {
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_EQ(submit({.id = id, .retain_ms = 0})[0].str(), "created");
  }
  const Taken t = take("w1", 3);
  ASSERT_EQ(t.jobs.size(), 3u);
  std::vector<std::string> args = {"w1", "0", "10000", "3"};
  for (const auto& [id, lease] : t.jobs) {
    args.insert(args.end(), {"complete", id, lease, "r" + id, ""});
  }
  EXPECT_EQ(fcall("crew_report", args).describe(), R"([["ok", "ok", "ok"]])");
  const Reply entries = redis_.command({"XRANGE", kQueue + "results:producer-1", "-", "+"});
  ASSERT_EQ(entries.elements().size(), 1u);
  std::vector<std::string> fields;
  for (const Reply& f : entries[0][1].elements()) fields.push_back(f.str());
  EXPECT_EQ(fields, (std::vector<std::string>{"id", "a", "state", "completed", "result", "ra",  //
                                              "id", "b", "state", "completed", "result", "rb",  //
                                              "id", "c", "state", "completed", "result", "rc"}));
  for (const char* id : {"a", "b", "c"}) {
    EXPECT_EQ(redis_.command({"EXISTS", kQueue + "job:" + id}).integer(), 0) << id;
  }
  EXPECT_EQ(stat("completed"), 3);
}

// The writes that settle a batch come at its end: an outcome repeated within the same call is
// refused all the same, so a job is settled once and its producer told once.
TEST_F(RedisFunctions, AnOutcomeRepeatedWithinOneReportIsRefused) {
  ASSERT_EQ(submit({.id = "a", .retain_ms = 0})[0].str(), "created");
  const Taken t = take("w1", 1);
  ASSERT_EQ(t.jobs.size(), 1u);
  const std::string& lease = t.jobs[0].second;
  const std::vector<std::string> args = {"w1",       "0", "10000", "3",         //
                                         "complete", "a", lease,   "r1", "",    //
                                         "complete", "a", lease,   "r2", "",    //
                                         "fail",     "a", lease,   "E",  "e"};  //
  EXPECT_EQ(fcall("crew_report", args).describe(), R"([["ok", "refused", "refused"]])");
  EXPECT_EQ(stat("completed"), 1);
  EXPECT_EQ(stat("failed"), 0);
  auto results = stream("results:producer-1");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["result"], "r1");
  EXPECT_EQ(held("w1"), 0);
}

TEST_F(RedisFunctions, ReportChecksEveryOutcomeBeforeSettlingAny) {
  ASSERT_EQ(submit({.id = "a"})[0].str(), "created");
  const Taken t = take("w1", 1);
  ASSERT_EQ(t.jobs.size(), 1u);
  const Reply bad = fcall("crew_report", {"w1", "1", "10000", "2", "complete", "a",
                                          t.jobs[0].second, "r", "", "finish", "a", "1", "r", ""});
  ASSERT_TRUE(bad.is_error());
  EXPECT_THAT(bad.error(), HasSubstr("kind must be"));
  EXPECT_EQ(job("a")["state"], "active");
  const Reply short_args = fcall("crew_report", {"w1", "0", "10000", "2", "complete", "a"});
  ASSERT_TRUE(short_args.is_error());
  EXPECT_THAT(short_args.error(), HasSubstr("arguments"));
  EXPECT_EQ(fcall("crew_report", {"w1", "0", "10000", "0"}).describe(), "[[]]");
}

TEST_F(RedisFunctions, RenewManyRenewsOwnedLeasesAndReturnsTheLostOnes) {
  for (const char* id : {"a", "b", "c"}) ASSERT_EQ(submit({.id = id})[0].str(), "created");
  const Taken t = take("w1", 3, 1'000);
  ASSERT_EQ(t.jobs.size(), 3u);
  const auto& [a, lease_a] = t.jobs[0];
  const auto& [b, lease_b] = t.jobs[1];
  const auto& [c, lease_c] = t.jobs[2];
  ASSERT_EQ(fcall("crew_complete", {c, lease_c, "r"}).str(), "ok");
  EXPECT_EQ(held("w1"), 2);  // c left with its result
  const double before = deadline("w1");
  // Only lost leases: the worker's deadline stays.
  EXPECT_EQ(fcall("crew_renew_many", {"60000", b, lease_b + "0"}).describe(),
            "[\"" + lease_b + "0\"]");
  EXPECT_LT(deadline("w1") - before, 1'000);
  const Reply lost =
      fcall("crew_renew_many", {"60000", a, lease_a, b, lease_b + "0", c, lease_c, "none", "1"});
  std::vector<std::string> lost_leases;
  for (const Reply& lease : lost.elements()) lost_leases.push_back(lease.str());
  EXPECT_EQ(lost_leases, (std::vector<std::string>{lease_b + "0", lease_c, "1"}));
  EXPECT_GE(deadline("w1") - before, 59'000);
  EXPECT_EQ(fcall("crew_renew_many", {"60000"}).describe(), "[]");
  EXPECT_THAT(fcall("crew_renew_many", {"60000", a}).error(), HasSubstr("pairs"));
}

TEST_F(RedisFunctions, SubmitManyAnswersEachSubmissionAndARepeatAttaches) {
  auto args_of = [](const Job& j) {
    return std::vector<std::string>{j.id,
                                    "producer-1",
                                    j.task,
                                    j.args,
                                    std::to_string(j.priority),
                                    std::to_string(j.delay_ms),
                                    std::to_string(j.attempts),
                                    j.backoff,
                                    std::to_string(j.backoff_ms),
                                    j.jitter,
                                    std::to_string(j.timeout_ms),
                                    std::to_string(j.retain_ms)};
  };
  std::vector<std::string> args = {"3"};
  for (const Job& j : {Job{.id = "a"}, Job{.id = "bad", .priority = 9},
                       Job{.id = "later", .priority = 2, .delay_ms = 60'000}}) {
    const auto one = args_of(j);
    args.insert(args.end(), one.begin(), one.end());
  }
  const Reply first = fcall("crew_submit_many", args);
  ASSERT_EQ(first.elements().size(), 3u) << first.describe();
  EXPECT_EQ(first[0].describe(), R"(["created", "waiting"])");
  ASSERT_TRUE(first[1].is_error());
  EXPECT_THAT(first[1].error(), HasSubstr("priority must be"));
  EXPECT_EQ(first[2].describe(), R"(["created", "delayed"])");
  EXPECT_EQ(job("a")["priority"], "1");
  EXPECT_EQ(job("a")["state"], "waiting");
  // Options at their default are not stored; crew_job shows them.
  EXPECT_EQ(job("a").count("attempts"), 0u);
  EXPECT_EQ(job("a").count("timeout_ms"), 0u);
  EXPECT_EQ(job("later")["state"], "delayed");
  EXPECT_EQ(redis_.command({"EXISTS", kQueue + "job:bad"}).integer(), 0);
  EXPECT_EQ(stat("submitted"), 2);

  // The same call again (its reply was lost): it attaches, nothing is submitted twice.
  const Reply again = fcall("crew_submit_many", args);
  EXPECT_EQ(again[0].describe(), R"(["exists", "waiting"])");
  EXPECT_EQ(again[2].describe(), R"(["exists", "delayed"])");
  EXPECT_EQ(redis_.command({"XLEN", kQueue + "p1"}).integer(), 1);
  EXPECT_EQ(stat("submitted"), 2);
  EXPECT_EQ(ids_of(take("w1", 5)), (std::vector<std::string>{"a"}));
  EXPECT_THAT(fcall("crew_submit_many", {"2", "a"}).error(), HasSubstr("arguments"));
}

TEST_F(RedisFunctions, RecoverHandsAWorkerWhatCallsWhoseReplyItLostStarted) {
  for (const char* id : {"a", "b", "c", "d", "e"}) {
    ASSERT_EQ(submit({.id = id, .timeout_ms = 700})[0].str(), "created");
  }
  // w1 runs a and has settled e; the replies that started b (crew_take) and delivered c (a
  // blocking XREADGROUP) were lost; d is w2's.
  const Taken runs = take("w1", 1, 1'000);
  ASSERT_EQ(ids_of(runs), (std::vector<std::string>{"a"}));
  const Taken lost = take("w1", 1, 1'000);
  ASSERT_EQ(ids_of(lost), (std::vector<std::string>{"b"}));
  const auto delivered = read("w1");
  ASSERT_TRUE(delivered);
  ASSERT_EQ(delivered->id, "c");
  ASSERT_EQ(ids_of(take("w2", 1)), (std::vector<std::string>{"d"}));
  const Taken settled = take("w1", 1);
  ASSERT_EQ(ids_of(settled), (std::vector<std::string>{"e"}));
  ASSERT_EQ(fcall("crew_complete", {"e", settled.jobs[0].second, "r"}).str(), "ok");
  // A delivery deleted since, and a `wake` delivery, both lost with their replies too.
  const std::string gone = redis_.command({"XADD", kQueue + "p0", "*", "id", "gone"}).str();
  ASSERT_FALSE(
      redis_.command({"XREADGROUP", "GROUP", "workers", "w1", "STREAMS", kQueue + "p0", ">"})
          .is_nil());
  redis_.command({"XDEL", kQueue + "p0", gone});
  ASSERT_EQ(submit({.id = "later", .delay_ms = 60'000})[0].str(), "created");
  ASSERT_FALSE(
      redis_.command({"XREADGROUP", "GROUP", "workers", "w1", "STREAMS", kQueue + "wake", ">"})
          .is_nil());
  const Reply recovered = fcall("crew_recover", {"w1", "60000", runs.jobs[0].second});
  ASSERT_EQ(recovered.elements().size(), 2u) << recovered.describe();
  // b as crew_take started it, its lease renewed; c started now.
  EXPECT_EQ(recovered[0].describe(),
            R"(["b", ")" + lost.jobs[0].second + R"(", "echo", "args", 700, 1])");
  EXPECT_GE(deadline("w1") - static_cast<double>(redis_now_ms()), 59'000);
  EXPECT_EQ(recovered[1][0].str(), "c");
  EXPECT_EQ(recovered[1][5].integer(), 1);
  EXPECT_EQ(job("c")["state"], "active");
  EXPECT_EQ(job("c")["owner"], "w1");
  EXPECT_EQ(job("c")["lease"], recovered[1][1].str());
  EXPECT_EQ(job("b")["attempt"], "1");
  for (const char* stream : {"p1", "p0", "wake"}) {
    EXPECT_EQ(redis_.command({"XPENDING", kQueue + stream, "workers"})[0].integer(), 0) << stream;
  }
  EXPECT_TRUE(stream("dead").empty());  // the deleted delivery is only acknowledged
  EXPECT_EQ(stats()["active"], 4);

  // Once w1 runs them, there is nothing more to hand over; w2 gets only its own.
  EXPECT_EQ(fcall("crew_recover",
                  {"w1", "60000", runs.jobs[0].second, lost.jobs[0].second, recovered[1][1].str()})
                .describe(),
            "[]");
  const Reply theirs = fcall("crew_recover", {"w2", "60000"});
  ASSERT_EQ(theirs.elements().size(), 1u) << theirs.describe();
  EXPECT_EQ(theirs[0][0].str(), "d");
  EXPECT_THAT(fcall("crew_recover", {"w1", "0"}).error(), HasSubstr("lease_ms must be"));
}

TEST_F(RedisFunctions, BadArgumentsAreErrorRepliesNamingTheField) {
  auto error_of = [](const Reply& reply) { return reply.is_error() ? reply.error() : ""; };
  EXPECT_THAT(error_of(submit({.id = "j", .priority = 4})), HasSubstr("priority must be"));
  EXPECT_THAT(error_of(submit({.id = "j", .attempts = 0})), HasSubstr("attempts must be"));
  EXPECT_THAT(error_of(submit({.id = "j", .backoff = "linear"})), HasSubstr("backoff must be"));
  EXPECT_THAT(error_of(submit({.id = "j", .jitter = "1.5"})), HasSubstr("jitter must be"));
  EXPECT_THAT(error_of(submit({.id = "j", .jitter = "nan"})), HasSubstr("jitter must be"));
  EXPECT_THAT(error_of(fcall("crew_promote", {"inf"})), HasSubstr("limit must be"));
  EXPECT_THAT(error_of(submit({.id = ""})), HasSubstr("id must be"));
  EXPECT_THAT(error_of(redis_.command({"FCALL", "crew_promote", "1", "jobs", "1"})),
              HasSubstr("queue prefix"));
  EXPECT_THAT(error_of(fcall("crew_start", {"j", "other-stream", "1-0", "w", "100"})),
              HasSubstr("stream must be"));
  EXPECT_THAT(error_of(fcall("crew_submit", {"j"})), HasSubstr("expects 12 arguments"));
  EXPECT_THAT(error_of(fcall("crew_take", {"w", "0", "100"})), HasSubstr("count must be"));
  EXPECT_THAT(error_of(fcall("crew_take", {"", "1", "100"})), HasSubstr("worker must be"));
  EXPECT_THAT(error_of(fcall("crew_report", {"w", "1", "0", "0"})), HasSubstr("lease_ms must be"));
  EXPECT_EQ(redis_.command({"EXISTS", kQueue + "job:j"}).integer(), 0);
  EXPECT_EQ(stat("submitted"), 0);
}

}  // namespace
