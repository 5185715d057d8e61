// Submits fib jobs to the queue "examples", prints the results as workers deliver them, then
// the queue's numbers.
//
//   example_redis_producer [redis://127.0.0.1:6379]
#include <chrono>
#include <cstdio>
#include <vector>

#include <crew/redis.hpp>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  crew::redis::Queue queue(
      {.url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379", .name = "examples"});
  std::vector<crew::Future<long>> results;
  for (int n = 20; n < 30; ++n) {
    results.push_back(queue.run<long>({.attempts = 3, .timeout = 10s}, "fib", n));
  }
  // The same job_id twice: one execution, both Futures get its result.
  auto once = queue.run<long>({.job_id = "fib-35"}, "fib", 35);
  auto again = queue.run<long>({.job_id = "fib-35"}, "fib", 35);
  int n = 20;
  for (auto& f : results) std::printf("fib(%d) = %ld\n", n++, f.get());
  std::printf("fib(35) = %ld = %ld\n", once.get(), again.get());
  // The queue's own numbers, the same for every producer and worker of it.
  const crew::redis::QueueStats s = queue.stats();
  std::printf("queue: %llu completed, %llu waiting, p99 <= %lld ms\n",
              static_cast<unsigned long long>(s.completed),
              static_cast<unsigned long long>(s.waiting),
              static_cast<long long>(s.latency.quantile(0.99).count()));
  return 0;
}
