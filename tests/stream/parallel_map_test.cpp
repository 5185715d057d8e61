// parallel_map: order under random task durations, unordered delivery, errors, the in-flight
// bound, and the pipeline thread never running user code of a parallel stage.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <ranges>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <crew/pool.hpp>
#include <crew/stream/stages.hpp>

namespace {

namespace cs = crew::stream;
using ::testing::HasSubstr;

// Deterministic pseudo-random busy time per item: up to ~200 µs, so tasks finish out of order.
void spin_for_item(int x) {
  const auto us = std::chrono::microseconds((static_cast<unsigned>(x) * 2654435761U) % 200);
  const auto until = std::chrono::steady_clock::now() + us;
  while (std::chrono::steady_clock::now() < until) std::this_thread::yield();
}

TEST(ParallelMap, OrderedKeepsInputOrderUnderRandomDurations) {
  crew::ThreadPool pool({.max_workers = 4});
  auto p = cs::from(std::views::iota(0, 400)) |
           cs::parallel_map(pool,
                            [](int x) {
                              spin_for_item(x);
                              return x * 3;
                            }) |
           cs::collect();
  cs::Summary s = p.run().get();
  auto v = p.take();
  ASSERT_EQ(v.size(), 400U);
  for (int i = 0; i < 400; ++i) ASSERT_EQ(v[static_cast<std::size_t>(i)], i * 3) << i;
  EXPECT_GE(s.stage("parallel_map").peak_in_flight, 2U);
  EXPECT_LE(s.stage("parallel_map").peak_in_flight, 8U);  // 2 x 4 threads
}

TEST(ParallelMap, UnorderedDeliversEveryItemOnce) {
  crew::ThreadPool pool({.max_workers = 4});
  auto p = cs::from(std::views::iota(0, 400)) |
           cs::parallel_map(pool,
                            [](int x) {
                              spin_for_item(x);
                              return x;
                            },
                            {.ordered = false, .max_in_flight = 6}) |
           cs::collect();
  cs::Summary s = p.run().get();
  auto v = p.take();
  ASSERT_EQ(v.size(), 400U);
  std::vector<int> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 400; ++i) ASSERT_EQ(sorted[static_cast<std::size_t>(i)], i);
  EXPECT_LE(s.stage("parallel_map").peak_in_flight, 6U);
}

TEST(ParallelMap, RunsOnPoolThreadsWithinTheBound) {
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<int> running{0};
  std::atomic<int> peak{0};
  const auto caller = std::this_thread::get_id();
  std::atomic<bool> on_caller{false};
  auto p = cs::from(std::views::iota(0, 200)) |
           cs::parallel_map(pool,
                            [&](int x) {
                              if (std::this_thread::get_id() == caller) on_caller = true;
                              const int now = running.fetch_add(1) + 1;
                              int old = peak.load();
                              while (now > old && !peak.compare_exchange_weak(old, now)) {
                              }
                              spin_for_item(x);
                              running.fetch_sub(1);
                              return x;
                            },
                            {.max_in_flight = 3}) |
           cs::count();
  (void)p.run().get();
  EXPECT_EQ(p.take(), 200U);
  EXPECT_LE(peak.load(), 2);  // two pool threads
  EXPECT_FALSE(on_caller.load());
}

TEST(ParallelMap, ThrowingTaskRejectsWithItsIndex) {
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<int> pulls{0};
  auto p = cs::from([&pulls]() -> std::optional<int> { return pulls.fetch_add(1); },
                    {.high_water_mark = 4}) |
           cs::parallel_map(pool,
                            [](int x) {
                              if (x == 25) throw std::runtime_error("task 25 failed");
                              return x;
                            },
                            {.max_in_flight = 4}) |
           cs::count();
  try {
    (void)p.run().get();
    FAIL() << "expected StageError";
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "parallel_map");
    EXPECT_EQ(e.position(), 25U);
    EXPECT_THAT(e.what(), HasSubstr("task 25 failed"));
  }
  // The source stopped: at most the marks and the in-flight items beyond the failing one.
  EXPECT_LE(pulls.load(), 25 + 4 + 4 + 1);
}

TEST(ParallelMap, UnorderedThrowingTaskRejects) {
  crew::ThreadPool pool({.max_workers = 2});
  auto p = cs::from(std::views::iota(0, 100)) |
           cs::parallel_map(pool,
                            [](int x) {
                              if (x == 50) throw std::runtime_error("boom");
                              return x;
                            },
                            {.ordered = false}) |
           cs::count();
  EXPECT_THROW((void)p.run().get(), crew::StageError);
}

TEST(ParallelMap, ChainedParallelStages) {
  crew::ThreadPool pool({.max_workers = 2});
  auto p = cs::from(std::views::iota(0, 300)) |
           cs::parallel_map(pool, [](int x) { return x + 1; }) |
           cs::filter([](int x) { return x % 3 == 0; }) |
           cs::parallel_map(pool, [](int x) { return static_cast<long>(x) * 2; }) | cs::collect();
  (void)p.run().get();
  auto v = p.take();
  ASSERT_EQ(v.size(), 100U);
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i], static_cast<long>(3 * (i + 1)) * 2);
}

}  // namespace

namespace {

TEST(ParallelMap, GrainGroupsItemsAndKeepsOrder) {
  crew::ThreadPool pool({.max_workers = 3});
  for (bool ordered : {true, false}) {
    auto p = cs::from(std::views::iota(0, 1001)) |
             cs::parallel_map(pool,
                              [](int x) {
                                if (x % 10 == 0) spin_for_item(x);
                                return x * 2;
                              },
                              {.ordered = ordered, .max_in_flight = 40, .grain = 16}) |
             cs::collect();
    cs::Summary s = p.run().get();
    auto v = p.take();
    ASSERT_EQ(v.size(), 1001U);
    if (!ordered) std::sort(v.begin(), v.end());
    for (int i = 0; i < 1001; ++i) ASSERT_EQ(v[static_cast<std::size_t>(i)], 2 * i) << i;
    EXPECT_LE(s.stage("parallel_map").peak_in_flight, 40U);
  }
}

TEST(ParallelMap, GrainFailureNamesTheItemAndDeliversNothingAfterIt) {
  crew::ThreadPool pool({.max_workers = 2});
  std::vector<int> seen;
  auto p = cs::from(std::views::iota(0, 200)) |
           cs::parallel_map(pool,
                            [](int x) {
                              if (x == 37) throw std::runtime_error("item 37 is bad");
                              return x;
                            },
                            {.grain = 8}) |
           cs::to([&](int x) { seen.push_back(x); });
  try {
    (void)p.run().get();
    FAIL() << "expected StageError";
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.position(), 37U);
    EXPECT_THAT(e.what(), HasSubstr("item 37 is bad"));
  }
  // Items before the failing one may have been handed on (those still buffered at the boundary
  // are dropped); none after it.
  ASSERT_LE(seen.size(), 37U);
  for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<int>(i));
}

TEST(ParallelMap, BadGrainAndInFlight) {
  crew::ThreadPool pool({.max_workers = 1});
  auto id = [](int x) { return x; };
  try {
    (void)cs::parallel_map(pool, id, {.grain = 0});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("grain (0)"));
  }
  try {
    (void)cs::parallel_map(pool, id, {.max_in_flight = 4, .grain = 8});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("max_in_flight (4) must be >= grain (8)"));
  }
}

}  // namespace
