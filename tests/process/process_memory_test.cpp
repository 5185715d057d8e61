// ProcessPoolOptions::leak_watch on real worker processes: a worker whose task leaks is flagged in
// stats() and named in a log line within a few of the watch's windows; one whose task allocates
// and frees as much is never flagged. This executable is also its own worker program: main()
// serves the tasks below when a ProcessPool started it.
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <crew/process.hpp>

#include "process/observe.hpp"

namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kMiB = std::size_t{1} << 20;

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    // Keeps `mib` MiB, touched so that they are resident, for the life of the worker.
    t.add("leak", [](int mib) {
      static std::vector<std::unique_ptr<char[]>> kept;
      kept.push_back(std::make_unique<char[]>(static_cast<std::size_t>(mib) * kMiB));
      std::memset(kept.back().get(), 1, static_cast<std::size_t>(mib) * kMiB);
      return static_cast<int>(kept.size());
    });
    // The same amount, touched and given back.
    t.add("churn", [](int mib) {
      std::vector<char> block(static_cast<std::size_t>(mib) * kMiB, 1);
      return static_cast<int>(block[block.size() / 2]);
    });
    return t;
  }();
  return tasks;
}

// A pool with a watch of 3 s windows, sampled every 167 ms, and its log lines.
struct Watched {
  std::mutex mutex;
  std::vector<std::string> lines;
  crew::ProcessPool pool;

  Watched() : pool(options()) {}

  crew::ProcessPoolOptions options() {
    crew::ProcessPoolOptions o;
    o.tasks = &test_tasks();
    o.max_workers = 1;
    o.env = crew_test::worker_env();
    // AddressSanitizer keeps freed blocks aside for a while (its quarantine): resident memory
    // that only grows, which is what a leak looks like.
    o.env["ASAN_OPTIONS"] += ":quarantine_size_mb=0";
    o.leak_watch = crew::LeakWatchOptions{.window = 3s, .spans = 6, .min_growth = 8 * kMiB};
    o.log = [this](const crew::ProcessLogLine& l) {
      std::lock_guard lock(mutex);
      lines.push_back(std::string(l.worker) + ": " + std::string(l.line));
    };
    return o;
  }

  crew::ProcessWorkerStats worker() {
    const auto s = pool.stats();
    return s.per_worker.empty() ? crew::ProcessWorkerStats{} : s.per_worker.front();
  }
  std::string log() {
    std::lock_guard lock(mutex);
    std::string all;
    for (const auto& l : lines) all += l + "\n";
    return all;
  }
};

TEST(ProcessPoolLeakWatch, AWorkerThatLeaksIsFlaggedAndNamedInTheLog) {
  Watched w;
  // About 20 MiB/s: one MiB kept every 50 ms (the pause paces the leak; nothing waits on it).
  const auto end = Clock::now() + 60s;
  while (!w.worker().leak_suspected && Clock::now() < end) {
    (void)w.pool.run<int>("leak", 1).get();
    std::this_thread::sleep_for(50ms);
  }
  const crew::ProcessWorkerStats worker = w.worker();
  ASSERT_TRUE(worker.leak_suspected) << "not flagged after 60 s; log:\n" << w.log();
  EXPECT_GT(worker.leak_bytes_per_second, 2.0 * kMiB);
  EXPECT_EQ(w.pool.stats().leaks_suspected, 1U);
  ASSERT_TRUE(crew_test::eventually([&] { return w.log().find("a leak?") != std::string::npos; }));
  EXPECT_THAT(w.log(), HasSubstr(worker.name + ": crew: this worker's lowest resident memory"));
}

TEST(ProcessPoolLeakWatch, AWorkerThatAllocatesAndFreesIsNeverFlagged) {
  Watched w;
  // The same 20 MiB/s through the allocator, given back, for three windows and more.
  const auto end = Clock::now() + 10s;
  while (Clock::now() < end) {
    (void)w.pool.run<int>("churn", 1).get();
    ASSERT_FALSE(w.worker().leak_suspected) << w.log();
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(w.pool.stats().leaks_suspected, 0U);
  EXPECT_THAT(w.log(), ::testing::Not(HasSubstr("a leak?")));
}

TEST(ProcessPoolLeakWatch, BadOptionsAreRefusedAtConstruction) {
  crew::ProcessPoolOptions o;
  o.tasks = &test_tasks();
  o.leak_watch = crew::LeakWatchOptions{.spans = 1};
  EXPECT_THROW(crew::ProcessPool{o}, std::invalid_argument);
  o.leak_watch.reset();  // no watch at all
  crew::ProcessPool pool(o);
  EXPECT_EQ(pool.run<int>("churn", 1).get(), 1);
  EXPECT_FALSE(pool.stats().per_worker.front().leak_suspected);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
