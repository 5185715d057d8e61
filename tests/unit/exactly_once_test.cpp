// Every accepted task settles exactly once, at the edges: continuations an executor drops unrun,
// and continuations that run because of a timeout. Each test here hung (a Future that never
// settled, or a deadlocked timer thread) before the fixes it covers.
#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <pthread.h>

#include <crew/errors.hpp>
#include <crew/event_loop.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;

// Deadlock guard: generous (a 2-core machine under load and sanitizers), never reached when the
// code works.
constexpr auto kGuard = 60s;

std::string current_thread_name() {
  std::array<char, 16> buf{};
  pthread_getname_np(pthread_self(), buf.data(), buf.size());
  return buf.data();
}

// A task that holds its thread until its stop token fires (timeout or terminate()).
int hold_until_stopped(std::stop_token st) {
  while (!st.stop_requested()) std::this_thread::sleep_for(100us);
  return -1;
}

// A task that times out at once: its stop token is the only way it returns.
crew::Future<int> timed_out_task(crew::ThreadPool& pool) {
  return pool.run(crew::RunOptions{.timeout = 1ms}, hold_until_stopped);
}

template <class T>
void expect_pool_closed(crew::Future<T>& f) {
  ASSERT_TRUE(f.wait_for(kGuard)) << "the Future never settled";
  EXPECT_THROW(f.get(), crew::PoolClosed);
}

// ---------------------------------------------------------------------------------------------
// Continuations an executor drops

TEST(ExactlyOnce, ThenOnATerminatedPoolSettlesWithPoolClosed) {
  crew::ThreadPool pool({.max_workers = 1, .name = "dropper"});
  std::latch holding(1);
  auto busy = pool.run([&holding](std::stop_token st) {
    holding.count_down();
    return hold_until_stopped(st);
  });
  holding.wait();  // the only thread is taken: the continuation below can only queue
  crew::Promise<int> source;
  std::atomic<bool> ran{false};
  auto f = source.get_future().then(
      [&ran](int v) {
        ran = true;
        return v;
      },
      pool);
  source.set_value(1);  // posts the continuation; it queues behind `busy`
  pool.terminate();     // drops it unrun
  expect_pool_closed(f);
  EXPECT_FALSE(ran.load());
  EXPECT_EQ(busy.get(), -1) << "terminate() signalled the running task's stop token";
}

TEST(ExactlyOnce, ThenOnAClosedPoolSettlesWithThePoolsError) {
  crew::ThreadPool pool({.max_workers = 1});
  pool.close();
  crew::Promise<int> source;
  auto f = source.get_future().then([](int v) { return v; }, pool);
  source.set_value(1);
  ASSERT_TRUE(f.wait_for(kGuard));
  try {
    (void)f.get();
    FAIL() << "expected PoolClosed";
  } catch (const crew::PoolClosed& e) {
    EXPECT_NE(std::string(e.what()).find("is closed"), std::string::npos) << e.what();
  }
}

// An executor in the style of many: callbacks kept as std::function (so copied), some dropped.
struct CopyingExecutor {
  std::vector<std::function<void()>> queue;
  template <class F>
  void post(F&& f) {
    std::function<void()> fn(std::forward<F>(f));
    queue.push_back(fn);  // two copies: the queue's and `fn`
    queue.push_back(fn);  // a duplicate, to prove a continuation runs at most once
  }
};

TEST(ExactlyOnce, ACopyingExecutorRunsTheContinuationOnceAndDroppingSettles) {
  CopyingExecutor ex;
  std::atomic<int> runs{0};
  auto kept = crew::make_ready_future(20).then(
      [&runs](int v) {
        ++runs;
        return v + 1;
      },
      ex);
  auto dropped = crew::make_ready_future(30).then(
      [&runs](int v) {
        ++runs;
        return v;
      },
      ex);
  ASSERT_EQ(ex.queue.size(), 4U);
  ex.queue[0]();  // `kept`, twice
  ex.queue[1]();
  ex.queue.erase(ex.queue.begin(), ex.queue.begin() + 2);
  EXPECT_EQ(kept.get(), 21);
  EXPECT_EQ(runs.load(), 1);
  EXPECT_FALSE(dropped.ready()) << "a copy is still queued";
  ex.queue.clear();  // the last copies of `dropped` die unrun
  expect_pool_closed(dropped);
  EXPECT_EQ(runs.load(), 1);
}

struct ThrowingExecutor {
  template <class F>
  void post(F&& /*f*/) {
    throw std::runtime_error("executor refused");
  }
};

TEST(ExactlyOnce, AnExecutorThatThrowsSettlesWithItsException) {
  ThrowingExecutor ex;
  auto f = crew::make_ready_future(1).then([](int v) { return v; }, ex);
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_THROW((void)f.get(), std::runtime_error);
}

TEST(ExactlyOnce, ThenOnAClosedEventLoopSettlesWithPoolClosed) {
  crew::EventLoop loop;
  loop.close();
  crew::Promise<int> source;
  auto f = source.get_future().then([](int v) { return v; }, loop);
  std::thread([&source] { source.set_value(1); }).join();  // a foreign thread: post() refuses
  expect_pool_closed(f);
}

TEST(ExactlyOnce, AnEventLoopDestroyedWithAQueuedContinuationRunsIt) {
  crew::Future<int> f;
  {
    crew::EventLoop loop;
    f = crew::make_ready_future(5).then([](int v) { return v * 2; }, loop);
    EXPECT_FALSE(f.ready());
  }
  ASSERT_TRUE(f.ready());
  EXPECT_EQ(f.get(), 10);
}

// ---------------------------------------------------------------------------------------------
// Continuations that run because of a timeout

TEST(ExactlyOnce, ATimeoutContinuationNeverRunsOnTheTimerThread) {
  crew::ThreadPool pool({.max_workers = 1, .name = "tmo"});
  std::string where;
  auto f = timed_out_task(pool).then([&where](crew::Future<int> r) {
    where = current_thread_name();
    return r.ready();
  });
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_TRUE(f.get());
  EXPECT_NE(where, "crew-timer");
  EXPECT_EQ(where.rfind("tmo-then-w", 0), 0U) << where;
}

// Before: the continuation ran on the timer thread under its lock; the inner task's arm_timer()
// waited for that lock forever.
TEST(ExactlyOnce, ATimeoutContinuationMaySubmitATimedTaskAndWaitForIt) {
  crew::ThreadPool pool({.max_workers = 2});
  auto f = timed_out_task(pool).then([&pool](crew::Future<int> first) {
    EXPECT_THROW(first.get(), crew::TimedOut);
    auto inner = timed_out_task(pool);
    try {
      inner.get();
    } catch (const crew::TimedOut&) {
      return 7;
    }
    return 0;
  });
  ASSERT_TRUE(f.wait_for(kGuard)) << "deadlock: the timeout continuation's inner task never ended";
  EXPECT_EQ(f.get(), 7);
}

crew::Future<int> await_timeout_then_wait_again(crew::ThreadPool& pool) {
  int first = 0;
  try {
    first = co_await timed_out_task(pool);
  } catch (const crew::TimedOut&) {
    first = 1;
  }
  auto again = pool.run(crew::RunOptions{.timeout = 1ms}, hold_until_stopped);
  try {
    again.get();
  } catch (const crew::TimedOut&) {
    co_return first + 10;
  }
  co_return 0;
}

TEST(ExactlyOnce, ACoroutineResumedByATimeoutMayWaitForATimedTask) {
  crew::ThreadPool pool({.max_workers = 2});
  auto f = await_timeout_then_wait_again(pool);
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_EQ(f.get(), 11);
}

TEST(ExactlyOnce, WhenAllAndWhenAnyFinishedByATimeoutMayWaitForTimedTasks) {
  crew::ThreadPool pool({.max_workers = 2});
  std::vector<crew::Future<int>> all_in;
  all_in.push_back(crew::make_ready_future(1));
  all_in.push_back(timed_out_task(pool));
  auto all = crew::when_all(std::move(all_in)).then([&pool](crew::Future<std::vector<int>> r) {
    EXPECT_THROW(r.get(), crew::TimedOut);
    return pool.run(crew::RunOptions{.timeout = 10s}, [] { return 3; }).get();
  });
  std::vector<crew::Future<int>> any_in;
  any_in.push_back(timed_out_task(pool));
  auto any = crew::when_any(std::move(any_in)).then([&pool](crew::WhenAny<int> r) {
    EXPECT_EQ(r.index, 0U);
    return pool.run(crew::RunOptions{.timeout = 10s}, [] { return 4; }).get();
  });
  ASSERT_TRUE(all.wait_for(kGuard));
  ASSERT_TRUE(any.wait_for(kGuard));
  EXPECT_EQ(all.get(), 3);
  EXPECT_EQ(any.get(), 4);
}

// Before: a continuation that blocked held the timer thread, so no other task ever timed out.
TEST(ExactlyOnce, ASlowTimeoutContinuationDelaysNoOtherTimeout) {
  crew::ThreadPool pool({.max_workers = 2});
  std::latch release(1);
  std::atomic<bool> entered{false};
  auto slow = timed_out_task(pool).then([&](crew::Future<int> /*r*/) {
    entered = true;
    release.wait();
    return 1;
  });
  // Wait for the slow continuation to be running: it now holds whatever thread runs it.
  const auto until = std::chrono::steady_clock::now() + kGuard;
  while (!entered.load() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_TRUE(entered.load());
  // Another task times out, and its own continuation runs, while the slow one still waits.
  auto other = timed_out_task(pool).then([](crew::Future<int> r) {
    try {
      r.get();
    } catch (const crew::TimedOut&) {
      return 2;
    }
    return 0;
  });
  const bool other_settled = other.wait_for(kGuard);
  release.count_down();
  ASSERT_TRUE(other_settled) << "a slow continuation held up another task's timeout";
  EXPECT_EQ(other.get(), 2);
  EXPECT_EQ(slow.get(), 1);
}

TEST(ExactlyOnce, ATimeoutContinuationMayCloseItsPool) {
  auto pool = std::make_unique<crew::ThreadPool>(crew::PoolOptions{.max_workers = 1});
  auto f = timed_out_task(*pool).then([&pool](crew::Future<int> /*r*/) {
    pool->close();  // waits for the timed-out task's thread, not for this continuation
    return 1;
  });
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_EQ(f.get(), 1);
  pool.reset();
}

}  // namespace
