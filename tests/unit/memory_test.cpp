// crew::memory_usage (crew/memory.hpp): each figure moves with what the test does to it.
#include <cstring>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

#include <fcntl.h>
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
