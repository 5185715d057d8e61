#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/atomics.hpp>

namespace {

using namespace std::chrono_literals;
namespace atomics = crew::atomics;
using atomics::WaitResult;

// Calls notify until it reports `want` woken in total (the waiters may not be asleep yet), or the
// guard passes. Returns the total; notify() counts only threads that were really asleep.
std::size_t notify_until(const crew::SharedBuffer& b, std::size_t index, std::size_t want) {
  std::size_t woken = 0;
  const auto guard = std::chrono::steady_clock::now() + 20s;
  while (woken < want && std::chrono::steady_clock::now() < guard) {
    const std::size_t n = atomics::notify(b, index, 1);
    EXPECT_LE(n, 1U);
    woken += n;
    if (n == 0) std::this_thread::yield();
  }
  return woken;
}

TEST(Atomics, ReadModifyWriteReturnsThePreviousValue) {
  auto b = crew::SharedBuffer::create(64);
  EXPECT_EQ(atomics::store(b, 0, std::int32_t{5}), 5);
  EXPECT_EQ(atomics::add(b, 0, std::int32_t{3}), 5);
  EXPECT_EQ(atomics::sub(b, 0, std::int32_t{1}), 8);
  EXPECT_EQ(atomics::load<std::int32_t>(b, 0), 7);
  EXPECT_EQ(atomics::and_(b, 0, std::int32_t{6}), 7);
  EXPECT_EQ(atomics::or_(b, 0, std::int32_t{8}), 6);
  EXPECT_EQ(atomics::xor_(b, 0, std::int32_t{15}), 14);
  EXPECT_EQ(atomics::exchange(b, 0, std::int32_t{-1}), 1);
  EXPECT_EQ(atomics::compare_exchange(b, 0, std::int32_t{-1}, std::int32_t{9}), -1);  // swapped
  EXPECT_EQ(atomics::compare_exchange(b, 0, std::int32_t{0}, std::int32_t{1}), 9);    // not
  EXPECT_EQ(atomics::load<std::int32_t>(b, 0), 9);
}

TEST(Atomics, SixtyFourBitAndUnsignedElements) {
  auto b = crew::SharedBuffer::create(64);
  atomics::store(b, 3, std::int64_t{1} << 40);
  EXPECT_EQ(atomics::add(b, 3, std::int64_t{1}), std::int64_t{1} << 40);
  EXPECT_EQ(atomics::load<std::int64_t>(b, 3), (std::int64_t{1} << 40) + 1);
  atomics::store(b, 0, std::uint32_t{0});
  EXPECT_EQ(atomics::sub(b, 0, std::uint32_t{1}), 0U);  // wraps like a Uint32Array
  EXPECT_EQ(atomics::load<std::uint32_t>(b, 0), 0xffffffffU);
  // Index 3 of 64-bit elements is bytes 24..31: the 32-bit view sees the same memory.
  EXPECT_EQ(atomics::load<std::uint32_t>(b, 7), 1U << 8);
}

TEST(Atomics, IndexOutOfRangeNamesIndexAndSize) {
  auto b = crew::SharedBuffer::create(16);
  try {
    (void)atomics::load<std::int64_t>(b, 2);
    FAIL() << "no exception";
  } catch (const std::out_of_range& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("index 2"), std::string::npos) << m;
    EXPECT_NE(m.find("16 bytes"), std::string::npos) << m;
  }
  EXPECT_THROW(atomics::store(b, 4, std::int32_t{1}), std::out_of_range);
  EXPECT_THROW((void)atomics::wait(b, 4, std::int32_t{0}, 1ms), std::out_of_range);
  EXPECT_THROW((void)atomics::notify(b, 4), std::out_of_range);
  crew::SharedBuffer null;
  EXPECT_THROW((void)atomics::load<std::int32_t>(null, 0), std::out_of_range);
}

TEST(Atomics, ConcurrentAddsAreNotLost) {
  auto b = crew::SharedBuffer::create(64);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([b] {
      for (int i = 0; i < 10000; ++i) atomics::add(b, 1, std::int64_t{1});
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(atomics::load<std::int64_t>(b, 1), 40000);
}

TEST(Atomics, WaitReturnsNotEqualAtOnce) {
  auto b = crew::SharedBuffer::create(64);
  atomics::store(b, 0, std::int32_t{1});
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(atomics::wait(b, 0, std::int32_t{0}), WaitResult::not_equal);
  EXPECT_EQ(atomics::wait(b, 0, std::int32_t{0}, 10s), WaitResult::not_equal);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST(Atomics, WaitTimesOut) {
  auto b = crew::SharedBuffer::create(64);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(atomics::wait(b, 0, std::int32_t{0}, 30ms), WaitResult::timed_out);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms);
  EXPECT_EQ(atomics::wait(b, 0, std::int32_t{0}, -5ms), WaitResult::timed_out);
  EXPECT_EQ(atomics::wait(b, 0, std::int32_t{0}, 0ms), WaitResult::timed_out);
}

TEST(Atomics, NotifyWakesWaitersAndCountsThem) {
  auto b = crew::SharedBuffer::create(64);
  std::atomic<int> ok{0};
  std::vector<std::thread> waiters;
  for (int t = 0; t < 3; ++t) {
    waiters.emplace_back([&] {
      if (atomics::wait(b, 2, std::int32_t{0}, 20s) == WaitResult::ok) ok++;
    });
  }
  EXPECT_EQ(notify_until(b, 2, 3), 3U);
  for (auto& t : waiters) t.join();
  EXPECT_EQ(ok.load(), 3);
  EXPECT_EQ(atomics::notify(b, 2), 0U);  // nobody left
}

TEST(Atomics, WaitAndNotifyBetweenProcesses) {
  auto b = crew::SharedBuffer::create(64, {.across_processes = true});
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Child: sleep on cell 0 until the parent notifies, then answer on cell 1.
    const WaitResult r = atomics::wait(b, 0, std::int32_t{0}, 20s);
    atomics::store(b, 1, std::int32_t{1});
    atomics::notify(b, 1);
    ::_exit(r == WaitResult::ok ? 0 : 10 + static_cast<int>(r));
  }
  EXPECT_EQ(notify_until(b, 0, 1), 1U) << "the child never slept on the shared futex";
  // Parent: wait for the child's answer (not_equal if it came before we slept).
  const WaitResult r = atomics::wait(b, 1, std::int32_t{0}, 20s);
  EXPECT_NE(r, WaitResult::timed_out);
  EXPECT_EQ(atomics::load<std::int32_t>(b, 1), 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Atomics, NotifyWithoutWaitersWakesNobody) {
  auto b = crew::SharedBuffer::create(64);
  EXPECT_EQ(atomics::notify(b, 0), 0U);
  EXPECT_EQ(atomics::notify(b, 0, 0), 0U);
}

}  // namespace
