// A CPU-heavy batch over a ProcessPool: count the primes below 2,000,000 in 40 slices, one task
// per slice, then print what each worker process did.
#include <cstdio>
#include <vector>

#include <crew/process.hpp>

namespace {
long count_primes(long from, long to) {
  long n = 0;
  for (long x = from < 2 ? 2 : from; x < to; ++x) {
    bool prime = true;
    for (long d = 2; d * d <= x; ++d) {
      if (x % d == 0) {
        prime = false;
        break;
      }
    }
    n += prime ? 1 : 0;
  }
  return n;
}
}  // namespace

int main() {
  crew::Tasks tasks;
  tasks.add("count_primes", count_primes);
  if (crew::is_worker_process()) return crew::worker_main(tasks);

  constexpr long kLimit = 2'000'000, kSlices = 40, kStep = kLimit / kSlices;
  crew::ProcessPool pool({.tasks = &tasks, .min_workers = 2, .max_workers = 2});
  std::vector<crew::Future<long>> parts;
  for (long i = 0; i < kSlices; ++i) {
    parts.push_back(pool.run<long>("count_primes", i * kStep, (i + 1) * kStep));
  }
  long total = 0;
  for (auto& f : parts) total += f.get();
  std::printf("primes below %ld: %ld\n", kLimit, total);

  const auto s = pool.stats();
  std::printf("%-12s %8s %6s %6s %10s %9s\n", "worker", "pid", "tasks", "errors", "rss", "uptime");
  for (const auto& w : s.per_worker) {
    std::printf("%-12s %8d %6llu %6llu %7zu KiB %6lld ms\n", w.name.c_str(), w.pid,
                static_cast<unsigned long long>(w.tasks_done),
                static_cast<unsigned long long>(w.errors), w.rss_bytes / 1024,
                static_cast<long long>(w.uptime.count()));
  }
  std::printf("utilization %.0f%%, run p50 %.2f ms, wait p50 %.2f ms\n", s.utilization * 100,
              static_cast<double>(s.run_time.p50.count()) / 1e6,
              static_cast<double>(s.wait_time.p50.count()) / 1e6);
  return total == 148933 ? 0 : 1;  // pi(2,000,000)
}
