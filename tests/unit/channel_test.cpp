#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/channel.hpp>

namespace {

using namespace std::chrono_literals;

TEST(Channel, DeliversInOrder) {
  crew::Channel<int> ch;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(ch.post(i));
  EXPECT_EQ(ch.size(), 100U);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(ch.try_receive(), i);
  EXPECT_FALSE(ch.try_receive().has_value());
}

TEST(Channel, MoveOnlyItemsKeepTheirAddress) {
  crew::Channel<std::unique_ptr<int>> ch;
  auto p = std::make_unique<int>(7);
  const int* address = p.get();
  ASSERT_TRUE(ch.post(std::move(p)));
  auto got = ch.receive();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->get(), address);
}

TEST(Channel, OneSenderOrderAcrossThreadsAndNothingLost) {
  crew::Channel<int> ch;
  constexpr int kN = 20000;
  std::jthread producer([ch]() mutable {
    for (int i = 0; i < kN; ++i) ch.post(i);
    ch.close();
  });
  int expect = 0;
  while (auto v = ch.receive()) {
    ASSERT_EQ(*v, expect);
    ++expect;
  }
  EXPECT_EQ(expect, kN);
}

TEST(Channel, ManySendersManyReceiversEachItemOnce) {
  crew::Channel<int> ch;
  std::atomic<long> sum{0};
  std::atomic<int> count{0};
  std::vector<std::jthread> receivers;
  for (int r = 0; r < 3; ++r) {
    receivers.emplace_back([&, ch]() mutable {
      while (auto v = ch.receive()) {
        sum += *v;
        count++;
      }
    });
  }
  {
    std::vector<std::jthread> senders;
    for (int s = 0; s < 3; ++s) {
      senders.emplace_back([ch]() mutable {
        for (int i = 1; i <= 5000; ++i) ch.post(i);
      });
    }
  }
  ch.close();
  receivers.clear();  // joins
  EXPECT_EQ(count.load(), 15000);
  EXPECT_EQ(sum.load(), 3L * 5000 * 5001 / 2);
}

TEST(Channel, HighWaterMarkRejectsOrWaits) {
  crew::Channel<std::string> ch({.high_water_mark = 2});
  std::string a = "a";
  std::string b = "b";
  std::string c = "c";
  EXPECT_TRUE(ch.post(std::move(a)));
  EXPECT_TRUE(ch.post(std::move(b)));
  EXPECT_FALSE(ch.post(std::move(c)));
  EXPECT_EQ(c, "c");  // a refused item is left untouched
  std::atomic<bool> drained{false};
  std::atomic<bool> saw_drained{false};
  std::jthread producer([&, ch]() mutable {
    ch.post_wait(std::string("d"));  // blocks until a slot frees up
    saw_drained = drained.load();
  });
  drained = true;
  EXPECT_EQ(ch.receive(), "a");
  producer.join();
  EXPECT_TRUE(saw_drained.load()) << "post_wait returned while the channel was full";
  EXPECT_EQ(ch.receive(), "b");
  EXPECT_EQ(ch.receive(), "d");
}

TEST(Channel, CloseWakesBlockedCallersAndDrains) {
  crew::Channel<int> ch({.high_water_mark = 1});
  ASSERT_TRUE(ch.post(1));
  std::latch blocked(1);
  std::atomic<bool> post_result{true};
  std::jthread producer([&, ch]() mutable {
    blocked.count_down();
    post_result = ch.post_wait(2);
  });
  blocked.wait();
  ch.close();
  producer.join();
  EXPECT_FALSE(post_result.load());
  EXPECT_FALSE(ch.post(3));
  EXPECT_EQ(ch.receive(), 1);              // what was queued is still delivered
  EXPECT_FALSE(ch.receive().has_value());  // then empty, never blocking
  EXPECT_TRUE(ch.closed());
}

TEST(Channel, ReceiveForTimesOut) {
  crew::Channel<int> ch;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ch.receive_for(20ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  std::jthread producer([ch]() mutable { ch.post(5); });
  EXPECT_EQ(ch.receive_for(20s), 5);
}

TEST(Channel, BlockedReceiveWakesOnClose) {
  crew::Channel<int> ch;
  std::jthread closer([ch]() mutable { ch.close(); });
  EXPECT_FALSE(ch.receive().has_value());
}

}  // namespace
