// Tests for crew/future.hpp: Future, Promise, then(), co_await, when_all and when_any.
#include <array>
#include <atomic>
#include <barrier>
#include <chrono>
#include <exception>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <pthread.h>

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;

// Iteration counts of the concurrency tests. Sanitizer builds run 5-20x slower; lower this if a
// run gets too slow.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kStressIterations = 10'000;
constexpr int kRaceIterations = 5'000;
#else
constexpr int kStressIterations = 10'000;
constexpr int kRaceIterations = 20'000;
#endif

// Deadlock guard for anything that could block: generous, never reached when the code works.
constexpr auto kGuard = 10s;

struct TestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct OtherError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class E = TestError>
std::exception_ptr error_ptr(const char* what = "boom") {
  return std::make_exception_ptr(E(what));
}

std::string current_thread_name() {
  std::array<char, 16> buf{};
  pthread_getname_np(pthread_self(), buf.data(), buf.size());
  return buf.data();
}

// ---------------------------------------------------------------------------------------------
// get / wait / ready / valid

TEST(Future, GetReturnsTheValue) {
  EXPECT_EQ(crew::make_ready_future(42).get(), 42);

  crew::Promise<std::string> p;
  auto f = p.get_future();
  EXPECT_TRUE(p.set_value("hello"));
  EXPECT_EQ(f.get(), "hello");
}

TEST(Future, GetMovesOutMoveOnlyValues) {
  crew::Promise<std::unique_ptr<int>> p;
  auto f = p.get_future();
  p.set_value(std::make_unique<int>(7));
  std::unique_ptr<int> v = f.get();
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(*v, 7);
}

TEST(Future, GetRethrowsTheSameExceptionType) {
  auto f = crew::make_exceptional_future<int>(error_ptr("the message"));
  try {
    (void)f.get();
    FAIL() << "get() did not throw";
  } catch (const TestError& e) {
    EXPECT_STREQ(e.what(), "the message");
  }

  crew::Promise<void> p;
  auto g = p.get_future();
  EXPECT_TRUE(p.set_exception(error_ptr<OtherError>()));
  EXPECT_THROW(g.get(), OtherError);
}

TEST(Future, ReadyAndWaitForTrackSettlement) {
  crew::Promise<int> p;
  auto f = p.get_future();
  EXPECT_FALSE(f.ready());
  EXPECT_FALSE(f.wait_for(1ms));
  EXPECT_FALSE(f.ready());
  p.set_value(3);
  EXPECT_TRUE(f.ready());
  EXPECT_TRUE(f.wait_for(0ms));
  f.wait();                // must not block
  EXPECT_TRUE(f.valid());  // wait() does not consume
  EXPECT_EQ(f.get(), 3);
}

TEST(Future, WaitReturnsWhenAnotherThreadSettles) {
  crew::Promise<int> p;
  auto f = p.get_future();
  std::latch waiting(1);
  std::jthread setter([&] {
    waiting.wait();
    p.set_value(5);
  });
  waiting.count_down();
  ASSERT_TRUE(f.wait_for(kGuard));
  f.wait();
  EXPECT_EQ(f.get(), 5);
}

TEST(Future, WaitForWithNonPositiveTimeoutDoesNotBlock) {
  crew::Promise<int> p;
  auto f = p.get_future();
  EXPECT_FALSE(f.wait_for(0ms));
  EXPECT_FALSE(f.wait_for(-5s));
  p.set_value(1);
  EXPECT_TRUE(f.wait_for(-5s));
}

// "Wait as long as it takes" spelled with the largest duration must wait, not overflow into a
// negative timeout and return false at once.
TEST(Future, WaitForWithHugeTimeoutWaits) {
  crew::Promise<int> p;
  auto f = p.get_future();
  std::latch go(1);
  std::jthread setter([&] {
    go.wait();
    p.set_value(5);
  });
  go.count_down();
  EXPECT_TRUE(f.wait_for(std::chrono::seconds::max()));
  setter.join();
  EXPECT_EQ(f.get(), 5);
}

TEST(Future, ValidAfterMoveAndGet) {
  crew::Future<int> empty;
  EXPECT_FALSE(empty.valid());
  EXPECT_FALSE(empty.ready());

  auto f = crew::make_ready_future(1);
  EXPECT_TRUE(f.valid());
  crew::Future<int> g = std::move(f);
  EXPECT_FALSE(f.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the point
  EXPECT_TRUE(g.valid());
  EXPECT_EQ(g.get(), 1);
  EXPECT_FALSE(g.valid());

  crew::Future<int> h;
  h = crew::make_ready_future(2);
  EXPECT_TRUE(h.valid());
  auto next = h.then([](int v) { return v; });
  EXPECT_FALSE(h.valid());  // then() consumes
  EXPECT_EQ(next.get(), 2);
}

TEST(Future, EmptyFutureThrowsLogicError) {
  crew::Future<int> f;
  EXPECT_THROW((void)f.get(), std::logic_error);
  EXPECT_THROW(f.wait(), std::logic_error);
  EXPECT_THROW((void)f.wait_for(1ms), std::logic_error);
  EXPECT_THROW((void)f.then([](int v) { return v; }), std::logic_error);
  EXPECT_FALSE(f.cancel());

  auto g = crew::make_ready_future(1);
  (void)g.get();
  EXPECT_THROW((void)g.get(), std::logic_error);  // a second get()
}

// ---------------------------------------------------------------------------------------------
// Promise

TEST(Promise, SettlesOnlyOnce) {
  crew::Promise<int> p;
  auto f = p.get_future();
  EXPECT_FALSE(p.settled());
  EXPECT_TRUE(p.set_value(1));
  EXPECT_TRUE(p.settled());
  EXPECT_FALSE(p.set_value(2));
  EXPECT_FALSE(p.set_exception(error_ptr()));
  EXPECT_EQ(f.get(), 1);

  crew::Promise<int> q;
  auto g = q.get_future();
  EXPECT_TRUE(q.set_exception(error_ptr()));
  EXPECT_FALSE(q.set_exception(error_ptr<OtherError>()));
  EXPECT_FALSE(q.set_value(3));
  EXPECT_THROW((void)g.get(), TestError);
}

TEST(Promise, GetFutureTwiceThrowsLogicError) {
  crew::Promise<int> p;
  auto f = p.get_future();
  EXPECT_THROW((void)p.get_future(), std::logic_error);
  p.set_value(1);
  EXPECT_EQ(f.get(), 1);
}

TEST(Promise, DestroyedUnfulfilledBreaksThePromise) {
  crew::Future<int> f;
  crew::Future<void> g;
  {
    crew::Promise<int> p;
    crew::Promise<void> q;
    f = p.get_future();
    g = q.get_future();
  }
  ASSERT_TRUE(f.ready());
  try {
    (void)f.get();
    FAIL() << "a broken promise did not throw";
  } catch (const crew::Cancelled&) {
    FAIL() << "a broken promise is not a cancellation";
  } catch (const crew::Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken promise"), std::string::npos) << e.what();
  }
  EXPECT_THROW(g.get(), crew::Error);
}

TEST(Promise, MovedFromPromiseDoesNotBreakTheFuture) {
  crew::Future<int> f;
  crew::Promise<int> target;
  {
    crew::Promise<int> p;
    f = p.get_future();
    crew::Promise<int> moved(std::move(p));
    target = std::move(moved);
  }
  EXPECT_FALSE(f.ready());
  EXPECT_TRUE(target.set_value(9));
  EXPECT_EQ(f.get(), 9);
}

TEST(Promise, MoveAssignmentBreaksTheOverwrittenPromise) {
  crew::Promise<int> a;
  auto fa = a.get_future();
  crew::Promise<int> b;
  auto fb = b.get_future();
  a = std::move(b);  // a's original state is abandoned
  ASSERT_TRUE(fa.ready());
  EXPECT_THROW((void)fa.get(), crew::Error);
  EXPECT_TRUE(a.set_value(4));
  EXPECT_EQ(fb.get(), 4);
}

// ---------------------------------------------------------------------------------------------
// cancel

TEST(Future, CancelSettlesWithCancelled) {
  crew::Promise<int> p;
  auto f = p.get_future();
  EXPECT_TRUE(f.cancel());
  EXPECT_FALSE(f.cancel());  // already settled
  EXPECT_TRUE(f.ready());
  EXPECT_TRUE(p.settled());
  EXPECT_FALSE(p.set_value(1));
  EXPECT_FALSE(p.set_exception(error_ptr()));
  EXPECT_THROW((void)f.get(), crew::Cancelled);
}

TEST(Future, CancelAfterValueDoesNothing) {
  crew::Promise<int> p;
  auto f = p.get_future();
  p.set_value(8);
  EXPECT_FALSE(f.cancel());
  EXPECT_EQ(f.get(), 8);
}

TEST(Future, CancelWakesABlockedWaiter) {
  crew::Promise<int> p;
  auto f = p.get_future();
  // Futures are single-owner, so the canceller reaches the state through the raw pointer, as a
  // pool's stop token would; the waiter owns the Future.
  crew::detail::State<int>* state = f.raw_state();
  std::atomic<bool> saw_cancelled{false};
  std::latch started(1);
  std::jthread waiter([&, g = std::move(f)]() mutable {
    started.count_down();
    if (!g.wait_for(kGuard)) return;
    try {
      (void)g.get();
    } catch (const crew::Cancelled&) {
      saw_cancelled = true;
    }
  });
  started.wait();
  EXPECT_TRUE(state->cancel());
  waiter.join();
  EXPECT_TRUE(saw_cancelled);
  EXPECT_FALSE(p.set_value(1));
}

// ---------------------------------------------------------------------------------------------
// then

TEST(Then, ChainsValues) {
  auto f = crew::make_ready_future(2).then([](int v) { return v * 3; }).then([](int v) {
    return std::to_string(v);
  });
  ASSERT_TRUE(f.ready());  // every step ran inline
  EXPECT_EQ(f.get(), "6");
}

TEST(Then, RunsWhenTheSourceSettlesOnTheSettlingThread) {
  crew::Promise<int> p;
  std::thread::id ran_on;
  auto f = p.get_future().then([&](int v) {
    ran_on = std::this_thread::get_id();
    return v + 1;
  });
  EXPECT_FALSE(f.ready());
  std::thread::id setter_id;
  std::jthread setter([&] {
    setter_id = std::this_thread::get_id();
    p.set_value(1);
  });
  setter.join();
  ASSERT_TRUE(f.ready());
  EXPECT_EQ(ran_on, setter_id);
  EXPECT_EQ(f.get(), 2);
}

TEST(Then, VoidSourceAndVoidContinuation) {
  crew::Promise<void> p;
  int calls = 0;
  auto f = p.get_future().then([&] {
    ++calls;
    return 5;
  });
  auto g = std::move(f).then([&](int v) { calls += v; });
  static_assert(std::is_same_v<decltype(g), crew::Future<void>>);
  EXPECT_EQ(calls, 0);
  p.set_value();
  ASSERT_TRUE(g.ready());
  g.get();
  EXPECT_EQ(calls, 6);
}

TEST(Then, ErrorSkipsValueContinuationsAndPropagates) {
  bool called = false;
  crew::Promise<int> p;
  auto f = p.get_future()
               .then([&](int v) {
                 called = true;
                 return v;
               })
               .then([&](int v) {
                 called = true;
                 return std::to_string(v);
               });
  p.set_exception(error_ptr());
  ASSERT_TRUE(f.ready());
  EXPECT_THROW((void)f.get(), TestError);
  EXPECT_FALSE(called);

  bool void_called = false;
  auto g = crew::make_exceptional_future<void>(error_ptr<OtherError>()).then([&] {
    void_called = true;
  });
  EXPECT_THROW(g.get(), OtherError);
  EXPECT_FALSE(void_called);
}

TEST(Then, FutureTakingContinuationSeesErrorsAndValues) {
  auto handle = [](crew::Future<int> f) {
    try {
      return f.get();
    } catch (const TestError&) {
      return -1;
    }
  };
  EXPECT_EQ(crew::make_exceptional_future<int>(error_ptr()).then(handle).get(), -1);
  EXPECT_EQ(crew::make_ready_future(4).then(handle).get(), 4);

  crew::Promise<void> p;
  auto g = p.get_future().then([](crew::Future<void> f) {
    try {
      f.get();
      return std::string("ok");
    } catch (const crew::Error& e) {
      return std::string("error");
    }
  });
  {
    auto dropped = std::move(p);  // broken promise
  }
  EXPECT_EQ(g.get(), "error");
}

TEST(Then, ExceptionThrownInsideTheContinuationFailsTheResult) {
  auto f = crew::make_ready_future(1).then([](int) -> int { throw OtherError("inside"); });
  EXPECT_THROW((void)f.get(), OtherError);

  crew::Promise<int> p;
  auto g = p.get_future().then([](int) { throw TestError("later"); }).then([] { return 1; });
  p.set_value(0);
  EXPECT_THROW((void)g.get(), TestError);
}

TEST(Then, CancelledSourceSkipsTheContinuation) {
  crew::Promise<int> p;
  auto src = p.get_future();
  EXPECT_TRUE(src.cancel());
  bool called = false;
  auto f = std::move(src).then([&](int v) {
    called = true;
    return v;
  });
  EXPECT_FALSE(p.set_value(1));
  EXPECT_THROW((void)f.get(), crew::Cancelled);
  EXPECT_FALSE(called);
}

TEST(Then, CancellingTheResultDoesNotStopTheSource) {
  crew::Promise<int> p;
  auto f = p.get_future().then([](int v) { return v; });
  EXPECT_TRUE(f.cancel());
  EXPECT_FALSE(p.settled());
  EXPECT_TRUE(p.set_value(1));  // the continuation runs and finds its result already settled
  EXPECT_THROW((void)f.get(), crew::Cancelled);
}

TEST(Then, OnPoolRunsOnAPoolThread) {
  crew::ThreadPool pool({.max_workers = 1, .name = "fthen"});
  const auto main_id = std::this_thread::get_id();

  // Pending source: fn is posted to the pool when the main thread settles it.
  crew::Promise<int> p;
  auto f = p.get_future().then(
      [&](int v) {
        EXPECT_NE(std::this_thread::get_id(), main_id);
        return std::pair(v, current_thread_name());
      },
      pool);
  p.set_value(10);
  ASSERT_TRUE(f.wait_for(kGuard));
  auto [v, name] = f.get();
  EXPECT_EQ(v, 10);
  EXPECT_EQ(name, "fthen-w0");

  // Ready source: fn still goes through the pool, not inline.
  std::thread::id ran_on;
  auto g = crew::make_ready_future(1).then(
      [&](int x) {
        ran_on = std::this_thread::get_id();
        return x + 1;
      },
      pool);
  ASSERT_TRUE(g.wait_for(kGuard));
  EXPECT_EQ(g.get(), 2);
  EXPECT_NE(ran_on, main_id);

  // Errors still skip fn.
  bool called = false;
  auto h = crew::make_exceptional_future<int>(error_ptr())
               .then(
                   [&](int x) {
                     called = true;
                     return x;
                   },
                   pool);
  ASSERT_TRUE(h.wait_for(kGuard));
  EXPECT_THROW((void)h.get(), TestError);
  EXPECT_FALSE(called);
}

TEST(Then, OnClosedPoolFailsWithPoolClosed) {
  crew::ThreadPool pool({.max_workers = 1, .name = "fclosed"});
  pool.close();
  bool called = false;
  auto f = crew::make_ready_future(1).then(
      [&](int x) {
        called = true;
        return x;
      },
      pool);
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_THROW((void)f.get(), crew::PoolClosed);
  EXPECT_FALSE(called);
}

// ---------------------------------------------------------------------------------------------
// co_await

crew::Future<int> add_one(crew::Future<int> f) {
  const int v = co_await std::move(f);
  co_return v + 1;
}

crew::Future<int> add_one_lvalue(crew::Future<int> f, bool* consumed) {
  const int v = co_await f;
  *consumed = !f.valid();
  co_return v + 1;
}

crew::Future<int> twice_add_one(crew::Future<int> f) {
  const int v = co_await add_one(std::move(f));
  co_return co_await add_one(crew::make_ready_future(v));
}

crew::Future<int> catch_and_recover(crew::Future<int> f) {
  try {
    co_return co_await std::move(f);
  } catch (const TestError&) {
    co_return -1;
  }
}

crew::Future<int> throws_after_await(crew::Future<int> f) {
  (void)co_await std::move(f);
  throw OtherError("from the coroutine body");
}

crew::Future<void> set_flag_after(crew::Future<void> f, bool* flag) {
  co_await std::move(f);
  *flag = true;
}

crew::Future<std::thread::id> resumed_on(crew::Future<int> f) {
  (void)co_await std::move(f);
  co_return std::this_thread::get_id();
}

TEST(CoAwait, ReadyFutureCompletesWithoutSuspending) {
  auto f = add_one(crew::make_ready_future(1));
  ASSERT_TRUE(f.ready());
  EXPECT_EQ(f.get(), 2);
}

TEST(CoAwait, PendingFutureResumesWhenSettled) {
  crew::Promise<int> p;
  auto f = add_one(p.get_future());
  EXPECT_FALSE(f.ready());
  p.set_value(41);
  ASSERT_TRUE(f.ready());  // resumed inline by set_value
  EXPECT_EQ(f.get(), 42);
}

TEST(CoAwait, LvalueAwaitConsumesTheFuture) {
  bool consumed = false;
  auto f = add_one_lvalue(crew::make_ready_future(1), &consumed);
  EXPECT_EQ(f.get(), 2);
  EXPECT_TRUE(consumed);
}

TEST(CoAwait, ResumesOnTheSettlingThread) {
  crew::Promise<int> p;
  auto f = resumed_on(p.get_future());
  EXPECT_FALSE(f.ready());
  std::thread::id setter_id;
  std::jthread setter([&] {
    setter_id = std::this_thread::get_id();
    p.set_value(0);
  });
  setter.join();
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_EQ(f.get(), setter_id);
}

TEST(CoAwait, ResumesOnAPoolThreadForAPoolTask) {
  crew::ThreadPool pool({.max_workers = 1, .name = "fawait"});
  std::latch release(1);
  auto task = pool.run([&] {
    release.wait();
    return 1;
  });
  auto f = resumed_on(std::move(task));
  EXPECT_FALSE(f.ready());  // the task cannot finish before release
  release.count_down();
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_NE(f.get(), std::this_thread::get_id());
}

TEST(CoAwait, ExceptionsPropagate) {
  crew::Promise<int> p;
  auto f = add_one(p.get_future());
  p.set_exception(error_ptr());
  EXPECT_THROW((void)f.get(), TestError);

  EXPECT_EQ(catch_and_recover(crew::make_exceptional_future<int>(error_ptr())).get(), -1);
  EXPECT_EQ(catch_and_recover(crew::make_ready_future(5)).get(), 5);

  crew::Promise<int> q;
  auto g = throws_after_await(q.get_future());
  EXPECT_FALSE(g.ready());
  q.set_value(0);
  EXPECT_THROW((void)g.get(), OtherError);

  // co_await on an empty Future is misuse: it surfaces through the coroutine's Future.
  EXPECT_THROW((void)add_one(crew::Future<int>()).get(), std::logic_error);
}

TEST(CoAwait, ChainsThroughOtherCoroutines) {
  crew::Promise<int> p;
  auto f = twice_add_one(p.get_future());
  EXPECT_FALSE(f.ready());
  p.set_value(10);
  ASSERT_TRUE(f.ready());
  EXPECT_EQ(f.get(), 12);

  crew::Promise<int> q;
  auto g = twice_add_one(q.get_future());
  q.set_exception(error_ptr<OtherError>());
  EXPECT_THROW((void)g.get(), OtherError);
}

TEST(CoAwait, VoidCoroutine) {
  crew::Promise<void> p;
  bool flag = false;
  auto f = set_flag_after(p.get_future(), &flag);
  EXPECT_FALSE(f.ready());
  EXPECT_FALSE(flag);
  p.set_value();
  ASSERT_TRUE(f.ready());
  EXPECT_TRUE(flag);
  f.get();

  bool flag2 = false;
  auto g = set_flag_after(crew::make_exceptional_future<void>(error_ptr()), &flag2);
  EXPECT_THROW(g.get(), TestError);
  EXPECT_FALSE(flag2);
}

// ---------------------------------------------------------------------------------------------
// when_all

TEST(WhenAll, VectorKeepsInputOrder) {
  std::vector<crew::Promise<int>> ps(4);
  std::vector<crew::Future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto all = crew::when_all(std::move(fs));
  static_assert(std::is_same_v<decltype(all), crew::Future<std::vector<int>>>);
  for (int i = 3; i >= 0; --i) {  // settle in reverse
    EXPECT_FALSE(all.ready());
    ps[static_cast<std::size_t>(i)].set_value(i * 10);
  }
  ASSERT_TRUE(all.ready());
  EXPECT_EQ(all.get(), (std::vector<int>{0, 10, 20, 30}));
}

TEST(WhenAll, EmptyVectorIsReadyAtOnce) {
  auto all = crew::when_all(std::vector<crew::Future<int>>{});
  ASSERT_TRUE(all.ready());
  EXPECT_TRUE(all.get().empty());

  auto none = crew::when_all(std::vector<crew::Future<void>>{});
  ASSERT_TRUE(none.ready());
  none.get();
}

TEST(WhenAll, VoidVectorWaitsForEveryInput) {
  std::vector<crew::Promise<void>> ps(3);
  std::vector<crew::Future<void>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto all = crew::when_all(std::move(fs));
  static_assert(std::is_same_v<decltype(all), crew::Future<void>>);
  ps[0].set_value();
  ps[2].set_value();
  EXPECT_FALSE(all.ready());
  ps[1].set_value();
  ASSERT_TRUE(all.ready());
  all.get();
}

TEST(WhenAll, TupleOfMixedTypes) {
  crew::Promise<std::string> ps;
  auto all =
      crew::when_all(crew::make_ready_future(1), ps.get_future(), crew::make_ready_future(2.5));
  static_assert(std::is_same_v<decltype(all), crew::Future<std::tuple<int, std::string, double>>>);
  EXPECT_FALSE(all.ready());
  ps.set_value("two");
  ASSERT_TRUE(all.ready());
  EXPECT_EQ(all.get(), std::make_tuple(1, std::string("two"), 2.5));
}

TEST(WhenAll, FailsFastWhileOtherInputsArePending) {
  std::vector<crew::Promise<int>> ps(3);
  std::vector<crew::Future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto all = crew::when_all(std::move(fs));
  ps[1].set_exception(error_ptr());
  ASSERT_TRUE(all.ready());  // without waiting for inputs 0 and 2
  EXPECT_FALSE(ps[0].settled());
  EXPECT_FALSE(ps[2].settled());
  EXPECT_THROW((void)all.get(), TestError);
  // Late inputs are absorbed, including a second failure.
  ps[0].set_value(1);
  ps[2].set_exception(error_ptr<OtherError>());
}

TEST(WhenAll, FirstFailureWins) {
  std::vector<crew::Promise<void>> ps(3);
  std::vector<crew::Future<void>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto all = crew::when_all(std::move(fs));
  ps[2].set_exception(error_ptr<OtherError>());
  ps[0].set_exception(error_ptr<TestError>());
  EXPECT_THROW(all.get(), OtherError);
  // ps[1] is destroyed unfulfilled at the end of the test: the join must still be released
  // (ASan's leak check sees it otherwise).
}

TEST(WhenAll, TupleFailsFast) {
  crew::Promise<int> a;
  crew::Promise<std::string> b;
  auto all = crew::when_all(a.get_future(), b.get_future());
  b.set_exception(error_ptr());
  ASSERT_TRUE(all.ready());
  EXPECT_FALSE(a.settled());
  EXPECT_THROW((void)all.get(), TestError);
  a.set_value(1);
}

TEST(WhenAll, AlreadyFailedInputFailsAtOnce) {
  crew::Promise<int> pending;
  std::vector<crew::Future<int>> fs;
  fs.push_back(pending.get_future());
  fs.push_back(crew::make_exceptional_future<int>(error_ptr()));
  auto all = crew::when_all(std::move(fs));
  ASSERT_TRUE(all.ready());
  EXPECT_THROW((void)all.get(), TestError);
}

TEST(WhenAll, EmptyInputFutureIsMisuse) {
  std::vector<crew::Future<int>> fs;
  fs.emplace_back();
  EXPECT_THROW((void)crew::when_all(std::move(fs)), std::logic_error);
  EXPECT_THROW((void)crew::when_all(crew::make_ready_future(1), crew::Future<int>()),
               std::logic_error);
}

TEST(WhenAll, GathersPoolTasks) {
  crew::ThreadPool pool({.max_workers = 2, .name = "fall"});
  std::vector<crew::Future<int>> fs;
  for (int i = 0; i < 100; ++i) fs.push_back(pool.run([i] { return i; }));
  auto all = crew::when_all(std::move(fs));
  ASSERT_TRUE(all.wait_for(kGuard));
  const auto values = all.get();
  ASSERT_EQ(values.size(), 100U);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(values[static_cast<std::size_t>(i)], i);
}

// ---------------------------------------------------------------------------------------------
// when_any

TEST(WhenAny, FirstValueWinsWithItsIndex) {
  std::vector<crew::Promise<int>> ps(3);
  std::vector<crew::Future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto any = crew::when_any(std::move(fs));
  EXPECT_FALSE(any.ready());
  ps[1].set_value(7);
  ASSERT_TRUE(any.ready());
  ps[0].set_value(3);  // a loser settling after the winner does not change it
  auto r = any.get();
  EXPECT_EQ(r.index, 1U);
  ASSERT_EQ(r.futures.size(), 3U);
  ASSERT_TRUE(r.futures[1].ready());
  EXPECT_EQ(r.futures[1].get(), 7);
  ASSERT_TRUE(r.futures[0].ready());
  EXPECT_EQ(r.futures[0].get(), 3);
  EXPECT_FALSE(r.futures[2].ready());
  ps[2].set_value(5);
  ASSERT_TRUE(r.futures[2].ready());
  EXPECT_EQ(r.futures[2].get(), 5);
}

TEST(WhenAny, ErrorFirstWins) {
  std::vector<crew::Promise<int>> ps(3);
  std::vector<crew::Future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto any = crew::when_any(std::move(fs));
  ps[2].set_exception(error_ptr());
  ASSERT_TRUE(any.ready());
  auto r = any.get();  // when_any itself succeeds; the winner carries the error
  EXPECT_EQ(r.index, 2U);
  EXPECT_THROW((void)r.futures[2].get(), TestError);
  ps[0].set_value(1);
  ps[1].set_value(2);
  EXPECT_EQ(r.futures[0].get(), 1);
  EXPECT_EQ(r.futures[1].get(), 2);
}

TEST(WhenAny, LosersStayUsableWithThen) {
  std::vector<crew::Promise<int>> ps(2);
  std::vector<crew::Future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto any = crew::when_any(std::move(fs));
  ps[0].set_value(1);
  auto r = any.get();
  ASSERT_EQ(r.index, 0U);
  auto doubled = std::move(r.futures[1]).then([](int v) { return v * 2; });
  EXPECT_FALSE(doubled.ready());
  ps[1].set_value(21);
  ASSERT_TRUE(doubled.ready());
  EXPECT_EQ(doubled.get(), 42);
}

TEST(WhenAny, LoserCanBeAwaited) {
  std::vector<crew::Promise<int>> ps(2);
  std::vector<crew::Future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto any = crew::when_any(std::move(fs));
  ps[1].set_value(0);
  auto r = any.get();
  auto f = add_one(std::move(r.futures[0]));
  EXPECT_FALSE(f.ready());
  ps[0].set_value(1);
  ASSERT_TRUE(f.ready());
  EXPECT_EQ(f.get(), 2);
}

TEST(WhenAny, AlreadyReadyInputWinsAtOnce) {
  crew::Promise<int> pending;
  std::vector<crew::Future<int>> fs;
  fs.push_back(pending.get_future());
  fs.push_back(crew::make_ready_future(9));
  auto any = crew::when_any(std::move(fs));
  ASSERT_TRUE(any.ready());
  auto r = any.get();
  EXPECT_EQ(r.index, 1U);
  EXPECT_EQ(r.futures[1].get(), 9);
  EXPECT_FALSE(r.futures[0].ready());
  // `pending` is destroyed unfulfilled: the loser then carries the broken-promise error.
}

TEST(WhenAny, VoidFutures) {
  std::vector<crew::Promise<void>> ps(2);
  std::vector<crew::Future<void>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto any = crew::when_any(std::move(fs));
  ps[1].set_value();
  ASSERT_TRUE(any.ready());
  auto r = any.get();
  EXPECT_EQ(r.index, 1U);
  r.futures[1].get();
  ps[0].set_exception(error_ptr());
  EXPECT_THROW(r.futures[0].get(), TestError);
}

TEST(WhenAny, EmptyInputThrowsInvalidArgument) {
  EXPECT_THROW((void)crew::when_any(std::vector<crew::Future<int>>{}), std::invalid_argument);
  std::vector<crew::Future<int>> fs;
  fs.emplace_back();
  EXPECT_THROW((void)crew::when_any(std::move(fs)), std::logic_error);
}

// ---------------------------------------------------------------------------------------------
// Concurrency

// Ping-pong: each round the waiter usually blocks before the value arrives.
TEST(FutureStress, SetValueWhileAnotherThreadWaits) {
  std::vector<crew::Promise<int>> values(kStressIterations);
  std::vector<crew::Promise<void>> acks(kStressIterations);
  std::vector<crew::Future<int>> value_futures;
  std::vector<crew::Future<void>> ack_futures;
  for (int i = 0; i < kStressIterations; ++i) {
    value_futures.push_back(values[static_cast<std::size_t>(i)].get_future());
    ack_futures.push_back(acks[static_cast<std::size_t>(i)].get_future());
  }
  std::atomic<int> mismatches{0};
  std::jthread consumer([&] {
    for (int i = 0; i < kStressIterations; ++i) {
      auto& f = value_futures[static_cast<std::size_t>(i)];
      if (!f.wait_for(kGuard)) {
        mismatches += 1;
        return;
      }
      if (f.get() != i) mismatches += 1;
      acks[static_cast<std::size_t>(i)].set_value();
    }
  });
  for (int i = 0; i < kStressIterations; ++i) {
    values[static_cast<std::size_t>(i)].set_value(i);
    auto& ack = ack_futures[static_cast<std::size_t>(i)];
    ASSERT_TRUE(ack.wait_for(kGuard)) << "round " << i;
    ack.get();
  }
  consumer.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Runs `settle` and `other` on two threads released together, `rounds` times; `prepare` sets up
// each round on the calling thread and `check` verifies it after both returned.
template <class Prepare, class A, class B, class Check>
void race(int rounds, Prepare prepare, A a, B b, Check check) {
  std::barrier sync(3);
  std::atomic<bool> stop{false};
  auto body = [&](auto& fn) {
    while (true) {
      sync.arrive_and_wait();  // round start
      if (stop.load()) return;
      fn();
      sync.arrive_and_wait();  // round end
    }
  };
  std::jthread ta([&] { body(a); });
  std::jthread tb([&] { body(b); });
  for (int i = 0; i < rounds; ++i) {
    prepare();
    sync.arrive_and_wait();
    sync.arrive_and_wait();
    check();
    if (::testing::Test::HasFatalFailure()) break;
  }
  stop = true;
  sync.arrive_and_wait();
}

TEST(FutureStress, ContinuationInstalledDuringSettleRunsExactlyOnce) {
  std::atomic<int> runs{0};
  crew::Promise<int> p;
  crew::Future<int> src;
  crew::Future<int> result;
  int failures = 0;
  race(
      kRaceIterations,
      [&] {
        runs = 0;
        p = crew::Promise<int>();
        src = p.get_future();
      },
      [&] { p.set_value(1); },
      [&] {
        result = std::move(src).then([&](int v) {
          runs.fetch_add(1);
          return v + 1;
        });
      },
      [&] {
        if (runs.load() != 1 || !result.ready() || result.get() != 2) ++failures;
      });
  EXPECT_EQ(failures, 0);
}

TEST(FutureStress, CoAwaitDuringSettleResumesExactlyOnce) {
  std::atomic<int> resumes{0};
  auto coro = [&](crew::Future<int> f) -> crew::Future<int> {
    const int v = co_await std::move(f);
    resumes.fetch_add(1);
    co_return v;
  };
  crew::Promise<int> p;
  crew::Future<int> src;
  crew::Future<int> result;
  int failures = 0;
  race(
      kRaceIterations,
      [&] {
        resumes = 0;
        p = crew::Promise<int>();
        src = p.get_future();
      },
      [&] { p.set_value(7); }, [&] { result = coro(std::move(src)); },
      [&] {
        if (resumes.load() != 1 || !result.ready() || result.get() != 7) ++failures;
      });
  EXPECT_EQ(failures, 0);
}

TEST(FutureStress, CancelRacingSetValueHasOneWinner) {
  crew::Promise<int> p;
  crew::Future<int> f;
  std::atomic<bool> set_won{false};
  std::atomic<bool> cancel_won{false};
  int failures = 0;
  race(
      kRaceIterations,
      [&] {
        p = crew::Promise<int>();
        f = p.get_future();
      },
      [&] { set_won = p.set_value(1); }, [&] { cancel_won = f.cancel(); },
      [&] {
        if (set_won.load() == cancel_won.load()) {
          ++failures;
          return;
        }
        try {
          if (f.get() != 1 || !set_won) ++failures;
        } catch (const crew::Cancelled&) {
          if (!cancel_won) ++failures;
        }
      });
  EXPECT_EQ(failures, 0);
}

TEST(FutureStress, WhenAllAndWhenAnyWithConcurrentSettlers) {
  constexpr int kInputs = 8;
  std::vector<crew::Promise<int>> ps;
  crew::Future<std::vector<int>> all;
  crew::Future<crew::WhenAny<int>> any;
  std::vector<crew::Promise<int>> qs;
  int failures = 0;
  auto settle_half = [&](int from) {
    for (int i = from; i < kInputs; i += 2) {
      ps[static_cast<std::size_t>(i)].set_value(i);
      qs[static_cast<std::size_t>(i)].set_value(i);
    }
  };
  race(
      kRaceIterations / 4,
      [&] {
        ps = std::vector<crew::Promise<int>>(kInputs);
        qs = std::vector<crew::Promise<int>>(kInputs);
        std::vector<crew::Future<int>> a;
        std::vector<crew::Future<int>> b;
        for (auto& p : ps) a.push_back(p.get_future());
        for (auto& q : qs) b.push_back(q.get_future());
        all = crew::when_all(std::move(a));
        any = crew::when_any(std::move(b));
      },
      [&] { settle_half(0); }, [&] { settle_half(1); },
      [&] {
        if (!all.ready() || !any.ready()) {
          ++failures;
          return;
        }
        const auto values = all.get();
        for (int i = 0; i < kInputs; ++i) {
          if (values[static_cast<std::size_t>(i)] != i) ++failures;
        }
        auto r = any.get();
        if (r.index >= kInputs) ++failures;
        for (int i = 0; i < kInputs; ++i) {
          auto& f = r.futures[static_cast<std::size_t>(i)];
          if (!f.ready() || f.get() != i) ++failures;
        }
      });
  EXPECT_EQ(failures, 0);
}

}  // namespace
