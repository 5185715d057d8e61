// Tests for crew/errors.hpp: the typed error hierarchy.
#include <chrono>
#include <latch>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include <gtest/gtest.h>

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>

namespace {

template <class E>
class ErrorTypeTest : public ::testing::Test {};

using ErrorTypes = ::testing::Types<crew::Error, crew::Cancelled, crew::TimedOut, crew::QueueFull,
                                    crew::PoolClosed>;
TYPED_TEST_SUITE(ErrorTypeTest, ErrorTypes);

TYPED_TEST(ErrorTypeTest, DerivesFromCrewErrorAndRuntimeError) {
  static_assert(std::is_base_of_v<crew::Error, TypeParam>);
  static_assert(std::is_base_of_v<std::runtime_error, TypeParam>);
  static_assert(std::is_nothrow_copy_constructible_v<TypeParam>);
  try {
    throw TypeParam("a message naming the problem");
  } catch (const crew::Error& e) {
    EXPECT_STREQ(e.what(), "a message naming the problem");
  }
  EXPECT_THROW(throw TypeParam("x"), std::runtime_error);
}

TYPED_TEST(ErrorTypeTest, CopiesKeepTheMessage) {
  const TypeParam original("kept");
  const TypeParam copy = original;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_STREQ(copy.what(), "kept");
  EXPECT_STRNE(original.what(), "");
}

TEST(Errors, DistinctTypesAreNotConfused) {
  EXPECT_THROW(
      {
        try {
          throw crew::TimedOut("late");
        } catch (const crew::Cancelled&) {
          FAIL() << "TimedOut caught as Cancelled";
        }
      },
      crew::TimedOut);
  static_assert(!std::is_base_of_v<crew::Cancelled, crew::TimedOut>);
  static_assert(!std::is_base_of_v<crew::QueueFull, crew::PoolClosed>);
}

TEST(Errors, CancelledDefaultMessageSaysWhatHappened) {
  const crew::Cancelled e;
  const std::string what = e.what();
  EXPECT_FALSE(what.empty());
  EXPECT_NE(what.find("cancel"), std::string::npos) << what;
  EXPECT_EQ(std::string(crew::Cancelled("custom").what()), "custom");
}

TEST(Errors, CancelledFutureCarriesTheDefaultMessage) {
  crew::Promise<int> p;
  auto f = p.get_future();
  ASSERT_TRUE(f.cancel());
  try {
    (void)f.get();
    FAIL() << "get() did not throw";
  } catch (const crew::Cancelled& e) {
    EXPECT_STREQ(e.what(), crew::Cancelled().what());
  }
}

// The messages crew builds itself: non-empty and naming the pool.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error of the expected type was thrown";
  return {};
}

TEST(Errors, PoolErrorsHaveMessagesNamingThePool) {
  crew::ThreadPool pool({.max_workers = 1, .max_queue = 1, .name = "errpool"});

  std::latch started(1);
  std::latch release(1);
  auto blocker = pool.run([&] {
    started.count_down();
    release.wait();
  });
  started.wait();
  auto queued = pool.run([] {});  // fills the one queue slot
  const std::string full = message_of<crew::QueueFull>([&] { (void)pool.run([] {}); });
  EXPECT_NE(full.find("errpool"), std::string::npos) << full;
  release.count_down();
  ASSERT_TRUE(blocker.wait_for(std::chrono::seconds(10)));
  blocker.get();
  ASSERT_TRUE(queued.wait_for(std::chrono::seconds(10)));  // frees the queue slot again
  queued.get();

  auto timed =
      pool.run(crew::RunOptions{.timeout = std::chrono::milliseconds(1)}, [](std::stop_token st) {
        // Returns once the timeout signals the token (bounded by the guard).
        const auto guard = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!st.stop_requested() && std::chrono::steady_clock::now() < guard) {
          std::this_thread::yield();
        }
      });
  ASSERT_TRUE(timed.wait_for(std::chrono::seconds(10)));
  // Let the worker drop its reference first, so the exception dies on this thread: libstdc++'s
  // exception_ptr refcount is not TSan-instrumented, and a destruction on the worker after we read
  // what() would be reported as a (false) race.
  pool.wait_idle();
  const std::string late = message_of<crew::TimedOut>([&] { timed.get(); });
  EXPECT_FALSE(late.empty());

  pool.close();
  const std::string closed = message_of<crew::PoolClosed>([&] { (void)pool.run([] {}); });
  EXPECT_NE(closed.find("errpool"), std::string::npos) << closed;
}

}  // namespace
