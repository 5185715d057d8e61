#include <atomic>
#include <chrono>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/buffer.hpp>
#include <crew/errors.hpp>
#include <crew/event_loop.hpp>
#include <crew/pool.hpp>
#include <crew/port.hpp>

namespace {

using namespace std::chrono_literals;

TEST(MessageChannel, PostOnOneEndReceiveOnTheOther) {
  crew::MessageChannel ch;
  ASSERT_TRUE(ch.port1.post(crew::Message("ping")));
  ASSERT_TRUE(ch.port2.post(crew::Message(42)));
  auto a = ch.port2.receive();
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->as<std::string>(), "ping");
  auto b = ch.port1.try_receive();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->as<std::int64_t>(), 42);
  EXPECT_FALSE(ch.port1.try_receive().has_value());
}

TEST(MessageChannel, OneSenderKeepsOrderAcrossThreads) {
  crew::MessageChannel ch;
  constexpr int kN = 5000;
  std::jthread sender([&] {
    for (int i = 0; i < kN; ++i) ch.port1.post(crew::Message(i));
    ch.port1.close();
  });
  int expect = 0;
  while (auto m = ch.port2.receive()) {
    ASSERT_EQ(m->as<std::int64_t>(), expect);
    ++expect;
  }
  EXPECT_EQ(expect, kN);  // everything posted before close() is still delivered
}

TEST(MessagePort, CloseIsSeenByBothEndsAndPostingIsANoOp) {
  crew::MessageChannel ch;
  ch.port2.close();
  EXPECT_TRUE(ch.port1.closed());
  EXPECT_TRUE(ch.port2.closed());
  crew::Message m("lost?");
  EXPECT_FALSE(ch.port1.post(std::move(m)));
  EXPECT_EQ(m.as<std::string>(), "lost?");       // refused messages are left untouched
  EXPECT_FALSE(ch.port1.receive().has_value());  // never blocks once closed
}

TEST(MessagePort, DestroyingAPortClosesTheChannel) {
  crew::MessagePort survivor;
  {
    crew::MessageChannel ch;
    survivor = std::move(ch.port1);
  }
  EXPECT_TRUE(survivor.closed());
  EXPECT_FALSE(survivor.post(crew::Message(1)));
}

TEST(MessagePort, BlockedReceiveWakesOnClose) {
  crew::MessageChannel ch;
  std::jthread closer([&] { ch.port1.close(); });
  EXPECT_FALSE(ch.port2.receive().has_value());
}

TEST(MessagePort, ReceiveForTimesOut) {
  crew::MessageChannel ch;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ch.port2.receive_for(20ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
}

TEST(MessagePort, BufferIsTransferredNotCopied) {
  crew::MessageChannel ch;
  crew::Buffer big(1 << 20);
  const std::byte* address = big.data();
  ASSERT_TRUE(ch.port1.post(crew::Message(std::move(big))));
  EXPECT_TRUE(big.detached());  // NOLINT(bugprone-use-after-move): detaching is the point
  std::jthread receiver([&] {
    auto m = ch.port2.receive();
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->as<crew::Buffer>().data(), address);
  });
}

TEST(MessagePort, PostingADetachedBufferIsBadArguments) {
  crew::MessageChannel ch;
  crew::Buffer a(16);
  crew::Buffer b = std::move(a);
  try {
    ch.port1.post(crew::Message(std::move(a)));  // NOLINT(bugprone-use-after-move)
    FAIL() << "no exception";
  } catch (const crew::BadArguments& e) {
    EXPECT_NE(std::string(e.what()).find("detached"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ch.port2.pending(), 0U);
  EXPECT_EQ(b.size(), 16U);
}

TEST(MessagePort, HighWaterMarkRefusesOrWaits) {
  crew::MessageChannel ch({.high_water_mark = 1});
  ASSERT_TRUE(ch.port1.post(crew::Message(1)));
  EXPECT_FALSE(ch.port1.post(crew::Message(2)));
  std::atomic<bool> received{false};
  std::atomic<bool> saw_received{false};
  std::jthread producer([&] {
    ch.port1.post_wait(crew::Message(3));
    saw_received = received.load();
  });
  received = true;
  EXPECT_EQ(ch.port2.receive()->as<std::int64_t>(), 1);
  producer.join();
  EXPECT_TRUE(saw_received.load());
  EXPECT_EQ(ch.port2.receive()->as<std::int64_t>(), 3);
}

TEST(MessagePort, PortsTravelInsideMessages) {
  crew::MessageChannel to_worker;
  crew::MessageChannel direct;  // the seed's "give two workers a channel to talk directly"
  ASSERT_TRUE(to_worker.port1.post(crew::Message(std::move(direct.port2))));
  std::jthread worker([&] {
    auto m = to_worker.port2.receive();
    ASSERT_TRUE(m.has_value());
    crew::MessagePort mine = m->take_port();
    mine.post(crew::Message("hello over the transferred port"));
  });
  auto reply = direct.port1.receive_for(20s);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->as<std::string>(), "hello over the transferred port");
}

TEST(MessagePort, OnMessageDeliversOnTheChosenLoopInOrder) {
  crew::EventLoop loop;  // the executor outlives the ports that deliver to it
  crew::MessageChannel ch;
  std::vector<std::int64_t> got;
  std::thread::id delivered_on;
  ch.port2.on_message(
      [&](crew::Message m) {
        got.push_back(m.as<std::int64_t>());
        delivered_on = std::this_thread::get_id();
      },
      loop);
  std::jthread sender([&] {
    for (int i = 0; i < 100; ++i) ch.port1.post(crew::Message(i));
  });
  loop.run_until([&] { return got.size() == 100; });
  sender.join();
  ASSERT_EQ(got.size(), 100U);
  for (std::int64_t i = 0; i < 100; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], i);
  EXPECT_EQ(delivered_on, std::this_thread::get_id());  // the loop's thread, not the sender's
}

TEST(MessagePort, OnMessageOnAPoolKeepsOrder) {
  crew::ThreadPool pool({.max_workers = 2});
  crew::MessageChannel ch;
  std::mutex m;
  std::vector<std::int64_t> got;
  std::latch all(200);
  ch.port2.on_message(
      [&](crew::Message msg) {
        {
          std::lock_guard lock(m);
          got.push_back(msg.as<std::int64_t>());
        }
        all.count_down();
      },
      pool);
  for (int i = 0; i < 200; ++i) ch.port1.post(crew::Message(i));
  all.wait();
  for (std::int64_t i = 0; i < 200; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], i);
}

TEST(MessagePort, InlineDeliveryRunsOnThePostingThread) {
  crew::MessageChannel ch;
  std::thread::id on;
  ch.port2.on_message_inline([&](crew::Message) { on = std::this_thread::get_id(); });
  ch.port1.post(crew::Message(nullptr));
  EXPECT_EQ(on, std::this_thread::get_id());
}

TEST(MessagePort, UnconnectedPortIsInert) {
  crew::MessagePort p;
  EXPECT_TRUE(p.closed());
  EXPECT_FALSE(p.post(crew::Message(1)));
  EXPECT_FALSE(p.receive().has_value());
}

}  // namespace
