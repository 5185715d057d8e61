// Tests for crew/detail/ws_deque.hpp: the Chase-Lev work-stealing deque.
#include <atomic>
#include <cstddef>
#include <latch>
#include <numeric>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/detail/ws_deque.hpp>

namespace {

using Deque = crew::detail::WorkStealingDeque<int>;

// Items per concurrent round and rounds; lower them if a sanitizer run gets too slow.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kConcurrentItems = 50'000;
constexpr int kConcurrentRounds = 3;
#else
constexpr int kConcurrentItems = 200'000;
constexpr int kConcurrentRounds = 5;
#endif

std::vector<int> iota_items(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(WorkStealingDeque, EmptyDequeGivesNothing) {
  Deque d;
  EXPECT_EQ(d.pop(), nullptr);
  EXPECT_EQ(d.steal(), nullptr);
  EXPECT_EQ(d.size_approx(), 0U);
  EXPECT_TRUE(d.empty_approx());
}

TEST(WorkStealingDeque, OwnerPopsLifoThievesStealFifo) {
  auto items = iota_items(5);
  Deque d;
  for (auto& i : items) d.push(&i);
  EXPECT_EQ(d.size_approx(), 5U);
  EXPECT_EQ(d.pop(), &items[4]);
  EXPECT_EQ(d.steal(), &items[0]);
  EXPECT_EQ(d.steal(), &items[1]);
  EXPECT_EQ(d.pop(), &items[3]);
  EXPECT_EQ(d.size_approx(), 1U);
  EXPECT_EQ(d.pop(), &items[2]);  // the last item, through the top CAS
  EXPECT_EQ(d.pop(), nullptr);
  EXPECT_EQ(d.steal(), nullptr);
  EXPECT_TRUE(d.empty_approx());

  // Usable again after running empty.
  d.push(&items[0]);
  EXPECT_EQ(d.steal(), &items[0]);
  d.push(&items[1]);
  EXPECT_EQ(d.pop(), &items[1]);
}

TEST(WorkStealingDeque, GrowsBeyondInitialCapacity) {
  auto items = iota_items(10'000);
  Deque d(16);
  for (auto& i : items) d.push(&i);
  EXPECT_EQ(d.size_approx(), items.size());
  // Half from the top, oldest first...
  for (int i = 0; i < 5'000; ++i) ASSERT_EQ(d.steal(), &items[static_cast<std::size_t>(i)]);
  // ...the rest from the bottom, newest first.
  for (int i = 9'999; i >= 5'000; --i) ASSERT_EQ(d.pop(), &items[static_cast<std::size_t>(i)]);
  EXPECT_EQ(d.pop(), nullptr);
}

TEST(WorkStealingDeque, GrowsWhileWrappedAround) {
  // Move top and bottom far past the ring size so indices wrap, then grow with live items.
  auto items = iota_items(1'000);
  Deque d(16);
  std::size_t next_push = 0;
  std::size_t next_steal = 0;
  for (int round = 0; round < 100; ++round) {
    for (int k = 0; k < 3; ++k) d.push(&items[next_push++ % items.size()]);
    for (int k = 0; k < 3; ++k) ASSERT_EQ(d.steal(), &items[next_steal++ % items.size()]);
  }
  for (int k = 0; k < 500; ++k) d.push(&items[next_push++ % items.size()]);
  for (int k = 0; k < 500; ++k) ASSERT_EQ(d.steal(), &items[next_steal++ % items.size()]);
  EXPECT_EQ(d.steal(), nullptr);
}

// The owner pushes every item, popping some as it goes, while thieves steal; each item must be
// taken exactly once.
void run_owner_and_thieves(int thieves, std::size_t initial_capacity) {
  auto items = iota_items(kConcurrentItems);
  std::vector<std::atomic<int>> taken(items.size());
  std::atomic<bool> owner_done{false};
  std::atomic<long> stolen{0};
  Deque d(initial_capacity);

  auto take = [&](int* p) { taken[static_cast<std::size_t>(*p)].fetch_add(1); };

  std::latch start(thieves + 1);
  std::vector<std::jthread> pool;
  for (int t = 0; t < thieves; ++t) {
    pool.emplace_back([&] {
      start.arrive_and_wait();
      while (!owner_done.load(std::memory_order_acquire)) {
        if (int* p = d.steal()) {
          take(p);
          stolen.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  start.arrive_and_wait();
  long popped = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    d.push(&items[i]);
    // Pop often, and often when only one item is left: the owner-vs-thief race on the last item.
    if (i % 3 == 0) {
      if (int* p = d.pop()) {
        take(p);
        ++popped;
      }
    }
  }
  while (int* p = d.pop()) {
    take(p);
    ++popped;
  }
  owner_done.store(true, std::memory_order_release);
  pool.clear();  // joins the thieves

  EXPECT_EQ(d.steal(), nullptr);
  EXPECT_EQ(d.pop(), nullptr);
  int missing = 0;
  int duplicated = 0;
  for (auto& t : taken) {
    const int c = t.load();
    if (c == 0) ++missing;
    if (c > 1) ++duplicated;
  }
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(duplicated, 0);
  EXPECT_EQ(popped + stolen.load(), static_cast<long>(items.size()));
}

TEST(WorkStealingDeque, ConcurrentTwoThievesTakeEveryItemOnce) {
  for (int r = 0; r < kConcurrentRounds && !HasFailure(); ++r) run_owner_and_thieves(2, 256);
}

TEST(WorkStealingDeque, ConcurrentThreeThievesWithGrowth) {
  for (int r = 0; r < kConcurrentRounds && !HasFailure(); ++r) run_owner_and_thieves(3, 16);
}

// Owner and thieves fight over a single item, many times.
TEST(WorkStealingDeque, ConcurrentLastItemRace) {
  constexpr int kThieves = 2;
  auto items = iota_items(kConcurrentItems / 4);
  std::vector<std::atomic<int>> taken(items.size());
  std::atomic<bool> owner_done{false};
  Deque d;
  std::latch start(kThieves + 1);
  std::vector<std::jthread> thieves;
  for (int t = 0; t < kThieves; ++t) {
    thieves.emplace_back([&] {
      start.arrive_and_wait();
      while (!owner_done.load(std::memory_order_acquire)) {
        if (int* p = d.steal()) taken[static_cast<std::size_t>(*p)].fetch_add(1);
      }
    });
  }
  start.arrive_and_wait();
  for (auto& item : items) {
    d.push(&item);
    if (int* p = d.pop()) taken[static_cast<std::size_t>(*p)].fetch_add(1);
  }
  owner_done.store(true, std::memory_order_release);
  thieves.clear();
  int wrong = 0;
  for (auto& t : taken) wrong += t.load() != 1 ? 1 : 0;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(d.steal(), nullptr);
}

}  // namespace
