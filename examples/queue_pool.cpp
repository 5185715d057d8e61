// "Worker pool with a queue": a fixed crew of 2 threads in front of a bounded queue.
//
// Part 1 - OnFull::wait. 20 tasks of ~15 ms go to a pool with max_queue = 4. At most 2 run and 4
// wait; when the queue is full, run() blocks the producer until a thread frees a slot, so memory
// stays bounded and the producer is paced by the workers (backpressure).
//
// Part 2 - OnFull::reject. The same situation makes run() throw crew::QueueFull and try_run()
// return an empty optional; needs_drain() tells a producer to back off, and the on_drain callback
// tells it when to resume (Piscina's `needsDrain` / 'drain' event).

#include <atomic>
#include <chrono>
#include <cstdio>
#include <latch>
#include <optional>
#include <thread>
#include <vector>

#include <crew/crew.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const Clock::time_point kStart = Clock::now();

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - kStart).count();
}

int waiting_with_backpressure() {
  constexpr int kTasks = 20;
  constexpr std::size_t kMaxQueue = 4;
  crew::ThreadPool pool({.min_workers = 2,
                         .max_workers = 2,
                         .max_queue = kMaxQueue,
                         .on_full = crew::OnFull::wait,
                         .name = "queue"});
  std::printf("part 1: %zu threads, max_queue = %zu, on_full = wait, %d tasks of ~15 ms\n",
              pool.thread_count(), kMaxQueue, kTasks);

  std::atomic<int> running{0};
  std::atomic<int> peak_running{0};
  std::size_t peak_queued = 0;
  std::vector<crew::Future<int>> results;
  for (int id = 0; id < kTasks; ++id) {
    const auto before = Clock::now();
    results.push_back(pool.run([id, &running, &peak_running] {
      const int now_running = ++running;
      int peak = peak_running.load();
      while (now_running > peak && !peak_running.compare_exchange_weak(peak, now_running)) {
      }
      std::printf("[%4lld ms]   task %2d started  (running: %d)\n", now_ms(), id, now_running);
      std::this_thread::sleep_for(15ms);
      --running;
      std::printf("[%4lld ms]   task %2d finished\n", now_ms(), id);
      return id;
    }));
    const auto blocked =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - before).count();
    const std::size_t queued = pool.stats().queued;
    if (queued > peak_queued) peak_queued = queued;
    std::printf("[%4lld ms] submitted %2d (run() blocked %2lld ms, queued now: %zu)\n", now_ms(),
                id, static_cast<long long>(blocked), queued);
  }

  int failures = 0;
  for (int id = 0; id < kTasks; ++id) {
    if (results[id].get() != id) ++failures;
  }
  std::printf("part 1: all %d results in; peak running %d (limit 2), peak queued %zu (limit %zu)\n",
              kTasks, peak_running.load(), peak_queued, kMaxQueue);
  if (peak_running.load() > 2 || peak_queued > kMaxQueue) {
    std::printf("FAIL: a bound was exceeded\n");
    ++failures;
  }
  return failures;
}

int rejecting_when_full() {
  int failures = 0;
  constexpr std::size_t kMaxQueue = 2;
  crew::ThreadPool pool({.min_workers = 1,
                         .max_workers = 1,
                         .max_queue = kMaxQueue,
                         .on_full = crew::OnFull::reject,
                         .name = "reject"});
  std::atomic<int> drains{0};
  pool.on_drain([&drains] {
    ++drains;
    std::printf("[%4lld ms] on_drain: the queue has room again, producers may resume\n", now_ms());
  });
  std::printf("\npart 2: 1 thread, max_queue = %zu, on_full = reject\n", kMaxQueue);

  // Occupy the only thread until we say so (no sleeps: a latch holds it).
  std::latch gate_started{1};
  std::latch release_gate{1};
  crew::Future<void> gate = pool.run([&] {
    gate_started.count_down();
    release_gate.wait();
  });
  gate_started.wait();

  // Fill the queue.
  std::vector<crew::Future<int>> queued;
  for (int i = 0; i < static_cast<int>(kMaxQueue); ++i)
    queued.push_back(pool.run([i] { return i; }));
  std::printf("[%4lld ms] thread busy, %zu tasks queued, needs_drain() = %s\n", now_ms(),
              pool.stats().queued, pool.needs_drain() ? "true" : "false");
  if (!pool.needs_drain()) {
    std::printf("FAIL: a full queue should need draining\n");
    ++failures;
  }

  bool rejected = false;
  try {
    auto extra = pool.run([] { return -1; });
    extra.wait();
  } catch (const crew::QueueFull& e) {
    rejected = true;
    std::printf("[%4lld ms] run() threw crew::QueueFull: %s\n", now_ms(), e.what());
  }
  if (!rejected) {
    std::printf("FAIL: run() on a full queue should throw crew::QueueFull\n");
    ++failures;
  }

  std::optional<crew::Future<int>> attempt = pool.try_run([] { return -2; });
  std::printf("[%4lld ms] try_run() returned %s\n", now_ms(),
              attempt ? "a future (unexpected)" : "an empty optional - it never blocks or throws");
  if (attempt) ++failures;

  release_gate.count_down();
  gate.get();
  for (auto& f : queued) f.get();
  pool.wait_idle();
  // on_drain may be delivered just after the last task settles: poll for it, for at most 30 s.
  for (const auto until = Clock::now() + 30s; drains.load() == 0 && Clock::now() < until;) {
    std::this_thread::sleep_for(1ms);
  }
  std::printf("[%4lld ms] queue empty: needs_drain() = %s, on_drain fired %d time(s)\n", now_ms(),
              pool.needs_drain() ? "true" : "false", drains.load());
  if (pool.needs_drain() || drains.load() == 0) {
    std::printf("FAIL: expected needs_drain() == false and at least one on_drain call\n");
    ++failures;
  }
  return failures;
}

}  // namespace

int main() {
  const int failures = waiting_with_backpressure() + rejecting_when_full();
  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}
