// A task that runs past its timeout and ignores its stop token keeps its thread (a thread cannot
// be killed). These tests check that the pool counts such a task stuck, replaces its thread up to
// PoolOptions::max_stuck_replacements so that other work still runs, and shrinks back once the
// stuck task returns; and that a task that honours its stop token is never counted.
#include <chrono>
#include <latch>
#include <stdexcept>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include <crew/errors.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;

// Hang guards, never speed checks: the gate runs on two busy cores and under the sanitizers.
constexpr auto kPatience = 60s;

// Polls `condition` until it holds or kPatience passes; the pool's figures change on its own
// threads, with nothing to wait on.
template <class Condition>
bool eventually(Condition condition) {
  const auto until = std::chrono::steady_clock::now() + kPatience;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A task body that ignores its stop token: it returns only when the test opens the latch.
auto stubborn(std::latch& open) {
  return [&open] { open.wait(); };
}

TEST(StuckThreads, AStuckThreadIsReplacedAndTheExtraThreadLeavesWhenItReturns) {
  crew::ThreadPool pool({.max_workers = 1, .max_stuck_replacements = 1, .name = "stuck"});
  std::latch open(1);
  auto stuck = pool.run(crew::RunOptions{.timeout = 20ms}, stubborn(open));
  EXPECT_THROW(stuck.get(), crew::TimedOut);
  ASSERT_TRUE(eventually([&] { return pool.stats().stuck == 1; }));
  // The only thread is held; the replacement runs new work.
  auto quick = pool.run([] { return 42; });
  ASSERT_TRUE(quick.wait_for(kPatience));
  EXPECT_EQ(quick.get(), 42);
  crew::PoolStats s = pool.stats();
  EXPECT_EQ(s.workers, 2u);
  EXPECT_EQ(s.stuck, 1u);
  EXPECT_EQ(s.stuck_total, 1u);

  open.count_down();
  ASSERT_TRUE(eventually([&] { return pool.thread_count() == 1; }))
      << "threads: " << pool.thread_count();
  s = pool.stats();
  EXPECT_EQ(s.stuck, 0u);
  EXPECT_EQ(s.stuck_total, 1u);
  EXPECT_EQ(pool.run([] { return 7; }).get(), 7);
}

TEST(StuckThreads, WithoutReplacementsTheStuckTaskHoldsItsThread) {
  crew::ThreadPool pool({.max_workers = 1, .name = "stuck"});
  std::latch open(1);
  auto stuck = pool.run(crew::RunOptions{.timeout = 20ms}, stubborn(open));
  EXPECT_THROW(stuck.get(), crew::TimedOut);
  ASSERT_TRUE(eventually([&] { return pool.stats().stuck == 1; }));
  auto waiting = pool.run([] { return 1; });
  // Nothing may run it while the one thread is held (a wait that can only show a wrong pass,
  // never a wrong failure).
  EXPECT_FALSE(waiting.wait_for(300ms));
  EXPECT_EQ(pool.stats().workers, 1u);
  open.count_down();
  EXPECT_EQ(waiting.get(), 1);
  EXPECT_TRUE(eventually([&] { return pool.stats().stuck == 0; }));
}

TEST(StuckThreads, ReplacementsStopAtTheBound) {
  crew::ThreadPool pool({.max_workers = 1, .max_stuck_replacements = 1, .name = "stuck"});
  std::latch open(1);
  auto first = pool.run(crew::RunOptions{.timeout = 20ms}, stubborn(open));
  EXPECT_THROW(first.get(), crew::TimedOut);
  ASSERT_TRUE(eventually([&] { return pool.stats().stuck == 1; }));
  // The replacement gets stuck too: the bound is reached, and the pool stays at two threads.
  auto second = pool.run(crew::RunOptions{.timeout = 20ms}, stubborn(open));
  EXPECT_THROW(second.get(), crew::TimedOut);
  ASSERT_TRUE(eventually([&] { return pool.stats().stuck == 2; }));
  auto waiting = pool.run([] { return 3; });
  EXPECT_FALSE(waiting.wait_for(300ms));
  EXPECT_EQ(pool.stats().workers, 2u);
  open.count_down();
  EXPECT_EQ(waiting.get(), 3);
  ASSERT_TRUE(eventually([&] { return pool.thread_count() == 1; }));
  EXPECT_EQ(pool.stats().stuck_total, 2u);
}

TEST(StuckThreads, ATaskThatHonoursItsStopTokenIsNeverStuck) {
  crew::ThreadPool pool({.max_workers = 1, .max_stuck_replacements = 1, .name = "stuck"});
  std::latch returned(1);
  auto f = pool.run(crew::RunOptions{.timeout = 20ms}, [&returned](std::stop_token stop) {
    while (!stop.stop_requested()) std::this_thread::yield();
    returned.count_down();
  });
  EXPECT_THROW(f.get(), crew::TimedOut);
  returned.wait();
  // The look after the grace finds it returned. Past twice the grace, nothing may have counted it.
  std::this_thread::sleep_for(2 * crew::kStuckGrace);
  const crew::PoolStats s = pool.stats();
  EXPECT_EQ(s.stuck, 0u);
  EXPECT_EQ(s.stuck_total, 0u);
  EXPECT_EQ(s.workers, 1u);
}

TEST(StuckThreads, TheBoundIsValidated) {
  try {
    crew::ThreadPool pool({.max_stuck_replacements = 5000, .name = "bad"});
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_stuck_replacements"), std::string::npos) << e.what();
  }
}

}  // namespace
