// Risky tasks in a ProcessPool: one loops forever, one crashes, one leaks memory. Each fails
// with its own typed error, and the pool keeps serving the well-behaved task in between.
//
// Each failure must show on any machine, however slow or busy: the endless loop gets a short
// timeout of its own (it can never finish, so it always times out), while the pool's default
// timeout, which the leak runs under, is far longer than reaching the memory cap takes even
// under a sanitizer on a loaded machine (well under a second), so the leak always meets the cap
// first.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
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
  if (crew::is_worker_process()) return crew::worker_main(tasks);

  crew::ProcessPool pool({.tasks = &tasks,
                          .max_workers = 2,
                          .task_timeout = 30s,  // a safety net: no task here needs it
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
    pool.run<void>(crew::RunOptions{.timeout = 200ms}, "forever").get();
    check("forever returned", false);
  } catch (const crew::TimedOut& e) {
    check(e.what(), true);
  } catch (const std::exception& e) {
    check(e.what(), false);
  }
  check("square(12) == 144 after the timeout", pool.run<long>("square", 12).get() == 144);

  try {
    pool.run<void>("crash").get();
    check("crash returned", false);
  } catch (const crew::WorkerCrashed& e) {
    check(e.what(), e.task() == "crash");
  } catch (const std::exception& e) {
    check(e.what(), false);
  }
  check("square(7) == 49 after the crash", pool.run<long>("square", 7).get() == 49);

  try {
    pool.run<void>("leak").get();
    check("leak returned", false);
  } catch (const crew::MemoryLimitExceeded& e) {
    check(e.what(), true);
  } catch (const crew::WorkerCrashed& e) {  // out of address space inside malloc: a crash
    check(e.what(), true);
  } catch (const std::exception& e) {  // e.g. crew::TimedOut: the cap was never reached
    check(e.what(), false);
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
