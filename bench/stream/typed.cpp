// Typed-pipeline benchmark (issue 7): how fast items move through crew::stream stages.
//
//   1. 10 M small items through map -> filter -> count, against the same loop written by hand
//      (target: >= 20 M items/s), at the default mark (16 items) and at 256.
//   2. parallel_map with a trivial function against the sequential map: the overhead per item
//      a parallel stage adds (one pool task and one Future per group of `grain` items), ordered
//      and unordered, with grain 1 and 64.
//
// Usage: crew_stream_typed [--quick] [--items N]. Median of 3 runs each; one line per result.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <ranges>
#include <vector>

#include <crew/pool.hpp>
#include <crew/stream.hpp>

namespace cs = crew::stream;
using Clock = std::chrono::steady_clock;

namespace {

double median_seconds(int runs, const std::function<std::uint64_t()>& body, std::uint64_t expect) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    const std::uint64_t got = body();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (got != expect) {
      std::fprintf(stderr, "WRONG RESULT: %llu, expected %llu\n",
                   static_cast<unsigned long long>(got), static_cast<unsigned long long>(expect));
      std::exit(1);
    }
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void report(const char* what, std::uint64_t items, double secs) {
  std::printf("%-44s %12.1f M items/s  %8.1f ns/item\n", what,
              static_cast<double>(items) / secs / 1e6, secs * 1e9 / static_cast<double>(items));
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = 10'000'000;
  std::uint64_t par_n = 1'000'000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      n = 1'000'000;
      par_n = 100'000;
    } else if (std::strcmp(argv[i], "--items") == 0 && i + 1 < argc) {
      n = std::strtoull(argv[++i], nullptr, 10);
      par_n = n / 10 > 0 ? n / 10 : 1;
    } else {
      std::fprintf(stderr, "usage: crew_stream_typed [--quick] [--items N]\n");
      return 64;
    }
  }
  const auto iota = std::views::iota(std::uint64_t{0}, n);
  auto keep = [](std::uint64_t x) { return x % 3 != 0; };
  auto twice = [](std::uint64_t x) { return x * 2 + 1; };
  std::uint64_t expect = 0;
  for (std::uint64_t i = 0; i < n; ++i) expect += keep(twice(i)) ? 1 : 0;

  std::printf("crew::stream typed pipelines, %llu items, %u hardware threads\n",
              static_cast<unsigned long long>(n), std::thread::hardware_concurrency());
  const double hand = median_seconds(
      3,
      [&] {
        std::uint64_t c = 0;
        for (std::uint64_t x : iota) {
          const std::uint64_t y = twice(x);
          if (keep(y)) ++c;
        }
        return c;
      },
      expect);
  report("hand-written loop", n, hand);
  for (std::size_t mark : {std::size_t{16}, std::size_t{256}}) {
    const double t = median_seconds(
        3,
        [&] {
          auto p = cs::from(iota, {.high_water_mark = mark}) | cs::map(twice) | cs::filter(keep) |
                   cs::count();
          (void)p.run().get();
          return p.take();
        },
        expect);
    char label[64];
    std::snprintf(label, sizeof label, "from | map | filter | count  (mark %zu)", mark);
    report(label, n, t);
  }

  crew::ThreadPool pool({.name = "bench"});
  const auto par_iota = std::views::iota(std::uint64_t{0}, par_n);
  std::printf("\nparallel_map, trivial function, %llu items, pool of %zu threads\n",
              static_cast<unsigned long long>(par_n), pool.thread_count());
  const double seq = median_seconds(
      3,
      [&] {
        auto p = cs::from(par_iota) | cs::map(twice) | cs::count();
        (void)p.run().get();
        return p.take();
      },
      par_n);
  report("sequential map", par_n, seq);
  for (std::size_t grain : {std::size_t{1}, std::size_t{64}}) {
    for (bool ordered : {true, false}) {
      const double t = median_seconds(
          3,
          [&] {
            auto p = cs::from(par_iota) |
                     cs::parallel_map(
                         pool, twice,
                         {.ordered = ordered, .max_in_flight = 64 * grain, .grain = grain}) |
                     cs::count();
            (void)p.run().get();
            return p.take();
          },
          par_n);
      char label[80];
      std::snprintf(label, sizeof label, "parallel_map %s, grain %zu",
                    ordered ? "ordered" : "unordered", grain);
      report(label, par_n, t);
      std::printf("%-44s %12.1f ns/item over the sequential map\n", "  overhead",
                  (t - seq) * 1e9 / static_cast<double>(par_n));
    }
  }
  return 0;
}
