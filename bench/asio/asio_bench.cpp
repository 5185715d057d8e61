// crew_asio_bench: a coroutine on an io_context offloads a no-op and resumes with its result,
// `co_await crew::async_run(pool, noop, use_awaitable)`, next to Asio's own way to do the same,
// `co_await co_spawn(thread_pool, noop_coroutine, use_awaitable)`. One pool thread each, the same
// io_context thread, reps interleaved; prints round trips per second and the ratio.
//
//     build/bench/bench/crew_asio_bench [--quick]
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it
#include <vector>

#include <boost/asio.hpp>

#include <crew/asio.hpp>

#include "bench_common.hpp"

namespace net = boost::asio;
using crew_bench::Clock;

namespace {

int noop(int v) {
  return v;
}

// Round trips per second of `trip` awaited `n` times in a row on a fresh io_context.
double rate(int n, const std::function<net::awaitable<int>(int)>& trip) {
  net::io_context ioc;
  long sum = 0;
  const auto t0 = Clock::now();
  net::co_spawn(
      ioc,
      [&]() -> net::awaitable<void> {
        for (int i = 0; i < n; ++i) sum += co_await trip(i);
      },
      net::detached);
  ioc.run();
  const double s = crew_bench::seconds_since(t0);
  crew_bench::check(sum == static_cast<long>(n) * (n - 1) / 2, "the round trips' sum");
  return n / s;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: crew_asio_bench [--quick]\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : crew_bench::kUsageError;
    }
  }
  const int n = quick ? 20'000 : 200'000;
  const int reps = quick ? 3 : 5;
  crew::ThreadPool pool({.max_workers = 1});
  net::thread_pool asio_pool(1);
  const auto samples = crew_bench::interleave<double>(
      "round trip", reps,
      {[&] {
         return rate(n, [&](int i) -> net::awaitable<int> {
           co_return co_await crew::async_run(pool, noop, i, net::use_awaitable);
         });
       },
       [&] {
         return rate(n, [&](int i) -> net::awaitable<int> {
           co_return co_await net::co_spawn(
               asio_pool, [i]() -> net::awaitable<int> { co_return noop(i); }, net::use_awaitable);
         });
       }});
  asio_pool.join();
  const double crew_rate = crew_bench::median(samples[0]);
  const double asio_rate = crew_bench::median(samples[1]);
  std::printf(
      "offload round trip from an io_context coroutine, one pool thread, %d per rep, "
      "median of %d reps\n",
      n, reps);
  std::printf("%-58s %12s\n", "system", "trips/s");
  std::printf("%-58s %12.0f\n", "crew::async_run(ThreadPool, noop, use_awaitable)", crew_rate);
  std::printf("%-58s %12.0f\n", "asio::co_spawn(thread_pool, noop, use_awaitable)", asio_rate);
  std::printf("crew / asio: %.2f (target >= 1: %s)\n", crew_rate / asio_rate,
              crew_bench::verdict(crew_rate >= asio_rate).c_str());
  return crew_bench::g_results_ok ? 0 : 1;
}
