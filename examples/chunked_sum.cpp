// Split one big reduction into chunks that run on every pool thread, two ways:
//   a) by hand: one pool.run(...) per chunk, then crew::when_all to collect the partial sums;
//   b) crew::parallel_reduce, which does the chunking and combining for you.
// Both are checked against the serial result.
//
// The sum is over i in [0, 2e8) of (i * i) mod 1'000'003: cheap per element, but with no closed
// form the compiler could substitute, so every element really is visited.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <numeric>
#include <vector>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kCount = 200'000'000;

std::uint64_t sum_range(std::uint64_t first, std::uint64_t last) {
  std::uint64_t sum = 0;
  for (std::uint64_t i = first; i < last; ++i) sum += (i * i) % 1'000'003;
  return sum;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

unsigned long long ull(std::uint64_t v) {
  return static_cast<unsigned long long>(v);
}

}  // namespace

int main() {
  crew::ThreadPool pool;  // default size: CREW_THREADS, else one thread per core
  std::printf("summing (i*i) mod 1000003 for i in [0, %llu) on %zu pool threads\n", ull(kCount),
              pool.thread_count());

  auto start = Clock::now();
  const std::uint64_t serial = sum_range(0, kCount);
  const double serial_s = seconds_since(start);
  std::printf("serial:          %llu in %.3f s\n", ull(serial), serial_s);

  // a) Explicit chunks. A few chunks per thread evens out threads that start late.
  start = Clock::now();
  const std::size_t chunks = pool.thread_count() * 4;
  std::vector<crew::Future<std::uint64_t>> parts;
  parts.reserve(chunks);
  for (std::size_t c = 0; c < chunks; ++c) {
    const std::uint64_t first = kCount * c / chunks;
    const std::uint64_t last = kCount * (c + 1) / chunks;
    parts.push_back(pool.run(sum_range, first, last));
  }
  // when_all turns N futures into one future of N values, in submission order.
  const std::vector<std::uint64_t> partials = crew::when_all(std::move(parts)).get();
  const std::uint64_t chunked = std::accumulate(partials.begin(), partials.end(), std::uint64_t{0});
  const double chunked_s = seconds_since(start);
  std::printf("run + when_all:  %llu in %.3f s (%zu chunks, speed-up x%.2f)\n", ull(chunked),
              chunked_s, chunks, serial_s / chunked_s);

  // b) parallel_reduce: identity 0, sum each sub-range, combine partials with +.
  start = Clock::now();
  const std::uint64_t reduced = crew::parallel_reduce(pool, std::uint64_t{0}, kCount,
                                                      std::uint64_t{0}, sum_range, std::plus<>{});
  const double reduced_s = seconds_since(start);
  std::printf("parallel_reduce: %llu in %.3f s (speed-up x%.2f)\n", ull(reduced), reduced_s,
              serial_s / reduced_s);

  const bool ok = chunked == serial && reduced == serial;
  std::printf("%s\n", ok ? "OK: all three sums agree" : "FAILED: sums differ");
  return ok ? 0 : 1;
}
