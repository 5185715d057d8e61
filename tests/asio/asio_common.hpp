// tests/asio: what both Asio flavours must do (crew/asio.hpp). Included once by each test file,
// after it chose its flavour: `net` is boost::asio or asio.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it
#include <vector>

#include <gtest/gtest.h>

#include <crew/asio.hpp>
#include <crew/process.hpp>

namespace asio_test {

using namespace std::chrono_literals;

inline long fib(int n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

// Keeps a core busy for `ms` (whatever the optimizer makes of any computation).
inline int spin(int ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  int turns = 0;
  while (std::chrono::steady_clock::now() < until) ++turns;
  return turns;
}

inline const crew::Tasks& tasks() {
  static const crew::Tasks t = [] {
    crew::Tasks out;
    out.add("add", [](int a, int b) { return a + b; });
    out.add("fails", []() -> int { throw std::runtime_error("told to fail"); });
    out.add("sleep_ms", [](int ms) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return ms;
    });
    return out;
  }();
  return t;
}

inline crew::ProcessPoolOptions process_options() {
  crew::ProcessPoolOptions o;
  o.tasks = &tasks();
  o.max_workers = 1;
  o.name = "asio-test";
  return o;
}

// Runs `ioc` on a thread of its own until the test ends.
class Running {
 public:
  Running() : guard_(net::make_work_guard(ioc)), thread_([this] { ioc.run(); }) {}
  ~Running() {
    guard_.reset();
    thread_.join();
  }
  Running(const Running&) = delete;
  Running& operator=(const Running&) = delete;
  std::thread::id id() const { return thread_.get_id(); }
  net::io_context ioc;

 private:
  net::executor_work_guard<net::io_context::executor_type> guard_;
  std::thread thread_;
};

// The cases every flavour runs (each test file calls them from its own TESTs).
inline void ACallbackGetsTheValueOnItsOwnExecutorNeverOnAPoolThread() {
  crew::ThreadPool pool({.max_workers = 2});
  Running io;
  std::promise<std::pair<long, std::thread::id>> got;
  crew::async_run(pool, fib, 20, net::bind_executor(io.ioc, [&](std::exception_ptr e, long v) {
                    EXPECT_FALSE(e);
                    got.set_value({v, std::this_thread::get_id()});
                  }));
  const auto [value, thread] = got.get_future().get();
  EXPECT_EQ(value, 6765);
  EXPECT_EQ(thread, io.id());
}

inline void UseFutureGivesTheValueOrTheTasksException() {
  crew::ThreadPool pool({.max_workers = 2});
  std::future<int> sum = crew::async_run(
      pool, [](int a, int b) { return a + b; }, 2, 3, net::use_future);
  EXPECT_EQ(sum.get(), 5);
  std::future<int> bad = crew::async_run(
      pool, []() -> int { throw std::out_of_range("nothing here"); }, net::use_future);
  EXPECT_THROW(bad.get(), std::out_of_range);
  std::future<void> done = crew::async_run(
      pool, [] {}, net::use_future);
  EXPECT_NO_THROW(done.get());
}

inline void CoroutinesAwaitThreadAndProcessTasks() {
  crew::ThreadPool pool({.max_workers = 2});
  crew::ProcessPool procs(process_options());
  net::io_context ioc;
  std::vector<std::string> seen;
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        const long f = co_await crew::async_run(pool, fib, 25, net::use_awaitable);
        seen.push_back(std::to_string(f));
        const int s = co_await crew::async_run<int>(procs, "add", 40, 2, net::use_awaitable);
        seen.push_back(std::to_string(s));
        try {
          co_await crew::async_run<int>(procs, "fails", net::use_awaitable);
        } catch (const crew::RemoteError& e) {
          seen.push_back(e.what());
        }
        co_await crew::async_wait(pool.run([] { return 7; }), net::use_awaitable);
        seen.push_back("waited");
      },
      net::detached);
  ioc.run(); /* returns once the coroutine is done: every operation counted as work */
  ASSERT_EQ(seen.size(), 4U);
  EXPECT_EQ(seen[0], "75025");
  EXPECT_EQ(seen[1], "42");
  EXPECT_NE(seen[2].find("told to fail"), std::string::npos) << seen[2];
}

inline void ARefusedRunCompletesWithTheErrorInsteadOfThrowing() {
  crew::ThreadPool pool({.max_workers = 1});
  pool.close();
  std::future<int> f = crew::async_run(
      pool, [] { return 1; }, net::use_future);
  EXPECT_THROW(f.get(), crew::PoolClosed);
}

// The io_context stays responsive while the pool is saturated: CPU work is offloaded.
inline void TheLoopsTimersStayOnTimeWhileThePoolIsSaturated() {
  crew::ThreadPool pool({.max_workers = 2});
  net::io_context ioc;
  std::vector<double> lag_ms;
  std::atomic<int> finished{0};
  for (int i = 0; i < 8; ++i) {
    crew::async_run(pool, spin, 50,
                    net::bind_executor(ioc, [&](std::exception_ptr, int) { ++finished; }));
  }
  net::steady_timer timer(ioc);
  std::function<void()> tick = [&] {
    const auto due = std::chrono::steady_clock::now() + 1ms;
    timer.expires_at(due);
    timer.async_wait([&, due](auto) {
      lag_ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - due)
              .count());
      if (finished < 8) tick();
    });
  };
  tick();
  ioc.run();
  EXPECT_EQ(finished, 8);
  ASSERT_GE(lag_ms.size(), 10U);
  std::sort(lag_ms.begin(), lag_ms.end());
  /* The median tick: a loop that ran the work itself would be late by a whole task (50 ms). */
  EXPECT_LT(lag_ms[lag_ms.size() / 2], 5.0);
}

}  // namespace asio_test
