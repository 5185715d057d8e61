// Tests for crew/event_loop.hpp: EventLoop as a queue, as a blocking loop and as an executor.
// The header under test comes first, so it is known to compile on its own.
#include <crew/event_loop.hpp>
// Everything else.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Deadlock guard for anything that could block: generous, never reached when the code works.
constexpr auto kGuard = 10s;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kPerThread = 2'000;
#else
constexpr int kPerThread = 20'000;
#endif

struct TestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Stops `loop` if the test is still running after kGuard, so a hang fails the test (fired() is
// checked) instead of stalling CTest.
class Watchdog {
 public:
  explicit Watchdog(crew::EventLoop& loop)
      : thread_([this, &loop](std::stop_token stop) {
          std::mutex mu;
          std::condition_variable_any cv;
          std::unique_lock lock(mu);
          cv.wait_for(lock, stop, kGuard, [] { return false; });
          if (!stop.stop_requested()) {
            fired_.store(true);
            loop.stop();
          }
        }) {}
  [[nodiscard]] bool fired() const { return fired_.load(); }

 private:
  std::atomic<bool> fired_{false};
  std::jthread thread_;
};

// ---------------------------------------------------------------------------------------------
// Queueing

TEST(EventLoop, RunsPostsInFifoOrder) {
  crew::EventLoop loop;
  std::vector<int> order;
  for (int i = 0; i < 100; ++i) loop.post([&order, i] { order.push_back(i); });
  EXPECT_EQ(loop.poll(), 100U);
  ASSERT_EQ(order.size(), 100U);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
}

TEST(EventLoop, AcceptsMoveOnlyCallables) {
  crew::EventLoop loop;
  int seen = 0;
  auto owned = std::make_unique<int>(42);
  loop.post([&seen, p = std::move(owned)] { seen = *p; });
  EXPECT_EQ(loop.poll(), 1U);
  EXPECT_EQ(seen, 42);
}

TEST(EventLoop, PostsFromManyThreadsRunExactlyOnceInPerThreadOrder) {
  constexpr int kThreads = 4;
  constexpr int kTotal = kThreads * kPerThread;
  crew::EventLoop loop;
  Watchdog dog(loop);
  std::vector<int> runs(static_cast<std::size_t>(kTotal), 0);
  std::vector<int> last(kThreads, -1);  // last index seen per producer
  bool in_order = true;
  int ran = 0;
  {
    std::vector<std::jthread> producers;
    for (int t = 0; t < kThreads; ++t) {
      producers.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          loop.post([&, t, i] {
            // Runs on the loop thread only, so plain ints are enough.
            ++runs[static_cast<std::size_t>(t * kPerThread + i)];
            if (last[static_cast<std::size_t>(t)] != i - 1) in_order = false;
            last[static_cast<std::size_t>(t)] = i;
            ++ran;
          });
        }
      });
    }
    EXPECT_EQ(loop.run_until([&] { return ran == kTotal; }), static_cast<std::size_t>(kTotal));
  }
  ASSERT_FALSE(dog.fired());
  EXPECT_TRUE(in_order);
  for (int r : runs) ASSERT_EQ(r, 1);
  EXPECT_EQ(loop.poll(), 0U);
}

// ---------------------------------------------------------------------------------------------
// Blocking, stopping, deadlines

TEST(EventLoop, RunBlocksUntilStopFromAnotherThread) {
  crew::EventLoop loop;
  std::atomic<bool> returned{false};
  std::promise<std::size_t> count;
  auto result = count.get_future();
  std::jthread runner([&] {
    count.set_value(loop.run());
    returned.store(true);
  });
  // Each round trip proves run() is still going after its queue ran empty.
  for (int i = 0; i < 3; ++i) {
    std::latch ran(1);
    loop.post([&] { ran.count_down(); });
    ran.wait();
    EXPECT_FALSE(returned.load());
    EXPECT_FALSE(loop.running_in_this_thread());
  }
  loop.stop();
  ASSERT_EQ(result.wait_for(kGuard), std::future_status::ready) << "stop() did not wake run()";
  EXPECT_EQ(result.get(), 3U);
}

TEST(EventLoop, StopFromInsideACallbackReturnsAfterItAndLaterRunResumes) {
  crew::EventLoop loop;
  std::vector<int> order;
  loop.post([&] { order.push_back(1); });
  loop.post([&] {
    order.push_back(2);
    loop.stop();
  });
  loop.post([&] { order.push_back(3); });
  loop.post([&] {
    order.push_back(4);
    loop.stop();
  });
  EXPECT_EQ(loop.run(), 2U);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_EQ(loop.run(), 2U);  // the stop was consumed: run() resumes with what is queued
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

TEST(EventLoop, StopWhileIdleMakesTheNextCallReturnAtOnce) {
  crew::EventLoop loop;
  int ran = 0;
  loop.post([&] { ++ran; });
  loop.stop();
  EXPECT_EQ(loop.run(), 0U);
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(loop.poll(), 1U);
  EXPECT_EQ(ran, 1);
}

TEST(EventLoop, RunForReturnsAfterTheDurationWhenNothingIsPosted) {
  crew::EventLoop loop;
  const auto start = Clock::now();
  EXPECT_EQ(loop.run_for(50ms), 0U);
  EXPECT_GE(Clock::now() - start, 50ms);
}

TEST(EventLoop, RunUntilTimePointReturnsAtTheDeadline) {
  crew::EventLoop loop;
  int ran = 0;
  loop.post([&] { ++ran; });
  const auto deadline = Clock::now() + 30ms;
  EXPECT_EQ(loop.run_until(deadline), 1U);
  EXPECT_GE(Clock::now(), deadline);
  EXPECT_EQ(ran, 1);
  // Another clock works too.
  const auto wall = std::chrono::system_clock::now() + 20ms;
  EXPECT_EQ(loop.run_until(wall), 0U);
  EXPECT_GE(std::chrono::system_clock::now(), wall);
}

TEST(EventLoop, RunForWithAHugeDurationStillStops) {
  crew::EventLoop loop;
  loop.post([&] { loop.stop(); });
  EXPECT_EQ(loop.run_for(std::chrono::seconds::max()), 1U);
  loop.post([&] { loop.stop(); });
  EXPECT_EQ(loop.run_until(Clock::time_point::max()), 1U);
}

TEST(EventLoop, RunUntilReturnsWhenThePredicateHolds) {
  crew::EventLoop loop;
  int count = 0;
  for (int i = 0; i < 10; ++i) loop.post([&] { ++count; });
  EXPECT_EQ(loop.run_until([&] { return count == 3; }), 3U);
  EXPECT_EQ(count, 3);
  EXPECT_EQ(loop.run_until([] { return true; }), 0U);  // checked on entry
  EXPECT_EQ(loop.poll(), 7U);
}

TEST(EventLoop, RunUntilWakesForAPostFromAnotherThread) {
  crew::EventLoop loop;
  Watchdog dog(loop);
  std::atomic<bool> done{false};
  std::jthread other([&] {
    done.store(true);
    loop.post([] {});  // wakes the loop so it re-checks the predicate
  });
  loop.run_until([&] { return done.load(); });
  EXPECT_TRUE(done.load());
  EXPECT_FALSE(dog.fired());
}

TEST(EventLoop, PollNeverBlocksAndSkipsWhatItsCallbacksPost) {
  crew::EventLoop loop;
  Watchdog dog(loop);  // a blocking poll() would be stopped, and fail below
  EXPECT_EQ(loop.poll(), 0U);
  int ran = 0;
  loop.post([&] {
    ++ran;
    loop.post([&] { ++ran; });
  });
  EXPECT_EQ(loop.poll(), 1U);
  EXPECT_EQ(ran, 1);
  EXPECT_EQ(loop.poll(), 1U);
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(loop.poll(), 0U);
  EXPECT_FALSE(dog.fired());
}

TEST(EventLoop, CallbacksPostedByCallbacksRunInTheSameRun) {
  crew::EventLoop loop;
  std::vector<int> order;
  loop.post([&] {
    order.push_back(1);
    loop.post([&] {
      order.push_back(3);
      loop.post([&] {
        order.push_back(4);
        loop.stop();
      });
    });
  });
  loop.post([&] { order.push_back(2); });
  EXPECT_EQ(loop.run(), 4U);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(EventLoop, WithoutAHandlerAnExceptionLeavesRunAndTheLoopStaysUsable) {
  crew::EventLoop loop;
  std::vector<int> order;
  loop.post([&] { order.push_back(1); });
  loop.post([&] {
    order.push_back(2);
    throw TestError("boom");
  });
  loop.post([&] {
    order.push_back(3);
    loop.stop();
  });
  try {
    loop.run();
    ADD_FAILURE() << "run() did not rethrow";
  } catch (const TestError& e) {
    EXPECT_STREQ(e.what(), "boom");
  }
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_FALSE(loop.running_in_this_thread());
  EXPECT_EQ(loop.run(), 1U);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST(EventLoop, WithAHandlerExceptionsGoToItAndTheLoopCarriesOn) {
  crew::EventLoop loop;
  std::vector<std::string> errors;
  std::thread::id handler_thread;
  loop.on_error([&](std::exception_ptr e) {
    handler_thread = std::this_thread::get_id();
    try {
      std::rethrow_exception(e);
    } catch (const TestError& err) {
      errors.emplace_back(err.what());
    }
  });
  int ran = 0;
  loop.post([] { throw TestError("one"); });
  loop.post([&] { ++ran; });
  loop.post([] { throw TestError("two"); });
  loop.post([&] { ++ran; });
  EXPECT_EQ(loop.poll(), 4U);
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(errors, (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(handler_thread, std::this_thread::get_id());
  loop.on_error({});
  loop.post([] { throw TestError("three"); });
  EXPECT_THROW(loop.poll(), TestError);
}

// ---------------------------------------------------------------------------------------------
// Threads and lifetime

TEST(EventLoop, RunningInThisThreadIsTrueOnlyInsideTheLoop) {
  crew::EventLoop loop;
  crew::EventLoop other;
  EXPECT_FALSE(loop.running_in_this_thread());
  bool inside = false;
  bool other_inside = false;
  bool nested = false;
  loop.post([&] {
    inside = loop.running_in_this_thread();
    other_inside = other.running_in_this_thread();
    other.post([&] { nested = loop.running_in_this_thread() && other.running_in_this_thread(); });
    other.poll();  // a different loop may run inside a callback
  });
  loop.poll();
  EXPECT_TRUE(inside);
  EXPECT_FALSE(other_inside);
  EXPECT_TRUE(nested);
  EXPECT_FALSE(loop.running_in_this_thread());
}

TEST(EventLoop, RunningTheLoopFromItsOwnCallbackThrowsLogicError) {
  crew::EventLoop loop;
  bool threw = false;
  loop.post([&] {
    try {
      loop.poll();
    } catch (const std::logic_error&) {
      threw = true;
    }
  });
  EXPECT_EQ(loop.poll(), 1U);
  EXPECT_TRUE(threw);
}

TEST(EventLoop, RunningTheLoopOnTwoThreadsAtOnceThrowsLogicError) {
  crew::EventLoop loop;
  std::latch entered(1);
  std::latch checked(1);
  loop.post([&] {
    entered.count_down();
    checked.wait();
  });
  std::jthread runner([&] { loop.poll(); });
  entered.wait();
  EXPECT_THROW(loop.poll(), std::logic_error);
  checked.count_down();
}

TEST(EventLoop, ThenDeliversOnTheThreadRunningTheLoop) {
  crew::EventLoop loop;
  crew::ThreadPool pool({.max_workers = 1});
  Watchdog dog(loop);
  std::latch release(1);
  std::thread::id pool_thread;
  std::thread::id continuation_thread;
  auto source = pool.run([&] {
    release.wait();  // settles only after then() is attached, on this pool thread
    pool_thread = std::this_thread::get_id();
    return 21;
  });
  auto doubled = std::move(source).then(
      [&](int v) {
        continuation_thread = std::this_thread::get_id();
        return v * 2;
      },
      loop);
  release.count_down();
  loop.run_until([&] { return doubled.ready(); });
  ASSERT_FALSE(dog.fired());
  ASSERT_TRUE(doubled.ready());
  EXPECT_EQ(doubled.get(), 42);
  EXPECT_EQ(continuation_thread, std::this_thread::get_id());
  EXPECT_NE(continuation_thread, pool_thread);
}

TEST(EventLoop, PostAfterCloseThrowsPoolClosedNamingTheLoop) {
  crew::EventLoop loop;
  int ran = 0;
  loop.post([&] {
    ++ran;
    loop.post([&] { ++ran; });  // still accepted: posted from the loop's own thread
  });
  loop.close();
  EXPECT_TRUE(loop.closed());
  try {
    loop.post([] {});
    ADD_FAILURE() << "post() after close() did not throw";
  } catch (const crew::PoolClosed& e) {
    EXPECT_NE(std::string(e.what()).find("EventLoop"), std::string::npos) << e.what();
  }
  std::jthread other([&] { EXPECT_THROW(loop.post([] {}), crew::PoolClosed); });
  other.join();
  // A closed loop's run() drains and returns instead of blocking.
  EXPECT_EQ(loop.run(), 2U);
  EXPECT_EQ(ran, 2);
}

TEST(EventLoop, ThenOnAClosedLoopFailsTheFutureWithPoolClosed) {
  crew::EventLoop loop;
  loop.close();
  auto f = crew::make_ready_future(1).then([](int v) { return v; }, loop);
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_THROW(f.get(), crew::PoolClosed);
}

TEST(EventLoop, DestructorClosesAndRunsWhatIsQueued) {
  int ran = 0;
  {
    crew::EventLoop loop;
    loop.post([&] {
      ++ran;
      loop.post([&] { ++ran; });
    });
    loop.post([] { throw TestError("reported, not thrown"); });
  }
  EXPECT_EQ(ran, 2);
}

}  // namespace
