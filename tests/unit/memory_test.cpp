// crew::memory_usage (crew/memory.hpp): each figure moves with what the test does to it.
#include <algorithm>
#include <cstring>
#include <latch>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/memory.hpp>

extern char** environ;

namespace {

constexpr std::size_t kMiB = 1024 * 1024;

TEST(MemoryUsage, ReadsThisProcess) {
  const crew::MemoryUsage m = crew::memory_usage();
  EXPECT_GT(m.rss, 0U);
  EXPECT_GE(m.peak_rss, m.rss);
  EXPECT_GE(m.threads, 1U);
  EXPECT_GE(m.open_fds, 1U);
  EXPECT_FALSE(m.pss.has_value());  // not asked for
  ASSERT_TRUE(m.allocated.has_value());
  ASSERT_TRUE(m.allocator_resident.has_value());
  EXPECT_GT(*m.allocated, 0U);
  // The cheap reading agrees (a moment later: slack for growth).
  EXPECT_GT(crew::resident_memory_bytes(), m.rss / 2);
}

TEST(MemoryUsage, PssIsReadWhenAskedAndIsAtMostRss) {
  const crew::MemoryUsage m = crew::memory_usage({.pss = true});
  ASSERT_TRUE(m.pss.has_value());
  EXPECT_GT(*m.pss, 0U);
  // Shared pages count in full in RSS, in part in PSS (read a moment apart: slack for growth).
  EXPECT_LE(*m.pss, m.rss + 16 * kMiB);
}

TEST(MemoryUsage, AllocatedAndResidentGrowWithAnAllocationThatIsTouched) {
  const crew::MemoryUsage before = crew::memory_usage();
  constexpr std::size_t kSize = 64 * kMiB;
  auto block = std::make_unique<char[]>(kSize);
  std::memset(block.get(), 1, kSize);  // resident, not only reserved
  const crew::MemoryUsage during = crew::memory_usage();
  EXPECT_GE(*during.allocated, *before.allocated + kSize);
  EXPECT_GE(*during.allocator_resident, *before.allocator_resident + kSize / 2);
  EXPECT_GE(during.rss, before.rss + kSize / 2);
  EXPECT_GE(during.peak_rss, during.rss);
  block.reset();
  const crew::MemoryUsage after = crew::memory_usage();
  EXPECT_LT(*after.allocated, *during.allocated - kSize / 2);
  // The high-water mark stays (the kernel's counters are approximate to a few pages).
  EXPECT_GE(after.peak_rss + kMiB, during.rss);
}

TEST(MemoryUsage, CountsDescriptorsAndThreadsExactly) {
  // ThreadSanitizer starts a thread of its own with the program's first one: not counted here.
  std::thread([] {}).join();
  const crew::MemoryUsage before = crew::memory_usage();
  std::vector<int> fds;
  for (int i = 0; i < 3; ++i) fds.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  std::latch release(1);
  std::vector<std::jthread> threads;
  std::latch started(2);
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&] {
      started.count_down();
      release.wait();
    });
  }
  started.wait();
  const crew::MemoryUsage during = crew::memory_usage();
  EXPECT_EQ(during.open_fds, before.open_fds + 3);
  EXPECT_EQ(during.threads, before.threads + 2);
  release.count_down();
  threads.clear();
  for (int fd : fds) ::close(fd);
  EXPECT_EQ(crew::memory_usage().open_fds, before.open_fds);
}

TEST(MemoryUsage, ReadsAnotherProcessWithoutItsAllocator) {
  pid_t child = 0;
  char sleep_arg[] = "sleep";
  char seconds[] = "600";
  char* argv[] = {sleep_arg, seconds, nullptr};
  ASSERT_EQ(::posix_spawnp(&child, "sleep", nullptr, nullptr, argv, environ), 0);
  const crew::MemoryUsage m = crew::memory_usage(child, {.pss = true});
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_GT(m.rss, 0U);
  EXPECT_EQ(m.threads, 1U);
  EXPECT_TRUE(m.pss.has_value());
  EXPECT_FALSE(m.allocated.has_value());
  EXPECT_EQ(crew::resident_memory_bytes(child), 0U);  // reaped: gone
}

TEST(MemoryUsage, AProcessThatDoesNotExistReadsAsZeros) {
  for (int pid : {-1, 0}) {
    const crew::MemoryUsage m = crew::memory_usage(pid);
    EXPECT_EQ(m.rss, 0U) << pid;
    EXPECT_EQ(m.threads, 0U) << pid;
  }
  EXPECT_EQ(crew::memory_usage(999'999'999).rss, 0U);
}

}  // namespace

// LeakWatch on synthetic samples, one a second: what a process's RSS does under each load.
namespace {
namespace leak {

using crew::LeakWatch;
using std::chrono::seconds;
constexpr std::size_t kMB = 1'000'000;

LeakWatch::Clock::time_point at(int second) {
  return LeakWatch::Clock::time_point{} + seconds(second);
}

TEST(LeakWatch, AOneMegabyteASecondLeakUnderNoisyWorkShowsWithinAMinute) {
  LeakWatch watch;
  std::mt19937 random(7);                                       // fixed seed
  std::uniform_int_distribution<std::size_t> work(0, 8 * kMB);  // allocated and freed again
  int first = -1;
  for (int t = 0; t < 120; ++t) {
    const std::size_t rss = 200 * kMB + static_cast<std::size_t>(t) * kMB + work(random);
    if (watch.observe(at(t), rss) && first < 0) first = t;
  }
  ASSERT_GE(first, 0) << "never suspected";
  EXPECT_LE(first, 60);
  EXPECT_TRUE(watch.suspected());
  EXPECT_NEAR(watch.bytes_per_second(), 1.0 * kMB, 0.3 * kMB);
}

TEST(LeakWatch, ASteadyLoadAfterItsWarmUpIsNeverSuspected) {
  LeakWatch watch;
  std::mt19937 random(11);
  std::uniform_int_distribution<std::size_t> burst(0, 60 * kMB);  // requests come and go
  for (int t = 0; t < 600; ++t) {
    const std::size_t warm = static_cast<std::size_t>(std::min(t, 10)) * 10 * kMB;  // caches fill
    ASSERT_FALSE(watch.observe(at(t), 100 * kMB + warm + burst(random))) << "at " << t << " s";
  }
}

TEST(LeakWatch, MemoryThatRisesAndIsGivenBackIsNotALeak) {
  LeakWatch watch;
  for (int t = 0; t < 600; ++t) {
    const std::size_t cycle = static_cast<std::size_t>(t % 20);  // 2 MB/s for 20 s, then freed
    ASSERT_FALSE(watch.observe(at(t), 100 * kMB + cycle * 2 * kMB)) << "at " << t << " s";
  }
}

TEST(LeakWatch, ASuspicionEndsOnceTheLeakStops) {
  LeakWatch watch;
  std::size_t rss = 100 * kMB;
  for (int t = 0; t < 60; ++t) watch.observe(at(t), rss += kMB);
  ASSERT_TRUE(watch.suspected());
  int cleared = -1;
  for (int t = 60; t < 120 && cleared < 0; ++t) {
    if (!watch.observe(at(t), rss)) cleared = t;
  }
  ASSERT_GE(cleared, 0);
  EXPECT_LE(cleared, 60 + 33);
  EXPECT_EQ(watch.bytes_per_second(), 0.0);
}

TEST(LeakWatch, TooFewSamplesOrTooLittleGrowthSaySoNot) {
  LeakWatch watch;
  for (int t = 0; t < 25; ++t) EXPECT_FALSE(watch.observe(at(t), 100 * kMB + t * 2 * kMB));
  LeakWatch slow;  // 100 KB/s: 3 MB in 30 s, under min_growth
  for (int t = 0; t < 300; ++t) EXPECT_FALSE(slow.observe(at(t), 100 * kMB + t * 100'000));
  LeakWatch sparse;  // a sample every 10 s leaves spans empty: unknown, not a leak
  for (int t = 0; t < 300; t += 10) EXPECT_FALSE(sparse.observe(at(t), 100 * kMB + t * kMB));
}

TEST(LeakWatch, BadOptionsNameTheField) {
  auto error_of = [](crew::LeakWatchOptions o) -> std::string {
    try {
      LeakWatch w(o);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no exception";
  };
  EXPECT_THAT(error_of({.window = std::chrono::milliseconds(10)}), ::testing::HasSubstr("window"));
  EXPECT_THAT(error_of({.spans = 1}), ::testing::HasSubstr("spans"));
  EXPECT_THAT(error_of({.spans = 65}), ::testing::HasSubstr("spans"));
}

}  // namespace leak
}  // namespace
