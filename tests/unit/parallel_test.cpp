// Tests for crew/parallel.hpp: parallel_for and parallel_reduce.
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <latch>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <crew/errors.hpp>
#include <crew/parallel.hpp>
#include <crew/pool.hpp>

namespace {

using namespace std::chrono_literals;

// The largest range covered index by index; lower it if a sanitizer run gets too slow.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kLargeRange = 200'000;
#else
constexpr int kLargeRange = 1'000'000;
#endif

constexpr auto kGuard = 10s;

struct ChunkError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs parallel_for over [first, last) and checks every index was visited exactly once.
template <class Index>
void expect_each_index_once(crew::ThreadPool& pool, Index first, Index last, std::size_t grain) {
  const std::size_t n = first < last ? static_cast<std::size_t>(last - first) : 0;
  std::vector<std::atomic<std::uint8_t>> seen(n);
  std::atomic<long> out_of_range{0};
  crew::parallel_for(
      pool, first, last,
      [&](Index i) {
        if (i < first || !(i < last)) {
          out_of_range.fetch_add(1);
          return;
        }
        seen[static_cast<std::size_t>(i - first)].fetch_add(1, std::memory_order_relaxed);
      },
      grain);
  long wrong = 0;
  for (auto& s : seen) wrong += s.load() != 1 ? 1 : 0;
  EXPECT_EQ(wrong, 0) << "range [" << first << ", " << last << ") grain " << grain;
  EXPECT_EQ(out_of_range.load(), 0);
}

TEST(ParallelFor, CoversEveryIndexOnce) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pfor"});
  for (const int n : {0, 1, 7, 1000, kLargeRange}) {
    for (const std::size_t grain :
         {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{64}, std::size_t{100'000}}) {
      expect_each_index_once(pool, 0, n, grain);
    }
  }
}

TEST(ParallelFor, NegativeAndOffsetRanges) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pneg"});
  expect_each_index_once(pool, -50, 50, 0);
  expect_each_index_once(pool, -50, 50, 7);
  expect_each_index_once(pool, -1000, -10, 1);
  expect_each_index_once(pool, std::int64_t{1} << 40, (std::int64_t{1} << 40) + 999, 0);
  expect_each_index_once(pool, 10U, 77U, 5);
  expect_each_index_once<short>(pool, -300, 300, 0);
}

TEST(ParallelFor, EmptyAndReversedRangesDoNothing) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pempty"});
  std::atomic<int> calls{0};
  crew::parallel_for(pool, 5, 5, [&](int) { calls.fetch_add(1); });
  crew::parallel_for(pool, 10, -10, [&](int) { calls.fetch_add(1); });
  crew::parallel_for(pool, 10U, 3U, [&](unsigned) { calls.fetch_add(1); });
  EXPECT_EQ(calls.load(), 0);
}

// The whole int range has more indices than INT_MAX: the count must not be computed in int.
// Every call throws, so each chunk makes one call and the test stays fast.
TEST(ParallelFor, FullIntRangeDoesNotOverflow) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pfull"});
  std::atomic<long> calls{0};
  std::atomic<long> out_of_range{0};
  std::atomic<int> lowest{INT_MAX};
  EXPECT_THROW(crew::parallel_for(pool, INT_MIN, INT_MAX,
                                  [&](int i) {
                                    calls.fetch_add(1);
                                    if (i == INT_MAX) out_of_range.fetch_add(1);
                                    int low = lowest.load();
                                    while (i < low && !lowest.compare_exchange_weak(low, i)) {
                                    }
                                    throw ChunkError("stop this chunk");
                                  }),
               ChunkError);
  EXPECT_GE(calls.load(), 1);
  EXPECT_LE(calls.load(), 1024);  // one call per chunk, a handful of chunks
  EXPECT_EQ(out_of_range.load(), 0);
  EXPECT_EQ(lowest.load(), INT_MIN);  // the first chunk starts at `first`
}

TEST(ParallelFor, WritesAreVisibleAfterReturn) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pvis"});
  std::vector<int> out(10'000, 0);  // plain ints: the join must publish them
  crew::parallel_for(pool, std::size_t{0}, out.size(),
                     [&](std::size_t i) { out[i] = static_cast<int>(i) * 2; });
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], static_cast<int>(i) * 2);
}

TEST(ParallelFor, ExceptionIsRethrownAfterEveryChunkFinished) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pexc"});
  constexpr int kN = 1000;
  std::atomic<bool> thrown{false};
  std::atomic<int> in_flight{0};
  std::atomic<bool> last_started{false};
  std::atomic<bool> last_done{false};
  std::atomic<int> calls_after_return{0};
  std::atomic<bool> returned{false};
  try {
    crew::parallel_for(
        pool, 0, kN,
        [&](int i) {
          if (returned.load()) calls_after_return.fetch_add(1);
          in_flight.fetch_add(1);
          if (i == 0) {
            thrown = true;
            in_flight.fetch_sub(1);
            throw ChunkError("chunk 0");
          }
          if (i == kN - 1) {
            last_started = true;
            // The last chunk, if it started, is still busy after the first one failed;
            // parallel_for must wait for it.
            const auto guard = std::chrono::steady_clock::now() + kGuard;
            while (!thrown.load() && std::chrono::steady_clock::now() < guard) {
              std::this_thread::yield();
            }
            last_done = true;
          }
          in_flight.fetch_sub(1);
        },
        1);
    FAIL() << "parallel_for did not rethrow";
  } catch (const ChunkError& e) {
    // The exception may be destroyed by the worker that drops the failed task, and libstdc++'s
    // exception_ptr refcount is invisible to TSan: let the pool go idle before reading it.
    pool.wait_idle();
    EXPECT_STREQ(e.what(), "chunk 0");
  }
  returned = true;
  EXPECT_EQ(last_started.load(), last_done.load());
  EXPECT_EQ(in_flight.load(), 0);
  pool.wait_idle();
  EXPECT_EQ(calls_after_return.load(), 0);
}

TEST(ParallelFor, NestedInsideAPoolTaskOnOneThread) {
  crew::ThreadPool pool({.max_workers = 1, .name = "pnest"});
  std::atomic<long> sum{0};
  auto task = pool.run([&] {
    crew::parallel_for(pool, 0, 100, [&](int i) {
      // A second level of nesting, still on the single thread.
      crew::parallel_for(
          pool, 0, 10, [&](int j) { sum.fetch_add(i * 10 + j); }, 1);
    });
  });
  ASSERT_TRUE(task.wait_for(kGuard)) << "nested parallel_for deadlocked";
  task.get();
  EXPECT_EQ(sum.load(), 999L * 1000 / 2);
}

TEST(ParallelFor, ConcurrentCallersShareAPool) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pshare"});
  constexpr int kCallers = 3;
  constexpr int kN = 10'000;
  std::vector<std::atomic<long>> sums(kCallers);
  {
    std::vector<std::jthread> callers;
    for (int c = 0; c < kCallers; ++c) {
      callers.emplace_back([&, c] {
        crew::parallel_for(pool, 0, kN, [&](int i) { sums[static_cast<std::size_t>(c)] += i; });
      });
    }
  }
  for (auto& s : sums) EXPECT_EQ(s.load(), static_cast<long>(kN) * (kN - 1) / 2);
}

// ---------------------------------------------------------------------------------------------
// parallel_reduce

TEST(ParallelReduce, SumEqualsSerial) {
  crew::ThreadPool pool({.max_workers = 2, .name = "psum"});
  std::mt19937_64 rng(1);
  std::vector<std::uint64_t> v(static_cast<std::size_t>(kLargeRange));
  for (auto& x : v) x = rng() % 1'000'000;
  const std::uint64_t serial = std::accumulate(v.begin(), v.end(), std::uint64_t{0});
  for (const std::size_t grain :
       {std::size_t{0}, std::size_t{1}, std::size_t{1000}, v.size() * 2}) {
    const auto sum = crew::parallel_reduce(
        pool, std::size_t{0}, v.size(), std::uint64_t{0},
        [&](std::size_t b, std::size_t e) {
          return std::accumulate(v.begin() + static_cast<std::ptrdiff_t>(b),
                                 v.begin() + static_cast<std::ptrdiff_t>(e), std::uint64_t{0});
        },
        std::plus<>{}, grain);
    EXPECT_EQ(sum, serial) << "grain " << grain;
  }
}

TEST(ParallelReduce, NegativeRange) {
  crew::ThreadPool pool({.max_workers = 2, .name = "prneg"});
  const long sum = crew::parallel_reduce(
      pool, -50, 51, 0L,
      [](int b, int e) {
        long s = 0;
        for (int i = b; i < e; ++i) s += i;
        return s;
      },
      std::plus<>{}, 3);
  EXPECT_EQ(sum, 0);
  const long squares = crew::parallel_reduce(
      pool, -10, 0, 0L,
      [](int b, int e) {
        long s = 0;
        for (int i = b; i < e; ++i) s += static_cast<long>(i) * i;
        return s;
      },
      std::plus<>{}, 1);
  EXPECT_EQ(squares, 385);
}

TEST(ParallelReduce, CombinesChunksLeftToRight) {
  // String concatenation is not commutative: any reordering of chunks shows up.
  crew::ThreadPool pool({.max_workers = 2, .name = "porder"});
  const std::string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  for (const std::size_t grain : {std::size_t{1}, std::size_t{5}, std::size_t{0}}) {
    const std::string joined = crew::parallel_reduce(
        pool, std::size_t{0}, letters.size(), std::string(">"),
        [&](std::size_t b, std::size_t e) { return letters.substr(b, e - b); },
        [](std::string a, const std::string& b) { return a + b; }, grain);
    EXPECT_EQ(joined, ">" + letters) << "grain " << grain;
  }
}

TEST(ParallelReduce, FloatingPointResultIsReproducible) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pfp"});
  std::vector<double> v(100'000);
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> d(-1e6, 1e6);
  for (auto& x : v) x = d(rng);
  auto run = [&] {
    return crew::parallel_reduce(
        pool, std::size_t{0}, v.size(), 0.0,
        [&](std::size_t b, std::size_t e) {
          double s = 0;
          for (std::size_t i = b; i < e; ++i) s += v[i];
          return s;
        },
        std::plus<>{}, 1000);
  };
  const double first = run();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(run(), first);  // bitwise equal, not just close
}

TEST(ParallelReduce, EmptyRangeReturnsIdentity) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pid"});
  bool called = false;
  auto fn = [&](int, int) {
    called = true;
    return 0;
  };
  EXPECT_EQ(crew::parallel_reduce(pool, 0, 0, 42, fn, std::plus<>{}), 42);
  EXPECT_EQ(crew::parallel_reduce(pool, 3, -3, -7, fn, std::plus<>{}), -7);
  EXPECT_EQ(crew::parallel_reduce(
                pool, 0, 0, std::string("id"), [](int, int) { return std::string("x"); },
                [](std::string a, const std::string& b) { return a + b; }),
            "id");
  EXPECT_FALSE(called);
}

TEST(ParallelReduce, ExceptionInOneChunkIsRethrown) {
  crew::ThreadPool pool({.max_workers = 2, .name = "prexc"});
  std::atomic<int> chunks_done{0};
  std::atomic<int> chunks{0};
  EXPECT_THROW((void)crew::parallel_reduce(
                   pool, 0, 100, 0,
                   [&](int b, int e) {
                     chunks.fetch_add(1);
                     if (b <= 50 && 50 < e) throw ChunkError("middle");
                     chunks_done.fetch_add(1);
                     return e - b;
                   },
                   std::plus<>{}, 10),
               ChunkError);
  // Every chunk had finished (or thrown) by the time the exception came out.
  EXPECT_EQ(chunks.load(), chunks_done.load() + 1);
  EXPECT_GE(chunks.load(), 2);
}

TEST(ParallelReduce, NestedInsideAPoolTaskOnOneThread) {
  crew::ThreadPool pool({.max_workers = 1, .name = "prnest"});
  auto task = pool.run([&] {
    return crew::parallel_reduce(
        pool, 0, 100, 0L,
        [&](int b, int e) {
          return crew::parallel_reduce(
              pool, b, e, 0L, [](int x, int y) { return static_cast<long>(y - x); }, std::plus<>{},
              1);
        },
        std::plus<>{}, 10);
  });
  ASSERT_TRUE(task.wait_for(kGuard)) << "nested parallel_reduce deadlocked";
  EXPECT_EQ(task.get(), 100);
}

}  // namespace

TEST(ParallelFor, FullQueueMeansFewerHelpersNotFailure) {
  crew::ThreadPool pool(
      {.max_workers = 2, .max_queue = 1, .on_full = crew::OnFull::reject, .name = "pfullq"});
  std::latch a_started(1);
  std::latch b_started(1);
  std::latch release(1);
  // Both threads busy and the one queue slot taken: no helper fits. (One submission at a time:
  // the queue holds one task.)
  auto a = pool.run([&] {
    a_started.count_down();
    release.wait();
  });
  a_started.wait();
  auto b = pool.run([&] {
    b_started.count_down();
    release.wait();
  });
  b_started.wait();
  auto queued = pool.run([] {});
  std::vector<int> seen(1000, 0);
  crew::parallel_for(pool, 0, 1000, [&](int i) { seen[static_cast<std::size_t>(i)]++; });
  for (int v : seen) EXPECT_EQ(v, 1);
  release.count_down();
  a.get();
  b.get();
  queued.get();
}

TEST(ParallelFor, ClosedPoolThrowsBeforeAnyCall) {
  crew::ThreadPool pool({.max_workers = 2, .name = "pclosed"});
  pool.close();
  std::atomic<int> calls{0};
  EXPECT_THROW(crew::parallel_for(pool, 0, 100, [&](int) { calls++; }), crew::PoolClosed);
  EXPECT_EQ(calls.load(), 0);
}
