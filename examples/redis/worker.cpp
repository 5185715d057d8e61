// Runs the jobs of the queue "examples" in worker processes until SIGINT or SIGTERM.
//
//   example_redis_worker [redis://127.0.0.1:6379]
#include <chrono>
#include <csignal>
#include <cstdio>

#include <pthread.h>

#include <crew/redis/worker.hpp>

#include "fib.hpp"

int main(int argc, char** argv) {
  static const crew::Tasks tasks = example_tasks();
  // Process isolation runs this program again as the task worker.
  if (crew::is_worker_process()) return crew::worker_main(tasks);

  sigset_t signals;  // blocked before the Worker's threads exist, taken by sigwait below
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  crew::redis::Worker worker(
      tasks,
      {.url = argc > 1 ? argv[1] : "redis://127.0.0.1:6379", .queue = "examples", .workers = 2});
  std::printf("worker %s: waiting for jobs (Ctrl-C stops)\n", worker.id().c_str());
  int sig = 0;
  sigwait(&signals, &sig);
  worker.stop(std::chrono::seconds(10));
  const auto s = worker.stats();
  std::printf("stopped: %llu completed, %llu failed\n",
              static_cast<unsigned long long>(s.completed),
              static_cast<unsigned long long>(s.failed));
  return 0;
}
