// Micro-benchmarks for crew's thread pool and its per-task bookkeeping (Google Benchmark).
//
// These measure crew alone; bench/compare/ puts crew next to the anchors. Run with
//   crew_bench --benchmark_min_time=0.2
// All pools have 2 worker threads, like crew_compare.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include <crew/future.hpp>
#include <crew/pool.hpp>
#include <crew/stats.hpp>

#include "clock.hpp"  // src/core: the pool's tick counter

namespace {

constexpr std::size_t kWorkers = 2;

crew::PoolOptions bench_options() {
  crew::PoolOptions options;
  options.min_workers = kWorkers;
  options.max_workers = kWorkers;
  options.name = "crew-bench";
  return options;
}

// One task submitted with run() and waited for with get(): the round-trip latency, including
// the wake-up of a worker when it has gone to sleep.
void BM_SubmitGet(benchmark::State& state) {
  crew::ThreadPool pool(bench_options());
  for (auto _ : state) {
    auto f = pool.run([] { return 1; });
    benchmark::DoNotOptimize(f.get());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SubmitGet)->UseRealTime();

// A batch of run() calls, then get() on every future: throughput with a result per task.
void BM_RunBatchThenGet(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  crew::ThreadPool pool(bench_options());
  std::vector<crew::Future<std::size_t>> futures;
  futures.reserve(batch);
  for (auto _ : state) {
    for (std::size_t i = 0; i < batch; ++i) futures.push_back(pool.run([i] { return i; }));
    std::size_t sum = 0;
    for (auto& f : futures) sum += f.get();
    benchmark::DoNotOptimize(sum);
    futures.clear();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(batch));
}
BENCHMARK(BM_RunBatchThenGet)
    ->Arg(1'000)
    ->Arg(100'000)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Fire-and-forget post() of a batch, then wait_idle(): throughput without result plumbing.
void BM_PostThroughput(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  crew::ThreadPool pool(bench_options());
  std::atomic<std::uint64_t> count{0};
  for (auto _ : state) {
    for (std::size_t i = 0; i < batch; ++i) {
      pool.post([&count] { count.fetch_add(1, std::memory_order_relaxed); });
    }
    pool.wait_idle();
  }
  const auto items = state.iterations() * static_cast<std::int64_t>(batch);
  if (count.load() != static_cast<std::uint64_t>(items)) state.SkipWithError("lost tasks");
  state.SetItemsProcessed(items);
}
BENCHMARK(BM_PostThroughput)
    ->Arg(1'000)
    ->Arg(100'000)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The building blocks of per-task statistics: a clock read and a histogram record.
void BM_SteadyClockNow(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(std::chrono::steady_clock::now());
}
BENCHMARK(BM_SteadyClockNow);

// Values spread over several decades (1 ns .. ~16 ms) so every bucket range is exercised.
std::chrono::nanoseconds next_latency(std::uint64_t& x) {
  x = x * 6364136223846793005ULL + 1442695040888963407ULL;
  return std::chrono::nanoseconds(static_cast<std::int64_t>((x >> 40) >> ((x >> 8) & 15)));
}

void BM_HistogramRecord(benchmark::State& state) {
  crew::LatencyHistogram histogram;
  std::uint64_t x = 42;
  for (auto _ : state) histogram.record(next_latency(x));
  benchmark::DoNotOptimize(histogram.summary());
}
BENCHMARK(BM_HistogramRecord);

// What crew's pool does per task for its statistics (PoolCore::execute): one tick read at
// submission, one at the end of the run (back to back, the previous end is the next start), two
// tick-to-ns conversions, two histogram records and two counter bumps.
void BM_PerTaskStats(benchmark::State& state) {
  crew::LatencyHistogram wait_time;
  crew::LatencyHistogram run_time;
  std::atomic<std::uint64_t> run_ns{0};
  std::atomic<std::uint64_t> completed{0};
  const double ns_per_tick = crew::detail::ns_per_tick();
  std::uint64_t last_end = crew::detail::ticks();
  for (auto _ : state) {
    const std::uint64_t enqueued = crew::detail::ticks();
    const std::uint64_t start = last_end;
    const std::uint64_t end = crew::detail::ticks();
    last_end = end;
    wait_time.record_ns(static_cast<std::uint64_t>(
        static_cast<double>(start > enqueued ? start - enqueued : 0) * ns_per_tick));
    const auto ran = static_cast<std::uint64_t>(static_cast<double>(end - start) * ns_per_tick);
    run_time.record_ns(ran);
    run_ns.store(run_ns.load(std::memory_order_relaxed) + ran, std::memory_order_relaxed);
    completed.store(completed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  benchmark::DoNotOptimize(wait_time.summary());
  benchmark::DoNotOptimize(run_time.summary());
}
BENCHMARK(BM_PerTaskStats);

void BM_HistogramSummary(benchmark::State& state) {
  crew::LatencyHistogram histogram;
  std::uint64_t x = 42;
  for (int i = 0; i < 100'000; ++i) histogram.record(next_latency(x));
  for (auto _ : state) benchmark::DoNotOptimize(histogram.summary());
}
BENCHMARK(BM_HistogramSummary);

// stats() on an idle pool, and while a feeder thread keeps both workers busy with tiny tasks.
void BM_StatsSnapshot(benchmark::State& state) {
  const bool busy = state.range(0) != 0;
  crew::ThreadPool pool(bench_options());
  std::atomic<bool> stop{false};
  std::jthread feeder;
  if (busy) {
    feeder = std::jthread([&] {
      std::atomic<std::uint64_t> count{0};
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 1'000; ++i) {
          pool.post([&count] { count.fetch_add(1, std::memory_order_relaxed); });
        }
        pool.wait_idle();
      }
    });
  }
  for (auto _ : state) benchmark::DoNotOptimize(pool.stats());
  stop.store(true);
  if (feeder.joinable()) feeder.join();
}
BENCHMARK(BM_StatsSnapshot)->ArgName("busy")->Arg(0)->Arg(1)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
