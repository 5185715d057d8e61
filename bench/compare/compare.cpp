// crew_compare: runs the same workloads on crew and on the anchors (Boost.Asio thread_pool,
// oneTBB, a plain mutex + condvar pool) in one process, all with 2 worker threads, and prints the
// median of each figure, the crew/anchor ratio and whether crew meets its target.
//
// Usage: crew_compare [--quick] [--reps N] [--only LIST] [--json FILE] [--help] [--version]
// Exit status: 0 all results correct, 1 a workload computed a wrong result, 64 usage error.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <latch>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/version.hpp>
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_reduce.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#include <oneapi/tbb/version.h>
#include <time.h>

#include <crew/future.hpp>
#include <crew/parallel.hpp>
#include <crew/pool.hpp>

#include "anchors.hpp"
#include "bench_common.hpp"

namespace {

using crew_bench::check;
using crew_bench::Clock;
using crew_bench::fixed;
using crew_bench::g_results_ok;
using crew_bench::load_average;
using crew_bench::median;
using crew_bench::MutexPool;
using crew_bench::progress;
using crew_bench::seconds_since;
using crew_bench::verdict;

constexpr std::size_t kWorkers = 2;

// ---------------------------------------------------------------------------------------------
// Configuration and helpers

struct Sizes {
  std::size_t futures = 1'000'000;         // W1
  std::size_t posts = 1'000'000;           // W2
  std::size_t round_trips = 100'000;       // W3
  int fib_n = 32;                          // W4
  std::size_t reduce_elems = 100'000'000;  // W5
  std::size_t per_producer = 1'000'000;    // W6
};

struct Config {
  int reps = 5;
  bool quick = false;
  std::string json_path;
  std::set<int> only;  // empty: all workloads
  Sizes sizes;
};

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// One line of the result table. `ratio` is crew / this row for the row's metric: for rates
// (tasks/s, GB/s) above 1 means crew is faster; for times it is crew time / anchor time, so
// below 1 means crew is faster. `target` and `verdict` are empty for informational rows.
struct Row {
  std::string workload;
  std::string system;
  std::string value;  // median, with unit
  double number = 0;  // the same, as a number, for --json
  std::string unit;
  std::string ratio;
  std::string target;
  std::string verdict;
};

std::vector<Row> g_rows;

void add_row(Row r) {
  g_rows.push_back(std::move(r));
}

std::string ratio_text(double r) {
  return fixed(r, 2) + "x";
}

// Runs every system `reps` times, interleaved; returns the per-system samples.
std::vector<std::vector<double>> repeat(const std::string& name, int reps,
                                        const std::vector<std::function<double()>>& systems) {
  return crew_bench::interleave(name, reps, systems);
}

std::vector<double> medians(const std::vector<std::vector<double>>& samples) {
  std::vector<double> m;
  for (const auto& s : samples) m.push_back(median(s));
  return m;
}

// ---------------------------------------------------------------------------------------------
// TBB arenas. global_control caps the whole TBB runtime at 2 worker threads plus the calling
// thread. Arenas that the caller joins (task_group::wait, parallel_reduce) are measured in two
// shapes, and the stronger one is the anchor:
//   "2 workers + caller": task_arena(3, 1), the same 2 workers crew gets, plus the main thread
//                         helping while it waits;
//   "2 threads":          task_arena(2, 1), one worker plus the caller, i.e. 2 threads in all.
// task_arena::enqueue never uses the caller, so its arena has 2 worker slots: task_arena(2, 0).

struct TbbArenas {
  tbb::task_arena workers_plus_caller{static_cast<int>(kWorkers) + 1, 1};
  tbb::task_arena two_threads{static_cast<int>(kWorkers), 1};
  tbb::task_arena enqueue_only{static_cast<int>(kWorkers), 0};
  // W6: two producer threads each enter the arena, so it needs two caller slots.
  tbb::task_arena two_producers{static_cast<int>(kWorkers) + 2, 2};

  TbbArenas() {
    for (auto* a : {&workers_plus_caller, &two_threads, &enqueue_only, &two_producers}) {
      a->initialize();
    }
  }
};

// Counts fire-and-forget tasks for the anchors that have no "wait until idle": the task that
// brings the count to `expected` opens the latch.
struct CompletionCounter {
  explicit CompletionCounter(std::size_t n) : expected(n) {}
  void hit() {
    if (count.fetch_add(1, std::memory_order_relaxed) + 1 == expected) done.count_down();
  }
  std::size_t expected;
  std::atomic<std::size_t> count{0};
  std::latch done{1};
};

// ---------------------------------------------------------------------------------------------
// W1: 1M tiny tasks with a result each, then get() all of them.

int tiny(std::size_t i) {
  return static_cast<int>(i & 0xff);
}

std::uint64_t tiny_sum(std::size_t n) {
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<std::uint64_t>(tiny(i));
  return s;
}

double w1_crew(std::size_t n) {
  crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
  std::vector<crew::Future<int>> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) futures.push_back(pool.run([i] { return tiny(i); }));
  std::uint64_t sum = 0;
  for (auto& f : futures) sum += static_cast<std::uint64_t>(f.get());
  const double s = seconds_since(t0);
  check(sum == tiny_sum(n), "W1 crew: sum of results");
  return s;
}

double w1_asio(std::size_t n) {
  boost::asio::thread_pool pool(kWorkers);
  std::vector<std::future<int>> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    std::packaged_task<int()> task([i] { return tiny(i); });
    futures.push_back(task.get_future());
    boost::asio::post(pool, std::move(task));
  }
  std::uint64_t sum = 0;
  for (auto& f : futures) sum += static_cast<std::uint64_t>(f.get());
  const double s = seconds_since(t0);
  pool.join();
  check(sum == tiny_sum(n), "W1 asio: sum of results");
  return s;
}

double w1_mutex(std::size_t n) {
  MutexPool pool(kWorkers);
  std::vector<std::future<int>> futures;
  futures.reserve(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) futures.push_back(pool.submit([i] { return tiny(i); }));
  std::uint64_t sum = 0;
  for (auto& f : futures) sum += static_cast<std::uint64_t>(f.get());
  const double s = seconds_since(t0);
  check(sum == tiny_sum(n), "W1 mutex pool: sum of results");
  return s;
}

double tbb_enqueue_counter(tbb::task_arena& arena, std::size_t n, const char* what) {
  CompletionCounter counter(n);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) arena.enqueue([&counter] { counter.hit(); });
  counter.done.wait();
  const double s = seconds_since(t0);
  check(counter.count.load() == n, what);
  return s;
}

double tbb_task_group_counter(tbb::task_arena& arena, std::size_t n, const char* what) {
  std::atomic<std::size_t> count{0};
  double s = 0;
  arena.execute([&] {
    tbb::task_group group;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < n; ++i) {
      group.run([&count] { count.fetch_add(1, std::memory_order_relaxed); });
    }
    group.wait();
    s = seconds_since(t0);
  });
  check(count.load() == n, what);
  return s;
}

void workload_futures(const Config& cfg, TbbArenas& tbb_arenas) {
  const std::size_t n = cfg.sizes.futures;
  const auto m = medians(repeat(
      "W1", cfg.reps,
      {[&] { return w1_crew(n); }, [&] { return w1_asio(n); },
       [&] { return tbb_enqueue_counter(tbb_arenas.enqueue_only, n, "W1 tbb enqueue: counter"); },
       [&] {
         return tbb_task_group_counter(tbb_arenas.workers_plus_caller, n,
                                       "W1 tbb task_group: counter");
       },
       [&] { return w1_mutex(n); }}));
  const auto rate = [&](double s) { return static_cast<double>(n) / s / 1e6; };
  const std::string w = "1 futures, " + std::to_string(n / 1000) + "k tasks";
  const double crew = rate(m[0]);
  add_row(
      {w, "crew run()+Future::get", fixed(crew, 2) + " M tasks/s", crew, "M tasks/s", "", "", ""});
  const double asio = rate(m[1]);
  const double tbb_enq = rate(m[2]);
  add_row({w, "asio thread_pool+packaged_task", fixed(asio, 2) + " M tasks/s", asio, "M tasks/s",
           ratio_text(crew / asio), ">= 2.00x", verdict(crew >= 2.0 * asio)});
  add_row({w, "tbb arena.enqueue+atomic (no result)", fixed(tbb_enq, 2) + " M tasks/s", tbb_enq,
           "M tasks/s", ratio_text(crew / tbb_enq), ">= 1.10x", verdict(crew >= 1.1 * tbb_enq)});
  const double tbb_tg = rate(m[3]);
  add_row({w, "tbb task_group 2w+caller (no result)", fixed(tbb_tg, 2) + " M tasks/s", tbb_tg,
           "M tasks/s", ratio_text(crew / tbb_tg), "info", ""});
  const double mutex = rate(m[4]);
  add_row({w, "mutex pool+packaged_task", fixed(mutex, 2) + " M tasks/s", mutex, "M tasks/s",
           ratio_text(crew / mutex), "info", ""});
}

// ---------------------------------------------------------------------------------------------
// W2: 1M fire-and-forget tasks, then wait until idle.

double w2_crew(std::size_t n) {
  crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
  std::atomic<std::size_t> count{0};
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    pool.post([&count] { count.fetch_add(1, std::memory_order_relaxed); });
  }
  pool.wait_idle();
  const double s = seconds_since(t0);
  check(count.load() == n, "W2 crew: counter");
  return s;
}

double w2_mutex(std::size_t n) {
  MutexPool pool(kWorkers);
  std::atomic<std::size_t> count{0};
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    pool.post([&count] { count.fetch_add(1, std::memory_order_relaxed); });
  }
  pool.wait_idle();
  const double s = seconds_since(t0);
  check(count.load() == n, "W2 mutex pool: counter");
  return s;
}

void workload_post(const Config& cfg, TbbArenas& tbb_arenas) {
  const std::size_t n = cfg.sizes.posts;
  const auto m =
      medians(repeat("W2", cfg.reps,
                     {[&] { return w2_crew(n); },
                      [&] {
                        return tbb_task_group_counter(tbb_arenas.workers_plus_caller, n,
                                                      "W2 tbb task_group 2w+caller: counter");
                      },
                      [&] {
                        return tbb_task_group_counter(tbb_arenas.two_threads, n,
                                                      "W2 tbb task_group 2 threads: counter");
                      },
                      [&] { return w2_mutex(n); }}));
  const auto rate = [&](double s) { return static_cast<double>(n) / s / 1e6; };
  const std::string w = "2 post+wait_idle, " + std::to_string(n / 1000) + "k";
  const double crew = rate(m[0]);
  const double tbb_a = rate(m[1]);
  const double tbb_b = rate(m[2]);
  const double tbb_best = std::max(tbb_a, tbb_b);
  const double mutex = rate(m[3]);
  add_row({w, "crew post+wait_idle", fixed(crew, 2) + " M tasks/s", crew, "M tasks/s", "", "", ""});
  add_row({w, "tbb task_group 2w+caller", fixed(tbb_a, 2) + " M tasks/s", tbb_a, "M tasks/s",
           ratio_text(crew / tbb_a), tbb_a >= tbb_b ? ">= 1.50x (stronger tbb)" : "info",
           tbb_a >= tbb_b ? verdict(crew >= 1.5 * tbb_best) : ""});
  add_row({w, "tbb task_group 2 threads", fixed(tbb_b, 2) + " M tasks/s", tbb_b, "M tasks/s",
           ratio_text(crew / tbb_b), tbb_b > tbb_a ? ">= 1.50x (stronger tbb)" : "info",
           tbb_b > tbb_a ? verdict(crew >= 1.5 * tbb_best) : ""});
  add_row({w, "mutex+deque<function> pool", fixed(mutex, 2) + " M tasks/s", mutex, "M tasks/s",
           ratio_text(crew / mutex), "> 1.00x", verdict(crew > mutex)});
}

// ---------------------------------------------------------------------------------------------
// W3: round-trip latency of one no-op task, and the idle CPU cost after a burst.

struct Percentiles {
  double p50_us = 0;
  double p99_us = 0;
};

template <class SubmitAndWait>
Percentiles round_trips(std::size_t n, SubmitAndWait&& submit_and_wait) {
  std::vector<double> ns(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    submit_and_wait();
    ns[i] = static_cast<double>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
  }
  std::sort(ns.begin(), ns.end());
  return {ns[n / 2] / 1e3, ns[std::min(n - 1, n * 99 / 100)] / 1e3};
}

struct IdleCost {
  double first_100ms = 0;  // ms of CPU in the first 100 ms after the burst
  double per_second = 0;   // ms of CPU over the whole second
};

// Runs a burst on the pool, then sleeps 1 s and reads the CPU time the process used meanwhile.
// The main thread sleeps, so the CPU time is the pool's workers (spinning or not).
template <class Burst>
IdleCost idle_cost(Burst&& burst) {
  burst();
  const double c0 = process_cpu_seconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const double c1 = process_cpu_seconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  const double c2 = process_cpu_seconds();
  return {(c1 - c0) * 1e3, (c2 - c0) * 1e3};
}

void workload_round_trip(const Config& cfg) {
  const std::size_t n = cfg.sizes.round_trips;
  std::vector<std::vector<Percentiles>> samples(3);
  for (int r = 0; r < cfg.reps; ++r) {
    progress("W3: rep " + std::to_string(r + 1) + "/" + std::to_string(cfg.reps));
    {
      crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
      samples[0].push_back(round_trips(n, [&] { pool.run([] {}).get(); }));
    }
    {
      boost::asio::thread_pool pool(kWorkers);
      samples[1].push_back(round_trips(n, [&] {
        std::packaged_task<void()> task([] {});
        auto f = task.get_future();
        boost::asio::post(pool, std::move(task));
        f.get();
      }));
      pool.join();
    }
    {
      MutexPool pool(kWorkers);
      samples[2].push_back(round_trips(n, [&] { pool.submit([] {}).get(); }));
    }
  }
  progress("");
  std::vector<Percentiles> med;
  for (const auto& s : samples) {
    std::vector<double> p50, p99;
    for (const auto& p : s) {
      p50.push_back(p.p50_us);
      p99.push_back(p.p99_us);
    }
    med.push_back({median(p50), median(p99)});
  }
  const std::string w = "3 round trip, " + std::to_string(n / 1000) + "k";
  auto text = [](const Percentiles& p) {
    return "p50 " + fixed(p.p50_us, 2) + " / p99 " + fixed(p.p99_us, 2) + " us";
  };
  add_row({w, "crew run().get()", text(med[0]), med[0].p50_us, "us p50", "", "p50 <= 2 us",
           verdict(med[0].p50_us <= 2.0)});
  add_row({w, "asio+packaged_task", text(med[1]), med[1].p50_us, "us p50",
           ratio_text(med[0].p50_us / med[1].p50_us) + " (p50)", "info", ""});
  add_row({w, "mutex pool+std::future", text(med[2]), med[2].p50_us, "us p50",
           ratio_text(med[0].p50_us / med[2].p50_us) + " (p50)", "info", ""});

  // Idle CPU, measured once per system (each costs a second of wall time).
  const std::size_t burst_n = 100'000;
  progress("W3: idle CPU");
  std::atomic<std::size_t> count{0};
  // A fresh closure per post(): crew's post() currently rejects lvalue callables (PostTask
  // takes Fn&&), so passing one named lambda by reference would not compile.
  auto bump = [&count] { return [&count] { count.fetch_add(1, std::memory_order_relaxed); }; };
  IdleCost crew_idle, asio_idle, mutex_idle;
  {
    crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
    crew_idle = idle_cost([&] {
      for (std::size_t i = 0; i < burst_n; ++i) pool.post(bump());
      pool.wait_idle();
    });
  }
  {
    boost::asio::thread_pool pool(kWorkers);
    asio_idle = idle_cost([&] {
      CompletionCounter done(burst_n);
      for (std::size_t i = 0; i < burst_n; ++i) boost::asio::post(pool, [&done] { done.hit(); });
      done.done.wait();
    });
    pool.join();
  }
  {
    MutexPool pool(kWorkers);
    mutex_idle = idle_cost([&] {
      for (std::size_t i = 0; i < burst_n; ++i) pool.post(bump());
      pool.wait_idle();
    });
  }
  progress("");
  check(count.load() == 2 * burst_n, "W3 idle burst: counter");
  const std::string wi = "3 idle CPU after burst";
  auto idle_text = [](const IdleCost& c) {
    return fixed(c.per_second, 1) + " ms/s (first 100 ms: " + fixed(c.first_100ms, 1) + ")";
  };
  add_row({wi, "crew", idle_text(crew_idle), crew_idle.per_second, "ms CPU per s idle", "",
           "report", ""});
  add_row({wi, "asio thread_pool", idle_text(asio_idle), asio_idle.per_second, "ms CPU per s idle",
           "", "info", ""});
  add_row({wi, "mutex pool", idle_text(mutex_idle), mutex_idle.per_second, "ms CPU per s idle", "",
           "info", ""});
}

// ---------------------------------------------------------------------------------------------
// W4: recursive fib with tasks above the cutoff, serial recursion below it.

constexpr int kFibCutoff = 20;

int fib_serial(int n) {
  return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2);
}

int fib_crew(crew::ThreadPool& pool, int n) {
  if (n <= kFibCutoff) return fib_serial(n);
  auto left = pool.run([&pool, n] { return fib_crew(pool, n - 1); });
  const int right = fib_crew(pool, n - 2);
  return left.get() + right;
}

int fib_tbb(int n) {
  if (n <= kFibCutoff) return fib_serial(n);
  int left = 0;
  tbb::task_group group;
  group.run([&left, n] { left = fib_tbb(n - 1); });
  const int right = fib_tbb(n - 2);
  group.wait();
  return left + right;
}

double w4_crew(int n, int expected) {
  crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
  const auto t0 = Clock::now();
  auto top = pool.run([&pool, n] { return fib_crew(pool, n); });
  if (!top.wait_for(std::chrono::seconds(60))) {
    std::cerr << "\nW4 crew: fib(" << n << ") did not finish within 60 s; nested get() on a "
              << "worker thread probably does not help with queued work (deadlock).\n";
    std::_Exit(1);
  }
  const int result = top.get();
  const double s = seconds_since(t0);
  check(result == expected, "W4 crew: fib result " + std::to_string(result));
  return s;
}

double w4_tbb(tbb::task_arena& arena, int n, int expected) {
  int result = 0;
  double s = 0;
  arena.execute([&] {
    const auto t0 = Clock::now();
    result = fib_tbb(n);
    s = seconds_since(t0);
  });
  check(result == expected, "W4 tbb: fib result " + std::to_string(result));
  return s;
}

double w4_serial(int n, int expected) {
  const auto t0 = Clock::now();
  const int result = fib_serial(n);
  const double s = seconds_since(t0);
  check(result == expected, "W4 serial: fib result");
  return s;
}

void workload_fib(const Config& cfg, TbbArenas& tbb_arenas) {
  const int n = cfg.sizes.fib_n;
  int expected = 0;
  {
    int a = 0, b = 1;  // iterative fib, independent of the code under test
    for (int i = 0; i < n; ++i) {
      const int c = a + b;
      a = b;
      b = c;
    }
    expected = a;
  }
  if (n == 32) check(expected == 2178309, "W4: reference fib(32)");
  const auto m =
      medians(repeat("W4", cfg.reps,
                     {[&] { return w4_crew(n, expected); },
                      [&] { return w4_tbb(tbb_arenas.workers_plus_caller, n, expected); },
                      [&] { return w4_tbb(tbb_arenas.two_threads, n, expected); },
                      [&] { return w4_serial(n, expected); }}));
  const std::string w = "4 fib(" + std::to_string(n) + ") cutoff " + std::to_string(kFibCutoff);
  const double crew = m[0] * 1e3, tbb_a = m[1] * 1e3, tbb_b = m[2] * 1e3, serial = m[3] * 1e3;
  const double tbb_best = std::min(tbb_a, tbb_b);
  add_row({w, "crew nested run+get", fixed(crew, 2) + " ms", crew, "ms", "", "", ""});
  add_row({w, "tbb task_group 2w+caller", fixed(tbb_a, 2) + " ms", tbb_a, "ms",
           ratio_text(crew / tbb_a) + " (time)",
           tbb_a <= tbb_b ? "time <= 1.00x (stronger tbb)" : "info",
           tbb_a <= tbb_b ? verdict(crew <= tbb_best) : ""});
  add_row({w, "tbb task_group 2 threads", fixed(tbb_b, 2) + " ms", tbb_b, "ms",
           ratio_text(crew / tbb_b) + " (time)",
           tbb_b < tbb_a ? "time <= 1.00x (stronger tbb)" : "info",
           tbb_b < tbb_a ? verdict(crew <= tbb_best) : ""});
  add_row({w, "serial, 1 thread", fixed(serial, 2) + " ms", serial, "ms",
           ratio_text(crew / serial) + " (time)", "info", ""});
}

// ---------------------------------------------------------------------------------------------
// W5: parallel_reduce sum of uint32 into uint64.

std::uint64_t sum_range(const std::uint32_t* data, std::size_t b, std::size_t e) {
  std::uint64_t s = 0;
  for (std::size_t i = b; i < e; ++i) s += data[i];
  return s;
}

void workload_reduce(const Config& cfg, TbbArenas& tbb_arenas) {
  const std::size_t n = cfg.sizes.reduce_elems;
  progress("W5: filling " + std::to_string(n) + " elements");
  std::vector<std::uint32_t> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<std::uint32_t>(i) * 2654435761u;
  const std::uint32_t* p = data.data();
  std::uint64_t expected = 0;
  for (std::size_t i = 0; i < n; ++i) expected += data[i];  // plain loop as the reference

  crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
  auto crew_run = [&] {
    const auto t0 = Clock::now();
    const std::uint64_t sum = crew::parallel_reduce(
        pool, std::size_t{0}, n, std::uint64_t{0},
        [p](std::size_t b, std::size_t e) { return sum_range(p, b, e); },
        [](std::uint64_t a, std::uint64_t b) { return a + b; });
    const double s = seconds_since(t0);
    check(sum == expected, "W5 crew: sum");
    return s;
  };
  auto tbb_run = [&](tbb::task_arena& arena, const char* what) {
    std::uint64_t sum = 0;
    double s = 0;
    arena.execute([&] {
      const auto t0 = Clock::now();
      sum = tbb::parallel_reduce(
          tbb::blocked_range<std::size_t>(0, n), std::uint64_t{0},
          [p](const tbb::blocked_range<std::size_t>& r, std::uint64_t acc) {
            return acc + sum_range(p, r.begin(), r.end());
          },
          [](std::uint64_t a, std::uint64_t b) { return a + b; });
      s = seconds_since(t0);
    });
    check(sum == expected, what);
    return s;
  };
  auto serial_run = [&] {
    const auto t0 = Clock::now();
    const std::uint64_t sum = sum_range(p, 0, n);
    const double s = seconds_since(t0);
    check(sum == expected, "W5 serial: sum");
    return s;
  };
  const auto m = medians(
      repeat("W5", cfg.reps,
             {crew_run, [&] { return tbb_run(tbb_arenas.workers_plus_caller, "W5 tbb 2w+caller"); },
              [&] { return tbb_run(tbb_arenas.two_threads, "W5 tbb 2 threads"); }, serial_run}));
  const auto gbps = [&](double s) {
    return static_cast<double>(n * sizeof(std::uint32_t)) / s / 1e9;
  };
  const std::string w = "5 reduce " + std::to_string(n / 1'000'000) + "M u32";
  const double crew = gbps(m[0]), tbb_a = gbps(m[1]), tbb_b = gbps(m[2]), serial = gbps(m[3]);
  const double tbb_best = std::max(tbb_a, tbb_b);
  add_row({w, "crew::parallel_reduce", fixed(crew, 2) + " GB/s", crew, "GB/s", "", "", ""});
  add_row({w, "tbb::parallel_reduce 2w+caller", fixed(tbb_a, 2) + " GB/s", tbb_a, "GB/s",
           ratio_text(crew / tbb_a), tbb_a >= tbb_b ? ">= 0.95x (stronger tbb)" : "info",
           tbb_a >= tbb_b ? verdict(crew >= 0.95 * tbb_best) : ""});
  add_row({w, "tbb::parallel_reduce 2 threads", fixed(tbb_b, 2) + " GB/s", tbb_b, "GB/s",
           ratio_text(crew / tbb_b), tbb_b > tbb_a ? ">= 0.95x (stronger tbb)" : "info",
           tbb_b > tbb_a ? verdict(crew >= 0.95 * tbb_best) : ""});
  add_row({w, "serial loop, 1 thread", fixed(serial, 2) + " GB/s", serial, "GB/s",
           ratio_text(crew / serial), "info", ""});
}

// ---------------------------------------------------------------------------------------------
// W6: two producer threads posting fire-and-forget tasks.

template <class Produce>
void two_producers(Produce&& produce) {
  std::jthread a([&] { produce(); });
  std::jthread b([&] { produce(); });
}

// Any pool with post() and wait_idle(): crew and the mutex-pool anchor run the same code.
template <class Pool>
double w6_post(Pool& pool, std::size_t per_producer, const char* what) {
  std::atomic<std::size_t> count{0};
  const auto t0 = Clock::now();
  two_producers([&] {
    for (std::size_t i = 0; i < per_producer; ++i) {
      pool.post([&count] { count.fetch_add(1, std::memory_order_relaxed); });
    }
  });
  pool.wait_idle();
  const double s = seconds_since(t0);
  check(count.load() == 2 * per_producer, std::string("W6 ") + what + ": counter");
  return s;
}

double w6_crew(std::size_t per_producer) {
  crew::ThreadPool pool(crew::PoolOptions{.min_workers = kWorkers, .max_workers = kWorkers});
  return w6_post(pool, per_producer, "crew");
}

double w6_tbb_enqueue(tbb::task_arena& arena, std::size_t per_producer) {
  CompletionCounter counter(2 * per_producer);
  const auto t0 = Clock::now();
  two_producers([&] {
    for (std::size_t i = 0; i < per_producer; ++i) arena.enqueue([&counter] { counter.hit(); });
  });
  counter.done.wait();
  const double s = seconds_since(t0);
  check(counter.count.load() == 2 * per_producer, "W6 tbb enqueue: counter");
  return s;
}

// Each producer runs its tasks in its own task_group and waits for it (helping while it waits);
// the workload is done when both producers return.
double w6_tbb_task_group(tbb::task_arena& arena, std::size_t per_producer) {
  std::atomic<std::size_t> count{0};
  const auto t0 = Clock::now();
  two_producers([&] {
    arena.execute([&] {
      tbb::task_group group;
      for (std::size_t i = 0; i < per_producer; ++i) {
        group.run([&count] { count.fetch_add(1, std::memory_order_relaxed); });
      }
      group.wait();
    });
  });
  const double s = seconds_since(t0);
  check(count.load() == 2 * per_producer, "W6 tbb task_group: counter");
  return s;
}

double w6_mutex(std::size_t per_producer) {
  MutexPool pool(kWorkers);
  return w6_post(pool, per_producer, "mutex pool");
}

void workload_producers(const Config& cfg, TbbArenas& tbb_arenas) {
  const std::size_t k = cfg.sizes.per_producer;
  const auto m = medians(repeat(
      "W6", cfg.reps,
      {[&] { return w6_crew(k); }, [&] { return w6_tbb_enqueue(tbb_arenas.enqueue_only, k); },
       [&] { return w6_tbb_task_group(tbb_arenas.two_producers, k); },
       [&] { return w6_mutex(k); }}));
  const auto rate = [&](double s) { return static_cast<double>(2 * k) / s / 1e6; };
  const std::string w = "6 2 producers x " + std::to_string(k / 1000) + "k";
  const double crew = rate(m[0]), enq = rate(m[1]), tg = rate(m[2]), mutex = rate(m[3]);
  const double best = std::max(enq, tg);
  add_row({w, "crew post+wait_idle", fixed(crew, 2) + " M tasks/s", crew, "M tasks/s", "", "", ""});
  add_row({w, "tbb arena.enqueue+atomic", fixed(enq, 2) + " M tasks/s", enq, "M tasks/s",
           ratio_text(crew / enq), enq >= tg ? ">= 1.00x (stronger tbb)" : "info",
           enq >= tg ? verdict(crew >= best) : ""});
  add_row({w, "tbb task_group per producer", fixed(tg, 2) + " M tasks/s", tg, "M tasks/s",
           ratio_text(crew / tg), tg > enq ? ">= 1.00x (stronger tbb)" : "info",
           tg > enq ? verdict(crew >= best) : ""});
  add_row({w, "mutex+deque<function> pool", fixed(mutex, 2) + " M tasks/s", mutex, "M tasks/s",
           ratio_text(crew / mutex), "info", ""});
}

// ---------------------------------------------------------------------------------------------
// Output

void print_header(const Config& cfg) {
  std::cout << "crew_compare: crew vs Boost.Asio " << BOOST_VERSION / 100000 << '.'
            << BOOST_VERSION / 100 % 1000 << ", oneTBB " << TBB_VERSION_MAJOR << '.'
            << TBB_VERSION_MINOR << ", mutex+condvar pool\n";
  crew_bench::print_machine(/*show_online_cpus=*/true);
  std::cout << "setup: " << kWorkers << " worker threads per system; " << cfg.reps
            << " reps per figure, median shown" << (cfg.quick ? " (--quick sizes)" : "") << '\n';
  crew_bench::print_build_warning();
  std::cout << "ratio: crew/anchor of the figure shown (rates: > 1 crew faster; "
               "'(time)' and latency: < 1 crew faster)\n\n";
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out;
}

bool write_json(const std::string& path, const Config& cfg) {
  std::ofstream out(path);
  if (!out) return false;
  out << "{\n  \"workers\": " << kWorkers << ",\n  \"reps\": " << cfg.reps
      << ",\n  \"quick\": " << (cfg.quick ? "true" : "false")
      << ",\n  \"load_average\": " << load_average() << ",\n  \"cpu\": \""
      << json_escape(crew_bench::cpu_model())
      << "\",\n  \"results_ok\": " << (g_results_ok ? "true" : "false") << ",\n  \"rows\": [\n";
  for (std::size_t i = 0; i < g_rows.size(); ++i) {
    const auto& r = g_rows[i];
    out << "    {\"workload\": \"" << json_escape(r.workload) << "\", \"system\": \""
        << json_escape(r.system) << "\", \"median\": " << r.number << ", \"unit\": \""
        << json_escape(r.unit) << "\", \"ratio\": \"" << json_escape(r.ratio)
        << "\", \"target\": \"" << json_escape(r.target) << "\", \"result\": \""
        << json_escape(r.verdict) << "\"}" << (i + 1 < g_rows.size() ? "," : "") << '\n';
  }
  out << "  ]\n}\n";
  return static_cast<bool>(out);
}

void print_help() {
  std::cout <<
      R"(Usage: crew_compare [options]

Runs the same workloads on crew and on anchor implementations (Boost.Asio thread_pool,
oneTBB, a mutex+condvar pool), 2 worker threads each, and prints median figures and
crew/anchor ratios against the project's targets.

Workloads:
  1  1M tiny tasks with a Future each (run + get)
  2  1M fire-and-forget tasks (post + wait_idle)
  3  round-trip latency of one no-op task (p50/p99), idle CPU after a burst
  4  recursive fib(32), tasks above n = 20
  5  parallel_reduce over 1e8 uint32
  6  two producer threads posting 1M tasks each

Options:
  --quick        3 reps and smaller sizes (whole run well under a minute)
  --reps N       repetitions per figure (default 5; 3 with --quick)
  --only LIST    run only these workloads, e.g. --only 1,3
  --json FILE    also write the table as JSON to FILE
  --help         show this help
  --version      show the version

Exit status: 0 all results correct, 1 a workload computed a wrong result, 64 usage error.
)";
}

// Returns the exit status to use when parsing ends the program (help, version, usage error).
std::optional<int> parse_args(int argc, char** argv, Config& cfg) {
  const crew_bench::Program program{.name = "crew_compare",
                                    .version = "0.1",
                                    .workloads = 6,
                                    .only_example = "1,3",
                                    .print_help = print_help};
  crew_bench::CommonOptions options;
  const auto status = crew_bench::parse_options(
      program, argc, argv, options, [&](std::string_view arg, const crew_bench::NextValue& value) {
        if (arg != "--json") return crew_bench::OptionResult::unknown;
        const auto v = value();
        if (!v || v->empty()) {
          std::cerr << "crew_compare: --json needs a file name\n";
          return crew_bench::OptionResult::usage_error;
        }
        cfg.json_path = std::string(*v);
        return crew_bench::OptionResult::handled;
      });
  if (status) return status;
  cfg.quick = options.quick;
  cfg.only = options.only;
  if (cfg.quick) {
    cfg.reps = 3;
    cfg.sizes.futures = 500'000;
    cfg.sizes.posts = 500'000;
    cfg.sizes.round_trips = 20'000;
    cfg.sizes.reduce_elems = 100'000'000;
    cfg.sizes.per_producer = 500'000;
  }
  if (options.reps) cfg.reps = *options.reps;
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  if (const auto status = parse_args(argc, argv, cfg)) return *status;
  crew_bench::enable_progress_on_tty();

  // Two TBB workers in the whole process, plus the thread that calls into TBB.
  tbb::global_control tbb_limit(tbb::global_control::max_allowed_parallelism, kWorkers + 1);
  TbbArenas tbb_arenas;

  print_header(cfg);
  const auto t0 = Clock::now();
  auto selected = [&](int w) { return cfg.only.empty() || cfg.only.count(w) != 0; };
  if (selected(1)) workload_futures(cfg, tbb_arenas);
  if (selected(2)) workload_post(cfg, tbb_arenas);
  if (selected(3)) workload_round_trip(cfg);
  if (selected(4)) workload_fib(cfg, tbb_arenas);
  if (selected(5)) workload_reduce(cfg, tbb_arenas);
  if (selected(6)) workload_producers(cfg, tbb_arenas);

  crew_bench::print_table(g_rows);
  crew_bench::print_summary(t0);
  if (!cfg.json_path.empty() && !write_json(cfg.json_path, cfg)) {
    std::cerr << "crew_compare: cannot write " << cfg.json_path << '\n';
    return 1;
  }
  return g_results_ok ? 0 : 1;
}
