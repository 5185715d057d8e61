// Risky tasks in a ProcessPool: one loops forever, one crashes, one leaks memory. Each fails
// with its own typed error, and the pool keeps serving the well-behaved task in between.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <vector>

#include <crew/process.hpp>

using namespace std::chrono_literals;

int main() {
  crew::Tasks tasks;
  tasks.add("square", [](long x) { return x * x; });
  tasks.add("forever", [] {
    volatile long spins = 0;
    for (;;) spins = spins + 1;
  });
  tasks.add("crash", [] { std::raise(SIGSEGV); });
  tasks.add("leak", [] {
    std::vector<std::vector<char>> hoard;
    for (;;) hoard.emplace_back(std::size_t{1} << 20, 'x');  // 1 MiB at a time, never freed
  });
  if (crew::is_worker_process()) return crew::serve(tasks);

  crew::ProcessPool pool({.tasks = &tasks,
                          .max_workers = 2,
                          .task_timeout = 200ms,
                          .memory_limit_bytes = std::size_t{128} << 20,
                          .terminate_grace = 100ms,
                          .env = {{"ASAN_OPTIONS", "handle_segv=0:detect_leaks=0"},
                                  {"TSAN_OPTIONS", "handle_segv=0"}}});
  int failures = 0;
  auto check = [&](const char* what, bool ok) {
    std::printf("%-8s %s\n", ok ? "ok" : "WRONG", what);
    failures += ok ? 0 : 1;
  };

  try {
    pool.run<void>("forever").get();
    check("forever returned", false);
  } catch (const crew::TimedOut& e) {
    check(e.what(), true);
  }
  check("square(12) == 144 after the timeout", pool.run<long>("square", 12).get() == 144);

  try {
    pool.run<void>("crash").get();
    check("crash returned", false);
  } catch (const crew::WorkerCrashed& e) {
    check(e.what(), e.task() == "crash");
  }
  check("square(7) == 49 after the crash", pool.run<long>("square", 7).get() == 49);

  try {
    pool.run<void>("leak").get();
    check("leak returned", false);
  } catch (const crew::MemoryLimitExceeded& e) {
    check(e.what(), true);
  } catch (const crew::WorkerCrashed& e) {  // out of address space inside malloc: a crash
    check(e.what(), true);
  }
  check("square(3) == 9 after the leak", pool.run<long>("square", 3).get() == 9);

  const auto s = pool.stats();
  std::printf(
      "completed %llu, failed %llu, timed out %llu, crashed %llu, restarts %llu\n",
      static_cast<unsigned long long>(s.completed), static_cast<unsigned long long>(s.failed),
      static_cast<unsigned long long>(s.timed_out), static_cast<unsigned long long>(s.crashed),
      static_cast<unsigned long long>(s.restarts));
  return failures == 0 ? 0 : 1;
}
