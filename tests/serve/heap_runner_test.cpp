// Runner::heap_profile, which `POST /api/workers/{id}/heap` calls: only a process runner whose
// pool has heap_profiling writes a profile; the others say which flags would. And `crew serve`
// refuses --heap-profiling without process isolation before it starts anything. This
// executable is also its own worker program (main() below).
#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <crew/process.hpp>

#include "runner.hpp"
#include "server.hpp"

namespace {

using ::testing::HasSubstr;

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("one", [] { return 1; });
    return t;
  }();
  return tasks;
}

std::string error_of(crew::serve_app::Runner& runner, std::string_view worker) {
  try {
    (void)runner.heap_profile(worker);
  } catch (const crew::Error& e) {
    return e.what();
  }
  return "(no crew::Error)";
}

TEST(RunnerHeapProfile, RunnersWithoutHeapProfilingRefuseSayingHow) {
  auto threads = crew::serve_app::make_thread_runner(
      test_tasks(), {.workers = 1, .max_queue = 16, .task_nice = 0, .max_stuck_replacements = {}});
  EXPECT_THAT(error_of(*threads, "crew-task-0"), HasSubstr("--isolation process --heap-profiling"));
  threads->close();

  crew::ProcessPoolOptions plain;
  plain.max_workers = 1;
  plain.name = "crew-task";
  auto without = crew::serve_app::make_process_runner(test_tasks(), plain);
  EXPECT_THAT(error_of(*without, "crew-task-0"), HasSubstr("without --heap-profiling"));
  without->close();
}

// jemalloc cannot be preloaded into a sanitizer build: release builds only.
TEST(RunnerHeapProfileReleaseOnly, AProcessRunnerWithHeapProfilingWritesOne) {
  crew::ProcessPoolOptions profiled;
  profiled.max_workers = 1;
  profiled.name = "crew-task";
  profiled.heap_profiling = true;
  auto with = crew::serve_app::make_process_runner(test_tasks(), profiled);
  // "\x90": an empty msgpack array, the task's arguments; once it ran, the worker is ready.
  (void)with->run("one", "\x90", {}, {}).get();
  EXPECT_THROW((void)with->heap_profile("crew-task-7"), std::invalid_argument);
  const std::string path = with->heap_profile("crew-task-0");
  EXPECT_THAT(path, HasSubstr("/crew-task-0."));
  EXPECT_GT(std::filesystem::file_size(path), 0U);
  std::filesystem::remove(path);
  with->close();
}

TEST(RunnerHeapProfile, CrewServeRefusesHeapProfilingWithoutProcessIsolation) {
  crew::serve_app::ServeConfig config;
  config.heap_profiling = true;
  config.isolation = "thread";
  EXPECT_EQ(crew::serve_app::run_service(config), 78);  // EX_CONFIG, before anything starts
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
