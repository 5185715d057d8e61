// Built against an installed crew (tests/install/run.sh): runs one task on a pool and checks
// the result. Exit code 0 means the package is usable.
#include <cstdio>
#include <exception>

#include <crew/crew.hpp>

int main() {
  try {
    crew::ThreadPool pool({.max_threads = 2});
    crew::Future<int> answer = pool.run([](int a, int b) { return a * b; }, 6, 7);
    const int got = answer.get();
    if (got != 42) {
      std::fprintf(stderr, "crew consumer: expected 42, got %d\n", got);
      return 1;
    }
    std::puts("crew consumer: ok (6 * 7 = 42 on a crew::ThreadPool)");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crew consumer: %s\n", e.what());
    return 1;
  }
}
