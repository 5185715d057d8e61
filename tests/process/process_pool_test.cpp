// Tests for crew/process.hpp. This executable is also its own worker program: main() serves the
// tasks below when a ProcessPool started it, and plays other roles when CREW_TEST_ROLE is set.
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <latch>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <crew/process.hpp>

#include "backoff.hpp"  // the breaker's hold, for the probe test
#include "process/observe.hpp"
#include "worker_env.hpp"  // the shared-memory layout, for the tests that break the protocol

extern char** environ;

namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
// Upper bound for what should take milliseconds (noticing a dead worker, killing one at its
// deadline, reaping orphans): far above it on a loaded 2-core machine under a sanitizer, far
// below what the bug it guards against would take (a task's full 100 s, or for ever).
constexpr auto kReact = 10s;

struct Point {
  int x = 0;
  int y = 0;
  MSGPACK_DEFINE(x, y)
};

long fib(int n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

const crew::Tasks& test_tasks() {
  static const crew::Tasks tasks = [] {
    crew::Tasks t;
    t.add("fib", fib);
    t.add("add", [](int a, int b) { return a + b; });
    t.add("greet", [](const std::string& who) { return "hello " + who; });
    t.add("text", [](int n) { return std::string(static_cast<std::size_t>(n), 'x'); });
    t.add("pid", [] { return static_cast<int>(::getpid()); });
    t.add("norm2", [](Point p) { return p.x * p.x + p.y * p.y; });
    t.add("spin", [] {
      volatile unsigned long n = 0;
      for (;;) n = n + 1;
    });
    t.add("segv", [] { std::raise(SIGSEGV); });
    t.add("abort", [] { std::abort(); });
    t.add("exit3", [] { std::exit(3); });
    t.add("throw", []() -> int { throw std::range_error("boom"); });
    t.add("sleep_ms", [](int ms) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return ms;
    });
    t.add("now_ns", [] {
      return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count();
    });
    // Waits until the caller sets the first word of `flag` (a gate the test opens; bounded, so
    // that a failing test cannot leave a worker behind for long).
    t.add("wait_flag", [](crew::SharedBuffer flag) {
      std::atomic_ref<std::uint32_t> word(*reinterpret_cast<std::uint32_t*>(flag.data()));
      const auto guard = Clock::now() + 120s;
      while (word.load() == 0 && Clock::now() < guard) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return static_cast<int>(word.load());
    });
    t.add("grow", [](int mib) {
      // Touches memory a MiB at a time, as a leaking task would.
      std::vector<std::vector<char>> blocks;
      for (int i = 0; i < mib; ++i) blocks.emplace_back(std::size_t{1} << 20, static_cast<char>(i));
      return static_cast<int>(blocks.size());
    });
    t.add("say", [](const std::string& text) {
      std::fprintf(stderr, "%s\n", text.c_str());
      std::printf("out:%s\n", text.c_str());
      std::fflush(stdout);
      return 0;
    });
    // Break the protocol the way a broken worker could, tell the pool to look, and wait to be
    // killed: an entry of unknown kind in the reply ring, or a ring marker whose frame on the
    // socket (fd 3) is junk.
    t.add("garbage", [](bool on_socket) {
      void* m = ::mmap(nullptr, crew::detail::kWorkerPageSize, PROT_READ | PROT_WRITE, MAP_SHARED,
                       crew::detail::kWorkerOwnPageFd, 0);
      if (m == MAP_FAILED) return 1;
      crew::detail::RingWriter replies(&static_cast<crew::detail::WorkerPage*>(m)->replies);
      if (on_socket) {
        const char junk[] = "definitely not a frame";
        [[maybe_unused]] auto n = ::send(3, junk, sizeof junk, 0);
        replies.push(crew::detail::RingEntry::socket, {});
      } else {
        replies.push(static_cast<crew::detail::RingEntry>(99), {});
      }
      const std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(crew::detail::kWorkerDoorbellFd, &one, sizeof one);
      for (;;) ::pause();
    });
    t.add("buffer_sum", [](const crew::Buffer& b) {
      std::uint64_t sum = 0;
      for (std::byte x : b.span()) sum += static_cast<std::uint8_t>(x);
      return sum;
    });
    t.add("buffer_invert", [](crew::Buffer b) {
      for (std::byte& x : b.span()) x = ~x;
      return b;
    });
    t.add("shared_fill", [](crew::SharedBuffer b, int value) {
      std::memset(b.data(), value, b.size());
      return 0;
    });
    return t;
  }();
  return tasks;
}

using crew_test::worker_env;

crew::ProcessPoolOptions opts() {
  crew::ProcessPoolOptions o;
  o.tasks = &test_tasks();
  o.max_workers = 2;
  o.env = worker_env();
  o.log = [](const crew::ProcessLogLine&) {};
  return o;
}

std::string self_exe() {
  return std::filesystem::read_symlink("/proc/self/exe").string();
}

using crew_test::children_of;
using crew_test::eventually;

template <class E, class F>
E expect_throw(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw " << crew::detail::demangle(typeid(e)) << ": " << e.what();
    throw;
  }
  ADD_FAILURE() << "did not throw";
  throw std::logic_error("no exception");
}

TEST(Tasks, RegistersNamesAndSignatures) {
  const auto& t = test_tasks();
  EXPECT_TRUE(t.contains("fib"));
  EXPECT_EQ(t.signature("fib"), "fib(int) -> long");
  EXPECT_EQ(t.signature("greet"), "greet(std::string) -> std::string");
  auto names = t.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.size(), t.size());
  crew::Tasks mine;
  mine.add("x", [] { return 1; });
  EXPECT_THROW(mine.add("x", [] { return 2; }), std::invalid_argument);
  EXPECT_THROW(mine.add("", [] { return 2; }), std::invalid_argument);
  EXPECT_THROW((void)mine.signature("nope"), crew::BadArguments);
}

TEST(ProcessPool, RunsTasksWithTypedArgumentsAndResults) {
  crew::ProcessPool pool(opts());
  EXPECT_EQ(pool.run<long>("fib", 20).get(), 6765);
  EXPECT_EQ(pool.run<int>("add", 2, 40).get(), 42);
  EXPECT_EQ(pool.run<std::string>("greet", "crew").get(), "hello crew");
  EXPECT_EQ(pool.run<int>("norm2", Point{3, 4}).get(), 25);
  const int pid = pool.run<int>("pid").get();
  EXPECT_NE(pid, ::getpid());
}

TEST(ProcessPool, RejectsBadOptions) {
  auto o = opts();
  o.min_workers = 3;
  o.max_workers = 2;
  EXPECT_THAT([&] { crew::ProcessPool p(o); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("min_workers (3)")));
  crew::ProcessPoolOptions none;
  EXPECT_THROW(crew::ProcessPool{none}, std::invalid_argument);
  auto bad_exe = opts();
  bad_exe.executable = "/nonexistent/worker";
  EXPECT_THAT([&] { crew::ProcessPool p(bad_exe); },
              ::testing::ThrowsMessage<std::invalid_argument>(HasSubstr("/nonexistent/worker")));
  auto bad_env = opts();
  bad_env.env["A=B"] = "x";
  EXPECT_THROW(crew::ProcessPool{bad_env}, std::invalid_argument);
}

TEST(ProcessPool, BuffersCrossWithoutLosingBytes) {
  crew::ProcessPool pool(opts());
  // Small (inline), mid-size (copied into a memfd once) and large (memfd-backed: no copy).
  for (std::size_t size : {std::size_t{100}, std::size_t{1} << 20, std::size_t{64} << 20}) {
    crew::Buffer b = crew::Buffer::uninitialized(size);
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < size; ++i) {
      b.data()[i] = static_cast<std::byte>(i * 7);
      sum += static_cast<std::uint8_t>(i * 7);
    }
    EXPECT_EQ(pool.run<std::uint64_t>("buffer_sum", b).get(), sum) << size;
    crew::Buffer back = pool.run<crew::Buffer>("buffer_invert", std::move(b)).get();
    ASSERT_EQ(back.size(), size);
    EXPECT_EQ(back.data()[size - 1], ~static_cast<std::byte>((size - 1) * 7));
  }
  auto shared = crew::SharedBuffer::create(4096, {.across_processes = true});
  EXPECT_EQ(pool.run<int>("shared_fill", shared, 0x5a).get(), 0);
  EXPECT_EQ(static_cast<int>(shared.data()[4095]), 0x5a);  // written by the worker, seen here
}

TEST(ProcessPool, TimeoutKillsTheWorkerAndTheNextTaskRunsOnANewOne) {
  auto o = opts();
  o.min_workers = 1;
  o.max_workers = 1;
  o.terminate_grace = 200ms;
  crew::ProcessPool pool(o);
  const int first = pool.run<int>("pid").get();
  const auto start = Clock::now();
  auto f = pool.run<int>(crew::RunOptions{.timeout = 50ms}, "spin");
  const auto e = expect_throw<crew::TimedOut>([&] { f.get(); });
  const auto took = Clock::now() - start;
  EXPECT_THAT(e.what(), HasSubstr("'spin' timed out after 50 ms"));
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, kReact);  // ~50 ms + a process kill; the task itself never ends
  const int second = pool.run<int>("pid").get();
  EXPECT_NE(second, first);
  EXPECT_TRUE(eventually([&] {
    auto s = pool.stats();
    return s.workers == 1 && s.idle == 1 && s.per_worker.size() == 1;
  }));
  EXPECT_EQ(pool.stats().timed_out, 1U);
  EXPECT_EQ(::kill(first, 0), -1);  // reaped, not a zombie
}

struct CrashCase {
  const char* task;
  int signal;
  int code;
};

TEST(ProcessPool, EachKindOfCrashFailsOnlyItsTask) {
  crew::ProcessPool pool(opts());
  for (const CrashCase c : {CrashCase{"segv", SIGSEGV, -1}, CrashCase{"abort", SIGABRT, -1},
                            CrashCase{"exit3", 0, 3}}) {
    auto f = pool.run<void>(c.task);
    auto ok = pool.run<int>("add", 1, 2);
    const auto e = expect_throw<crew::WorkerCrashed>([&] { f.get(); });
    EXPECT_EQ(e.task(), c.task);
    EXPECT_EQ(e.signal(), c.signal) << c.task;
    EXPECT_EQ(e.exit_code(), c.code) << c.task;
    EXPECT_GT(e.pid(), 0);
    EXPECT_THAT(e.what(), HasSubstr(c.task));
    EXPECT_EQ(ok.get(), 3);
  }
  EXPECT_EQ(pool.stats().crashed, 3U);
}

TEST(ProcessPool, ExternalKillOfABusyWorkerIsReportedQuickly) {
  auto o = opts();
  o.max_workers = 1;
  crew::ProcessPool pool(o);
  const int pid = pool.run<int>("pid").get();
  auto f = pool.run<int>("sleep_ms", 100'000);  // noticed only when it ended: 100 s
  auto queued = pool.run<int>("add", 20, 22);
  ASSERT_TRUE(eventually([&] { return pool.stats().busy == 1; }));
  const auto killed = Clock::now();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  const auto e = expect_throw<crew::WorkerCrashed>([&] { f.get(); });
  EXPECT_LT(Clock::now() - killed, kReact);  // milliseconds, when the pool watches its workers
  EXPECT_EQ(e.signal(), SIGKILL);
  EXPECT_THAT(e.what(), HasSubstr("SIGKILL"));
  EXPECT_EQ(queued.get(), 42);  // not lost: it ran on the replacement
}

TEST(ProcessPool, ThousandTasksWithFivePercentCrashing) {
  crew::ProcessPool pool(opts());
  std::vector<crew::Future<int>> futures;
  for (int i = 0; i < 1000; ++i) {
    futures.push_back(i % 20 == 0 ? pool.run<int>("segv") : pool.run<int>("add", i, 1));
  }
  int ok = 0, crashed = 0, wrong = 0;
  for (int i = 0; i < 1000; ++i) {
    try {
      wrong += futures[i].get() != i + 1;
      ++ok;
    } catch (const crew::WorkerCrashed&) {
      ++crashed;
    }
  }
  EXPECT_EQ(ok, 950);
  EXPECT_EQ(crashed, 50);
  EXPECT_EQ(wrong, 0);
  const auto s = pool.stats();
  EXPECT_EQ(s.completed, 950U);
  EXPECT_EQ(s.crashed, 50U);
}

TEST(ProcessPool, MemoryCapFailsTheTaskAndThePoolKeepsServing) {
  auto o = opts();
  o.max_workers = 1;
  o.memory_limit_bytes = std::size_t{64} << 20;
  crew::ProcessPool pool(o);
  auto f = pool.run<int>("grow", 1024);
  try {
    f.get();
    ADD_FAILURE() << "a 1 GiB task ran under a 64 MiB cap";
  } catch (const crew::MemoryLimitExceeded& e) {
    EXPECT_EQ(e.limit_bytes(), o.memory_limit_bytes);
    EXPECT_THAT(e.what(), HasSubstr("'grow'"));
  } catch (const crew::WorkerCrashed& e) {
    EXPECT_THAT(e.what(), HasSubstr("memory cap"));
  }
  EXPECT_EQ(pool.run<long>("fib", 10).get(), 55);
}

TEST(ProcessPool, RecyclesAWorkerAfterMaxTasks) {
  auto o = opts();
  o.max_workers = 1;
  o.max_tasks_per_worker = 2;
  crew::ProcessPool pool(o);
  std::vector<crew::Future<int>> f;
  for (int i = 0; i < 4; ++i) f.push_back(pool.run<int>("pid"));
  std::vector<int> pids;
  for (auto& x : f) pids.push_back(x.get());
  EXPECT_EQ(pids[0], pids[1]);
  EXPECT_EQ(pids[2], pids[3]);
  EXPECT_NE(pids[0], pids[2]);
}

TEST(ProcessPool, RecyclesAWorkerAboveTheRssLimit) {
  auto o = opts();
  o.max_workers = 1;
  o.max_rss_restart_bytes = std::size_t{1} << 20;  // any real process is above 1 MiB
  crew::ProcessPool pool(o);
  const int a = pool.run<int>("pid").get();
  const int b = pool.run<int>("pid").get();
  EXPECT_NE(a, b);
  EXPECT_GT(pool.stats().restarts, 0U);
}

TEST(ProcessPool, WorkersDieWithTheirParent) {
  // A helper process (this binary, role "orphan_parent") starts a pool of two workers, prints
  // their pids, and waits to be killed. As a subreaper this test inherits the orphans and can
  // tell exactly when each one is gone.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  std::vector<std::string> env_s{"CREW_TEST_ROLE=orphan_parent"};
  for (const auto& [k, v] : worker_env()) env_s.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = self_exe();
  char* argv[] = {exe.data(), nullptr};
  pid_t helper;
  ASSERT_EQ(posix_spawn(&helper, exe.c_str(), &actions, nullptr, argv, envp.data()), 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  FILE* in = ::fdopen(fds[0], "r");
  int w1 = 0, w2 = 0;
  ASSERT_EQ(std::fscanf(in, "%d %d", &w1, &w2), 2);
  std::fclose(in);
  ASSERT_EQ(::kill(helper, SIGKILL), 0);
  ASSERT_EQ(::waitpid(helper, nullptr, 0), helper);
  std::set<int> left{w1, w2};
  // Gone within milliseconds; without PR_SET_PDEATHSIG an orphan would wait for ever.
  EXPECT_TRUE(eventually(
      [&] {
        for (auto it = left.begin(); it != left.end();) {
          it = ::waitpid(*it, nullptr, WNOHANG) == *it ? left.erase(it) : std::next(it);
        }
        return left.empty();
      },
      kReact))
      << left.size() << " worker(s) outlived their parent by " << kReact.count() << " s";
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

TEST(ProcessPool, BadArgumentsNameTheTaskAndTheTypes) {
  crew::ProcessPool pool(opts());
  const auto unknown = expect_throw<crew::BadArguments>([&] { (void)pool.run<int>("nope"); });
  EXPECT_THAT(unknown.what(), HasSubstr("unknown task 'nope'"));
  EXPECT_THAT(unknown.what(), HasSubstr("fib"));

  const auto types =
      expect_throw<crew::BadArguments>([&] { pool.run<long>("fib", std::string("ten")).get(); });
  EXPECT_THAT(types.what(), HasSubstr("fib(int) -> long"));
  EXPECT_THAT(types.what(), HasSubstr("string"));
  EXPECT_THAT(types.what(), HasSubstr("std::string"));  // what the caller passed

  const auto count = expect_throw<crew::BadArguments>([&] { pool.run<int>("add", 1).get(); });
  EXPECT_THAT(count.what(), HasSubstr("takes 2 argument(s)"));

  const auto result =
      expect_throw<crew::BadArguments>([&] { pool.run<std::string>("fib", 10).get(); });
  EXPECT_THAT(result.what(), HasSubstr("'fib'"));
  EXPECT_THAT(result.what(), HasSubstr("std::string"));
  EXPECT_EQ(pool.run<long>("fib", 10).get(), 55);  // the worker survived all of that
}

TEST(ProcessPool, UnknownTaskInAnotherExecutableListsWhatItKnows) {
  auto o = opts();
  o.tasks = nullptr;
  o.executable = self_exe();
  crew::ProcessPool pool(o);
  const auto e = expect_throw<crew::BadArguments>([&] { pool.run<int>("nope").get(); });
  EXPECT_THAT(e.what(), HasSubstr("unknown task 'nope'"));
  EXPECT_THAT(e.what(), HasSubstr("greet"));
}

TEST(ProcessPool, TaskExceptionsArriveAsRemoteError) {
  crew::ProcessPool pool(opts());
  const auto e = expect_throw<crew::RemoteError>([&] { pool.run<int>("throw").get(); });
  EXPECT_EQ(e.type_name(), "std::range_error");
  EXPECT_EQ(e.remote_what(), "boom");
  EXPECT_THAT(e.what(), HasSubstr("'throw'"));
  EXPECT_EQ(pool.run<int>("add", 1, 1).get(), 2);
}

TEST(ProcessPool, StartupFailureReachesCallersAndBacksOff) {
  auto o = opts();
  o.tasks = nullptr;
  o.executable = self_exe();
  o.env["CREW_TEST_ROLE"] = "fail_startup";
  o.restart_backoff = 20ms;
  o.max_startup_failures = 4;
  crew::ProcessPool pool(o);
  rusage before{};
  ::getrusage(RUSAGE_CHILDREN, &before);
  const auto start = Clock::now();
  auto f = pool.run<int>("pid");
  const auto e = expect_throw<crew::WorkerCrashed>([&] { f.get(); });
  EXPECT_THAT(e.what(), HasSubstr("failing to start"));
  EXPECT_THAT(e.what(), HasSubstr("config file missing"));  // the worker's own message
  // While the breaker is open, new calls fail at once instead of spawning.
  EXPECT_THROW((void)pool.run<int>("pid"), crew::WorkerCrashed);
  const auto s = pool.stats();
  EXPECT_EQ(s.startup_failures, 4U);
  // 4 attempts with 20, 30, 45 ms between them: at least 95 ms, not a busy loop.
  EXPECT_GE(Clock::now() - start, 95ms);
  rusage after{};
  ::getrusage(RUSAGE_CHILDREN, &after);
  const double child_cpu_s =
      static_cast<double>(after.ru_utime.tv_sec - before.ru_utime.tv_sec) +
      static_cast<double>(after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6;
  EXPECT_LT(child_cpu_s, kSanitized ? 10.0 : 1.0);
}

// Once the breaker has held off for its time (RestartBackoff::kCap, 15 s), the next task is let
// through as a probe: when workers can start again, the pool serves again by itself.
TEST(ProcessPool, TheBreakerLetsAProbeThroughAfterItsHoldAndRecovers) {
  const std::string flag =
      (std::filesystem::temp_directory_path() / fmt::format("crew-breaker-{}", ::getpid()))
          .string();
  std::filesystem::remove(flag);
  auto o = opts();
  o.tasks = nullptr;
  o.executable = self_exe();
  o.env["CREW_TEST_ROLE"] = "fail_startup_until";
  o.env["CREW_TEST_FLAG"] = flag;
  o.restart_backoff = 20ms;
  o.max_startup_failures = 2;
  crew::ProcessPool pool(o);
  const auto start = Clock::now();
  auto f = pool.run<int>("pid");
  expect_throw<crew::WorkerCrashed>([&] { f.get(); });
  EXPECT_THROW((void)pool.run<int>("pid"), crew::WorkerCrashed);  // held: no spawn at all
  std::FILE* made = std::fopen(flag.c_str(), "w");                // workers can start from now on
  ASSERT_NE(made, nullptr);
  std::fclose(made);
  int pid = 0;
  const bool recovered = eventually(
      [&] {
        try {
          pid = pool.run<int>("pid").get();
          return true;
        } catch (const crew::WorkerCrashed&) {
          return false;  // still held
        }
      },
      60s);
  const auto took = Clock::now() - start;
  std::filesystem::remove(flag);
  ASSERT_TRUE(recovered) << "the pool never tried a worker again";
  EXPECT_GT(pid, 0);
  EXPECT_GE(took, crew::detail::RestartBackoff::kCap);  // it did hold off
  EXPECT_EQ(pool.run<int>("pid").get(), pid);           // and serves normally again
}

TEST(ProcessPool, CloseDrainsAndTerminateRejects) {
  {
    crew::ProcessPool pool(opts());
    std::vector<crew::Future<int>> f;
    for (int i = 0; i < 10; ++i) f.push_back(pool.run<int>("sleep_ms", 5));
    pool.close();
    EXPECT_THROW((void)pool.run<int>("pid"), crew::PoolClosed);
    pool.wait_closed();
    for (auto& x : f) EXPECT_EQ(x.get(), 5);
  }
  EXPECT_TRUE(children_of(::getpid()).empty());
  {
    crew::ProcessPool pool(opts());
    std::vector<crew::Future<int>> f;
    for (int i = 0; i < 6; ++i) f.push_back(pool.run<int>("sleep_ms", 20'000));
    ASSERT_TRUE(eventually([&] { return pool.stats().busy == 2; }));
    pool.terminate();
    for (auto& x : f) EXPECT_THROW(x.get(), crew::PoolClosed);
    EXPECT_TRUE(children_of(::getpid()).empty());  // no zombies, nothing left running
  }
}

// Waiting threads read replies themselves (and the workers then skip the doorbell); every
// result must still reach its own caller, whether it comes back while the caller is reading or
// after it went to sleep, and whoever reads it.
TEST(ProcessPool, ManyWaitingThreadsEachGetTheirOwnResults) {
  crew::ProcessPool pool(opts());
  constexpr int kThreads = 4;
  constexpr int kEach = 300;
  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (i % 50 == 49) {
          right += pool.run<int>("sleep_ms", 1).get() == 1 ? 1 : 0;  // longer than the reading
        } else {
          right += pool.run<int>("add", t, i).get() == t + i ? 1 : 0;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(right.load(), kThreads * kEach);
  EXPECT_EQ(pool.stats().completed, static_cast<std::uint64_t>(kThreads * kEach));
}

// Many quick tasks are pipelined to the workers with arguments and results that cross in the
// shared rings (3 KB) or on the socket (50 KB), interleaved: more than the rings and the socket
// buffers hold must wait, not fail, and every result must belong to its own call.
TEST(ProcessPool, PipelinedFramesWaitForRoomAndKeepTheirOrder) {
  crew::ProcessPool pool(opts());
  for (int i = 0; i < 20; ++i) (void)pool.run<int>("add", 1, 2).get();  // tasks look quick
  std::vector<std::string> args;
  std::vector<crew::Future<std::string>> f;
  for (int i = 0; i < 600; ++i) {
    args.push_back(std::string(i % 3 == 0 ? 50'000 : 3'000, static_cast<char>('a' + i % 26)));
    f.push_back(pool.run<std::string>("greet", args.back()));
  }
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_EQ(f[i].get(), "hello " + args[i]);
}

// A worker whose pool does not read (its supervisor is held up in a log callback) fills the
// reply ring, says it wants room, and goes on once the pool has read: nothing is lost.
TEST(ProcessPool, AWorkerAheadOfItsPoolWaitsForRoomInTheRing) {
  struct Hold {
    std::promise<void> gate;
    std::shared_future<void> open = gate.get_future().share();
    std::atomic<bool> held{false};
  };
  std::mutex mutex;
  std::shared_ptr<Hold> current;
  auto o = opts();
  o.min_workers = 1;
  o.max_workers = 1;
  o.log = [&](const crew::ProcessLogLine& l) {
    if (l.line == "out:hold") {
      std::shared_ptr<Hold> h;
      {
        std::lock_guard lock(mutex);
        h = current;
      }
      h->held = true;
      h->open.wait();
    }
  };
  crew::ProcessPool pool(o);
  // The worker gets ahead only if the pool pipelines, which it does once the recent tasks ran for
  // less than 0.2 ms (2 ms under a sanitizer) as it measures them: on a loaded machine quick
  // tasks can look slow for a while. So each attempt warms up, holds the supervisor, and looks
  // whether the requests went to the worker (nothing left in the pool's queue); if they did not,
  // it lets go and tries again.
  bool pipelined = false;
  int attempts = 0;
  for (const auto until = Clock::now() + 60s; !pipelined && Clock::now() < until; ++attempts) {
    std::vector<crew::Future<int>> warm;
    for (int i = 0; i < 100; ++i) warm.push_back(pool.run<int>("add", 1, 2));
    for (auto& w : warm) ASSERT_EQ(w.get(), 3);
    auto h = std::make_shared<Hold>();
    {
      std::lock_guard lock(mutex);
      current = h;
    }
    auto hold = pool.run<int>("say", std::string("hold"));
    ASSERT_TRUE(eventually([&] { return h->held.load(); }));
    // Small requests (all of them fit in the request ring), 3 KB replies (a few dozen fill the
    // reply ring).
    std::vector<crew::Future<std::string>> f;
    for (int i = 0; i < 100; ++i) f.push_back(pool.run<std::string>("text", 3'000));
    pipelined = pool.stats().queued == 0;
    if (pipelined) {
      // The worker's own page, seen through /proc as the pool's child.
      const int pid = pool.stats().per_worker.at(0).pid;
      const int fd =
          ::open(fmt::format("/proc/{}/fd/{}", pid, crew::detail::kWorkerOwnPageFd).c_str(),
                 O_RDONLY | O_CLOEXEC);
      EXPECT_GE(fd, 0);
      void* m = fd >= 0
                    ? ::mmap(nullptr, crew::detail::kWorkerPageSize, PROT_READ, MAP_SHARED, fd, 0)
                    : MAP_FAILED;
      if (fd >= 0) ::close(fd);
      EXPECT_NE(m, MAP_FAILED);
      if (m != MAP_FAILED) {
        const auto* page = static_cast<const crew::detail::WorkerPage*>(m);
        EXPECT_TRUE(eventually([&] { return page->wants_room.load() != 0; }));
        ::munmap(m, crew::detail::kWorkerPageSize);
      }
    }
    h->gate.set_value();
    EXPECT_EQ(hold.get(), 0);
    for (auto& x : f) EXPECT_EQ(x.get(), std::string(3'000, 'x'));
  }
  EXPECT_TRUE(pipelined) << "quick tasks were never pipelined in " << attempts << " attempts";
  std::printf("pipelined at attempt %d\n", attempts);
}

// Threads still waiting (and reading replies) while the pool is torn down.
TEST(ProcessPool, WaitersRacingTerminateSettleOnce) {
  for (int round = 0; round < 20; ++round) {
    auto pool = std::make_unique<crew::ProcessPool>(opts());
    std::atomic<int> settled{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 50; ++i) {
          crew::Future<int> f;
          try {
            f = pool->run<int>("add", i, 1);
          } catch (const crew::PoolClosed&) {
            settled += 50 - i;
            return;
          }
          try {
            EXPECT_EQ(f.get(), i + 1);
          } catch (const crew::PoolClosed&) {
          }
          ++settled;
        }
      });
    }
    ASSERT_TRUE(eventually([&] { return settled.load() >= 30; }));  // mid-stream
    pool->terminate();
    for (auto& th : threads) th.join();
    pool.reset();
    EXPECT_EQ(settled.load(), 150);
  }
  EXPECT_TRUE(children_of(::getpid()).empty());
}

// ---- continuations never run on the supervisor ----------------------------------------------
// Each of these hung before: continuations ran on the supervisor thread, which is the only one
// that spawns workers and enforces deadlines.

constexpr auto kGuard = 60s;  // deadlock guard, never reached when the code works

std::string current_thread_name() {
  std::array<char, 16> buf{};
  pthread_getname_np(pthread_self(), buf.data(), buf.size());
  return buf.data();
}

TEST(ProcessPoolContinuations, RunOnThePoolsContinuationRunner) {
  auto o = opts();
  o.name = "cont";
  crew::ProcessPool pool(o);
  std::string where;
  auto f = pool.run<int>("add", 1, 2).then([&where](int v) {
    where = current_thread_name();
    return v * 2;
  });
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_EQ(f.get(), 6);
  EXPECT_EQ(where.rfind("cont-then-w", 0), 0U) << where;
}

TEST(ProcessPoolContinuations, ATimeoutContinuationMaySubmitATimedTaskAndWaitForIt) {
  auto o = opts();
  o.min_workers = 1;
  o.max_workers = 1;  // the inner task needs the worker the supervisor starts after the kill
  crew::ProcessPool pool(o);
  auto f = pool.run<int>(crew::RunOptions{.timeout = 20ms}, "spin")
               .then([&pool](crew::Future<int> first) {
                 EXPECT_THROW(first.get(), crew::TimedOut);
                 return pool.run<int>(crew::RunOptions{.timeout = 60s}, "add", 2, 3).get();
               });
  ASSERT_TRUE(f.wait_for(kGuard)) << "deadlock: the continuation's inner task never ran";
  EXPECT_EQ(f.get(), 5);
}

crew::Future<int> await_then_run_again(crew::ProcessPool& pool) {
  int first = 0;
  try {
    first = co_await pool.run<int>(crew::RunOptions{.timeout = 20ms}, "spin");
  } catch (const crew::TimedOut&) {
    first = 1;
  }
  co_return first + pool.run<int>("add", 10, 0).get();
}

TEST(ProcessPoolContinuations, ACoroutineResumedByATimeoutMayWaitForAnotherTask) {
  auto o = opts();
  o.max_workers = 1;
  crew::ProcessPool pool(o);
  auto f = await_then_run_again(pool);
  ASSERT_TRUE(f.wait_for(kGuard)) << "deadlock: the coroutine's second task never ran";
  EXPECT_EQ(f.get(), 11);
}

TEST(ProcessPoolContinuations, ASlowContinuationDelaysNoTimeout) {
  auto o = opts();
  o.max_workers = 1;
  crew::ProcessPool pool(o);
  std::latch release(1);
  std::atomic<bool> entered{false};
  auto slow = pool.run<int>("add", 1, 1).then([&](int v) {
    entered = true;
    release.wait();
    return v;
  });
  ASSERT_TRUE(eventually([&] { return entered.load(); }));
  // The supervisor must still dispatch this task, notice its deadline and kill its worker.
  auto other = pool.run<int>(crew::RunOptions{.timeout = 20ms}, "spin");
  const bool settled = other.wait_for(kGuard);
  release.count_down();
  ASSERT_TRUE(settled) << "a slow continuation held up another task's timeout";
  EXPECT_THROW(other.get(), crew::TimedOut);
  EXPECT_EQ(slow.get(), 2);
}

TEST(ProcessPoolContinuations, AContinuationMayDestroyItsPool) {
  auto pool = std::make_unique<crew::ProcessPool>(opts());
  auto f = pool->run<int>("add", 4, 5).then([&pool](int v) {
    pool.reset();  // closes the pool, waits for its supervisor, and leaves this thread running
    return v;
  });
  ASSERT_TRUE(f.wait_for(kGuard));
  EXPECT_EQ(f.get(), 9);
  EXPECT_EQ(pool, nullptr);
  EXPECT_TRUE(eventually([] { return children_of(::getpid()).empty(); }));
}

TEST(ProcessPool, MalformedFrameRecyclesTheWorker) {
  auto o = opts();
  o.max_workers = 1;
  crew::ProcessPool pool(o);
  for (const bool on_socket : {false, true}) {
    const auto e =
        expect_throw<crew::WorkerCrashed>([&] { pool.run<int>("garbage", on_socket).get(); });
    EXPECT_THAT(e.what(), HasSubstr("malformed"));
    EXPECT_THAT(e.what(), HasSubstr(on_socket ? "header" : "unknown kind"));
    EXPECT_EQ(pool.run<int>("add", 2, 2).get(), 4);
  }
}

TEST(ProcessPool, CancellingARunningTaskKillsItsWorker) {
  auto o = opts();
  o.max_workers = 1;
  crew::ProcessPool pool(o);
  const int pid = pool.run<int>("pid").get();
  std::stop_source stop;
  auto f = pool.run<int>(crew::RunOptions{.stop = stop.get_token()}, "sleep_ms", 20'000);
  ASSERT_TRUE(eventually([&] { return pool.stats().busy == 1; }));
  stop.request_stop();
  EXPECT_THROW(f.get(), crew::Cancelled);
  EXPECT_NE(pool.run<int>("pid").get(), pid);
  EXPECT_EQ(pool.stats().cancelled, 1U);
}

TEST(ProcessPool, QueueBoundAndPriorities) {
  auto o = opts();
  o.max_workers = 1;
  o.max_queue = 3;
  crew::ProcessPool pool(o);
  // The only worker is held until the test opens the gate, however long the queueing takes.
  auto gate = crew::SharedBuffer::create(4096, {.across_processes = true});
  auto busy = pool.run<int>("wait_flag", gate);
  ASSERT_TRUE(eventually([&] { return pool.stats().busy == 1; }));
  auto low = pool.run<long>(crew::RunOptions{.priority = 0}, "now_ns");
  auto high = pool.run<long>(crew::RunOptions{.priority = 5}, "now_ns");
  auto third = pool.run<int>("pid");
  EXPECT_THROW((void)pool.run<int>("pid"), crew::QueueFull);
  std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(gate.data())).store(7);
  EXPECT_EQ(busy.get(), 7);
  EXPECT_LT(high.get(), low.get());  // started first
  EXPECT_GT(third.get(), 0);
}

TEST(ProcessPool, WorkerOutputReachesTheLogCallbackAndStatsDescribeWorkers) {
  std::mutex m;
  std::vector<std::string> lines;
  auto o = opts();
  o.max_workers = 1;
  o.name = "logtest";
  o.log = [&](const crew::ProcessLogLine& l) {
    std::lock_guard lock(m);
    lines.push_back(std::string(l.worker) + (l.is_stderr ? " err " : " out ") +
                    std::string(l.line));
  };
  crew::ProcessPool pool(o);
  EXPECT_EQ(pool.run<int>("say", std::string("hi there")).get(), 0);
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(m);
    return lines.size() >= 2;
  }));
  {
    std::lock_guard lock(m);
    EXPECT_THAT(lines, ::testing::Contains("logtest-0 err hi there"));
    EXPECT_THAT(lines, ::testing::Contains("logtest-0 out out:hi there"));
  }
  const auto s = pool.stats();
  ASSERT_EQ(s.per_worker.size(), 1U);
  EXPECT_EQ(s.per_worker[0].name, "logtest-0");
  EXPECT_EQ(s.per_worker[0].tasks_done, 1U);
  EXPECT_GT(s.per_worker[0].rss_bytes, 0U);
  EXPECT_GT(s.per_worker[0].pid, 0);
  EXPECT_EQ(s.completed, 1U);
  EXPECT_EQ(s.run_time.count, 1U);
}

// CPU time (user + system) of this process's thread named `name`, in clock ticks.
long thread_cpu_ticks(const std::string& name) {
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(t.path() / "comm");
    std::string n;
    std::getline(comm, n);
    if (n != name) continue;
    std::ifstream stat(t.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::vector<std::string> f{std::istream_iterator<std::string>(fields), {}};
    return std::stol(f.at(11)) + std::stol(f.at(12));  // utime, stime (fields 14 and 15)
  }
  return -1;
}

// Past its idle timeout, a worker the pool keeps (min_workers) must not wake the supervisor:
// its deadline used to stay in the past, and the supervisor spun on it at a full core.
TEST(ProcessPool, AnIdlePoolAtItsMinimumSleeps) {
  auto o = opts();
  o.name = "sleepy";
  o.min_workers = 1;
  o.max_workers = 1;
  o.idle_timeout = 50ms;
  crew::ProcessPool pool(o);
  EXPECT_EQ(pool.run<int>("add", 1, 2).get(), 3);
  std::this_thread::sleep_for(200ms);  // the measured interval starts past the idle timeout
  const long before = thread_cpu_ticks("sleepy-sup");
  ASSERT_GE(before, 0);
  std::this_thread::sleep_for(2s);
  // A spinning supervisor burns most of those 2 s even on a busy machine; a sleeping one ~0.
  EXPECT_LT(thread_cpu_ticks("sleepy-sup") - before, ::sysconf(_SC_CLK_TCK) / 5);
  EXPECT_EQ(pool.stats().workers, 1U);
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* role = std::getenv("CREW_TEST_ROLE")) {
    if (std::strcmp(role, "fail_startup") == 0 && crew::is_worker_process()) {
      throw std::runtime_error("config file missing: /etc/example.conf");
    }
    if (std::strcmp(role, "fail_startup_until") == 0 && crew::is_worker_process()) {
      const char* flag = std::getenv("CREW_TEST_FLAG");
      if (flag == nullptr || !std::filesystem::exists(flag)) {
        throw std::runtime_error("not ready: the flag file is missing");
      }
      return crew::worker_main(test_tasks());
    }
    if (std::strcmp(role, "orphan_parent") == 0) {
      ::unsetenv("CREW_TEST_ROLE");
      auto o = opts();
      o.min_workers = 2;
      crew::ProcessPool pool(o);
      if (!eventually([&] { return pool.stats().idle == 2; })) return 1;
      const auto s = pool.stats();
      std::printf("%d %d\n", s.per_worker[0].pid, s.per_worker[1].pid);
      std::fflush(stdout);
      for (;;) ::pause();
    }
  }
  if (crew::is_worker_process()) return crew::worker_main(test_tasks());
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
