// Seed scenario: "offload fibonacci to a worker and get the result".
//
// The main thread hands a CPU-heavy call (naive recursive fib(40)) to a pool thread and stays
// responsive: it keeps printing ticks while it waits on the future with wait_for(). Then the same
// work is shown composed with .then(...) and awaited from a coroutine that returns crew::Future.
//
// Node.js equivalent: `const r = await pool.run({n: 40})` with Piscina, while setInterval keeps
// ticking on the event loop.

#include <chrono>
#include <cstdio>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Deliberately the slow exponential version: the point is to burn a worker's CPU.
long fib(int n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

constexpr long kFib30 = 832'040;
constexpr long kFib32 = 2'178'309;
constexpr long kFib40 = 102'334'155;

long long ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// A coroutine returning crew::Future: each co_await suspends without blocking a thread and
// resumes when the pool has produced the value. fib(30) + fib(31) == fib(32).
crew::Future<long> fib32_by_parts(crew::ThreadPool& pool) {
  long a = co_await pool.run(fib, 30);
  long b = co_await pool.run(fib, 31);
  co_return a + b;
}

}  // namespace

int main() {
  int failures = 0;
  crew::ThreadPool pool({.max_workers = 2, .name = "fib"});

  // 1. Offload and stay responsive.
  std::printf("main: offloading fib(40) to pool '%s' (%zu threads)\n", pool.name().c_str(),
              pool.thread_count());
  const auto start = Clock::now();
  crew::Future<long> result = pool.run(fib, 40);
  int ticks = 0;
  while (!result.wait_for(50ms)) {
    ++ticks;
    std::printf("main: tick %d at %lld ms - still responsive while a worker computes\n", ticks,
                ms_since(start));
  }
  const long value = result.get();
  std::printf("main: fib(40) = %ld after %lld ms (%d ticks printed meanwhile)\n", value,
              ms_since(start), ticks);
  if (value != kFib40) {
    std::printf("FAIL: expected fib(40) = %ld\n", kFib40);
    ++failures;
  }

  // 2. Continuation: .then(fn) runs fn on the thread that completes the task and yields a new
  // future, so results can be chained without a blocking get() in between.
  crew::Future<long> doubled = pool.run(fib, 30).then([](long v) { return 2 * v; });
  const long twice = doubled.get();
  std::printf("then: fib(30) * 2 = %ld\n", twice);
  if (twice != 2 * kFib30) {
    std::printf("FAIL: expected %ld\n", 2 * kFib30);
    ++failures;
  }

  // 3. Coroutine: co_await a pool future, co_return a value; the caller gets a crew::Future.
  const long by_parts = fib32_by_parts(pool).get();
  std::printf("co_await: fib(30) + fib(31) = %ld (= fib(32))\n", by_parts);
  if (by_parts != kFib32) {
    std::printf("FAIL: expected %ld\n", kFib32);
    ++failures;
  }

  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
