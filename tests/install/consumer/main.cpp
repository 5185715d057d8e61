// Built against an installed crew (tests/install/run.sh): runs one task on a pool and checks
// the result. Exit code 0 means the package is usable.
#include <cstdio>
#include <exception>
#include <vector>

#include <crew/crew.hpp>
#ifdef CREW_CONSUMER_PROCESS
#include <crew/process.hpp>
#endif
#ifdef CREW_CONSUMER_STREAM
#include <crew/stream.hpp>
#endif
#ifdef CREW_CONSUMER_REDIS
#include <stdexcept>

#include <crew/redis.hpp>
#endif

int main() {
  try {
    crew::ThreadPool pool({.max_workers = 2});
    crew::Future<int> answer = pool.run([](int a, int b) { return a * b; }, 6, 7);
    const int got = answer.get();
    if (got != 42) {
      std::fprintf(stderr, "crew consumer: expected 42, got %d\n", got);
      return 1;
    }
    std::puts("crew consumer: ok (6 * 7 = 42 on a crew::ThreadPool)");
#ifdef CREW_CONSUMER_PROCESS
    if (crew::resident_memory_bytes() == 0) {
      std::fprintf(stderr, "crew consumer: crew::resident_memory_bytes() read nothing\n");
      return 1;
    }
    std::puts("crew consumer: ok (crew::process linked)");
#endif
#ifdef CREW_CONSUMER_STREAM
    namespace cs = crew::stream;
    auto pipeline = cs::from(std::vector<int>{1, 2, 3, 4}) |
                    cs::filter([](int v) { return v % 2 == 0; }) | cs::count();
    (void)pipeline.run().get();
    const auto evens = pipeline.take();
    if (evens != 2) {
      std::fprintf(stderr, "crew consumer: stream counted %zu evens, expected 2\n",
                   static_cast<std::size_t>(evens));
      return 1;
    }
    std::puts("crew consumer: ok (crew::stream pipeline)");
#endif
#ifdef CREW_CONSUMER_REDIS
    // No Redis here: a bad URL is refused before any connection, which proves the link.
    try {
      crew::redis::Queue queue({.url = "http://not-redis"});
      std::fputs("crew consumer: crew::redis accepted an http:// URL\n", stderr);
      return 1;
    } catch (const std::invalid_argument& e) {
      std::printf("crew consumer: ok (crew::redis linked: %s)\n", e.what());
    }
#endif
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew consumer: %s\n", e.what());
    return 1;
  }
}
