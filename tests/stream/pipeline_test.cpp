// Typed pipelines: every item stage and sink, Summary counters, backpressure, errors,
// cancellation and bad arguments.
#include <atomic>
#include <cstdint>
#include <latch>
#include <numeric>
#include <optional>
#include <ranges>
#include <semaphore>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <crew/stream.hpp>

namespace {

namespace cs = crew::stream;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// An endless generator that counts how often it was pulled.
struct Counter {
  std::atomic<std::uint64_t>* pulls;
  std::uint64_t limit = UINT64_MAX;
  std::optional<std::uint64_t> operator()() const {
    const std::uint64_t n = pulls->load(std::memory_order_relaxed);
    if (n >= limit) return std::nullopt;
    pulls->store(n + 1, std::memory_order_relaxed);
    return n;
  }
};

TEST(Pipeline, MapFilterCollectKeepsOrder) {
  auto p = cs::from(std::views::iota(0, 10)) | cs::map([](int x) { return x * x; }) |
           cs::filter([](int x) { return x % 2 == 0; }) | cs::collect();
  cs::Summary s = p.run().get();
  EXPECT_THAT(p.take(), ElementsAre(0, 4, 16, 36, 64));
  ASSERT_EQ(s.stages.size(), 4U);
  EXPECT_EQ(s.stages[0].name, "from");
  EXPECT_EQ(s.stages[0].items_out, 10U);
  EXPECT_EQ(s.stage("map").items_in, 10U);
  EXPECT_EQ(s.stage("filter").items_out, 5U);
  EXPECT_EQ(s.stage("collect").items_in, 5U);
  EXPECT_EQ(s.items(), 5U);
}

TEST(Pipeline, FromAnLvalueContainerCopiesIt) {
  std::vector<std::string> words{"a", "bb", "ccc"};
  auto p = cs::from(words) | cs::map([](std::string w) { return w.size(); }) | cs::collect();
  (void)p.run().get();
  EXPECT_THAT(p.take(), ElementsAre(1U, 2U, 3U));
  EXPECT_THAT(words, ElementsAre("a", "bb", "ccc"));
}

TEST(Pipeline, GeneratorSourceEndsOnEmptyOptional) {
  int i = 0;
  auto p = cs::from([&i]() -> std::optional<int> {
             if (i == 37) return std::nullopt;
             return i++;
           }) |
           cs::count();
  (void)p.run().get();
  EXPECT_EQ(p.take(), 37U);
}

TEST(Pipeline, EmptySource) {
  auto p = cs::from(std::vector<int>{}) | cs::map([](int x) { return x; }) | cs::collect();
  cs::Summary s = p.run().get();
  EXPECT_TRUE(p.take().empty());
  EXPECT_EQ(s.items(), 0U);
}

TEST(Pipeline, FlatMapExpandsAndHandsOnInMarkSizedBatches) {
  auto p = cs::from(std::vector<int>{0, 1, 100}, {.high_water_mark = 8}) |
           cs::flat_map([](int n) { return std::vector<int>(static_cast<std::size_t>(n), n); }) |
           cs::collect();
  cs::Summary s = p.run().get();
  auto v = p.take();
  ASSERT_EQ(v.size(), 101U);
  EXPECT_EQ(v[0], 1);
  EXPECT_EQ(v[100], 100);
  EXPECT_EQ(s.stage("flat_map").items_out, 101U);
  EXPECT_LE(s.stage("flat_map").peak_buffered, 8U);
}

TEST(Pipeline, BatchGroupsAndFlushesTheRest) {
  auto p = cs::from(std::views::iota(0, 10)) | cs::batch(4) | cs::collect();
  (void)p.run().get();
  auto v = p.take();
  ASSERT_EQ(v.size(), 3U);
  EXPECT_THAT(v[0], ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(v[1], ElementsAre(4, 5, 6, 7));
  EXPECT_THAT(v[2], ElementsAre(8, 9));
}

TEST(Pipeline, TapSeesEveryItemAndPassesItOn) {
  std::vector<int> seen;
  std::vector<int> sunk;
  auto p = cs::from(std::views::iota(1, 6)) | cs::tap([&](const int& x) { seen.push_back(x); }) |
           cs::to([&](int x) { sunk.push_back(x); });
  (void)p.run().get();
  EXPECT_THAT(seen, ElementsAre(1, 2, 3, 4, 5));
  EXPECT_THAT(sunk, ElementsAre(1, 2, 3, 4, 5));
}

TEST(Pipeline, NamedStagesAppearInTheSummary) {
  auto p = cs::from(std::views::iota(0, 3)) | cs::map([](int x) { return x + 1; }).named("inc") |
           cs::count().named("n");
  cs::Summary s = p.run().get();
  EXPECT_EQ(s.stage("inc").items_out, 3U);
  EXPECT_EQ(s.stage("n").items_in, 3U);
  EXPECT_EQ(s.find("map"), nullptr);
  EXPECT_THROW((void)s.stage("nope"), std::out_of_range);
  EXPECT_THAT(s.to_string(), HasSubstr("inc"));
}

TEST(Pipeline, RunsOnceAndTakeNeedsAResult) {
  auto p = cs::from(std::views::iota(0, 3)) | cs::count();
  EXPECT_THROW((void)p.take(), std::logic_error);
  (void)p.run().get();
  EXPECT_THROW((void)p.run(), std::logic_error);
  EXPECT_EQ(p.take(), 3U);
  EXPECT_THROW((void)p.take(), std::logic_error);
}

// A sink that blocks on a gate the test holds: while it is blocked, the source must not run
// ahead by more than the marks.
TEST(Pipeline, SlowSinkPausesTheSourceAtTheMark) {
  constexpr std::size_t kMark = 4;
  std::atomic<std::uint64_t> pulls{0};
  std::latch sink_entered(1);
  std::binary_semaphore gate(0);
  std::uint64_t sunk = 0;
  auto p = cs::from(Counter{&pulls, 1000}, {.high_water_mark = kMark}) |
           cs::map([](std::uint64_t x) { return x + 1; }) |
           cs::filter([](std::uint64_t) { return true; }) | cs::to([&](std::uint64_t) {
             if (sunk++ == 0) {
               sink_entered.count_down();
               gate.acquire();
             }
           });
  auto f = p.run();
  sink_entered.wait();
  // The sink holds the first batch; nothing else is buffered anywhere.
  EXPECT_LE(pulls.load(), kMark);
  gate.release();
  cs::Summary s = f.get();
  EXPECT_EQ(pulls.load(), 1000U);
  for (const auto& st : s.stages) {
    EXPECT_LE(st.peak_buffered, kMark) << st.name;
    if (st.index + 1 < s.stages.size()) {
      EXPECT_EQ(st.high_water_mark, kMark) << st.name;
    }
  }
}

TEST(Pipeline, SlowSinkBehindAParallelStageBoundsMemory) {
  constexpr std::size_t kMark = 4;
  constexpr std::size_t kInFlight = 3;
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<std::uint64_t> pulls{0};
  std::latch sink_entered(1);
  std::binary_semaphore gate(0);
  std::uint64_t sunk = 0;
  auto p =
      cs::from(Counter{&pulls, 200}, {.high_water_mark = kMark}) |
      cs::parallel_map(pool, [](std::uint64_t x) { return x * 2; }, {.max_in_flight = kInFlight}) |
      cs::to([&](std::uint64_t) {
        if (sunk++ == 0) {
          sink_entered.count_down();
          gate.acquire();
        }
      });
  auto f = p.run();
  sink_entered.wait();
  EXPECT_LE(pulls.load(), 2 * kMark + kInFlight);
  gate.release();
  cs::Summary s = f.get();
  EXPECT_EQ(sunk, 200U);
  EXPECT_LE(s.stage("parallel_map").peak_in_flight, kInFlight);
  for (const auto& st : s.stages) EXPECT_LE(st.peak_buffered, kMark) << st.name;
}

TEST(Pipeline, ThrowingStageRejectsWithStageErrorAndStopsTheSource) {
  std::atomic<std::uint64_t> pulls{0};
  auto p = cs::from(Counter{&pulls}, {.high_water_mark = 4}) |
           cs::map([](std::uint64_t x) { return x; }) | cs::map([](std::uint64_t x) {
                                                          if (x == 10)
                                                            throw std::runtime_error("bad record");
                                                          return x;
                                                        }).named("parse") |
           cs::count();
  try {
    (void)p.run().get();
    FAIL() << "expected StageError";
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "parse");
    EXPECT_EQ(e.stage_index(), 2U);
    EXPECT_EQ(e.position(), 10U);
    EXPECT_EQ(e.unit(), crew::StageError::Unit::item);
    EXPECT_THAT(e.what(), HasSubstr("'parse'"));
    EXPECT_THAT(e.what(), HasSubstr("item 10"));
    EXPECT_THAT(e.what(), HasSubstr("bad record"));
    EXPECT_THROW(std::rethrow_exception(e.cause()), std::runtime_error);
  }
  // Items 8..11 were the batch in progress: the source read nothing after it.
  EXPECT_EQ(pulls.load(), 12U);
  EXPECT_THROW((void)p.take(), std::logic_error);
}

TEST(Pipeline, ThrowingSourceAndSinkAreNamed) {
  int i = 0;
  auto p1 = cs::from([&i]() -> std::optional<int> {
              if (i == 5) throw std::runtime_error("source broke");
              return i++;
            }) |
            cs::count();
  try {
    (void)p1.run().get();
    FAIL();
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "from");
    EXPECT_THAT(e.what(), HasSubstr("source broke"));
  }
  auto p2 = cs::from(std::views::iota(0, 100)) | cs::to([](int x) {
              if (x == 42) throw std::logic_error("sink broke");
            });
  try {
    (void)p2.run().get();
    FAIL();
  } catch (const crew::StageError& e) {
    EXPECT_EQ(e.stage(), "to");
    EXPECT_EQ(e.position(), 42U);
  }
}

TEST(Pipeline, StopTokenCancelsWithinOneBatch) {
  std::atomic<std::uint64_t> pulls{0};
  std::stop_source stop;
  auto p = cs::from(Counter{&pulls}, {.high_water_mark = 8}) | cs::tap([&](std::uint64_t x) {
             if (x == 100) stop.request_stop();
           }) |
           cs::count();
  auto f = p.run(stop.get_token());
  EXPECT_THROW((void)f.get(), crew::Cancelled);
  EXPECT_LE(pulls.load(), 101U + 8U);
  EXPECT_GE(pulls.load(), 101U);
}

TEST(Pipeline, AlreadyStoppedTokenCancelsBeforeAnyPull) {
  std::atomic<std::uint64_t> pulls{0};
  std::stop_source stop;
  stop.request_stop();
  auto p = cs::from(Counter{&pulls}) | cs::count();
  EXPECT_THROW((void)p.run(stop.get_token()).get(), crew::Cancelled);
  EXPECT_EQ(pulls.load(), 0U);
}

TEST(Pipeline, BadArgumentsNameTheField) {
  try {
    (void)cs::batch(0);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("batch: n (0)"));
  }
  crew::ThreadPool pool({.max_workers = 1});
  try {
    (void)cs::parallel_map(pool, [](int x) { return x; }, {.max_in_flight = 0});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("max_in_flight (0)"));
  }
  try {
    (void)cs::from(std::vector<int>{1}, {.high_water_mark = 0});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("high_water_mark (0)"));
  }
}

TEST(Pipeline, FromMessagePortUntilClosed) {
  crew::MessageChannel ch;
  std::jthread producer([port = std::move(ch.port1)]() mutable {
    for (int i = 0; i < 50; ++i) port.post_wait(crew::Message(i));
    port.close();
  });
  auto p = cs::from(std::move(ch.port2)) |
           cs::map([](crew::Message m) { return m.as<std::int64_t>(); }) | cs::collect();
  (void)p.run().get();
  auto v = p.take();
  ASSERT_EQ(v.size(), 50U);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(v[static_cast<std::size_t>(i)], i);
}

TEST(Pipeline, DestroyingARunningPipelineWaitsForIt) {
  std::atomic<int> done{0};
  {
    auto p = cs::from(std::views::iota(0, 1000)) | cs::to([&](int) { done.fetch_add(1); });
    auto f = p.run();
    (void)f;
  }
  EXPECT_EQ(done.load(), 1000);
}

}  // namespace
