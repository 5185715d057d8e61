// What a ProcessPool tells a monitor about each worker (ProcessWorkerStats: last_exit, log_tail,
// cpu_time, pss_bytes) and ProcessPool::restart_worker(), on real worker processes. This
// executable is also its own worker program: main() serves the tasks below when a pool started it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <crew/memory.hpp>
#include <crew/process.hpp>

#include "process/observe.hpp"

namespace {

using namespace std::chrono_literals;
using ::testing::Contains;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using crew_test::eventually;

constexpr std::size_t kMiB = std::size_t{1} << 20;

std::int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("pid", [] { return static_cast<int>(::getpid()); });
    t.add("exit3", [] { std::exit(3); });
    t.add("spin", [] {
      volatile unsigned long n = 0;
      for (;;) n = n + 1;
    });
    // Writes "line 0" ... "line n-1" to stderr, then "out:done" to stdout.
    t.add("say_lines", [](int n) {
      for (int i = 0; i < n; ++i) std::fprintf(stderr, "line %d\n", i);
      std::printf("out:done\n");
      std::fflush(stdout);
      return n;
    });
    // Uses `ms` milliseconds of CPU time.
    t.add("burn", [](int ms) {
      timespec ts{};
      auto used = [&] {
        ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
      };
      const auto until = used() + std::chrono::milliseconds(ms);
      volatile unsigned long n = 0;
      while (used() < until) n = n + 1;
      return ms;
    });
    // Waits until the caller sets the first word of `gate`, then returns it (bounded, so that a
    // failing test leaves no worker behind for long).
    t.add("wait_gate", [](crew::SharedBuffer gate) {
      std::atomic_ref<std::uint32_t> word(*reinterpret_cast<std::uint32_t*>(gate.data()));
      const auto guard = Clock::now() + 120s;
      while (word.load() == 0 && Clock::now() < guard) std::this_thread::sleep_for(1ms);
      return static_cast<int>(word.load());
    });
    // Touches memory a MiB at a time until it crosses `cap` bytes, writing the wall-clock time
    // (ns) into `stamp` before each MiB, so the cap is crossed after the last stamp: when
    // its resident memory goes above the cap (the pool's watchdog then kills it; it waits for
    // that), or when an allocation fails (the pool's address-space limit stops allocations first).
    t.add("overflow", [](crew::SharedBuffer stamp, std::size_t cap) {
      std::atomic_ref<std::int64_t> when(*reinterpret_cast<std::int64_t*>(stamp.data()));
      std::vector<std::unique_ptr<char[]>> blocks;
      try {
        while (blocks.size() * kMiB < 4 * cap) {
          when.store(wall_ns());
          blocks.push_back(std::make_unique<char[]>(kMiB));
          std::memset(blocks.back().get(), 1, kMiB);
          if (crew::resident_memory_bytes() > cap) {
            const auto guard = Clock::now() + 60s;
            while (Clock::now() < guard) std::this_thread::sleep_for(1ms);
            return -1;  // not killed
          }
        }
      } catch (const std::bad_alloc&) {
        when.store(wall_ns());
        throw;
      }
      return -2;  // never crossed the cap
    });
    return t;
  }();
  return tasks;
}

crew::ProcessPoolOptions one_worker() {
  crew::ProcessPoolOptions o;
  o.tasks = &test_tasks();
  o.min_workers = 1;
  o.max_workers = 1;
  o.env = crew_test::worker_env();
  o.log = [](const crew::ProcessLogLine&) {};
  return o;
}

// The pool's only row, once `pred` holds for it.
template <class P>
std::optional<crew::ProcessWorkerStats> row_when(const crew::ProcessPool& pool, P pred) {
  std::optional<crew::ProcessWorkerStats> row;
  const bool ok = eventually([&] {
    auto s = pool.stats();
    if (s.per_worker.size() != 1 || !pred(s.per_worker.front())) return false;
    row = std::move(s.per_worker.front());
    return true;
  });
  return ok ? row : std::nullopt;
}

// The row of the process that replaced `pid`, with its slot's last exit.
std::optional<crew::ProcessWorkerStats> replacement_of(const crew::ProcessPool& pool, int pid) {
  return row_when(pool, [&](const crew::ProcessWorkerStats& w) {
    return w.pid != pid && w.pid > 0 && w.last_exit.has_value();
  });
}

TEST(ProcessPoolMonitor, AKilledWorkersSlotKeepsItsExitAndLastWords) {
  crew::ProcessPool pool(one_worker());
  const int pid = pool.run<int>("pid").get();
  EXPECT_FALSE(pool.stats().per_worker.at(0).last_exit.has_value());
  EXPECT_EQ(pool.run<int>("say_lines", 25).get(), 25);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  const auto w = replacement_of(pool, pid);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->name, "crew-proc-0");
  EXPECT_EQ(w->restarts, 1U);
  EXPECT_EQ(w->last_exit->signal, SIGKILL);
  EXPECT_EQ(w->last_exit->code, -1);
  EXPECT_EQ(w->last_exit->reason, crew::ProcessExitReason::signal);
  EXPECT_STREQ(crew::to_string(w->last_exit->reason), "signal");
  EXPECT_LE(w->last_exit->when, std::chrono::system_clock::now());
  // The newest 20 of the 26 lines, both streams (in the order the pool read the two pipes),
  // kept across the replacement.
  EXPECT_EQ(w->log_tail.size(), 20U);
  EXPECT_THAT(w->log_tail, Contains("line 24"));
  EXPECT_THAT(w->log_tail, Contains("out:done"));
  EXPECT_THAT(w->log_tail, Not(Contains("line 4")));
}

TEST(ProcessPoolMonitor, AnExitCodeIsRecorded) {
  crew::ProcessPool pool(one_worker());
  const int pid = pool.run<int>("pid").get();
  EXPECT_THROW(pool.run<void>("exit3").get(), crew::WorkerCrashed);
  const auto w = replacement_of(pool, pid);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->last_exit->code, 3);
  EXPECT_EQ(w->last_exit->signal, 0);
  EXPECT_EQ(w->last_exit->reason, crew::ProcessExitReason::exit);
}

TEST(ProcessPoolMonitor, ATimedOutWorkerIsRecordedAsTimeout) {
  auto o = one_worker();
  o.terminate_grace = 200ms;
  crew::ProcessPool pool(o);
  const int pid = pool.run<int>("pid").get();
  EXPECT_THROW(pool.run<void>(crew::RunOptions{.timeout = 50ms}, "spin").get(), crew::TimedOut);
  const auto w = replacement_of(pool, pid);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->name, "crew-proc-0");  // the replacement took the slot while the old one stopped
  EXPECT_EQ(w->last_exit->reason, crew::ProcessExitReason::timeout);
  EXPECT_THAT(w->last_exit->signal, ::testing::AnyOf(SIGTERM, SIGKILL));
  EXPECT_EQ(w->last_exit->code, -1);
}

TEST(ProcessPoolMonitor, StatsReadCpuTimeAndPss) {
  crew::ProcessPool pool(one_worker());
  EXPECT_EQ(pool.run<int>("burn", 100).get(), 100);
  const auto s = pool.stats();
  ASSERT_EQ(s.per_worker.size(), 1U);
  // 100 ms used; the kernel's accounting is exact to a tick (10 ms at most).
  EXPECT_GE(s.per_worker[0].cpu_time, 50ms);
  EXPECT_LT(s.per_worker[0].cpu_time, 60s);
  EXPECT_GT(s.per_worker[0].pss_bytes, 0U);
  EXPECT_GT(s.per_worker[0].rss_bytes, 0U);
}

TEST(ProcessPoolMonitor, RestartingAnIdleWorkerReplacesItEvenWithNothingQueued) {
  auto o = one_worker();
  o.min_workers = 0;  // no demand: the replacement comes from the restart alone
  crew::ProcessPool pool(o);
  const int pid = pool.run<int>("pid").get();
  ASSERT_TRUE(row_when(pool, [](const auto& w) { return w.state == "idle"; }));
  const auto restarts = pool.stats().restarts;
  EXPECT_TRUE(pool.restart_worker("crew-proc-0"));
  const auto w = row_when(pool, [&](const crew::ProcessWorkerStats& r) {
    return r.pid != pid && r.state == "idle" && r.last_exit.has_value();
  });
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->name, "crew-proc-0");
  EXPECT_EQ(w->restarts, 1U);
  EXPECT_EQ(w->last_exit->reason, crew::ProcessExitReason::stop);
  EXPECT_EQ(w->last_exit->code, 0);  // it exited cleanly when asked
  EXPECT_EQ(pool.stats().restarts, restarts + 1);
  EXPECT_NE(pool.run<int>("pid").get(), pid);
}

TEST(ProcessPoolMonitor, RestartingABusyWorkerLetsItsTaskFinishFirst) {
  crew::ProcessPool pool(one_worker());
  const int pid = pool.run<int>("pid").get();
  auto gate = crew::SharedBuffer::create(4096, {.across_processes = true});
  auto running = pool.run<int>("wait_gate", gate);
  ASSERT_TRUE(row_when(pool, [](const auto& w) { return w.state == "busy"; }));
  EXPECT_TRUE(pool.restart_worker("crew-proc-0"));
  EXPECT_TRUE(pool.restart_worker("crew-proc-0"));  // asked twice: still one replacement
  auto next = pool.run<int>("pid");  // waits for the replacement: the old worker takes no more
  auto s = pool.stats();
  ASSERT_EQ(s.per_worker.size(), 1U);
  EXPECT_EQ(s.per_worker[0].pid, pid);
  EXPECT_EQ(s.per_worker[0].state, "busy");
  std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(gate.data())).store(7);
  EXPECT_EQ(running.get(), 7);
  EXPECT_NE(next.get(), pid);
  const auto w = replacement_of(pool, pid);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->last_exit->reason, crew::ProcessExitReason::stop);
  EXPECT_EQ(w->restarts, 1U);
  EXPECT_EQ(pool.stats().restarts, 1U);
}

TEST(ProcessPoolMonitor, RestartingAnUnknownWorkerReturnsFalse) {
  crew::ProcessPool pool(one_worker());
  const int pid = pool.run<int>("pid").get();
  EXPECT_FALSE(pool.restart_worker("crew-proc-9"));
  EXPECT_FALSE(pool.restart_worker(""));
  EXPECT_FALSE(pool.restart_worker("crew-proc"));
  EXPECT_EQ(pool.run<int>("pid").get(), pid);  // nothing was restarted
}

TEST(ProcessPoolMonitor, ATaskAboveTheMemoryCapIsStoppedWithinSeconds) {
  auto o = one_worker();
  {
    // 64 MiB above what an idle worker holds (far more under a sanitizer than without).
    crew::ProcessPool unlimited(o);
    (void)unlimited.run<int>("pid").get();
    o.memory_limit_bytes = unlimited.stats().per_worker.at(0).rss_bytes + 64 * kMiB;
  }
  crew::ProcessPool pool(o);
  const int pid = pool.run<int>("pid").get();
  auto stamp = crew::SharedBuffer::create(4096, {.across_processes = true});
  EXPECT_THROW(pool.run<int>("overflow", stamp, o.memory_limit_bytes).get(),
               crew::MemoryLimitExceeded);
  const auto w = replacement_of(pool, pid);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->last_exit->reason, crew::ProcessExitReason::memory);
  // The last stamp came before the crossing (or right at a failed allocation): the kill came no
  // later after the crossing than after it.
  const std::int64_t before_crossing =
      std::atomic_ref<std::int64_t>(*reinterpret_cast<std::int64_t*>(stamp.data())).load();
  ASSERT_GT(before_crossing, 0) << "the task never ran";
  const auto ended =
      std::chrono::duration_cast<std::chrono::nanoseconds>(w->last_exit->when.time_since_epoch())
          .count();
  // Milliseconds (a 5 ms watchdog, or a failed allocation); 5 s even on a loaded machine.
  EXPECT_LT(std::chrono::nanoseconds(ended - before_crossing), 5s);
  EXPECT_GE(ended, before_crossing);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
