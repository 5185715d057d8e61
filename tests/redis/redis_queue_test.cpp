// Queue and Worker end to end on a real redis-server: round trips in both isolations, errors,
// retries, dead letters, idempotent job ids, delays. This executable is also its own task worker
// program (process isolation): main() serves test_tasks() when a ProcessPool started it.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <crew/process/errors.hpp>
#include <crew/redis.hpp>
#include <crew/redis/worker.hpp>

#include "connection.hpp"
#include "redis/redis_server.hpp"

namespace {

using crew::redis::Isolation;
using crew::redis::JobOptions;
using crew::redis::Queue;
using crew::redis::Worker;
using crew_test::RedisServer;
using namespace std::chrono_literals;
using crew_test::eventually;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// Executions of `counted` in this process (thread isolation), and when each started.
std::atomic<int> g_counted{0};
std::atomic<int> g_throws{0};
std::mutex g_times_mutex;
std::vector<Clock::time_point> g_throw_times;

struct Gate {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<int> order;    // the argument of each `gate` job, in the order they started
  std::size_t released = 0;  // jobs let go so far
} g_gate;

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("add", [](int a, int b) { return a + b; });
    t.add("echo", [](const std::string& s) { return s; });
    t.add("nothing", [] {});
    t.add("counted", [](int v) {
      ++g_counted;
      return v * 2;
    });
    t.add("throws", []() -> int {
      ++g_throws;
      {
        std::lock_guard lock(g_times_mutex);
        g_throw_times.push_back(Clock::now());
      }
      throw std::runtime_error("boom");
    });
    t.add("crash", []() -> int { std::abort(); });
    // Holds its thread until the test lets it go; records the order in which jobs ran.
    t.add("gate", [](int v) {
      std::unique_lock lock(g_gate.mutex);
      g_gate.order.push_back(v);
      const std::size_t me = g_gate.order.size();
      g_gate.changed.notify_all();
      g_gate.changed.wait(lock, [&] { return g_gate.released >= me; });
      return v;
    });
    t.add("sleep_ms", [](int ms) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return ms;
    });
    return t;
  }();
  return tasks;
}

class RedisQueue : public ::testing::Test {
 protected:
  std::unique_ptr<Worker> worker(Isolation isolation, std::size_t workers = 2,
                                 std::chrono::milliseconds prefetch_window = 2ms) {
    return std::make_unique<Worker>(test_tasks(), crew::redis::WorkerOptions{
                                                      .url = server_.url(),
                                                      .queue = "q",
                                                      .workers = workers,
                                                      .isolation = isolation,
                                                      .prefetch_window = prefetch_window,
                                                  });
  }

  // Thread isolation, one slot, and a bound on the run time no job here comes near: once one job
  // has finished, every job that arrives while the worker runs nothing and has no timeout runs on
  // the fetch thread (WorkerOptions::inline_below).
  std::unique_ptr<Worker> inline_worker() {
    return std::make_unique<Worker>(test_tasks(), crew::redis::WorkerOptions{
                                                      .url = server_.url(),
                                                      .queue = "q",
                                                      .workers = 1,
                                                      .isolation = Isolation::thread,
                                                      .inline_below = 60s,
                                                  });
  }

  std::map<std::string, std::string> job(const std::string& id) {
    const auto flat = redis_.command({"HGETALL", "crew:{q}:job:" + id});
    std::map<std::string, std::string> out;
    for (std::size_t i = 0; i + 1 < flat.elements().size(); i += 2) {
      out[flat[i].str()] = flat[i + 1].str();
    }
    return out;
  }

  long long dead_letters() { return redis_.command({"XLEN", "crew:{q}:dead"}).integer(); }

  // FCALLs Redis has run so far (commandstats), each a round trip of some client.
  long long fcalls() {
    std::istringstream info(redis_.command({"INFO", "commandstats"}).str());
    for (std::string line; std::getline(info, line);) {
      if (line.starts_with("cmdstat_fcall:calls=")) return std::stoll(line.substr(20));
    }
    return 0;
  }

  RedisServer server_;
  crew::redis::Connection redis_{crew::redis::parse_url(server_.url())};
  Queue queue_{{.url = server_.url(), .name = "q"}};
};

template <class E, class F>
std::string error_of(F&& get) {
  try {
    get();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception: ") + e.what();
  }
  return "no exception";
}

TEST_F(RedisQueue, OptionsAreValidatedNamingTheField) {
  EXPECT_THAT(error_of<std::invalid_argument>([] { Queue q({.url = "http://x"}); }),
              HasSubstr("redis://"));
  EXPECT_THAT(
      error_of<std::invalid_argument>([&] { Queue q({.url = server_.url(), .name = "a{b}"}); }),
      HasSubstr("name"));
  auto bad = [&](JobOptions o) {
    return error_of<std::invalid_argument>([&] { queue_.submit(o, "add", 1, 2); });
  };
  EXPECT_THAT(bad({.priority = 4}), HasSubstr("priority"));
  EXPECT_THAT(bad({.delay = -1ms}), HasSubstr("delay"));
  EXPECT_THAT(bad({.attempts = 0}), HasSubstr("attempts"));
  EXPECT_THAT(bad({.backoff = {.jitter = 1.5}}), HasSubstr("jitter"));
  EXPECT_THAT(bad({.backoff = {.delay = -5ms}}), HasSubstr("backoff.delay"));
  EXPECT_THAT(bad({.timeout = -1ms}), HasSubstr("timeout"));
  EXPECT_THAT(bad({.job_id = std::string(300, 'x')}), HasSubstr("job_id"));
  EXPECT_THAT(bad({.retain = -1ms}), HasSubstr("retain"));
  EXPECT_THAT(error_of<std::invalid_argument>(
                  [&] { Worker w(test_tasks(), {.url = server_.url(), .lease = 500ms}); }),
              HasSubstr("lease"));
  EXPECT_THAT(error_of<std::invalid_argument>(
                  [&] { Worker w(test_tasks(), {.url = server_.url(), .inline_below = -1us}); }),
              HasSubstr("inline_below"));
}

TEST_F(RedisQueue, UnreachableRedisIsAConnectionErrorNamingTheUrl) {
  // A port that just closed: nothing listens there.
  int port = 0;
  {
    RedisServer gone;
    port = gone.port();
  }
  const std::string url = "redis://127.0.0.1:" + std::to_string(port);
  EXPECT_THAT(error_of<crew::redis::ConnectionError>([&] { Queue q({.url = url}); }),
              HasSubstr("127.0.0.1:" + std::to_string(port)));
  EXPECT_THAT(error_of<crew::redis::ConnectionError>(
                  [&] { Worker w(test_tasks(), {.url = url, .isolation = Isolation::thread}); }),
              HasSubstr("127.0.0.1:" + std::to_string(port)));
}

TEST_F(RedisQueue, WarnsWhenRedisMayEvictQueueKeys) {
  std::ostringstream log;
  auto logger = spdlog::get("crew.redis");
  if (!logger) {
    logger = std::make_shared<spdlog::logger>("crew.redis");
    spdlog::register_logger(logger);
  }
  logger->sinks().push_back(std::make_shared<spdlog::sinks::ostream_sink_st>(log));
  { Queue quiet({.url = server_.url(), .name = "q"}); }
  EXPECT_THAT(log.str(), Not(HasSubstr("maxmemory-policy")));
  redis_.command({"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"});
  { Queue warned({.url = server_.url(), .name = "q"}); }
  logger->sinks().pop_back();
  EXPECT_THAT(log.str(), HasSubstr("maxmemory-policy 'allkeys-lru'"));
}

TEST_F(RedisQueue, RoundTripOnThreads) {
  auto w = worker(Isolation::thread);
  crew::Future<int> sum = queue_.run<int>("add", 2, 3);
  crew::Future<std::string> echo =
      queue_.run<std::string>({.priority = 3}, "echo", std::string("hi"));
  crew::Future<void> nothing = queue_.run<void>("nothing");
  EXPECT_EQ(sum.get(), 5);
  EXPECT_EQ(echo.get(), "hi");
  EXPECT_NO_THROW(nothing.get());

  // Fire and forget, then the result from another producer (it is not told: it reads the record).
  const std::string id = queue_.submit("add", 20, 22);
  Queue other({.url = server_.url(), .name = "q"});
  EXPECT_EQ(other.result<int>(id).get(), 42);
  EXPECT_EQ(queue_.result<int>(id).get(), 42);
  EXPECT_THAT(error_of<crew::BadArguments>([&] { queue_.result<int>("no-such-job").get(); }),
              HasSubstr("no-such-job"));
  // A result of another type than the task's.
  EXPECT_THAT(error_of<crew::BadArguments>([&] { queue_.result<std::string>(id).get(); }),
              HasSubstr("does not decode"));
  EXPECT_TRUE(eventually([&] { return w->stats().completed == 4; })) << w->stats().completed;

  // The queue's own numbers agree, seen by a producer and by the worker alike.
  const crew::redis::QueueStats q = queue_.stats();
  EXPECT_EQ(q.submitted, 4u);
  EXPECT_EQ(q.completed, 4u);
  EXPECT_EQ(q.waiting + q.active + q.delayed, 0u);
  EXPECT_EQ(q.latency.count, 4u);
  EXPECT_EQ(w->queue_stats().completed, 4u);
}

// `wake` deleted (with its group) under an idle worker: its blocking read fails with NOGROUP,
// which crew_take (it reads only the priority streams) would not mend. The worker makes the
// groups again and goes on, instead of failing the same read over and over.
TEST_F(RedisQueue, AnIdleWorkerMendsAWakeStreamDeletedUnderIt) {
  auto w = worker(Isolation::thread);
  EXPECT_EQ(queue_.run<int>("add", 1, 2).get(), 3);
  redis_.command({"DEL", "crew:{q}:wake"});
  EXPECT_TRUE(eventually([&] {
    return !redis_.command({"XINFO", "GROUPS", "crew:{q}:wake"}).is_error();
  }));
  const long long before = fcalls();
  EXPECT_EQ(queue_.run<int>("add", 2, 3).get(), 5);
  EXPECT_LT(fcalls() - before, 50);  // a submission, a report, a few takes: not a spin
}

// BadArguments would fail the same way again: no attempt is spent on a retry.
TEST_F(RedisQueue, UnknownTaskIsBadArgumentsInBothIsolationsAndNeverRetried) {
  std::uint64_t dead = 0;
  for (Isolation isolation : {Isolation::thread, Isolation::process}) {
    auto w = worker(isolation);
    crew::Future<int> f = queue_.run<int>({.attempts = 3}, "no_such_task", 1);
    EXPECT_THAT(error_of<crew::BadArguments>([&] { f.get(); }), HasSubstr("no_such_task"));
    const crew::redis::QueueStats s = queue_.stats();
    EXPECT_EQ(s.dead, ++dead);
    EXPECT_EQ(s.failed, dead);
    EXPECT_EQ(s.retried, 0u);
  }
}

// A worker takes no more jobs than it has free slots, highest priority first: one XREADGROUP
// over the four priority streams would take a job from each.
TEST_F(RedisQueue, AWorkerTakesOnlyWhatItsSlotsHoldHighestPriorityFirst) {
  std::vector<crew::Future<int>> jobs;
  for (int priority = 0; priority <= 3; ++priority) {
    jobs.push_back(queue_.run<int>({.priority = priority}, "gate", priority));
  }
  auto w = worker(Isolation::thread, 1, 0ms);
  for (std::size_t k = 1; k <= jobs.size(); ++k) {
    std::unique_lock lock(g_gate.mutex);
    ASSERT_TRUE(g_gate.changed.wait_for(lock, 60s, [&] { return g_gate.order.size() == k; }))
        << "job " << k << " never started";
    EXPECT_EQ(w->stats().started, k);
    g_gate.released = k;
    g_gate.changed.notify_all();
  }
  for (int priority = 0; priority <= 3; ++priority) EXPECT_EQ(jobs[priority].get(), priority);
  EXPECT_EQ(g_gate.order, (std::vector<int>{3, 2, 1, 0}));
}

// Short jobs: a worker holds more than it runs, so that many travel in one call. Long ones: it
// holds none beyond its slots, so that idle workers elsewhere get them.
TEST_F(RedisQueue, AWorkerPrefetchesShortJobsButNotLongOnes) {
  {
    std::lock_guard lock(g_gate.mutex);
    g_gate.order.clear();
    g_gate.released = 0;
  }
  // A backlog: short jobs first (higher priority), then four that block until let go.
  std::vector<crew::Future<int>> sums, gates;
  for (int i = 0; i < 20; ++i) sums.push_back(queue_.run<int>({.priority = 3}, "add", i, 1));
  for (int i = 0; i < 4; ++i) gates.push_back(queue_.run<int>("gate", i));
  // A 200 ms window: a short job's estimate (taken to finished) stays far below 200 / 3 ms even
  // on a machine busy enough to leave the pool thread waiting for a core a few times.
  auto w = worker(Isolation::thread, 1, 200ms);
  for (auto& s : sums) s.get();
  EXPECT_GE(w->stats().prefetch, 3U);  // microseconds each (the most it holds is 64)
  // The first gate job blocks the only slot; the other three were taken with it all the same.
  EXPECT_TRUE(eventually([&] { return w->stats().started == 24; })) << w->stats().started;
  {
    // Begun is not yet running: the pool thread may still be on its way to the first one.
    std::unique_lock lock(g_gate.mutex);
    EXPECT_TRUE(g_gate.changed.wait_for(lock, 60s, [] { return !g_gate.order.empty(); }));
    EXPECT_EQ(g_gate.order.size(), 1U);
    g_gate.released = 4;
  }
  g_gate.changed.notify_all();
  for (auto& g : gates) g.get();
  // 800 ms each, beyond the 200 ms window: nothing is held beyond the slot (three of them take
  // the running estimate past 200 ms from wherever the short jobs left it).
  for (int i = 0; i < 3; ++i) queue_.run<int>("sleep_ms", 800).get();
  EXPECT_EQ(w->stats().prefetch, 0U);
}

TEST_F(RedisQueue, AnIdleWorkerRunsLoneShortJobsOnItsFetchThread) {
  auto w = inline_worker();
  // One at a time, so each arrives while the worker runs nothing. The first runs on the pool
  // (there is no run time to go by yet), the others on the fetch thread, which reports each
  // together with its next read.
  for (int i = 0; i < 20; ++i) EXPECT_EQ(queue_.run<int>("add", i, 1).get(), i + 1);
  EXPECT_EQ(w->stats().inlined, 19u);
  // The task's exception reaches the Future as it does from the pool.
  try {
    (void)queue_.run<int>("throws").get();
    ADD_FAILURE() << "no exception";
  } catch (const crew::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::runtime_error");
    EXPECT_THAT(e.what(), HasSubstr("boom"));
  }
  EXPECT_EQ(w->stats().inlined, 20u);
  // A job with a timeout runs where the timeout is enforced: on the pool.
  EXPECT_EQ(queue_.run<int>({.timeout = 30s}, "add", 1, 1).get(), 2);
  EXPECT_EQ(w->stats().inlined, 20u);
  EXPECT_TRUE(eventually([&] { return w->stats().completed == 21 && w->stats().failed == 1; }))
      << w->stats().completed << " completed, " << w->stats().failed << " failed";
  const crew::redis::QueueStats q = queue_.stats();
  EXPECT_EQ(q.completed, 21u);
  EXPECT_EQ(q.dead, 1u);
  EXPECT_EQ(q.waiting + q.active, 0u);
}

TEST_F(RedisQueue, StopHandsBackAtOnceTheJobItsFetchThreadRuns) {
  {
    std::lock_guard lock(g_gate.mutex);
    g_gate.order.clear();
    g_gate.released = 0;
  }
  auto w = inline_worker();
  EXPECT_EQ(queue_.run<int>("add", 1, 1).get(), 2);  // a run time to go by
  crew::Future<int> f = queue_.run<int>({.job_id = "held"}, "gate", 7);
  {
    std::unique_lock lock(g_gate.mutex);
    ASSERT_TRUE(g_gate.changed.wait_for(lock, 60s, [] { return !g_gate.order.empty(); }));
  }
  EXPECT_EQ(w->stats().inlined, 1u);
  // stop() waits for the fetch thread, which runs the job; the job goes back to the queue first,
  // so another worker can run it meanwhile.
  std::jthread stopping([&] { w->stop(0ms); });
  EXPECT_TRUE(eventually([&] { return job("held")["state"] == "waiting"; }))
      << job("held")["state"];
  {
    std::lock_guard lock(g_gate.mutex);
    g_gate.released = 2;  // this run and the next
  }
  g_gate.changed.notify_all();
  stopping.join();
  EXPECT_EQ(w->stats().released, 1u);
  EXPECT_EQ(w->stats().completed, 1u);  // the first job only: the held one's outcome is dropped
  auto next = worker(Isolation::thread, 1);
  EXPECT_EQ(f.get(), 7);
  std::lock_guard lock(g_gate.mutex);
  EXPECT_EQ(g_gate.order.size(), 2u);
}

// After a job it ran itself, the fetch thread takes no more than its slots hold: a blocking read
// would deliver an entry of every stream that has one, so it reads only when the take that
// started that job had found the queue empty otherwise.
TEST_F(RedisQueue, AfterAnInlineJobAWorkerStillTakesOnlyWhatItsSlotsHold) {
  {
    std::lock_guard lock(g_gate.mutex);
    g_gate.order.clear();
    g_gate.released = 0;
  }
  Worker w(test_tasks(), {.url = server_.url(),
                          .queue = "q",
                          .workers = 1,
                          .isolation = Isolation::thread,
                          .prefetch_window = 0ms,
                          .inline_below = 60s});
  EXPECT_EQ(queue_.run<int>("add", 1, 1).get(), 2);  // a run time to go by
  std::vector<crew::Future<int>> jobs;
  jobs.push_back(queue_.run<int>("gate", 0));
  {
    std::unique_lock lock(g_gate.mutex);
    ASSERT_TRUE(g_gate.changed.wait_for(lock, 60s, [] { return g_gate.order.size() == 1; }));
  }
  ASSERT_EQ(w.stats().inlined, 1u);
  // Three more wait, one in each of the other priorities, while the fetch thread runs the first.
  for (int priority = 1; priority <= 3; ++priority) {
    jobs.push_back(queue_.run<int>({.priority = priority}, "gate", priority));
  }
  ASSERT_TRUE(eventually([&] { return queue_.stats().waiting == 3; }));
  for (std::size_t k = 1; k <= 3; ++k) {
    {
      std::unique_lock lock(g_gate.mutex);
      g_gate.released = k;
      g_gate.changed.notify_all();
      ASSERT_TRUE(g_gate.changed.wait_for(lock, 60s, [&] { return g_gate.order.size() == k + 1; }))
          << "job " << k + 1 << " never started";
    }
    // The add, the gates run or running, and nothing beyond the one slot.
    EXPECT_EQ(w.stats().started, k + 2);
  }
  {
    std::lock_guard lock(g_gate.mutex);
    g_gate.released = 4;
  }
  g_gate.changed.notify_all();
  for (int v = 0; v <= 3; ++v) EXPECT_EQ(jobs[static_cast<std::size_t>(v)].get(), v);
  std::lock_guard lock(g_gate.mutex);
  EXPECT_EQ(g_gate.order, (std::vector<int>{0, 3, 2, 1}));
}

TEST_F(RedisQueue, RoundTripInWorkerProcesses) {
  auto w = worker(Isolation::process);
  std::vector<crew::Future<int>> sums;
  for (int i = 0; i < 20; ++i) sums.push_back(queue_.run<int>("add", i, 1000));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sums[i].get(), i + 1000);
  EXPECT_EQ(w->stats().inlined, 0u);  // a worker process runs every job
}

TEST_F(RedisQueue, CrashingTaskIsRetriedThenDeadLetteredAsWorkerCrashed) {
  auto w = worker(Isolation::process);
  const JobOptions options{.attempts = 3, .backoff = {.delay = 100ms}, .job_id = "crasher"};
  crew::Future<int> crash = queue_.run<int>(options, "crash");
  crew::Future<int> fine = queue_.run<int>("add", 1, 1);
  EXPECT_THAT(error_of<crew::WorkerCrashed>([&] { crash.get(); }), HasSubstr("crasher"));
  EXPECT_EQ(fine.get(), 2);
  EXPECT_EQ(job("crasher")["attempt"], "3");
  EXPECT_EQ(job("crasher")["state"], "dead");
  EXPECT_EQ(dead_letters(), 1);
  EXPECT_TRUE(eventually([&] { return w->stats().failed == 3; })) << w->stats().failed;
}

TEST_F(RedisQueue, TimeoutKillsTheTaskAndTheFutureGetsTimedOut) {
  auto w = worker(Isolation::process);
  const auto submitted = Clock::now();
  crew::Future<int> slow =
      queue_.run<int>({.timeout = 200ms, .job_id = "slow"}, "sleep_ms", 60'000);
  EXPECT_THAT(error_of<crew::TimedOut>([&] { slow.get(); }), HasSubstr("slow"));
  EXPECT_LT(Clock::now() - submitted, 30s);  // killed, not waited for
  EXPECT_EQ(job("slow")["error_type"], "TimedOut");
  EXPECT_EQ(queue_.run<int>("sleep_ms", 1).get(), 1);
}

TEST_F(RedisQueue, ThrowingTaskRunsExactlyAttemptsTimesWithItsBackoff) {
  g_throws = 0;
  g_throw_times.clear();
  auto w = worker(Isolation::thread);
  const JobOptions options{.attempts = 3, .backoff = {.delay = 100ms}, .job_id = "thrower"};
  crew::Future<int> throws = queue_.run<int>(options, "throws");
  crew::Future<int> fine = queue_.run<int>("add", 2, 2);
  try {
    throws.get();
    ADD_FAILURE() << "no exception";
  } catch (const crew::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::runtime_error");
    EXPECT_EQ(e.remote_what(), "boom");
  }
  EXPECT_EQ(fine.get(), 4);
  EXPECT_EQ(g_throws.load(), 3);
  EXPECT_EQ(job("thrower")["attempt"], "3");
  EXPECT_EQ(dead_letters(), 1);
  std::lock_guard lock(g_times_mutex);
  ASSERT_EQ(g_throw_times.size(), 3u);
  for (std::size_t i = 1; i < g_throw_times.size(); ++i) {
    EXPECT_GE(g_throw_times[i] - g_throw_times[i - 1], 95ms) << "retry " << i << " came early";
  }
}

TEST_F(RedisQueue, OneJobIdFromFourProducersRunsOnceAndSettlesEveryFuture) {
  g_counted = 0;
  auto w = worker(Isolation::thread);
  constexpr int kThreads = 4;
  constexpr int kEach = 250;
  std::vector<std::vector<crew::Future<int>>> futures(kThreads);
  // Four producers (a Queue each, as four processes would have), on threads of their own: three
  // of them attach to a job another one created, and learn its result from its record.
  std::vector<std::unique_ptr<Queue>> queues;
  for (int t = 0; t < kThreads; ++t) {
    queues.push_back(
        std::make_unique<Queue>(crew::redis::QueueOptions{.url = server_.url(), .name = "q"}));
  }
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        futures[t].push_back(queues[t]->run<int>({.job_id = "once"}, "counted", 21));
      }
    });
  }
  for (auto& p : producers) p.join();
  int settled = 0;
  for (auto& list : futures) {
    for (auto& f : list) {
      EXPECT_EQ(f.get(), 42);
      ++settled;
    }
  }
  EXPECT_EQ(settled, kThreads * kEach);
  EXPECT_EQ(g_counted.load(), 1);
  EXPECT_EQ(job("once")["attempt"], "1");
}

TEST_F(RedisQueue, ManyThreadsSubmittingOnOneQueueShareRoundTripsAndEverySettles) {
  constexpr int kThreads = 8;
  constexpr int kEach = 100;
  std::vector<std::vector<crew::Future<int>>> futures(kThreads);
  const long long before = fcalls();
  // Redis holds the first submission for a moment, so the other threads' queue up behind it
  // and go out together: the group commit, made certain rather than likely.
  redis_.command({"CLIENT", "PAUSE", "500", "WRITE"});
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) futures[t].push_back(queue_.run<int>("add", t, i));
    });
  }
  for (auto& p : producers) p.join();
  const long long calls = fcalls() - before;
  std::printf("%d submissions from %d threads in %lld calls\n", kThreads * kEach, kThreads, calls);
  EXPECT_LT(calls, kThreads * kEach);
  auto w = worker(Isolation::thread, 4);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kEach; ++i) EXPECT_EQ(futures[t][i].get(), t + i);
  }
}

TEST_F(RedisQueue, SubmitManySendsOneCallAndEveryJobRuns) {
  std::vector<std::tuple<int, int>> jobs;
  for (int i = 0; i < 500; ++i) jobs.emplace_back(i, 1);
  const long long before = fcalls();
  const std::vector<std::string> ids = queue_.submit_many({}, "add", jobs);
  EXPECT_EQ(fcalls() - before, 1);
  ASSERT_EQ(ids.size(), jobs.size());
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
  EXPECT_EQ(queue_.stats().waiting, 500u);
  auto w = worker(Isolation::thread, 8);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(queue_.result<int>(ids[i]).get(), i + 1);
  EXPECT_TRUE(queue_.submit_many({}, "add", std::vector<std::tuple<int, int>>{}).empty());
  EXPECT_THAT(error_of<std::invalid_argument>(
                  [&] { (void)queue_.submit_many({.job_id = "same"}, "add", jobs); }),
              HasSubstr("job_id"));
  EXPECT_THAT(error_of<std::invalid_argument>(
                  [&] { (void)queue_.submit_many({.priority = 9}, "add", jobs); }),
              HasSubstr("priority"));
}

TEST_F(RedisQueue, DelayedJobRunsNeverEarlyAndNotMuchLate) {
  auto w = worker(Isolation::thread);
  constexpr auto kDelay = 500ms;
  EXPECT_EQ(queue_.run<int>({.delay = kDelay, .job_id = "later"}, "add", 1, 2).get(), 3);
  // Both stamps come from the Redis clock.
  auto fields = job("later");
  const long long waited = std::stoll(fields["started_ms"]) - std::stoll(fields["created_ms"]);
  std::printf("delayed job: due after %lld ms, started after %lld ms (late by %lld ms)\n",
              static_cast<long long>(kDelay.count()), waited,
              waited - static_cast<long long>(kDelay.count()));
  EXPECT_GE(waited, kDelay.count());
  EXPECT_LT(waited, kDelay.count() + 2'000);
}

TEST_F(RedisQueue, StatusFollowsAJobFromWaitingToItsOutcome) {
  using crew::redis::JobState;
  const auto submitted = std::chrono::system_clock::now();
  const std::string id = queue_.submit({.priority = 2, .attempts = 2}, "add", 20, 22);
  crew::redis::JobStatus s = queue_.status(id);
  EXPECT_EQ(s.id, id);
  EXPECT_EQ(s.state, JobState::waiting);
  EXPECT_STREQ(crew::redis::to_string(s.state), "waiting");
  EXPECT_EQ(s.task, "add");
  EXPECT_EQ(s.priority, 2);
  EXPECT_EQ(s.attempt, 0);
  EXPECT_EQ(s.attempts, 2);
  // The Redis clock and this one are the same machine's: an order of magnitude, not a bound.
  EXPECT_LT(s.created - submitted, 60s);
  EXPECT_GT(s.created - submitted, -60s);
  EXPECT_FALSE(s.started);
  EXPECT_FALSE(s.finished);
  EXPECT_EQ(s.exception(), nullptr);

  const std::string later = queue_.submit({.delay = 1h}, "add", 1, 1);
  s = queue_.status(later);
  EXPECT_EQ(s.state, JobState::delayed);
  ASSERT_TRUE(s.due);
  EXPECT_GE(*s.due - s.created, 1h);

  auto w = worker(Isolation::thread);
  EXPECT_EQ(queue_.result<int>(id).get(), 42);
  s = queue_.status(id);
  EXPECT_EQ(s.state, JobState::completed);
  EXPECT_EQ(s.attempt, 1);
  ASSERT_TRUE(s.started);
  ASSERT_TRUE(s.finished);
  EXPECT_GE(*s.finished, *s.started);
  EXPECT_GE(*s.started, s.created);
  EXPECT_EQ(msgpack::unpack(s.result.data(), s.result.size()).get().as<int>(), 42);

  // A thread cannot be killed: the sleep keeps its thread past the timeout, and the worker's stop
  // waits for it, so it is short.
  crew::Future<int> slow = queue_.run<int>({.timeout = 100ms, .job_id = "slow"}, "sleep_ms", 2'000);
  EXPECT_THROW(slow.get(), crew::TimedOut);
  s = queue_.status("slow");
  EXPECT_EQ(s.state, JobState::dead);
  EXPECT_EQ(s.error_type, "TimedOut");
  EXPECT_TRUE(s.result.empty());
  // The same exception the job's Futures get.
  EXPECT_THAT(error_of<crew::TimedOut>([&] { std::rethrow_exception(s.exception()); }),
              HasSubstr("slow"));

  s = queue_.status("no-such-job");
  EXPECT_EQ(s.state, JobState::unknown);
  EXPECT_STREQ(crew::redis::to_string(s.state), "unknown");
  EXPECT_EQ(s.id, "no-such-job");
  EXPECT_THAT(error_of<std::invalid_argument>([&] { (void)queue_.status(""); }),
              HasSubstr("job_id"));
  EXPECT_THAT(error_of<std::invalid_argument>([&] { (void)queue_.status(std::string(257, 'x')); }),
              HasSubstr("job_id"));
}

TEST_F(RedisQueue, PackedArgumentsRunAsTheyAreAndMustBeOneArray) {
  auto w = worker(Isolation::thread);
  const std::string args = crew::redis::detail::pack_args(40, 2);
  crew::PackedValue sum = queue_.run_packed({}, "add", args).get();
  EXPECT_EQ(msgpack::unpack(sum.bytes.data(), sum.bytes.size()).get().as<int>(), 42);
  const std::string id = queue_.submit_packed({}, "add", args);
  EXPECT_EQ(queue_.result<int>(id).get(), 42);
  for (const std::string& bad : {std::string("\x01"), std::string(""), args + "\x01"}) {
    EXPECT_THAT(error_of<std::invalid_argument>([&] { (void)queue_.run_packed({}, "add", bad); }),
                HasSubstr("one msgpack array"));
    EXPECT_THAT(
        error_of<std::invalid_argument>([&] { (void)queue_.submit_packed({}, "add", bad); }),
        HasSubstr("one msgpack array"));
  }
}

TEST_F(RedisQueue, StatusOfAnUnreachableRedisIsAConnectionErrorNamingTheUrl) {
  RedisServer gone;
  // Default timeouts: a refused connect fails at once, and the constructor's own commands must
  // not time out on a loaded machine.
  Queue q({.url = gone.url(), .name = "q"});
  gone.stop();
  EXPECT_THAT(error_of<crew::redis::ConnectionError>([&] { (void)q.status("j"); }),
              HasSubstr("127.0.0.1:" + std::to_string(gone.port())));
}

TEST_F(RedisQueue, DestroyingTheQueueCancelsWaitingFutures) {
  crew::Future<int> f;
  {
    Queue q({.url = server_.url(), .name = "q"});
    f = q.run<int>("add", 1, 2);  // no worker: it never runs
  }
  EXPECT_THAT(error_of<crew::Cancelled>([&] { f.get(); }), HasSubstr("destroyed"));
}

TEST_F(RedisQueue, DestroyingTheQueueEndsItsBlockedResultsReadAtOnce) {
  auto xreads = [&] {
    const std::string clients = redis_.command({"CLIENT", "LIST"}).str();
    int n = 0;
    for (auto at = clients.find("cmd=xread "); at != std::string::npos;
         at = clients.find("cmd=xread ", at + 1)) {
      ++n;
    }
    return n;
  };
  auto q = std::make_unique<Queue>(
      crew::redis::QueueOptions{.url = server_.url(), .name = "q", .block = 60s});
  // Its results thread is in XREAD BLOCK beside the fixture's Queue, for a minute unless the
  // destructor ends it.
  ASSERT_TRUE(eventually([&] { return xreads() == 2; }));
  const auto start = Clock::now();
  q.reset();
  EXPECT_LT(Clock::now() - start, 10s);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
