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

namespace {

constexpr std::size_t kWorkers = 2;

crew::PoolOptions bench_options() {
  crew::PoolOptions options;
  options.min_threads = kWorkers;
  options.max_threads = kWorkers;
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

// The building blocks of per-task statistics: a clock read and a histogram record. A task that
// is timed for both wait and run time costs about three clock reads and two records.
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

// What crew adds per task if it times both the wait and the run: 3 clock reads, 2 records.
void BM_PerTaskStatsModel(benchmark::State& state) {
  crew::LatencyHistogram wait_time;
  crew::LatencyHistogram run_time;
  for (auto _ : state) {
    const auto queued = std::chrono::steady_clock::now();
    const auto started = std::chrono::steady_clock::now();
    const auto finished = std::chrono::steady_clock::now();
    wait_time.record(started - queued);
    run_time.record(finished - started);
  }
  benchmark::DoNotOptimize(wait_time.summary());
  benchmark::DoNotOptimize(run_time.summary());
}
BENCHMARK(BM_PerTaskStatsModel);

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
