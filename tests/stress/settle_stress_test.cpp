// Races at the edges of a task's life, each run many times (and under ThreadSanitizer in the
// gate): whatever wins, every Future settles exactly once and the pool's counts agree with what
// the Futures say. A lost or doubled settlement shows up as a count that does not add up, a
// continuation run twice, or a Future that never settles (the guard below).
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;

constexpr int kIterations = 10'000;
// Deadlock guard: never reached when the code works, generous for TSan on a loaded machine.
constexpr auto kGuard = 120s;

void spin_for(std::chrono::nanoseconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) {
  }
}

// Chains a counting continuation that maps the error `E` to -1 (anything else propagates).
template <class E>
crew::Future<int> counted(crew::Future<int> f, std::atomic<int>& continuations) {
  return std::move(f).then([&continuations](crew::Future<int> r) {
    continuations.fetch_add(1, std::memory_order_relaxed);
    try {
      return r.get();
    } catch (const E&) {
      return -1;
    }
  });
}

// How the Futures that lost the race settled, and so where the pool counts them.
enum class Lost { cancelled, timed_out };

// Waits for every result; checks each is its index or -1 and that the pool counted as many tasks
// completed and cancelled or timed out (each in its own counter, never both) as the Futures say.
void expect_counts_agree(crew::ThreadPool& pool, std::vector<crew::Future<int>>& results,
                         const std::atomic<int>& continuations, Lost how) {
  std::uint64_t values = 0;
  std::uint64_t lost = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].wait_for(kGuard)) << "iteration " << i << " never settled";
    const int v = results[i].get();
    if (v == -1) {
      ++lost;
    } else {
      ASSERT_EQ(v, static_cast<int>(i));
      ++values;
    }
  }
  pool.wait_idle();
  EXPECT_EQ(continuations.load(), static_cast<int>(results.size()));
  const auto s = pool.stats();
  EXPECT_EQ(s.completed, values);
  EXPECT_EQ(s.cancelled, how == Lost::cancelled ? lost : 0U);
  EXPECT_EQ(s.timed_out, how == Lost::timed_out ? lost : 0U);
  EXPECT_EQ(s.failed, 0U);
}

TEST(SettleStress, CancelRacesCompletion) {
  crew::ThreadPool pool({.max_workers = 2});
  std::atomic<int> continuations{0};
  std::vector<crew::Future<int>> results;
  results.reserve(kIterations);
  std::vector<std::stop_source> stops(kIterations);
  for (int i = 0; i < kIterations; ++i) {
    auto f = pool.run(crew::RunOptions{.stop = stops[i].get_token()}, [i] { return i; });
    results.push_back(counted<crew::Cancelled>(std::move(f), continuations));
    stops[i].request_stop();  // races the pool thread running the task
  }
  expect_counts_agree(pool, results, continuations, Lost::cancelled);
}

TEST(SettleStress, PromiseSetValueRacesCancel) {
  std::barrier sync(2);
  std::vector<crew::Promise<int>> promises(kIterations);
  std::vector<crew::Future<int>> futures;
  futures.reserve(kIterations);
  for (auto& p : promises) futures.push_back(p.get_future());
  std::vector<char> set_won(kIterations, 0);
  std::thread setter([&] {
    for (int i = 0; i < kIterations; ++i) {
      sync.arrive_and_wait();
      set_won[i] = promises[i].set_value(i) ? 1 : 0;
    }
  });
  std::vector<char> cancel_won(kIterations, 0);
  for (int i = 0; i < kIterations; ++i) {
    sync.arrive_and_wait();
    cancel_won[i] = futures[i].cancel() ? 1 : 0;
  }
  setter.join();
  int values = 0;
  for (int i = 0; i < kIterations; ++i) {
    ASSERT_EQ(set_won[i] + cancel_won[i], 1) << "iteration " << i << ": not exactly one winner";
    ASSERT_TRUE(futures[i].ready());
    if (set_won[i] != 0) {
      ASSERT_EQ(futures[i].get(), i);
      ++values;
    } else {
      ASSERT_THROW(futures[i].get(), crew::Cancelled);
    }
  }
  RecordProperty("set_value_won", values);
}

// Each iteration: a fresh one-thread pool; one thread submits tasks (run() and then(fn, pool))
// while this one terminates the pool. Every run() either throws PoolClosed or returns a Future
// that settles, with the task's value or PoolClosed; every continuation runs at most once.
TEST(SettleStress, TerminateRacesRun) {
  constexpr int kPerIteration = 3;
  std::barrier sync(2);
  std::unique_ptr<crew::ThreadPool> pool;
  std::atomic<int> continuation_runs{0};
  std::atomic<int> accepted{0};
  std::atomic<int> settled{0};
  std::atomic<int> unsettled{0};
  std::thread submitter([&] {
    for (int i = 0; i < kIterations; ++i) {
      sync.arrive_and_wait();  // the pool exists
      std::vector<crew::Future<int>> mine;
      for (int k = 0; k < kPerIteration; ++k) {
        try {
          auto f = pool->run([k] { return k; });
          accepted.fetch_add(1, std::memory_order_relaxed);
          if (k == 0) {
            mine.push_back(std::move(f).then(
                [&continuation_runs](int v) {
                  continuation_runs.fetch_add(1, std::memory_order_relaxed);
                  return v;
                },
                *pool));
          } else {
            mine.push_back(std::move(f));
          }
        } catch (const crew::PoolClosed&) {
        }
      }
      for (auto& f : mine) {
        if (!f.wait_for(kGuard)) {
          unsettled.fetch_add(1);
          continue;
        }
        try {
          (void)f.get();
        } catch (const crew::PoolClosed&) {
        }
        settled.fetch_add(1, std::memory_order_relaxed);
      }
      sync.arrive_and_wait();  // done with the pool
    }
  });
  for (int i = 0; i < kIterations; ++i) {
    pool = std::make_unique<crew::ThreadPool>(crew::PoolOptions{.max_workers = 1});
    sync.arrive_and_wait();
    pool->terminate();
    sync.arrive_and_wait();
    pool.reset();
  }
  submitter.join();
  EXPECT_EQ(unsettled.load(), 0);
  EXPECT_EQ(settled.load(), accepted.load());
  EXPECT_LE(continuation_runs.load(), kIterations);
  EXPECT_GT(accepted.load(), 0) << "the race never let a task in: it tested nothing";
}

// post() racing close(): every post() that returned ran exactly once; the others threw.
TEST(SettleStress, CloseRacesPost) {
  constexpr int kPerIteration = 4;
  std::barrier sync(2);
  std::unique_ptr<crew::ThreadPool> pool;
  std::atomic<int> ran{0};
  int accepted = 0;
  int refused = 0;
  std::thread poster([&] {
    for (int i = 0; i < kIterations; ++i) {
      sync.arrive_and_wait();
      for (int k = 0; k < kPerIteration; ++k) {
        try {
          pool->post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
          ++accepted;
        } catch (const crew::PoolClosed&) {
          ++refused;
        }
      }
      sync.arrive_and_wait();
    }
  });
  for (int i = 0; i < kIterations; ++i) {
    pool = std::make_unique<crew::ThreadPool>(crew::PoolOptions{.max_workers = 1});
    sync.arrive_and_wait();
    pool->close();
    sync.arrive_and_wait();
    pool.reset();  // drains whatever was accepted after close() began
  }
  poster.join();
  EXPECT_EQ(ran.load(), accepted);
  EXPECT_EQ(accepted + refused, kIterations * kPerIteration);
  EXPECT_GT(accepted, 0);
}

// Tasks that run for about as long as their timeout: each settles once, with its value or with
// TimedOut, and the pool counts each the way its Future says.
TEST(SettleStress, TimeoutRacesCompletion) {
  crew::ThreadPool pool({.max_workers = 2});
  std::mt19937 rng(20261202);  // fixed: the same mix of durations every run
  std::uniform_int_distribution<int> micros(0, 200);
  std::atomic<int> continuations{0};
  std::vector<crew::Future<int>> results;
  results.reserve(kIterations);
  for (int i = 0; i < kIterations; ++i) {
    const auto run_for = std::chrono::microseconds(micros(rng));
    auto f = pool.run(crew::RunOptions{.timeout = 100us}, [i, run_for] {
      spin_for(run_for);
      return i;
    });
    results.push_back(counted<crew::TimedOut>(std::move(f), continuations));
  }
  expect_counts_agree(pool, results, continuations, Lost::timed_out);
}

}  // namespace
