#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>

#include <crew/errors.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

// Iteration counts shrink under the sanitizers, which run 5-20x slower.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kScale = 4;
#else
constexpr int kScale = 1;
#endif

// Blocks a pool thread until released, so tests can pile up queued tasks deterministically.
// It waits on a std::latch: waiting on a crew::Future from a pool thread would run the queued
// tasks meanwhile (by design), which is exactly what these tests must prevent.
struct Gate {
  std::latch entered{1};
  std::latch open{1};

  // A task body that signals it started and waits for release().
  auto body() {
    return [this] {
      entered.count_down();
      open.wait();
    };
  }
  void release() { open.count_down(); }
};

TEST(ThreadPool, RunsAndReturnsValues) {
  crew::ThreadPool pool({.max_workers = 2});
  auto sum = pool.run([](int a, int b) { return a + b; }, 2, 40);
  auto text = pool.run([](std::string s) { return s + "!"; }, std::string("hi"));
  auto owned = pool.run([](std::unique_ptr<int> p) { return std::make_unique<int>(*p * 2); },
                        std::make_unique<int>(21));
  EXPECT_EQ(sum.get(), 42);
  EXPECT_EQ(text.get(), "hi!");
  EXPECT_EQ(*owned.get(), 42);
}

TEST(ThreadPool, PassesReferencesThroughStdRef) {
  crew::ThreadPool pool({.max_workers = 1});
  int value = 1;
  pool.run([](int& v) { v = 7; }, std::ref(value)).get();
  EXPECT_EQ(value, 7);
}

struct CustomError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

TEST(ThreadPool, TaskExceptionIsRethrownAndPoolKeepsWorking) {
  crew::ThreadPool pool({.max_workers = 2});
  auto bad = pool.run([]() -> int { throw CustomError("boom"); });
  EXPECT_THROW(
      {
        try {
          bad.get();
        } catch (const CustomError& e) {
          EXPECT_STREQ(e.what(), "boom");
          throw;
        }
      },
      CustomError);
  std::vector<crew::Future<int>> later;
  for (int i = 0; i < 1000; ++i) later.push_back(pool.run([i] { return i; }));
  long total = 0;
  for (auto& f : later) total += f.get();
  EXPECT_EQ(total, 999L * 1000 / 2);
  pool.wait_idle();
  const auto s = pool.stats();
  EXPECT_EQ(s.failed, 1U);
  EXPECT_EQ(s.completed, 1000U);
}

TEST(ThreadPool, RunAfterCloseThrowsPoolClosed) {
  crew::ThreadPool pool({.max_workers = 1});
  pool.close();
  EXPECT_THROW((void)pool.run([] { return 1; }), crew::PoolClosed);
  EXPECT_THROW(pool.post([] {}), crew::PoolClosed);
  EXPECT_THROW((void)pool.try_run([] { return 1; }), crew::PoolClosed);
  try {
    (void)pool.run([] {});
  } catch (const crew::PoolClosed& e) {
    EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos);
  }
}

TEST(ThreadPool, CloseDrainsEverythingQueued) {
  std::atomic<int> ran{0};
  std::vector<crew::Future<int>> futures;
  {
    crew::ThreadPool pool({.max_workers = 2});
    for (int i = 0; i < 500; ++i) {
      futures.push_back(pool.run([&ran, i] {
        ran.fetch_add(1);
        return i;
      }));
    }
    pool.close();
    EXPECT_EQ(ran.load(), 500);
  }
  for (int i = 0; i < 500; ++i) EXPECT_EQ(futures[static_cast<std::size_t>(i)].get(), i);
}

TEST(ThreadPool, FullQueueRejectsAtOnce) {
  crew::ThreadPool pool({.max_workers = 1, .max_queue = 3, .on_full = crew::OnFull::reject});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::vector<crew::Future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool.run([i] { return i; }));
  EXPECT_TRUE(pool.needs_drain());
  EXPECT_THROW((void)pool.run([] { return 99; }), crew::QueueFull);
  EXPECT_FALSE(pool.try_run([] { return 99; }).has_value());
  EXPECT_FALSE(pool.try_post([] {}));
  std::latch drained(1);
  pool.on_drain([&] { drained.count_down(); });
  gate.release();
  drained.wait();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(), i);
  EXPECT_FALSE(pool.needs_drain());
  blocker.get();
}

TEST(ThreadPool, FullQueueMakesProducerWait) {
  crew::ThreadPool pool({.max_workers = 1, .max_queue = 2, .on_full = crew::OnFull::wait});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  auto a = pool.run([] { return 1; });
  auto b = pool.run([] { return 2; });
  std::atomic<bool> released{false};
  std::atomic<bool> saw_release{false};
  std::thread producer([&] {
    auto c = pool.run([] { return 3; });  // blocks until the gate opens and a slot frees up
    saw_release = released.load();
    EXPECT_EQ(c.get(), 3);
  });
  // try_run never blocks, whatever the policy.
  EXPECT_FALSE(pool.try_run([] { return 4; }).has_value());
  released = true;
  gate.release();
  producer.join();
  EXPECT_TRUE(saw_release.load()) << "run() returned before any queue slot was freed";
  EXPECT_EQ(a.get() + b.get(), 3);
  blocker.get();
}

TEST(ThreadPool, CancelledQueuedTaskNeverRuns) {
  crew::ThreadPool pool({.max_workers = 1});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::atomic<bool> ran{false};
  auto victim = pool.run([&] { ran = true; });
  EXPECT_TRUE(victim.cancel());
  EXPECT_TRUE(victim.ready());  // settles at once, not when dequeued
  EXPECT_FALSE(victim.cancel());
  gate.release();
  pool.wait_idle();
  EXPECT_FALSE(ran.load());
  EXPECT_THROW(victim.get(), crew::Cancelled);
  EXPECT_EQ(pool.stats().cancelled, 1U);
  blocker.get();
}

TEST(ThreadPool, StopTokenCancelsQueuedTask) {
  crew::ThreadPool pool({.max_workers = 1});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::stop_source stop;
  std::atomic<bool> ran{false};
  auto victim = pool.run(crew::RunOptions{.stop = stop.get_token()}, [&] { ran = true; });
  stop.request_stop();
  EXPECT_TRUE(victim.ready());
  std::stop_source already;
  already.request_stop();
  auto never = pool.run(crew::RunOptions{.stop = already.get_token()}, [&] { ran = true; });
  gate.release();
  pool.wait_idle();
  EXPECT_FALSE(ran.load());
  EXPECT_THROW(victim.get(), crew::Cancelled);
  EXPECT_THROW(never.get(), crew::Cancelled);
  blocker.get();
}

TEST(ThreadPool, RunningTaskObservesCancellationThroughItsToken) {
  crew::ThreadPool pool({.max_workers = 1});
  std::latch started(1);
  std::atomic<bool> saw_stop{false};
  auto f = pool.run([&](std::stop_token st) {
    started.count_down();
    while (!st.stop_requested()) std::this_thread::yield();
    saw_stop = true;
    return 1;
  });
  started.wait();
  EXPECT_TRUE(f.cancel());
  EXPECT_THROW(f.get(), crew::Cancelled);
  pool.wait_idle();
  EXPECT_TRUE(saw_stop.load());
}

TEST(ThreadPool, UserStopReachesRunningTask) {
  crew::ThreadPool pool({.max_workers = 1});
  std::stop_source stop;
  std::latch started(1);
  auto f = pool.run(crew::RunOptions{.stop = stop.get_token()}, [&](std::stop_token st) {
    started.count_down();
    while (!st.stop_requested()) std::this_thread::yield();
  });
  started.wait();
  stop.request_stop();
  EXPECT_THROW(f.get(), crew::Cancelled);
  pool.wait_idle();
}

TEST(ThreadPool, TimeoutSettlesWithTimedOutAndSignalsStop) {
  crew::ThreadPool pool({.max_workers = 1});
  std::atomic<bool> saw_stop{false};
  const auto t0 = std::chrono::steady_clock::now();
  auto f = pool.run(crew::RunOptions{.timeout = 50ms}, [&](std::stop_token st) {
    while (!st.stop_requested()) std::this_thread::yield();
    saw_stop = true;
    return 0;
  });
  EXPECT_THROW(
      {
        try {
          f.get();
        } catch (const crew::TimedOut& e) {
          EXPECT_NE(std::string(e.what()).find("50 ms"), std::string::npos) << e.what();
          throw;
        }
      },
      crew::TimedOut);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  pool.wait_idle();
  EXPECT_TRUE(saw_stop.load());
  // A task that finishes in time keeps its value.
  EXPECT_EQ(pool.run(crew::RunOptions{.timeout = 10s}, [] { return 5; }).get(), 5);
}

// As ProcessPoolStats: a timeout is counted in timed_out, a cancellation in cancelled, never
// both, and a task that throws after its deadline was a timeout, not a failure.
TEST(ThreadPool, TimeoutsAreCountedApartFromCancellations) {
  crew::ThreadPool pool({.max_workers = 1});
  auto timed = pool.run(crew::RunOptions{.timeout = 20ms}, [](std::stop_token st) {
    while (!st.stop_requested()) std::this_thread::yield();
    return 1;
  });
  EXPECT_THROW(timed.get(), crew::TimedOut);
  // Counted before the Future became ready, while the task may still be returning.
  EXPECT_EQ(pool.stats().timed_out, 1U);
  pool.wait_idle();
  auto s = pool.stats();
  EXPECT_EQ(s.timed_out, 1U);
  EXPECT_EQ(s.cancelled, 0U);
  EXPECT_EQ(s.completed, 0U);

  auto throws_late = pool.run(crew::RunOptions{.timeout = 20ms}, [](std::stop_token st) {
    while (!st.stop_requested()) std::this_thread::yield();
    throw std::runtime_error("stopped");
  });
  EXPECT_THROW(throws_late.get(), crew::TimedOut);
  pool.wait_idle();
  s = pool.stats();
  EXPECT_EQ(s.timed_out, 2U);
  EXPECT_EQ(s.failed, 0U);

  // Cancelled while running, well before its deadline.
  std::latch started(1);
  auto cancelled = pool.run(crew::RunOptions{.timeout = 60s}, [&](std::stop_token st) {
    started.count_down();
    while (!st.stop_requested()) std::this_thread::yield();
    return 2;
  });
  started.wait();
  EXPECT_TRUE(cancelled.cancel());
  EXPECT_THROW(cancelled.get(), crew::Cancelled);
  pool.wait_idle();
  s = pool.stats();
  EXPECT_EQ(s.cancelled, 1U);
  EXPECT_EQ(s.timed_out, 2U);
}

// The timer thread sleeps until the earliest deadline it knows of; a shorter timeout armed later
// must wake it, and one armed after the earliest task finished must too.
TEST(ThreadPool, AShortTimeoutArmedAfterALongOneExpiresOnTime) {
  crew::ThreadPool pool({.max_workers = 2});
  auto spin_until_stopped = [](std::stop_token st) {
    while (!st.stop_requested()) std::this_thread::yield();
    return 0;
  };
  EXPECT_EQ(pool.run(crew::RunOptions{.timeout = 20s}, [] { return 1; }).get(), 1);
  std::latch long_started(1);
  auto long_task = pool.run(crew::RunOptions{.timeout = 30s}, [&](std::stop_token st) {
    long_started.count_down();
    return spin_until_stopped(st);
  });
  long_started.wait();
  const auto t0 = std::chrono::steady_clock::now();
  auto short_task = pool.run(crew::RunOptions{.timeout = 50ms}, spin_until_stopped);
  EXPECT_THROW(short_task.get(), crew::TimedOut);
  // Far below the 20 s and 30 s deadlines the timer thread was sleeping towards.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  pool.terminate();  // stops the long task through its stop token
  EXPECT_EQ(long_task.get(), 0);
}

TEST(ThreadPool, TimeoutCountsFromStartNotFromSubmission) {
  crew::ThreadPool pool({.max_workers = 1});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::latch started(1);
  // Queued well past its 1 s timeout would be wrong to fail: the clock starts when it runs.
  auto f = pool.run(crew::RunOptions{.timeout = 1s}, [&] {
    started.count_down();
    return 3;
  });
  EXPECT_FALSE(f.wait_for(20ms));
  gate.release();
  EXPECT_EQ(f.get(), 3);
  blocker.get();
}

TEST(ThreadPool, InvalidRunOptionsThrow) {
  crew::ThreadPool pool({.max_workers = 1});
  EXPECT_THROW((void)pool.run(crew::RunOptions{.timeout = -1ms}, [] {}), std::invalid_argument);
}

// A thread task that crashed took the process with it, and one that timed out may still be
// running: only a ProcessPool retries.
TEST(ThreadPool, RetriesAreRefusedAndNameTheProcessPool) {
  crew::ThreadPool pool({.max_workers = 1});
  std::atomic<int> runs{0};
  auto task = [&] { return ++runs; };
  EXPECT_THAT([&] { (void)pool.run(crew::RunOptions{.attempts = 3}, task); },
              ThrowsMessage<std::invalid_argument>(
                  AllOf(HasSubstr("RunOptions::attempts"), HasSubstr("crew::ProcessPool"))));
  EXPECT_THAT([&] { (void)pool.try_run(crew::RunOptions{.attempts = 2}, task); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("RunOptions::attempts")));
  EXPECT_THAT([&] { (void)pool.run(crew::RunOptions{.attempts = 0}, task); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("RunOptions::attempts must be >= 1")));
  EXPECT_THAT([&] { (void)pool.run(crew::RunOptions{.backoff = {.jitter = 2.0}}, task); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("RunOptions::backoff.jitter")));
  EXPECT_EQ(runs.load(), 0);
  EXPECT_EQ(pool.run(crew::RunOptions{.attempts = 1}, task).get(), 1);
}

TEST(ThreadPool, HigherPriorityRunsFirst) {
  crew::ThreadPool pool({.max_workers = 1});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::mutex m;
  std::vector<int> order;
  std::vector<crew::Future<void>> fs;
  for (int p : {0, 5, -1, 10, 5, 0}) {
    fs.push_back(pool.run(crew::RunOptions{.priority = p}, [&, p] {
      std::lock_guard lock(m);
      order.push_back(p);
    }));
  }
  gate.release();
  for (auto& f : fs) f.get();
  EXPECT_EQ(order, (std::vector<int>{10, 5, 5, 0, 0, -1}));
  blocker.get();
}

TEST(ThreadPool, LowPriorityIsNotStarved) {
  crew::ThreadPool pool({.max_workers = 1});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::atomic<int> position{0};
  int low_position = -1;
  std::vector<crew::Future<void>> fs;
  fs.push_back(pool.run(crew::RunOptions{.priority = -100}, [&] { low_position = position++; }));
  for (int i = 0; i < 200; ++i) {
    fs.push_back(pool.run(crew::RunOptions{.priority = 100}, [&] { position++; }));
  }
  gate.release();
  for (auto& f : fs) f.get();
  // The oldest task is taken at least every 8th dequeue, and it is the oldest here.
  EXPECT_GE(low_position, 0);
  EXPECT_LT(low_position, 8);
}

TEST(ThreadPool, MoreDistinctPrioritiesThanLanesStillRunInOrder) {
  crew::ThreadPool pool({.max_workers = 1});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  std::mutex m;
  std::vector<int> order;
  std::vector<crew::Future<void>> fs;
  // 40 distinct values: the first 32 get lanes, 32..39 share the lane of 31 (nearest lower).
  for (int p = 0; p < 40; ++p) {
    fs.push_back(pool.run(crew::RunOptions{.priority = p}, [&, p] {
      std::lock_guard lock(m);
      order.push_back(p);
    }));
  }
  gate.release();
  for (auto& f : fs) f.get();
  ASSERT_EQ(order.size(), 40U);
  EXPECT_EQ(order.front(), 31);  // the highest lane, oldest first
  std::vector<int> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (int p = 0; p < 40; ++p) EXPECT_EQ(sorted[static_cast<std::size_t>(p)], p);
}

TEST(ThreadPool, BusyThreadDoesNotHoldBackQueuedWorkFromAnIdleOne) {
  crew::ThreadPool pool({.max_workers = 2});
  std::latch first_started(1);
  std::latch second_ran(1);
  // The first task blocks (without helping) until the second has run: only the other thread can
  // run the second one, so it must be woken although a thread is active.
  auto first = pool.run([&] {
    first_started.count_down();
    second_ran.wait();
  });
  first_started.wait();
  auto second = pool.run([&] { second_ran.count_down(); });
  ASSERT_TRUE(first.wait_for(30s)) << "the queued task waited for the busy thread";
  second.get();
  first.get();
}

TEST(ThreadPool, PostedExceptionsGoToOnError) {
  crew::ThreadPool pool({.max_workers = 2});
  std::mutex m;
  std::vector<std::string> errors;
  pool.on_error([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      std::lock_guard lock(m);
      errors.emplace_back(ex.what());
    }
  });
  std::atomic<int> ok{0};
  for (int i = 0; i < 100; ++i) {
    pool.post([&ok, i] {
      if (i % 10 == 0) throw std::runtime_error("post " + std::to_string(i));
      ok++;
    });
  }
  pool.wait_idle();
  EXPECT_EQ(ok.load(), 90);
  EXPECT_EQ(errors.size(), 10U);
  EXPECT_EQ(pool.stats().failed, 10U);
}

TEST(ThreadPool, WaitIdleSeesEveryPostedTask) {
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<int> count{0};
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 1000; ++i)
      pool.post([&] { count.fetch_add(1, std::memory_order_relaxed); });
    pool.wait_idle();
    EXPECT_EQ(count.load(), (round + 1) * 1000);
  }
}

TEST(ThreadPool, ConcurrentWaitIdleDoesNotDeadlock) {
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<bool> done{false};
  std::atomic<int> count{0};
  auto waiter = [&] {
    while (!done.load()) pool.wait_idle();
  };
  std::thread w1(waiter);
  std::thread w2(waiter);
  for (int i = 0; i < 20000 / kScale; ++i) pool.post([&] { count++; });
  pool.wait_idle();
  done = true;
  w1.join();
  w2.join();
  EXPECT_EQ(count.load(), 20000 / kScale);
}

TEST(ThreadPool, WaitIdleFromPoolThreadIsAnError) {
  crew::ThreadPool pool({.max_workers = 1});
  auto f = pool.run([&] { pool.wait_idle(); });
  EXPECT_THROW(f.get(), std::logic_error);
}

long fib(crew::ThreadPool& pool, int n) {
  if (n < 2) return n;
  if (n < 12) return fib(pool, n - 1) + fib(pool, n - 2);
  auto left = pool.run([&pool, n] { return fib(pool, n - 1); });
  const long right = fib(pool, n - 2);
  return left.get() + right;
}

TEST(ThreadPool, ForkJoinOnOneThreadCompletes) {
  crew::ThreadPool pool({.max_workers = 1});
  auto f = pool.run([&] { return fib(pool, 22); });
  ASSERT_TRUE(f.wait_for(60s)) << "fork-join deadlocked";
  EXPECT_EQ(f.get(), 17711);
}

TEST(ThreadPool, IdleThreadsStealNestedTasks) {
  crew::ThreadPool pool({.max_workers = 2});
  // Both children must run at the same time to pass the latch: one on the parent's thread (it
  // helps while waiting), the other only if the second thread steals it from the parent's deque.
  auto parent = pool.run([&] {
    auto meet = std::make_shared<std::latch>(2);
    auto a = pool.run([meet] { meet->arrive_and_wait(); });
    auto b = pool.run([meet] { meet->arrive_and_wait(); });
    a.get();
    b.get();
    return true;
  });
  ASSERT_TRUE(parent.wait_for(30s)) << "nested tasks were not stolen";
  EXPECT_TRUE(parent.get());
}

TEST(ThreadPool, PoolThreadWaitingOnExternalFutureStillRunsNewWork) {
  crew::ThreadPool pool({.max_workers = 1});
  crew::Promise<int> promise;
  auto waiter = pool.run([f = promise.get_future()]() mutable { return f.get(); });
  // Only the one pool thread can run this, and it is inside waiter's get().
  auto setter = pool.run([&] { promise.set_value(11); });
  ASSERT_TRUE(waiter.wait_for(30s));
  EXPECT_EQ(waiter.get(), 11);
  setter.get();
}

TEST(ThreadPool, GrowsUnderLoadAndShrinksWhenIdle) {
  const auto idle_timeout = 100ms;
  crew::ThreadPool pool({.min_workers = 1, .max_workers = 4, .idle_timeout = idle_timeout});
  EXPECT_EQ(pool.stats().workers, 1U);
  // Taken before any task can finish, so no thread can have been idle since before t0.
  const auto t0 = std::chrono::steady_clock::now();
  // Four tasks that can only finish together: passes only if the pool grew to four threads.
  // Each reads the thread count while all four are inside their task, so none can have left.
  std::latch all_four(4);
  std::latch all_read(4);
  std::atomic<int> saw_four{0};
  std::vector<crew::Future<void>> fs;
  for (int i = 0; i < 4; ++i) {
    fs.push_back(pool.run([&] {
      all_four.arrive_and_wait();
      if (pool.stats().workers == 4) ++saw_four;
      all_read.arrive_and_wait();
    }));
  }
  for (auto& f : fs) ASSERT_TRUE(f.wait_for(30s)) << "pool did not grow to max_workers";
  EXPECT_EQ(saw_four.load(), 4);
  // The shrink should take about idle_timeout; wait for it with a generous deadline (polling a
  // snapshot is the observation, not the synchronisation).
  while (pool.stats().workers > 1 && std::chrono::steady_clock::now() - t0 < 30s) {
    std::this_thread::sleep_for(1ms);
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(pool.stats().workers, 1U) << "the pool did not shrink within 30 s";
  // Not before idle_timeout: every thread ran a task that finished after t0.
  EXPECT_GE(took, idle_timeout);
  // And it still works at the minimum size.
  EXPECT_EQ(pool.run([] { return 1; }).get(), 1);
}

// The issue asks for 10,000 cycles, sanitizers included. They run as ten tests of 1,000 (one
// CTest test each, so CTest can run two at once): 10,000 in one test took 85 s under TSan on an
// idle machine, and over the 120 s test timeout on a loaded one.
class DestroyWhileProducersSubmit : public ::testing::TestWithParam<int> {};

TEST_P(DestroyWhileProducersSubmit, LosesNothing) {
  constexpr int kCyclesPerShard = 1000;
  const int first = GetParam() * kCyclesPerShard;
  for (int c = first; c < first + kCyclesPerShard; ++c) {
    std::atomic<int> accepted{0};
    std::atomic<int> ran{0};
    std::atomic<bool> stop{false};
    // Bounded, with producers waiting for space: close() must also wake a blocked producer.
    auto pool = std::make_unique<crew::ThreadPool>(
        crew::PoolOptions{.max_workers = 2, .max_queue = 16, .on_full = crew::OnFull::wait});
    std::thread producer([&] {
      while (!stop.load()) {
        try {
          // Each accepted task also submits a nested one while the pool may be draining.
          pool->post([&, p = pool.get()] {
            ran++;
            accepted++;
            p->post([&] { ran++; });
          });
          accepted++;
        } catch (const crew::PoolClosed&) {
          break;
        }
      }
    });
    while (accepted.load() < 4) std::this_thread::yield();
    pool->close();  // concurrent with the producer
    stop = true;
    producer.join();
    pool.reset();
    ASSERT_EQ(ran.load(), accepted.load()) << "cycle " << c;
  }
}

INSTANTIATE_TEST_SUITE_P(ThreadPool, DestroyWhileProducersSubmit, ::testing::Range(0, 10),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "cycles_" + std::to_string(info.param * 1000) + "_to_" +
                                  std::to_string(info.param * 1000 + 999);
                         });

TEST(ThreadPool, DestructorDrainsNestedWork) {
  std::atomic<int> ran{0};
  for (int c = 0; c < 1000 / kScale; ++c) {
    crew::ThreadPool pool({.max_workers = 2});
    for (int i = 0; i < 4; ++i) {
      pool.post([&] {
        pool.post([&] {
          pool.post([&] { ran++; });
          ran++;
        });
        ran++;
      });
    }
  }
  EXPECT_EQ(ran.load(), 1000 / kScale * 12);
}

TEST(ThreadPool, TerminateRejectsQueuedAndStopsRunning) {
  crew::ThreadPool pool({.max_workers = 1});
  std::latch started(1);
  auto running = pool.run([&](std::stop_token st) {
    started.count_down();
    while (!st.stop_requested()) std::this_thread::yield();
    return 7;
  });
  started.wait();
  std::atomic<int> ran{0};
  std::vector<crew::Future<void>> queued;
  for (int i = 0; i < 10; ++i) queued.push_back(pool.run([&] { ran++; }));
  pool.terminate();
  EXPECT_EQ(running.get(), 7);  // it saw the stop request and returned normally
  for (auto& f : queued) EXPECT_THROW(f.get(), crew::PoolClosed);
  EXPECT_EQ(ran.load(), 0);
  EXPECT_THROW((void)pool.run([] {}), crew::PoolClosed);
  EXPECT_EQ(pool.stats().cancelled, 10U);
}

TEST(ThreadPool, InvalidOptionsNameTheField) {
  auto message = [](crew::PoolOptions o) -> std::string {
    try {
      crew::ThreadPool pool(std::move(o));
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message({.max_workers = 5000}).find("max_workers (5000)"), std::string::npos);
  EXPECT_NE(message({.min_workers = 5, .max_workers = 4}).find("min_workers (5)"),
            std::string::npos);
  EXPECT_NE(message({.idle_timeout = -1ms}).find("idle_timeout"), std::string::npos);
  EXPECT_NE(message({.name = ""}).find("name"), std::string::npos);
}

TEST(ThreadPool, DefaultsComeFromCrewThreads) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // The variable is read once per process, so check it in a fresh one.
  EXPECT_EXIT(
      {
        setenv("CREW_THREADS", "3", 1);
        crew::ThreadPool pool;
        // max_workers 0, the default, is default_thread_count() as for every worker count.
        crew::ThreadPool zero({.max_workers = 0});
        std::exit(crew::default_thread_count() == 3 && pool.stats().workers == 3 &&
                          zero.thread_count() == 3
                      ? 0
                      : 1);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(
      {
        setenv("CREW_THREADS", "lots", 1);
        std::exit(crew::default_thread_count() >= 1 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "CREW_THREADS");
}

TEST(ThreadPool, StatsCountAndTime) {
  crew::ThreadPool pool({.max_workers = 2});
  Gate gate;
  auto blocker = pool.run(gate.body());
  gate.entered.wait();
  auto during = pool.stats();
  EXPECT_EQ(during.workers, 2U);
  EXPECT_EQ(during.busy, 1U);
  EXPECT_EQ(during.idle, 1U);
  gate.release();
  blocker.get();
  for (int i = 0; i < 100; ++i) pool.post([] {});
  pool.wait_idle();
  const auto s = pool.stats();
  EXPECT_EQ(s.completed, 101U);
  EXPECT_EQ(s.queued, 0U);
  EXPECT_EQ(s.run_time.count, 101U);
  EXPECT_EQ(s.wait_time.count, 101U);
  EXPECT_LE(s.run_time.p50, s.run_time.p99);
  EXPECT_LE(s.run_time.p99, s.run_time.max);
  EXPECT_GE(s.utilization, 0.0);
  EXPECT_LE(s.utilization, 1.0);
  EXPECT_GT(s.run_time.max, 0ns);
}

TEST(ThreadPool, ThreadsAreNamed) {
  crew::ThreadPool pool({.max_workers = 1, .name = "imgs"});
  const std::string name = pool.run([] {
                                 char buf[16] = {};
                                 pthread_getname_np(pthread_self(), buf, sizeof buf);
                                 return std::string(buf);
                               })
                               .get();
  EXPECT_EQ(name, "imgs-w0");
  EXPECT_EQ(pool.name(), "imgs");
}

TEST(ThreadPool, IsAnExecutorForThen) {
  crew::ThreadPool pool({.max_workers = 1, .name = "cont"});
  crew::Promise<int> p;
  auto f = p.get_future().then(
      [](int v) {
        char buf[16] = {};
        pthread_getname_np(pthread_self(), buf, sizeof buf);
        return std::string(buf) + ":" + std::to_string(v);
      },
      pool);
  p.set_value(4);
  EXPECT_EQ(f.get(), "cont-w0:4");
}

TEST(ThreadPool, ManyProducersNothingLost) {
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<long> sum{0};
  std::vector<std::thread> producers;
  const int per = 20000 / kScale;
  for (int t = 0; t < 4; ++t) {
    producers.emplace_back([&] {
      for (int i = 0; i < per; ++i)
        pool.post([&sum, i] { sum.fetch_add(i, std::memory_order_relaxed); });
    });
  }
  for (auto& p : producers) p.join();
  pool.wait_idle();
  EXPECT_EQ(sum.load(), 4L * per * (per - 1) / 2);
}

}  // namespace
