// A pool that grows under load and shrinks when idle (Piscina's minThreads / maxThreads /
// idleTimeout).
//
// min_workers = 1, max_workers = 4, idle_timeout = 200 ms. A burst of 40 short tasks makes the
// pool add threads up to 4; stats() snapshots show threads, busy, queued, utilization and the
// wait-time / run-time percentiles. After the burst, threads idle for longer than 200 ms retire
// until only min_workers remain.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const Clock::time_point kStart = Clock::now();

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - kStart).count();
}

double ms(std::chrono::nanoseconds d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

void print_stats(const char* label, const crew::PoolStats& s) {
  std::printf(
      "[%4lld ms] %-9s workers=%zu busy=%zu idle=%zu queued=%zu completed=%llu "
      "utilization=%.2f\n",
      now_ms(), label, s.workers, s.busy, s.idle, s.queued,
      static_cast<unsigned long long>(s.completed), s.utilization);
}

void print_latency(const char* what, const crew::LatencySummary& l) {
  std::printf("           %s: p50=%.2f ms p99=%.2f ms max=%.2f ms (n=%llu)\n", what, ms(l.p50),
              ms(l.p99), ms(l.max), static_cast<unsigned long long>(l.count));
}

}  // namespace

int main() {
  int failures = 0;
  constexpr std::size_t kMin = 1;
  constexpr std::size_t kMax = 4;
  constexpr int kTasks = 40;
  crew::ThreadPool pool({.min_workers = kMin,
                         .max_workers = kMax,
                         .idle_timeout = std::chrono::milliseconds(200),
                         .name = "elastic"});
  print_stats("start", pool.stats());

  // The burst: tasks that wait on I/O-like sleeps, so 4 threads are useful even on 2 cores. Each
  // task notes how many threads the pool has while it runs (the peak cannot be missed that way,
  // however late the snapshots below are taken).
  std::atomic<std::size_t> peak_threads{0};
  std::vector<crew::Future<void>> burst;
  for (int i = 0; i < kTasks; ++i) {
    burst.push_back(pool.run([&pool, &peak_threads] {
      const std::size_t now = pool.stats().workers;
      std::size_t peak = peak_threads.load();
      while (now > peak && !peak_threads.compare_exchange_weak(peak, now)) {
      }
      std::this_thread::sleep_for(20ms);
    }));
  }

  // Snapshots while the burst runs, to show the numbers move (the sleep only paces the output).
  while (true) {
    const crew::PoolStats s = pool.stats();
    print_stats("burst", s);
    if (s.queued == 0 && s.busy == 0) break;
    std::this_thread::sleep_for(50ms);
  }
  for (auto& f : burst) f.get();
  pool.wait_idle();

  const crew::PoolStats after_burst = pool.stats();
  print_stats("done", after_burst);
  print_latency("wait_time", after_burst.wait_time);
  print_latency("run_time ", after_burst.run_time);
  std::printf("peak threads during the burst: %zu (max_workers = %zu)\n", peak_threads.load(),
              kMax);
  if (peak_threads < 2 || peak_threads > kMax) {
    std::printf("FAIL: expected the pool to grow beyond 1 thread and stay within %zu\n", kMax);
    ++failures;
  }
  if (after_burst.completed < static_cast<std::uint64_t>(kTasks)) {
    std::printf("FAIL: expected %d completed tasks\n", kTasks);
    ++failures;
  }

  // Idle: threads retire after idle_timeout (200 ms). Poll every 50 ms, for at most 30 s: room
  // for a loaded machine, and still a failure if they never retire.
  const auto deadline = Clock::now() + 30s;
  crew::PoolStats idle = pool.stats();
  while (idle.workers > kMin && Clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
    idle = pool.stats();
    print_stats("idle", idle);
  }
  std::printf("after idling: %zu thread(s) (min_workers = %zu)\n", idle.workers, kMin);
  if (idle.workers != kMin) {
    std::printf("FAIL: expected the pool to shrink back to min_workers\n");
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
