#include <atomic>
#include <chrono>
#include <latch>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/broadcast.hpp>
#include <crew/buffer.hpp>
#include <crew/errors.hpp>
#include <crew/event_loop.hpp>

namespace {

using namespace std::chrono_literals;

TEST(BroadcastChannel, EveryOtherSubscriberReceivesEachMessageOnce) {
  crew::BroadcastChannel a("bc-once");
  crew::BroadcastChannel b("bc-once");
  crew::BroadcastChannel c("bc-once");
  crew::BroadcastChannel other("bc-elsewhere");
  EXPECT_EQ(a.post(crew::Message("hi")), 2U);
  EXPECT_EQ(b.receive()->as<std::string>(), "hi");
  EXPECT_EQ(c.receive()->as<std::string>(), "hi");
  EXPECT_FALSE(a.try_receive().has_value());      // not to itself, as in Node
  EXPECT_FALSE(b.try_receive().has_value());      // once
  EXPECT_FALSE(other.try_receive().has_value());  // names are separate
}

TEST(BroadcastChannel, OrderFromOnePosterAcrossThreads) {
  crew::BroadcastChannel rx("bc-order");
  std::latch ready(1);
  std::jthread poster([&] {
    crew::BroadcastChannel tx("bc-order");
    for (int i = 0; i < 1000; ++i) tx.post(crew::Message(i));
    ready.count_down();
  });
  ready.wait();
  for (int i = 0; i < 1000; ++i) {
    auto m = rx.receive_for(20s);
    ASSERT_TRUE(m.has_value());
    ASSERT_EQ(m->as<std::int64_t>(), i);
  }
}

TEST(BroadcastChannel, ClosedSubscribersStopReceivingButDrain) {
  crew::BroadcastChannel a("bc-close");
  crew::BroadcastChannel b("bc-close");
  EXPECT_EQ(a.post(crew::Message(1)), 1U);
  b.close();
  EXPECT_EQ(a.post(crew::Message(2)), 0U);
  EXPECT_EQ(b.receive()->as<std::int64_t>(), 1);  // what arrived before close()
  EXPECT_FALSE(b.receive().has_value());          // then the end, without blocking
  EXPECT_THROW(b.post(crew::Message(3)), std::logic_error);
}

TEST(BroadcastChannel, DestroyedSubscribersAreForgotten) {
  crew::BroadcastChannel a("bc-scope");
  {
    crew::BroadcastChannel b("bc-scope");
    EXPECT_EQ(a.post(crew::Message(1)), 1U);
  }
  EXPECT_EQ(a.post(crew::Message(2)), 0U);
}

TEST(BroadcastChannel, BuffersCannotBeBroadcast) {
  crew::BroadcastChannel a("bc-buffer");
  crew::BroadcastChannel b("bc-buffer");
  crew::Message m(crew::Buffer(8));
  EXPECT_THROW(a.post(m), crew::BadArguments);
  EXPECT_FALSE(b.try_receive().has_value());
  auto shared = crew::SharedBuffer::create(8);
  EXPECT_EQ(a.post(crew::Message(shared)), 1U);  // a SharedBuffer handle is copied, not moved
  EXPECT_TRUE(b.receive()->as<crew::SharedBuffer>() == shared);
}

TEST(BroadcastChannel, FanOutToLoopDelivery) {
  crew::EventLoop loop;
  std::vector<std::unique_ptr<crew::BroadcastChannel>> subscribers;
  std::atomic<int> got{0};
  for (int i = 0; i < 4; ++i) {
    subscribers.push_back(std::make_unique<crew::BroadcastChannel>("bc-fan"));
    subscribers.back()->on_message([&](crew::Message) { got++; }, loop);
  }
  crew::BroadcastChannel tx("bc-fan");
  EXPECT_EQ(tx.post(crew::Message("tick")), 4U);
  loop.run_until([&] { return got.load() == 4; });
  EXPECT_EQ(got.load(), 4);
  subscribers.clear();  // before the loop: executors outlive their ports
}

TEST(BroadcastChannel, EmptyNameIsRejected) {
  EXPECT_THROW(crew::BroadcastChannel(""), std::invalid_argument);
}

}  // namespace
