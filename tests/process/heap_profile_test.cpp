// ProcessPoolOptions::heap_profiling on real worker processes: two profiles around a leak, diffed
// with `jeprof --base`, name the leaking function (and not one that frees what it allocates); a
// busy worker still writes its profile; SIGUSR2 sent by hand writes one and the pool logs where;
// misuse is refused with errors that say what to do. This executable is also its own worker
// program: main() serves the tasks below when a ProcessPool started it.
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/process.hpp>

#include "process/observe.hpp"

namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::size_t kBlock = 1024;

// Keeps `mib` MiB in 1 KiB blocks for the life of the worker: at one sample per 512 KiB on
// average, 32 MiB are about 64 samples, all with this function on their stack.
[[gnu::noinline]] std::size_t crew_test_leak_many_small_blocks(int mib) {
  static std::vector<void*> kept;
  const std::size_t blocks = static_cast<std::size_t>(mib) * kMiB / kBlock;
  for (std::size_t i = 0; i < blocks; ++i) {
    void* p = std::malloc(kBlock);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 1, kBlock);
    kept.push_back(p);
  }
  return kept.size();
}

// As many allocations, each freed again: nothing of it is in use when a profile is taken.
[[gnu::noinline]] std::size_t crew_test_churn_small_blocks(int mib) {
  const std::size_t blocks = static_cast<std::size_t>(mib) * kMiB / kBlock;
  std::size_t sum = 0;
  for (std::size_t i = 0; i < blocks; ++i) {
    auto* p = static_cast<unsigned char*>(std::malloc(kBlock));
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 1, kBlock);
    sum += p[i % kBlock];
    std::free(p);
  }
  return sum;
}

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("leak", [](int mib) { return crew_test_leak_many_small_blocks(mib); });
    t.add("churn", [](int mib) { return crew_test_churn_small_blocks(mib); });
    t.add("pid", [] { return static_cast<int>(::getpid()); });
    // Busy until `path` exists (bounded: a test that never creates it fails, not hangs).
    t.add("wait_for_file", [](std::string path) {
      const auto end = std::chrono::steady_clock::now() + 60s;
      while (!fs::exists(path)) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(1ms);
      }
      return true;
    });
    return t;
  }();
  return tasks;
}

// jemalloc cannot take over from a sanitizer's allocator (the sanitizer must come first): the
// tests that preload it are HeapProfileReleaseOnly, which sanitizer builds do not register.
bool sanitized() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#else
  return false;
#endif
}

// A fresh directory for one test's profiles, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "crew-heap-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

struct Profiled {
  TempDir dir;
  std::mutex mutex;
  std::vector<std::string> lines;
  crew::ProcessPool pool;

  Profiled() : pool(options()) {}

  crew::ProcessPoolOptions options() {
    crew::ProcessPoolOptions o;
    o.tasks = &test_tasks();
    o.max_workers = 1;
    o.env = crew_test::worker_env();
    o.leak_watch.reset();
    o.heap_profiling = true;
    o.heap_profile_dir = dir.path.string();
    o.log = [this](const crew::ProcessLogLine& l) {
      std::lock_guard lock(mutex);
      lines.push_back(std::string(l.worker) + ": " + std::string(l.line));
    };
    return o;
  }
  // The worker's name once it has run a task (it is then ready for signals).
  std::string ready_worker() {
    (void)pool.run<int>("pid").get();
    return pool.stats().per_worker.at(0).name;
  }
  std::string log() {
    std::lock_guard lock(mutex);
    std::string all;
    for (const auto& l : lines) all += l + "\n";
    return all;
  }
};

std::string self_exe() {
  return fs::read_symlink("/proc/self/exe").string();
}

// Runs a command; its stdout and stderr together, and its exit status.
std::pair<std::string, int> run_command(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {"popen failed", -1};
  std::string out;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = ::pclose(pipe);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

// The cumulative megabytes jeprof --text gives `function` ("flat flat% sum% cum cum% name"), or
// -1 when no line names it.
double cumulative_mb(const std::string& text, const std::string& function) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(function) == std::string::npos) continue;
    std::istringstream fields(line);
    double flat = 0, cum = 0;
    std::string flat_pct, sum_pct;
    if (fields >> flat >> flat_pct >> sum_pct >> cum) return cum;
  }
  return -1;
}

TEST(HeapProfileReleaseOnly, TheDiffOfTwoProfilesNamesTheLeakingFunction) {
  ASSERT_EQ(::access("/usr/bin/jeprof", X_OK), 0)
      << "jeprof is missing: install Debian's libjemalloc-dev (scripts/bootstrap does)";
  Profiled p;
  const std::string worker = p.ready_worker();
  const std::string before = p.pool.heap_profile(worker);
  EXPECT_EQ(p.pool.run<std::size_t>("leak", 32).get(), 32 * kMiB / kBlock);
  EXPECT_GT(p.pool.run<std::size_t>("churn", 32).get(), 0U);
  const std::string after = p.pool.heap_profile(worker);
  ASSERT_NE(before, after);
  EXPECT_EQ(fs::path(after).parent_path(), p.dir.path);
  EXPECT_THAT(fs::path(after).filename().string(), ::testing::StartsWith(worker + "."));

  const auto [text, status] =
      run_command("jeprof --text --base=" + before + " " + self_exe() + " " + after);
  ASSERT_EQ(status, 0) << text;
  // 32 MiB kept; sampling estimates it (about 64 samples), so only the order of magnitude.
  const double leaked = cumulative_mb(text, "crew_test_leak_many_small_blocks");
  EXPECT_GT(leaked, 16.0) << text;
  EXPECT_LT(leaked, 64.0) << text;
  EXPECT_EQ(cumulative_mb(text, "crew_test_churn_small_blocks"), -1) << text;
  // And the profile before the leak does not have it.
  const auto [first, first_status] = run_command("jeprof --text " + self_exe() + " " + before);
  ASSERT_EQ(first_status, 0) << first;
  EXPECT_EQ(cumulative_mb(first, "crew_test_leak_many_small_blocks"), -1) << first;
}

TEST(HeapProfileReleaseOnly, ABusyWorkerWritesItsProfileWithoutWaitingForItsTask) {
  Profiled p;
  const std::string worker = p.ready_worker();
  const fs::path release = p.dir.path / "release";
  crew::Future<bool> busy = p.pool.run<bool>("wait_for_file", release.string());
  ASSERT_TRUE(crew_test::eventually([&] { return p.pool.stats().busy == 1; }));
  const std::string path = p.pool.heap_profile(worker);
  EXPECT_TRUE(fs::exists(path));
  EXPECT_GT(fs::file_size(path), 0U);
  EXPECT_EQ(p.pool.stats().busy, 1U);  // the task is still running: it waits for `release`
  {
    std::FILE* f = std::fopen(release.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  EXPECT_TRUE(busy.get());
}

TEST(HeapProfileReleaseOnly, SigusrTwoSentByHandWritesAProfileAndThePoolLogsWhere) {
  Profiled p;
  (void)p.ready_worker();
  const int pid = p.pool.run<int>("pid").get();
  const crew::ProcessWorkerStats w = p.pool.stats().per_worker.at(0);
  ASSERT_EQ(w.pid, pid);
  ASSERT_EQ(::kill(pid, SIGUSR2), 0);
  const fs::path expected = p.dir.path / (w.name + "." + std::to_string(pid) + ".signal1.heap");
  ASSERT_TRUE(crew_test::eventually([&] { return fs::exists(expected); })) << p.log();
  ASSERT_TRUE(crew_test::eventually([&] {
    return p.log().find("heap profile written to " + expected.string()) != std::string::npos;
  })) << p.log();
  // The worker lives on and keeps working.
  EXPECT_EQ(p.pool.run<int>("pid").get(), pid);
}

TEST(HeapProfileReleaseOnly, AWorkerThatCannotWriteAProfileSaysWhy) {
  TempDir dir;
  crew::ProcessPoolOptions o;
  o.tasks = &test_tasks();
  o.max_workers = 1;
  o.env = crew_test::worker_env();
  o.env["MALLOC_CONF"] = "prof:false";  // the user's setting wins over heap_profiling's
  o.leak_watch.reset();
  o.log = [](const crew::ProcessLogLine&) {};
  o.heap_profiling = true;
  o.heap_profile_dir = dir.path.string();
  crew::ProcessPool pool(o);
  (void)pool.run<int>("pid").get();
  const std::string worker = pool.stats().per_worker.at(0).name;
  try {
    (void)pool.heap_profile(worker);
    ADD_FAILURE() << "a worker without profiling wrote a profile";
  } catch (const crew::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("opt.prof is false"));
  }
  // And once the directory is gone, the pool says so without asking the worker.
  fs::remove_all(dir.path);
  try {
    (void)pool.heap_profile(worker);
    ADD_FAILURE() << "heap_profile went on without its directory";
  } catch (const crew::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(dir.path.string() + " is gone"));
  }
}

TEST(HeapProfile, MisuseIsRefusedSayingWhatToDo) {
  crew::ProcessPoolOptions off;
  off.tasks = &test_tasks();
  off.leak_watch.reset();
  crew::ProcessPool plain(off);
  try {
    (void)plain.heap_profile("crew-proc-0");
    ADD_FAILURE() << "heap_profile without heap_profiling did not throw";
  } catch (const crew::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("ProcessPoolOptions::heap_profiling"));
  }

  crew::ProcessPoolOptions bad_dir = off;
  bad_dir.heap_profiling = true;
  bad_dir.heap_profile_dir = "/nonexistent/crew-heap";
  try {
    crew::ProcessPool pool(bad_dir);
    ADD_FAILURE() << "a missing heap_profile_dir was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/crew-heap"));
  }

  crew::ProcessPoolOptions on = off;
  on.heap_profiling = true;
  on.heap_profile_dir.clear();  // $TMPDIR or /tmp
  if (sanitized()) {
    try {
      crew::ProcessPool pool(on);
      ADD_FAILURE() << "heap_profiling was accepted in a sanitizer build";
    } catch (const std::invalid_argument& e) {
      EXPECT_THAT(e.what(), HasSubstr("sanitizer build"));
    }
    return;
  }
  crew::ProcessPool pool(on);
  EXPECT_FALSE(pool.options().heap_profile_dir.empty());
  try {
    (void)pool.heap_profile("no-such-worker");
    ADD_FAILURE() << "an unknown worker was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("'no-such-worker'"));
  }
  (void)pool.run<int>("pid").get();
  try {
    (void)pool.heap_profile("no-such-worker");
    ADD_FAILURE() << "an unknown worker was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr(pool.stats().per_worker.at(0).name));  // lists the real ones
  }
  EXPECT_THROW((void)pool.heap_profile(pool.stats().per_worker.at(0).name, 0ms),
               std::invalid_argument);
}

}  // namespace

int main(int argc, char** argv) {
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
